-- Campaigns (campaigns/, docs/rules.md §12): one template to a tenant's contacts, sent by the
-- runner at the number's pace through the send decision. The runner holds a running campaign
-- under a lease, so several replicas share the table and a crashed one's campaigns go on.
CREATE TABLE campaigns (
    tenant_id          text NOT NULL,
    campaign_id        text NOT NULL,
    phone_number_id    text NOT NULL,
    template_name      text NOT NULL,
    template_language  text NOT NULL,
    -- The CreateCampaignRequest protobuf: the audience and parameters, and what a repeated
    -- create is compared with.
    request            bytea NOT NULL,
    state              text NOT NULL DEFAULT 'DRAFT'
                       CHECK (state IN ('DRAFT', 'RUNNING', 'PAUSED', 'COMPLETED', 'CANCELLED')),
    state_reason       text NOT NULL DEFAULT '',
    start_at           bigint,
    end_at             bigint,
    created_at         bigint NOT NULL,
    launched_at        bigint,
    -- When it last became RUNNING: the circuit breaker judges only the sends since.
    resumed_at         bigint,
    finished_at        bigint,
    updated_at         bigint NOT NULL,
    -- The runner (a replica's random id) holding a running campaign, and until when.
    runner             text NOT NULL DEFAULT '',
    lease_until        bigint,
    PRIMARY KEY (tenant_id, campaign_id)
);
CREATE INDEX campaigns_running ON campaigns (start_at) WHERE state = 'RUNNING';

-- A launched campaign's recipients, fixed at launch. Each is handed to the send decision
-- once under the idempotency key `campaign:<campaign_id>:<user>`, so the message it gives is
-- the same however often a crashed runner tries again; the row records the outcome.
CREATE TABLE campaign_recipients (
    tenant_id     text NOT NULL,
    campaign_id   text NOT NULL,
    user_key      text COLLATE "C" NOT NULL,
    state         text NOT NULL DEFAULT 'QUEUED'
                  CHECK (state IN ('QUEUED', 'ACCEPTED', 'EXCLUDED')),
    -- Why it was excluded.
    reason        text NOT NULL DEFAULT '',
    message_id    text COLLATE "C",
    price_micros  bigint NOT NULL DEFAULT 0,
    free          boolean NOT NULL DEFAULT false,
    decided_at    bigint,
    PRIMARY KEY (tenant_id, campaign_id, user_key)
);
CREATE INDEX campaign_recipients_queued ON campaign_recipients (tenant_id, campaign_id, user_key)
    WHERE state = 'QUEUED';
-- The circuit breaker reads a campaign's newest sends.
CREATE INDEX campaign_recipients_recent ON campaign_recipients (tenant_id, campaign_id, decided_at DESC)
    WHERE state = 'ACCEPTED';
