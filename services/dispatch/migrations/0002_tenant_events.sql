-- Events delivered to tenants (StreamEvents and webhooks). `seq` is a per-tenant cursor,
-- assigned under the tenant's `tenant_cursors` row lock, so a tenant's events commit in seq
-- order and a reader resuming after a seq misses nothing.
CREATE TABLE tenant_cursors (
    tenant_id text PRIMARY KEY,
    next_seq  bigint NOT NULL
);

CREATE TABLE tenant_events (
    tenant_id   text NOT NULL,
    seq         bigint NOT NULL,
    event_id    text NOT NULL,
    kind        text NOT NULL,
    occurred_at bigint NOT NULL,
    -- The Envelope, protobuf-encoded.
    envelope    bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, event_id)
);

CREATE TABLE webhook_endpoints (
    tenant_id            text NOT NULL,
    endpoint_id          text NOT NULL,
    url                  text NOT NULL,
    secret               text NOT NULL,
    previous_secret      text,
    previous_valid_until bigint,
    created_at           bigint NOT NULL,
    deleted_at           bigint,
    PRIMARY KEY (tenant_id, endpoint_id)
);

CREATE TABLE webhook_deliveries (
    tenant_id       text NOT NULL,
    endpoint_id     text NOT NULL,
    seq             bigint NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    first_at        bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    last_error      text NOT NULL DEFAULT '',
    delivered_at    bigint,
    PRIMARY KEY (tenant_id, endpoint_id, seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (tenant_id, endpoint_id, seq) WHERE state = 'dead';
