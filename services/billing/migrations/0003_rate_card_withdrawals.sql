-- A rate card scheduled for the future can be withdrawn before it starts (a mistaken card
-- would otherwise block every later one, cards being append-only). The card leaves
-- `rate_cards`; this table keeps it, with who withdrew it, when and why: the audit record.
CREATE TABLE rate_card_withdrawals (
    version        text NOT NULL,
    effective_from bigint NOT NULL,
    currency       text NOT NULL,
    source         text NOT NULL,
    added_at       timestamptz NOT NULL,
    withdrawn_at   timestamptz NOT NULL DEFAULT now(),
    -- The key that withdrew it.
    withdrawn_by   text NOT NULL,
    reason         text NOT NULL,
    PRIMARY KEY (version, withdrawn_at)
);
