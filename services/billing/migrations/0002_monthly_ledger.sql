-- The ledger by month (`finestra ops retention`; kept forever unless the operator asks
-- otherwise). The old table is renamed `ledger_unpartitioned`; `billing::pg::migrate` moves its
-- rows into the partitions of their months and drops it.

-- The durable idempotency of ledger writes ((tenant, reference, kind): a top-up id, a message's
-- charge) across months: a partitioned table's unique keys must include the partition key.
CREATE TABLE ledger_keys (
    tenant_id text NOT NULL,
    reference text NOT NULL,
    kind      text NOT NULL,
    PRIMARY KEY (tenant_id, reference, kind)
);
INSERT INTO ledger_keys (tenant_id, reference, kind) SELECT tenant_id, reference, kind FROM ledger;

ALTER TABLE ledger RENAME TO ledger_unpartitioned;
ALTER INDEX ledger_pkey RENAME TO ledger_unpartitioned_pkey;
ALTER INDEX ledger_tenant_id_reference_kind_key RENAME TO ledger_unpartitioned_reference_key;
ALTER INDEX ledger_tenant_time RENAME TO ledger_unpartitioned_tenant_time;
CREATE TABLE ledger (LIKE ledger_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (occurred_at);
-- The entry ids continue; the sequence now belongs to the new table.
ALTER SEQUENCE ledger_entry_id_seq OWNED BY ledger.entry_id;
ALTER TABLE ledger ADD PRIMARY KEY (entry_id, occurred_at);
ALTER TABLE ledger ADD CONSTRAINT ledger_reference_key UNIQUE (tenant_id, reference, kind, occurred_at);
CREATE INDEX ledger_tenant_time ON ledger (tenant_id, occurred_at);
CREATE TABLE ledger_default PARTITION OF ledger DEFAULT;
