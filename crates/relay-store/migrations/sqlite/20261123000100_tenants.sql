-- Tenants: the client businesses of one relay. Everything that existed before tenancy belongs to
-- the tenant 'default', so an upgraded single-business relay keeps working unchanged.
CREATE TABLE tenants (
    name            TEXT PRIMARY KEY NOT NULL,
    -- Meta's test_event_code for every event of this tenant (Meta counts test events apart).
    test_event_code TEXT,
    created_at_ms   INTEGER NOT NULL
);
INSERT INTO tenants (name, created_at_ms) VALUES ('default', 0);

-- SQLite cannot add a column with both a REFERENCES clause and a non-NULL default; the relay
-- only ever names existing tenants here.
ALTER TABLE assets ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE assets ADD COLUMN test_event_code TEXT;
CREATE INDEX assets_tenant ON assets (tenant);

ALTER TABLE events ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';

-- Per-tenant API keys, stored as SHA-256 of the key; the key itself is shown once.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY NOT NULL,
    tenant         TEXT NOT NULL REFERENCES tenants (name),
    key_hash       TEXT NOT NULL UNIQUE,
    label          TEXT,
    -- JSON array of asset ids this key may use; NULL means all of the tenant's assets.
    allowed_assets TEXT,
    created_at_ms  INTEGER NOT NULL,
    revoked_at_ms  INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- Who did what, when, to which tenant. Never holds a secret.
CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    tenant TEXT,
    target TEXT,
    detail TEXT
);
CREATE INDEX audit_log_tenant ON audit_log (tenant, id);
