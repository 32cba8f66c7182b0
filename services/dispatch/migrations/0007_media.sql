-- Files users sent (InboundMessage.media), fetched from the network for their tenant
-- (media.rs): the event log notes each one pending, the fetcher resolves it at the network,
-- downloads it, checks its type, size and SHA-256 against what the webhook announced, and puts
-- it in the media store; GetMedia serves it to its tenant only.
CREATE TABLE media (
    tenant_id       text NOT NULL,
    media_id        text NOT NULL,
    phone_number_id text NOT NULL,
    -- The user's message (its wamid) that carried the file.
    message_id      text NOT NULL,
    -- As the webhook announced them.
    content_type    text NOT NULL,
    sha256          text NOT NULL,
    filename        text NOT NULL DEFAULT '',
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'stored', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_at         timestamptz NOT NULL DEFAULT now(),
    -- A fetch in progress holds the row until then.
    lease_until     timestamptz,
    size            bigint,
    -- Where the media store keeps it.
    store_key       text,
    -- Why it could not be fetched, for good.
    failure         text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    stored_at       timestamptz,
    PRIMARY KEY (tenant_id, media_id)
);
CREATE INDEX media_due ON media (next_at) WHERE state = 'pending';
