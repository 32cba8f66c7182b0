-- Fair queues after acceptance (docs/fairness.md): the worker holds at most a share of queued
-- messages per tenant in memory; the rest of a tenant's backlog is parked here (the row is
-- the queue, the outbound record is passed) and taken back in order as the tenant's share
-- frees up. `parked_partition` is the outbound partition the record came from, so only the
-- worker that owns that partition takes it back. The partial index holds parked rows only.
ALTER TABLE messages ADD COLUMN parked_partition integer;
CREATE INDEX messages_parked ON messages (tenant_id, accepted_at, message_id)
    WHERE parked_partition IS NOT NULL AND status = 'ACCEPTED';
-- The re-queue sweep leaves parked messages alone (their worker takes them back); its index
-- leaves them out too, or a big parked backlog would be read and thrown away every sweep.
DROP INDEX messages_waiting;
CREATE INDEX messages_waiting ON messages ((COALESCE(requeued_at, updated_at)))
    WHERE status = 'ACCEPTED' AND parked_partition IS NULL;
