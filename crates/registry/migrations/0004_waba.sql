-- The provider's business account (WABA) id of a tenant: template webhooks name the WABA, not
-- a number.
ALTER TABLE tenants ADD COLUMN waba_id text UNIQUE CHECK (waba_id ~ '^[A-Za-z0-9_-]{1,64}$');
