-- A tenant's opt-out keywords (docs/rules.md §3): a user message that is only one of
-- `stop_keywords` stops marketing, only one of `start_keywords` resumes it. An empty list
-- takes the platform's (STOP, ANNULLA, BASTA, DISISCRIVIMI, UNSUBSCRIBE; START).
ALTER TABLE tenants
    ADD COLUMN stop_keywords  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN start_keywords text[] NOT NULL DEFAULT '{}';
