-- Billing's system of record (docs/architecture.md, docs/rules.md §6, §7). Money is integer micro-units; times are
-- microseconds since the Unix epoch (the domain's unit).

-- Rate cards, append-only: a card starts after every earlier one and never reprices the past.
CREATE TABLE rate_cards (
    version        text PRIMARY KEY,
    effective_from bigint NOT NULL UNIQUE,
    currency       text NOT NULL,
    -- The card in the rate-card file format; parsed by finestra_domain::pricing::parse_card.
    source         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- A partner's markup per category ('*' = every category without its own row).
CREATE TABLE markups (
    partner_id   text NOT NULL,
    category     text NOT NULL,
    basis_points integer NOT NULL DEFAULT 0 CHECK (basis_points >= 0),
    fixed_micros bigint NOT NULL DEFAULT 0 CHECK (fixed_micros >= 0),
    CHECK (basis_points = 0 OR fixed_micros = 0),
    PRIMARY KEY (partner_id, category)
);

-- One wallet per tenant. balance = Σ ledger.amount; reserved = Σ open reservations' price.
CREATE TABLE wallets (
    tenant_id             text PRIMARY KEY,
    balance               bigint NOT NULL DEFAULT 0,
    credit_limit          bigint NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    reserved              bigint NOT NULL DEFAULT 0,
    low_balance_threshold bigint NOT NULL DEFAULT 0 CHECK (low_balance_threshold >= 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Every priced message (free ones too, at 0): reserved at acceptance, then captured or
-- released exactly once. The priced facts are fixed at acceptance (card in force then).
CREATE TABLE reservations (
    tenant_id       text NOT NULL,
    message_id      text NOT NULL,
    phone_number_id text NOT NULL,
    recipient       text NOT NULL,
    category        text NOT NULL,
    market          text NOT NULL,
    card_version    text NOT NULL,
    currency        text NOT NULL,
    cost            bigint NOT NULL CHECK (cost >= 0),
    price           bigint NOT NULL CHECK (price >= 0),
    markup          text NOT NULL,
    free_reason     text NOT NULL DEFAULT '',
    accepted_at     bigint NOT NULL,
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'captured', 'released')),
    -- The provider reported it sent: a block no longer releases it (the provider decides).
    sent            boolean NOT NULL DEFAULT false,
    ended_at        bigint,
    end_reason      text,
    PRIMARY KEY (tenant_id, message_id)
);
-- What a block releases. Its predicate is deliberately narrower than the settlement's
-- (`state = 'open'`), so settlement always finds its rows through the primary key: with this
-- index usable there, a busy tenant's lookups would scan all its open reservations.
CREATE INDEX reservations_queued_pair ON reservations (tenant_id, phone_number_id, recipient)
    WHERE state = 'open' AND NOT sent;
CREATE INDEX reservations_open_age ON reservations (accepted_at) WHERE state = 'open';

-- The append-only ledger. A redelivered event cannot write twice: (tenant, reference, kind) is
-- unique. Free messages are recorded at 0 so usage counts them. Kept forever by default, so
-- not partitioned (a global unique key needs no partition key).
CREATE TABLE ledger (
    entry_id        bigserial PRIMARY KEY,
    tenant_id       text NOT NULL,
    reference       text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('top_up', 'charge', 'adjustment')),
    -- Signed: + credit, − debit.
    amount          bigint NOT NULL,
    cost            bigint NOT NULL DEFAULT 0,
    price           bigint NOT NULL DEFAULT 0,
    currency        text NOT NULL,
    card_version    text NOT NULL DEFAULT '',
    category        text NOT NULL DEFAULT '',
    market          text NOT NULL DEFAULT '',
    phone_number_id text NOT NULL DEFAULT '',
    free_reason     text NOT NULL DEFAULT '',
    markup          text NOT NULL DEFAULT '',
    note            text NOT NULL DEFAULT '',
    occurred_at     bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, reference, kind)
);
CREATE INDEX ledger_tenant_time ON ledger (tenant_id, occurred_at);
