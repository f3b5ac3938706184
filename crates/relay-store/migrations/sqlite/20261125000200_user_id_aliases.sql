-- WhatsApp business-scoped user ids rotate (issue 12, D.10): after Meta's `user_id_update` the
-- contact is keyed by the current id, and each earlier id is kept here so conversions and
-- redelivered messages that name it still find the contact, until `attribution.retention` has
-- passed since the change (or the contact itself is purged).
CREATE TABLE contact_user_id_aliases (
    channel        TEXT NOT NULL,
    asset_id       TEXT NOT NULL,
    wa_user_id     TEXT NOT NULL,
    contact_id     INTEGER NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    replaced_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, asset_id, wa_user_id)
);
CREATE INDEX contact_user_id_aliases_contact ON contact_user_id_aliases (contact_id);
CREATE INDEX contact_user_id_aliases_time ON contact_user_id_aliases (replaced_at_ms);
