-- Business assets and where their events go. Times are Unix milliseconds.
CREATE TABLE assets (
    asset_id      TEXT PRIMARY KEY NOT NULL,
    channel       TEXT NOT NULL,
    dataset_id    TEXT NOT NULL,
    access_token  TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'active',
    status_reason TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- The outbox: one row per accepted event, unique per dataset and event_id (deduplication).
CREATE TABLE events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id         TEXT NOT NULL,
    asset_id           TEXT NOT NULL,
    channel            TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    event_name         TEXT NOT NULL,
    event_time         INTEGER NOT NULL,
    payload            TEXT NOT NULL,
    test_event_code    TEXT,
    state              TEXT NOT NULL DEFAULT 'queued',
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    lease_owner        TEXT,
    lease_until_ms     INTEGER,
    accepted_at_ms     INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    dead_reason        TEXT,
    dead_at_ms         INTEGER,
    UNIQUE (dataset_id, event_id)
);
CREATE INDEX events_due ON events (next_attempt_at_ms, id)
    WHERE state IN ('queued', 'retrying', 'sending');
CREATE INDEX events_event_id ON events (event_id);
CREATE INDEX events_dead ON events (dead_at_ms) WHERE state = 'dead';
CREATE INDEX events_finished ON events (accepted_at_ms) WHERE state IN ('delivered', 'dead');

-- Every send attempt, per event.
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_row_id    INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    attempted_at_ms INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    http_status     INTEGER,
    fbtrace_id      TEXT,
    message         TEXT,
    latency_ms      INTEGER NOT NULL
);
CREATE INDEX attempts_event ON attempts (event_row_id);

-- Datasets Meta is throttling, held until until_ms.
CREATE TABLE dataset_pauses (
    dataset_id TEXT PRIMARY KEY NOT NULL,
    until_ms   INTEGER NOT NULL
);
