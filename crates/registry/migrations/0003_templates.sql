-- Message templates of a tenant and their review lifecycle (finestra_domain::template).
CREATE TABLE templates (
    template_id     text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (tenant_id),
    name            text NOT NULL,
    language        text NOT NULL,
    category        text NOT NULL CHECK (category IN ('MARKETING', 'UTILITY', 'AUTHENTICATION')),
    body            text NOT NULL,
    header          text NOT NULL DEFAULT '',
    footer          text NOT NULL DEFAULT '',
    buttons         jsonb,
    parameter_count integer NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'PAUSED', 'DISABLED')),
    paused_until    timestamptz,
    pauses          integer NOT NULL DEFAULT 0,
    last_review_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
-- Name + language is unique per tenant among templates not deleted.
CREATE UNIQUE INDEX templates_name_language ON templates (tenant_id, name, language) WHERE deleted_at IS NULL;
