-- One row per Graph request instead of one per event it carried (issue #11): the per-event
-- attempt row cost as much as the event's own update. An event names its latest attempt;
-- `event_attempts` keeps the earlier ones, so only a retried send writes a row per event.
CREATE TABLE send_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id      TEXT NOT NULL,
    attempted_at_ms INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    http_status     INTEGER,
    fbtrace_id      TEXT,
    message         TEXT,
    latency_ms      INTEGER NOT NULL
);
CREATE INDEX send_attempts_time ON send_attempts (attempted_at_ms);

CREATE TABLE event_attempts (
    event_row_id INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    attempt_id   INTEGER NOT NULL,
    PRIMARY KEY (event_row_id, attempt_id)
) WITHOUT ROWID;

ALTER TABLE events ADD COLUMN last_attempt_id INTEGER;

-- Existing history: every old attempt row becomes an attempt of its own.
INSERT INTO send_attempts (id, dataset_id, attempted_at_ms, outcome, http_status, fbtrace_id, message, latency_ms)
    SELECT a.id, e.dataset_id, a.attempted_at_ms, a.outcome, a.http_status, a.fbtrace_id, a.message, a.latency_ms
    FROM attempts a JOIN events e ON e.id = a.event_row_id;
INSERT INTO event_attempts (event_row_id, attempt_id) SELECT event_row_id, id FROM attempts;
DROP TABLE attempts;
