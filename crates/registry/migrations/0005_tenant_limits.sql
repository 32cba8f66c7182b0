-- A tenant's share of the platform (docs/fairness.md), set by its partner: SendMessage rate and
-- burst, and its weight when tenants contend. 0 takes the platform's default.
ALTER TABLE tenants
    ADD COLUMN send_rate_per_second integer NOT NULL DEFAULT 0
        CHECK (send_rate_per_second BETWEEN 0 AND 100000),
    ADD COLUMN send_burst integer NOT NULL DEFAULT 0 CHECK (send_burst BETWEEN 0 AND 1000000),
    ADD COLUMN send_weight integer NOT NULL DEFAULT 0 CHECK (send_weight BETWEEN 0 AND 100);
