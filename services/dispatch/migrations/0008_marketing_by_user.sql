-- The frequency cap's rebuild reads one user's recent marketing templates (api.rs).
CREATE INDEX messages_marketing_by_user ON messages (tenant_id, recipient, accepted_at)
    WHERE category = 'MARKETING';
