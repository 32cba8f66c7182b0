-- A tenant's contacts (contacts.rs, docs/rules.md §11): one per (tenant, user), created by the
-- user's first message to any of the tenant's numbers, by UpsertContact or by ImportContacts.
-- Current state, not history: merges only add or move forward, so a replayed inbound event or
-- a second import of the same file changes nothing.
CREATE TABLE contacts (
    tenant_id        text NOT NULL,
    -- domain::UserKey: the wa_id (E.164 digits) or the business-scoped user_id.
    user_key         text COLLATE "C" NOT NULL,
    -- The tenant's own name for the contact.
    name             text NOT NULL DEFAULT '',
    -- The name the user shows on the messenger, from its newest message.
    profile_name     text NOT NULL DEFAULT '',
    attributes       jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Lower case, sorted, distinct: equal sets compare equal.
    tags             text[] NOT NULL DEFAULT '{}',
    opt_in_source    text NOT NULL DEFAULT '',
    opt_in_at        bigint,
    opt_in_proof     text NOT NULL DEFAULT '',
    -- The user told the tenant (outside the channel) not to send marketing: an imported
    -- opt-out withdraws the opt-in.
    opted_out_at     bigint,
    -- The tenant's own block (spam protection): nothing reaches the user from its numbers.
    blocked          boolean NOT NULL DEFAULT false,
    blocked_at       bigint,
    last_inbound_at  bigint,
    source           text NOT NULL CHECK (source IN ('inbound', 'api', 'import')),
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_key)
);
CREATE INDEX contacts_tags ON contacts USING gin (tags);
CREATE INDEX contacts_blocked ON contacts (tenant_id) WHERE blocked;

-- One ImportContacts run, named by the caller: the same import_id answers the same report.
CREATE TABLE contact_imports (
    tenant_id     text NOT NULL,
    import_id     text NOT NULL,
    state         text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    rows_read     bigint NOT NULL DEFAULT 0,
    created       bigint NOT NULL DEFAULT 0,
    updated       bigint NOT NULL DEFAULT 0,
    unchanged     bigint NOT NULL DEFAULT 0,
    rejected      bigint NOT NULL DEFAULT 0,
    duplicates    bigint NOT NULL DEFAULT 0,
    opted_out     bigint NOT NULL DEFAULT 0,
    failure       text NOT NULL DEFAULT '',
    started_at    bigint NOT NULL,
    heartbeat_at  bigint NOT NULL,
    finished_at   bigint,
    PRIMARY KEY (tenant_id, import_id)
);

-- The rows of an import that were not taken as they stood: rejected (with the field and the
-- reason), duplicates of an earlier line, opt-outs.
CREATE TABLE contact_import_rows (
    tenant_id  text NOT NULL,
    import_id  text NOT NULL,
    line       bigint NOT NULL,
    phone      text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('rejected', 'duplicate', 'opted_out')),
    field      text NOT NULL DEFAULT '',
    reason     text NOT NULL,
    message    text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, import_id, line)
);
