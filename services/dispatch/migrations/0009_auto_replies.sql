-- Replies owed to a user who stopped or resumed marketing with a keyword (auto_reply.rs): the
-- event pipeline notes one in the batch it records, the replier sends it as the tenant's
-- free-form message (idempotent by the keyword message's event id) and then forgets it.
CREATE TABLE auto_replies (
    tenant_id       text NOT NULL,
    -- The keyword preference's event id (kw:<wamid>).
    event_id        text NOT NULL,
    phone_number_id text NOT NULL,
    recipient       text NOT NULL,
    body            text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_at         timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX auto_replies_due ON auto_replies (next_at);
