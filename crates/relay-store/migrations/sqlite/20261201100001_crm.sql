-- CRM stage automation (issue #13). Times are Unix ms.

-- Per-tenant stage rules: (source, pipeline, stage) → event. `pipeline_id` 'any' matches
-- every pipeline (Kommo's 142 won / 143 lost are the same id in each).
CREATE TABLE crm_rules (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT NOT NULL,
    source        TEXT NOT NULL,
    pipeline_id   TEXT NOT NULL,
    stage_id      TEXT NOT NULL,
    event_name    TEXT NOT NULL,
    value_rule    TEXT NOT NULL,
    currency      TEXT,
    every_time    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (tenant, source, pipeline_id, stage_id)
);

-- CRM integrations (Kommo): the sealed token, the account it was checked against, the
-- webhook secret's hash (the secret itself is shown once) and the API's health.
CREATE TABLE crm_integrations (
    id                 TEXT PRIMARY KEY NOT NULL,
    tenant             TEXT NOT NULL,
    kind               TEXT NOT NULL,
    base_url           TEXT NOT NULL,
    secret_sha256      TEXT NOT NULL UNIQUE,
    sealed_token       TEXT NOT NULL,
    asset_id           TEXT NOT NULL,
    currency           TEXT,
    account_id         TEXT NOT NULL,
    subdomain          TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'active',
    status_reason      TEXT,
    api_ok_at_ms       INTEGER,
    api_error          TEXT,
    api_error_at_ms    INTEGER,
    last_webhook_at_ms INTEGER,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL
);

-- Raw CRM webhook bodies, committed before the 200 and processed in the background.
CREATE TABLE crm_webhooks (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    integration_id     TEXT NOT NULL,
    body_sha256        TEXT NOT NULL,
    body               BLOB NOT NULL,
    received_at_ms     INTEGER NOT NULL,
    state              TEXT NOT NULL DEFAULT 'pending',
    error              TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    processed_at_ms    INTEGER,
    UNIQUE (integration_id, body_sha256)
);
CREATE INDEX crm_webhooks_due ON crm_webhooks (next_attempt_at_ms, id) WHERE state = 'pending';

-- Every stage change seen, once per (integration, deal, pipeline, stage, entry), with what
-- became of it: produced, duplicate, no_rule, no_attribution, no_contact, rejected, …
CREATE TABLE crm_stage_changes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant           TEXT NOT NULL,
    integration      TEXT NOT NULL,
    deal_id          TEXT NOT NULL,
    pipeline_id      TEXT NOT NULL,
    stage_id         TEXT NOT NULL,
    entry_key        TEXT NOT NULL,
    occurred_at_ms   INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    event_name       TEXT,
    event_id         TEXT,
    detail           TEXT,
    repeats          INTEGER NOT NULL DEFAULT 0,
    first_seen_at_ms INTEGER NOT NULL,
    last_seen_at_ms  INTEGER NOT NULL,
    UNIQUE (integration, deal_id, pipeline_id, stage_id, entry_key)
);
CREATE INDEX crm_stage_changes_recent ON crm_stage_changes (integration, last_seen_at_ms);
