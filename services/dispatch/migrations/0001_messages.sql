-- Outbound messages (schema `dispatch`). Times are µs since the epoch, as in `windows` and
-- `billing`. `message_id` is derived from (tenant_id, idempotency_key), so the primary key is
-- also the durable uniqueness of the client's idempotency key.
CREATE TABLE messages (
    tenant_id           text NOT NULL,
    message_id          text COLLATE "C" NOT NULL,
    idempotency_key     text NOT NULL,
    -- SHA-256 of the request: the same key with another request is IDEMPOTENCY_CONFLICT.
    request_hash        bytea NOT NULL,
    phone_number_id     text NOT NULL,
    recipient           text NOT NULL,
    kind                text NOT NULL,
    template_name       text NOT NULL DEFAULT '',
    category            text NOT NULL DEFAULT '',
    -- The Cloud API request body, ready to send.
    body                text NOT NULL,
    status              text NOT NULL DEFAULT 'ACCEPTED'
        CHECK (status IN ('ACCEPTED', 'SENT', 'DELIVERED', 'READ', 'FAILED')),
    -- Progress::rank of status: statuses only move it up.
    rank                smallint NOT NULL DEFAULT 0,
    failure_reason      text NOT NULL DEFAULT '',
    error_code          integer NOT NULL DEFAULT 0,
    error_title         text NOT NULL DEFAULT '',
    provider_message_id text,
    price_micros        bigint NOT NULL,
    currency            text NOT NULL,
    free                boolean NOT NULL,
    free_reason         text NOT NULL DEFAULT '',
    business_initiated  boolean NOT NULL,
    starts_fep          boolean NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    accepted_at         bigint NOT NULL,
    sent_at             bigint,
    delivered_at        bigint,
    read_at             bigint,
    failed_at           bigint,
    updated_at          bigint NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);

-- ListMessages: newest first, cursor (accepted_at, message_id).
CREATE INDEX messages_by_time ON messages (tenant_id, accepted_at DESC, message_id DESC);
-- Rebuilding a tenant's tier counter (distinct users of business-initiated sends, 24 h).
CREATE INDEX messages_business_initiated ON messages (tenant_id, accepted_at)
    WHERE business_initiated;
