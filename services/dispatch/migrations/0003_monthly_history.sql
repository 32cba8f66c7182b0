-- Monthly partitions for the history tables: retention drops whole months (`finestra ops
-- retention`). The old tables are renamed `*_unpartitioned`; `dispatch::pg::migrate` moves
-- their rows into the partitions of their months and drops them (platform::partitions::adopt).

-- The durable uniqueness of a message id (derived from tenant and idempotency key) across
-- months: a primary key of a partitioned table must include its partition key, so it cannot
-- be (tenant, message) alone any more. Inserting here first is what makes a retried key find
-- its message, whichever month it was accepted in.
CREATE TABLE message_keys (
    tenant_id   text NOT NULL,
    message_id  text COLLATE "C" NOT NULL,
    accepted_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
INSERT INTO message_keys (tenant_id, message_id, accepted_at)
SELECT tenant_id, message_id, accepted_at FROM messages;

ALTER TABLE messages RENAME TO messages_unpartitioned;
ALTER INDEX messages_pkey RENAME TO messages_unpartitioned_pkey;
ALTER INDEX messages_by_time RENAME TO messages_unpartitioned_by_time;
ALTER INDEX messages_business_initiated RENAME TO messages_unpartitioned_business_initiated;
CREATE TABLE messages (LIKE messages_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (accepted_at);
ALTER TABLE messages ADD PRIMARY KEY (tenant_id, message_id, accepted_at);
CREATE INDEX messages_by_time ON messages (tenant_id, accepted_at DESC, message_id DESC);
CREATE INDEX messages_business_initiated ON messages (tenant_id, accepted_at)
    WHERE business_initiated;
CREATE TABLE messages_default PARTITION OF messages DEFAULT;

-- Tenant events: an event id comes with its own occurrence time, so (tenant, event,
-- occurred_at) still drops a redelivered event.
ALTER TABLE tenant_events RENAME TO tenant_events_unpartitioned;
ALTER INDEX tenant_events_pkey RENAME TO tenant_events_unpartitioned_pkey;
ALTER INDEX tenant_events_tenant_id_event_id_key RENAME TO tenant_events_unpartitioned_event_key;
CREATE TABLE tenant_events (LIKE tenant_events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (occurred_at);
ALTER TABLE tenant_events ADD PRIMARY KEY (tenant_id, seq, occurred_at);
ALTER TABLE tenant_events ADD CONSTRAINT tenant_events_event_key UNIQUE (tenant_id, event_id, occurred_at);
CREATE TABLE tenant_events_default PARTITION OF tenant_events DEFAULT;

-- Webhook deliveries, by the time of their first attempt.
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_unpartitioned;
ALTER INDEX webhook_deliveries_pkey RENAME TO webhook_deliveries_unpartitioned_pkey;
ALTER INDEX webhook_deliveries_due RENAME TO webhook_deliveries_unpartitioned_due;
ALTER INDEX webhook_deliveries_dead RENAME TO webhook_deliveries_unpartitioned_dead;
CREATE TABLE webhook_deliveries (LIKE webhook_deliveries_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (first_at);
ALTER TABLE webhook_deliveries ADD PRIMARY KEY (tenant_id, endpoint_id, seq, first_at);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (tenant_id, endpoint_id, seq) WHERE state = 'dead';
CREATE TABLE webhook_deliveries_default PARTITION OF webhook_deliveries DEFAULT;
