-- A dataset belongs to one tenant (issue 12, A.3). Events are deduplicated per
-- (dataset_id, event_id), so two tenants on one dataset would learn each other's event ids
-- from `duplicate` answers. The first tenant to register an asset on a dataset owns it, for
-- good: moving its assets elsewhere does not free it, because its events stay in the outbox.
CREATE TABLE dataset_owners (
    dataset_id    TEXT PRIMARY KEY NOT NULL,
    tenant        TEXT NOT NULL REFERENCES tenants (name),
    created_at_ms INTEGER NOT NULL
);

-- Existing datasets go to the tenant of their oldest asset (ties: the smallest asset id). An
-- asset of another tenant already on such a dataset keeps working, but cannot be registered
-- again on it.
INSERT INTO dataset_owners (dataset_id, tenant, created_at_ms)
SELECT a.dataset_id, a.tenant, a.created_at_ms FROM assets a
WHERE NOT EXISTS (
    SELECT 1 FROM assets b WHERE b.dataset_id = a.dataset_id
    AND (b.created_at_ms < a.created_at_ms
         OR (b.created_at_ms = a.created_at_ms AND b.asset_id < a.asset_id))
);
