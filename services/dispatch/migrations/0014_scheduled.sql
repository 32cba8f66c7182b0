-- Messages sent with send_at (scheduled.rs): kept until their time, then handed to the send
-- decision as any SendMessage (the idempotency key is the caller's, so the hand-off is the
-- message). 'handing' while the scheduler sends it: no longer cancellable.
CREATE TABLE scheduled_messages (
    tenant_id        text NOT NULL,
    idempotency_key  text NOT NULL,
    message_id       text NOT NULL,
    -- The SendMessageRequest protobuf, send_at cleared.
    request          bytea NOT NULL,
    send_at          bigint NOT NULL,
    state            text NOT NULL DEFAULT 'scheduled'
                     CHECK (state IN ('scheduled', 'handing', 'handed', 'refused', 'cancelled')),
    lease_until      bigint,
    attempts         integer NOT NULL DEFAULT 0,
    refusal_reason   text NOT NULL DEFAULT '',
    refusal_message  text NOT NULL DEFAULT '',
    created_at       bigint NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE UNIQUE INDEX scheduled_messages_by_id ON scheduled_messages (tenant_id, message_id);
CREATE INDEX scheduled_messages_due ON scheduled_messages (send_at) WHERE state IN ('scheduled', 'handing');
