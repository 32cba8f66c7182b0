-- The network's word on a business account's health (docs/architecture.md, "The network"):
-- each fact is kept with the network's time of it, and an older event never overwrites a newer
-- one (webhooks may come late or twice).
ALTER TABLE numbers
    -- GREEN, YELLOW, RED or UNKNOWN.
    ADD COLUMN quality_rating  text NOT NULL DEFAULT 'UNKNOWN',
    -- TIER_250, TIER_2K, TIER_10K, TIER_100K, TIER_UNLIMITED; empty until the network says.
    ADD COLUMN messaging_limit text NOT NULL DEFAULT '',
    -- The network's last quality event (FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE) and its time.
    ADD COLUMN health_event    text NOT NULL DEFAULT '',
    ADD COLUMN health_at       timestamptz;
ALTER TABLE tenants
    -- The network's last account event (VERIFIED_ACCOUNT, DISABLED_UPDATE, ...), its own words
    -- (JSON) and its time.
    ADD COLUMN account_status    text NOT NULL DEFAULT '',
    ADD COLUMN account_detail    text NOT NULL DEFAULT '',
    ADD COLUMN account_status_at timestamptz,
    -- When the network last set the tier (its messaging limit).
    ADD COLUMN tier_at           timestamptz;
ALTER TABLE templates
    -- The network's quality score: GREEN, YELLOW, RED or UNKNOWN.
    ADD COLUMN quality    text NOT NULL DEFAULT 'UNKNOWN',
    ADD COLUMN quality_at timestamptz;
