-- Capture (issue #4): webhook deliveries, contacts and their ad touches. Times are Unix ms.

-- Every verified webhook delivery, stored before Meta gets its 200 and parsed afterwards.
-- An identical body (a redelivery) is stored once. The forward columns are the durable queue
-- of deliveries to relay to `webhooks.forward_url`.
CREATE TABLE webhooks (
    id                     BIGSERIAL PRIMARY KEY,
    body_sha256            TEXT NOT NULL UNIQUE,
    body                   BYTEA NOT NULL,
    signature              TEXT NOT NULL,
    waba_hint              TEXT,
    received_at_ms         BIGINT NOT NULL,
    state                  TEXT NOT NULL DEFAULT 'pending',
    error                  TEXT,
    processed_at_ms        BIGINT,
    forward_state          TEXT,
    forward_attempts       INTEGER NOT NULL DEFAULT 0,
    forward_next_at_ms     BIGINT,
    forward_lease_owner    TEXT,
    forward_lease_until_ms BIGINT,
    forward_error          TEXT
);
CREATE INDEX webhooks_pending ON webhooks (id) WHERE state = 'pending';
CREATE INDEX webhooks_forward_due ON webhooks (forward_next_at_ms, id)
    WHERE forward_state IN ('pending', 'sending');
CREATE INDEX webhooks_received ON webhooks (received_at_ms);

-- One row per (channel, asset, customer). Phones only as SHA-256 of the E.164 digits.
CREATE TABLE contacts (
    id               BIGSERIAL PRIMARY KEY,
    channel          TEXT NOT NULL,
    asset_id         TEXT NOT NULL,
    conversation_id  TEXT NOT NULL UNIQUE,
    phone_hash       TEXT,
    wa_user_id       TEXT,
    scoped_id        TEXT,
    customer_id      TEXT,
    first_seen_at_ms BIGINT NOT NULL,
    last_seen_at_ms  BIGINT NOT NULL,
    UNIQUE (channel, asset_id, phone_hash),
    UNIQUE (channel, asset_id, wa_user_id),
    UNIQUE (channel, asset_id, scoped_id),
    UNIQUE (channel, asset_id, customer_id)
);
CREATE INDEX contacts_last_seen ON contacts (last_seen_at_ms);

-- Ad (and link) touches: never overwritten, one per message id.
CREATE TABLE touches (
    id             BIGSERIAL PRIMARY KEY,
    contact_id     BIGINT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    channel        TEXT NOT NULL,
    asset_id       TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    touched_at_ms  BIGINT NOT NULL,
    click_id       TEXT,
    ad_id          TEXT,
    source_type    TEXT,
    source_url     TEXT,
    headline       TEXT,
    body           TEXT,
    media_type     TEXT,
    media_url      TEXT,
    ref_param      TEXT,
    received_at_ms BIGINT NOT NULL,
    UNIQUE (channel, asset_id, message_id)
);
CREATE INDEX touches_contact ON touches (contact_id, touched_at_ms);
CREATE INDEX touches_time ON touches (touched_at_ms);

-- Per-asset capture switches.
CREATE TABLE capture_options (
    asset_id           TEXT PRIMARY KEY NOT NULL,
    allow_unattributed BOOLEAN NOT NULL DEFAULT FALSE,
    automatic_events   BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at_ms      BIGINT NOT NULL
);
