-- Conversations (contacts/conversations.rs): a user's messages to one of the tenant's numbers
-- are found by their pair (noted on inbound events as they are recorded; NULL on other events
-- and on events recorded before this migration), the tenant's by recipient.
ALTER TABLE tenant_events ADD COLUMN phone_number_id text, ADD COLUMN user_key text;
CREATE INDEX tenant_events_inbound_by_pair
    ON tenant_events (tenant_id, phone_number_id, user_key, occurred_at)
    WHERE kind = 'inbound_message';
CREATE INDEX messages_by_pair ON messages (tenant_id, phone_number_id, recipient, accepted_at);

-- One per (number, user) once the user wrote: its newest message, for ListConversations.
CREATE TABLE conversations (
    tenant_id        text NOT NULL,
    phone_number_id  text NOT NULL,
    user_key         text COLLATE "C" NOT NULL,
    last_inbound_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, phone_number_id, user_key)
);
CREATE INDEX conversations_recent
    ON conversations (tenant_id, phone_number_id, last_inbound_at DESC, user_key);
