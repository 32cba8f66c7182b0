-- A tenant's suppression list is its contacts with an opt-out (docs/rules.md §3): an imported
-- opt-out or the network's 131050 refusal, which may make a contact of a user who never wrote
-- ('network'). Read with the tenant's blocks, per tenant.
ALTER TABLE contacts DROP CONSTRAINT contacts_source_check;
ALTER TABLE contacts ADD CONSTRAINT contacts_source_check
    CHECK (source IN ('inbound', 'api', 'import', 'network'));
DROP INDEX contacts_blocked;
CREATE INDEX contacts_flagged ON contacts (tenant_id)
    WHERE blocked OR opted_out_at IS NOT NULL;
