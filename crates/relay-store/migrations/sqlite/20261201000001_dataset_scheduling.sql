-- Delivery claims one dataset at a time: the due index leads with the dataset, so finding the
-- datasets with due events is one probe per dataset and a claim reads only its own rows.
-- A claimed event is due again when its lease ends, so its due time is moved to the lease end.
UPDATE events SET next_attempt_at_ms = lease_until_ms
    WHERE state = 'sending' AND lease_until_ms IS NOT NULL;
DROP INDEX events_due;
CREATE INDEX events_due ON events (dataset_id, next_attempt_at_ms, id)
    WHERE (state = 'queued' OR state = 'retrying' OR state = 'sending');
-- The heartbeat renews, and a stopping worker releases, the leases of one owner.
CREATE INDEX events_leased ON events (lease_owner) WHERE state = 'sending';
