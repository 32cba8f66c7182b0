-- WindowClosingSoon / WindowClosed are announced once per csw_until: the value each notice was
-- last sent for. The index serves the sweep that finds windows about to close or just closed.
ALTER TABLE pair_state
    ADD COLUMN closing_noticed bigint,
    ADD COLUMN closed_noticed bigint;
CREATE INDEX pair_state_csw_until ON pair_state (csw_until);
