-- The dashboard (issue 14). Times are Unix milliseconds.

-- Maintained counts per tenant, dataset, channel, event name and 5-minute bucket, updated in the
-- transaction that changes the events, so the overview never counts the outbox.
-- Latency buckets lat_0..lat_10 count ingest→Meta-ack times up to 250 ms, 500 ms, 1 s, 2 s, 5 s,
-- 10 s, 30 s, 1 min, 5 min, 1 h, and beyond.
CREATE TABLE event_stats (
    tenant            TEXT NOT NULL,
    dataset_id        TEXT NOT NULL,
    channel           TEXT NOT NULL,
    event_name        TEXT NOT NULL,
    bucket_ms         BIGINT NOT NULL,
    accepted          BIGINT NOT NULL DEFAULT 0,
    duplicates        BIGINT NOT NULL DEFAULT 0,
    rejected          BIGINT NOT NULL DEFAULT 0,
    delivered         BIGINT NOT NULL DEFAULT 0,
    retried           BIGINT NOT NULL DEFAULT 0,
    dead              BIGINT NOT NULL DEFAULT 0,
    with_click_id     BIGINT NOT NULL DEFAULT 0,
    test_events       BIGINT NOT NULL DEFAULT 0,
    last_received_ms  BIGINT,
    last_delivered_ms BIGINT,
    lat_0 BIGINT NOT NULL DEFAULT 0, lat_1 BIGINT NOT NULL DEFAULT 0,
    lat_2 BIGINT NOT NULL DEFAULT 0, lat_3 BIGINT NOT NULL DEFAULT 0,
    lat_4 BIGINT NOT NULL DEFAULT 0, lat_5 BIGINT NOT NULL DEFAULT 0,
    lat_6 BIGINT NOT NULL DEFAULT 0, lat_7 BIGINT NOT NULL DEFAULT 0,
    lat_8 BIGINT NOT NULL DEFAULT 0, lat_9 BIGINT NOT NULL DEFAULT 0,
    lat_10 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, bucket_ms, dataset_id, channel, event_name)
);
CREATE INDEX event_stats_bucket ON event_stats (bucket_ms);

-- Events refused at ingest, with their errors and PII hashed, kept for a bounded retention.
CREATE TABLE refused_events (
    id             BIGSERIAL PRIMARY KEY,
    tenant         TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    event_id       TEXT,
    event_name     TEXT,
    channel        TEXT,
    asset_id       TEXT,
    error_code     TEXT NOT NULL,
    errors         TEXT NOT NULL,
    body           TEXT NOT NULL
);
CREATE INDEX refused_events_tenant ON refused_events (tenant, received_at_ms, id);
CREATE INDEX refused_events_time ON refused_events (received_at_ms);

-- One-time dashboard login links, stored as SHA-256 of the token.
CREATE TABLE ui_links (
    token_hash    TEXT PRIMARY KEY NOT NULL,
    tenant        TEXT NOT NULL,
    read_only     BOOLEAN NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT
);

-- The relay's latest Graph calls for events (pruned to the last few thousand): the error rate
-- over the last 500 that Meta's access tier looks at.
CREATE TABLE graph_calls (
    id    BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    ok    BOOLEAN NOT NULL
);
-- Graph calls per UTC day, for "successful calls in the last 15 days".
CREATE TABLE graph_call_days (
    day_ms BIGINT PRIMARY KEY NOT NULL,
    ok     BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0
);

-- The events log: a tenant's events newest first, and its test events.
CREATE INDEX events_tenant_accepted ON events (tenant, accepted_at_ms, id);
CREATE INDEX events_test ON events (tenant, id) WHERE test_event_code IS NOT NULL;
