-- Current state per (tenant, number, user): the system of record the Redis hash is rebuilt
-- from. Text that is compared or ordered is in the "C" collation: byte order, as the domain
-- (Rust) and the Redis script compare, whatever the database's locale. Times are microseconds since the Unix epoch (the domain's unit). Every column only
-- moves "up" (see finestra_domain::WindowState::merge), so upserts merge, never overwrite.
CREATE TABLE pair_state (
    tenant_id       text NOT NULL,
    phone_number_id text NOT NULL,
    user_key        text COLLATE "C" NOT NULL,
    csw_until       bigint,
    last_inbound_at bigint,
    last_inbound_id text COLLATE "C",
    referral_at     bigint,
    fep_until       bigint,
    opt_out_at      bigint,
    opt_out         boolean,
    blocked_at      bigint,
    blocked         boolean,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, phone_number_id, user_key)
);

-- Append-only history of every applied event, idempotent on the event id. Partitioned by
-- month of the provider timestamp for retention; the unique key includes the partition key
-- (an event id always comes with the same timestamp, it is derived from the provider's ids).
CREATE TABLE window_events (
    tenant_id       text NOT NULL,
    event_id        text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    phone_number_id text NOT NULL,
    user_key        text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('user_message', 'marketing_preference', 'block')),
    message_id      text,
    referral        boolean NOT NULL DEFAULT false,
    flag            boolean,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Anything outside the monthly partitions (very old or far-future provider timestamps).
CREATE TABLE window_events_default PARTITION OF window_events DEFAULT;

-- Creates the partition of the month containing `day` if it is missing. The service calls it
-- at start for the months around now.
CREATE FUNCTION ensure_window_events_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', day)::date;
    name  text := format('window_events_%s', to_char(first, 'YYYY_MM'));
BEGIN
    IF to_regclass(format('windows.%I', name)) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE windows.%I PARTITION OF windows.window_events FOR VALUES FROM (%L) TO (%L)',
            name, first, (first + interval '1 month')::date);
    END IF;
EXCEPTION
    WHEN duplicate_table THEN
        NULL; -- another process created it first
    WHEN check_violation THEN
        -- The default partition already holds rows of that month; they stay there.
        RAISE WARNING 'partition % not created: the default partition has rows of that month', name;
END $$;
