-- Partners (BSPs) own tenants. Tenants created before partners existed belong to `default`.
CREATE TABLE partners (
    partner_id text PRIMARY KEY CHECK (partner_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO partners (partner_id, name) VALUES ('default', 'Default partner');

ALTER TABLE tenants
    ADD COLUMN partner_id text NOT NULL DEFAULT 'default' REFERENCES partners (partner_id),
    -- Distinct users per rolling 24 h for business-initiated messages; NULL = unlimited.
    ADD COLUMN tier integer DEFAULT 250 CHECK (tier IN (250, 2000, 10000, 100000));
ALTER TABLE tenants ALTER COLUMN partner_id DROP DEFAULT;
CREATE INDEX tenants_by_partner ON tenants (partner_id, tenant_id);

ALTER TABLE numbers
    ADD COLUMN throughput_per_second integer NOT NULL DEFAULT 80
        CHECK (throughput_per_second BETWEEN 1 AND 1000),
    -- Secret rotation: the previous secret keeps verifying webhooks until the given time.
    ADD COLUMN previous_app_secret text,
    ADD COLUMN previous_secret_valid_until timestamptz;

-- API keys: only a SHA-256 of the (high-entropy) secret is stored.
CREATE TABLE api_keys (
    key_id         text PRIMARY KEY,
    key_hash       text NOT NULL UNIQUE,
    display_prefix text NOT NULL,
    owner_kind     text NOT NULL CHECK (owner_kind IN ('operator', 'partner', 'tenant')),
    partner_id     text REFERENCES partners (partner_id),
    tenant_id      text REFERENCES tenants (tenant_id),
    scopes         text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'send', 'admin'] AND cardinality(scopes) > 0),
    label          text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz,
    revoked_at     timestamptz,
    CHECK ((owner_kind = 'operator' AND partner_id IS NULL AND tenant_id IS NULL)
        OR (owner_kind = 'partner' AND partner_id IS NOT NULL AND tenant_id IS NULL)
        OR (owner_kind = 'tenant' AND partner_id IS NOT NULL AND tenant_id IS NOT NULL))
);
CREATE INDEX api_keys_by_owner ON api_keys (partner_id, tenant_id, key_id);
