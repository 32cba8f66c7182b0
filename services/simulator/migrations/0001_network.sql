-- The simulated network's own state: what a real network knows, and nothing of Finestra's.
-- Every row belongs to one `network` (one simulator's name), so simulators that share a
-- database (the tests run many) never see each other's numbers or templates.

-- Numbers registered with the network through its control API, as a partner configures an
-- app: the business account (WABA) a number belongs to, the app secret that signs its
-- webhooks, the token senders present, its throughput.
CREATE TABLE numbers (
    network               text NOT NULL,
    phone_number_id       text NOT NULL CHECK (phone_number_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    waba_id               text NOT NULL CHECK (waba_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    display_phone_number  text NOT NULL,
    app_secret            text NOT NULL CHECK (length(app_secret) >= 8),
    access_token          text NOT NULL CHECK (length(access_token) >= 1),
    throughput_per_second integer NOT NULL CHECK (throughput_per_second BETWEEN 1 AND 10000),
    registered_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network, phone_number_id)
);
CREATE INDEX numbers_by_waba ON numbers (network, waba_id);

-- Templates submitted through the Cloud API, and the network's review of each.
CREATE TABLE templates (
    network         text NOT NULL,
    template_id     text NOT NULL,
    waba_id         text NOT NULL,
    name            text NOT NULL,
    language        text NOT NULL,
    category        text NOT NULL,
    components      jsonb NOT NULL,
    parameter_count integer NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'PAUSED', 'DISABLED')),
    -- Why it was rejected, paused or disabled (as the network's webhook says it).
    reason          text NOT NULL DEFAULT '',
    quality         text NOT NULL DEFAULT 'UNKNOWN',
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    -- The time of the last review event posted: the next one must be later.
    reviewed_at     timestamptz,
    deleted_at      timestamptz,
    PRIMARY KEY (network, template_id)
);
CREATE UNIQUE INDEX templates_name_language ON templates (network, waba_id, name, language)
    WHERE deleted_at IS NULL;
CREATE INDEX templates_pending ON templates (network, submitted_at) WHERE status = 'PENDING';
