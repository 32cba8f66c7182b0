-- Templates live at the network (docs/architecture.md, "The network"): each one is submitted
-- to the tenant's business account, and the network's id for it is kept to edit, delete and
-- resynchronise it.
ALTER TABLE templates
    ADD COLUMN provider_template_id text,
    ADD COLUMN submitted_at         timestamptz,
    -- Why the network rejected, paused or disabled it, as the network said it.
    ADD COLUMN status_reason        text NOT NULL DEFAULT '',
    -- Deleted here; set once the network deleted it too (the submitter retries until then).
    ADD COLUMN provider_deleted_at  timestamptz,
    -- A submission in progress holds the template until then, so that the background
    -- submitter and a SubmitTemplate call never submit it twice.
    ADD COLUMN submit_lease_until   timestamptz;
-- The background submitter's work: templates owed to the network.
CREATE INDEX templates_unsubmitted ON templates (created_at)
    WHERE submitted_at IS NULL AND deleted_at IS NULL;
CREATE INDEX templates_undeleted_at_provider ON templates (deleted_at)
    WHERE deleted_at IS NOT NULL AND submitted_at IS NOT NULL AND provider_deleted_at IS NULL;
