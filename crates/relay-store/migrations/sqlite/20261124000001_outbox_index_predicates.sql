-- The outbox's partial indexes, with their state lists written as ORs: SQLite evaluated an
-- IN (...) list through a temporary table for every inserted row. Queries repeat these
-- predicates exactly (relay-store/src/shared.rs), so both backends keep using the indexes.
DROP INDEX events_due;
CREATE INDEX events_due ON events (next_attempt_at_ms, id)
    WHERE (state = 'queued' OR state = 'retrying' OR state = 'sending');
DROP INDEX events_finished;
CREATE INDEX events_finished ON events (accepted_at_ms)
    WHERE (state = 'delivered' OR state = 'dead');
