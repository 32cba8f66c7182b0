-- Tenants (businesses) and their phone numbers. Tenant ids appear in Redis hash tags and
-- Kafka keys, so they are restricted to characters that are safe there.
CREATE TABLE tenants (
    tenant_id  text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE numbers (
    phone_number_id      text PRIMARY KEY CHECK (phone_number_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    tenant_id            text NOT NULL REFERENCES tenants (tenant_id),
    display_phone_number text NOT NULL,
    -- The webhook app secret: needed in clear to verify HMAC signatures.
    app_secret           text NOT NULL CHECK (length(app_secret) >= 8),
    status               text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX numbers_by_tenant ON numbers (tenant_id, phone_number_id);
