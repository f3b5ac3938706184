-- Per-pipeline asset of a CRM integration (issue #13): a stage change in `pipeline_id` goes
-- to `asset_id` instead of the integration's own asset.
CREATE TABLE crm_pipeline_assets (
    integration_id TEXT NOT NULL,
    pipeline_id    TEXT NOT NULL,
    asset_id       TEXT NOT NULL,
    PRIMARY KEY (integration_id, pipeline_id)
);
