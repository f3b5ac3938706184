-- Webhook processing (issue #12): retries with backoff, and raw bodies kept only as long as needed.
-- Times are Unix ms.

-- A delivery whose processing met a transient error stays pending until next_attempt_at_ms;
-- attempts counts the tries. NULL: due at once.
ALTER TABLE webhooks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN next_attempt_at_ms INTEGER;
-- The channel the delivery was for, kept after the body is removed (the dashboard counts it).
ALTER TABLE webhooks ADD COLUMN channel TEXT;
-- When the raw body (customers' numbers, names, messages) was removed; the body is then empty.
ALTER TABLE webhooks ADD COLUMN body_removed_at_ms INTEGER;
-- Bodies still held: the purge looks only at these.
CREATE INDEX webhooks_with_body ON webhooks (processed_at_ms) WHERE body_removed_at_ms IS NULL;

-- Kommo bodies likewise (lead names): removed once processed.
ALTER TABLE crm_webhooks ADD COLUMN body_removed_at_ms INTEGER;
