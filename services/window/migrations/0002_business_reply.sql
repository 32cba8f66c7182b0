-- A business reply that started a free entry point (dispatch's outbound event with
-- starts_fep) is part of the pair's history too.
ALTER TABLE window_events DROP CONSTRAINT window_events_kind_check;
ALTER TABLE window_events ADD CONSTRAINT window_events_kind_check
    CHECK (kind IN ('user_message', 'marketing_preference', 'block', 'business_reply'));
