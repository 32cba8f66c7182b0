-- A message is stored before its outbound event is produced and answered only after both: a
-- process killed in between leaves a stored message whose event may never have reached the
-- broker. Dispatch queues messages still ACCEPTED a while after they were last touched again
-- (`outbox::Requeuer`); `requeued_at` is when it last did. The partial index holds only the
-- waiting messages, so a sweep reads nothing else however long the history.
ALTER TABLE messages ADD COLUMN requeued_at bigint;
CREATE INDEX messages_waiting ON messages ((COALESCE(requeued_at, updated_at)))
    WHERE status = 'ACCEPTED';
