-- A referral message (an ad click) makes the first business reply after it start a free entry
-- point (docs/rules.md §1). Dispatch flags that reply itself when, at acceptance, the window
-- service has recorded the referral; a reply accepted before then is found here instead: the
-- event log notes each referral message, and after a grace period the FEP checker looks for
-- the first reply after it (fep.rs). One row per referral message, gone once checked.
CREATE TABLE fep_checks (
    tenant_id       text NOT NULL,
    phone_number_id text NOT NULL,
    user_key        text NOT NULL,
    -- The referral message's send time (µs).
    referral_at     bigint NOT NULL,
    -- When to look (µs): pushed back while the window service has not recorded the referral.
    due_at          bigint NOT NULL,
    PRIMARY KEY (tenant_id, phone_number_id, user_key, referral_at)
);
CREATE INDEX fep_checks_due ON fep_checks (due_at);
