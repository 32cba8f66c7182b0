-- The marketing frequency cap a tenant's partner sets (docs/rules.md §2): at most this many
-- marketing templates per user per this many days; 0 takes the platform's default (2 per 7).
ALTER TABLE tenants
    ADD COLUMN marketing_cap      integer NOT NULL DEFAULT 0 CHECK (marketing_cap BETWEEN 0 AND 1000),
    ADD COLUMN marketing_cap_days integer NOT NULL DEFAULT 0 CHECK (marketing_cap_days BETWEEN 0 AND 90);
