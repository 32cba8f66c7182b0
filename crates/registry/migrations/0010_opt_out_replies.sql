-- What a tenant answers, inside the window the user's message opened, when a user stops or
-- resumes marketing with a keyword (docs/rules.md §3); empty: no answer.
ALTER TABLE tenants
    ADD COLUMN stop_reply  text NOT NULL DEFAULT '' CHECK (char_length(stop_reply) <= 1024),
    ADD COLUMN start_reply text NOT NULL DEFAULT '' CHECK (char_length(start_reply) <= 1024);
