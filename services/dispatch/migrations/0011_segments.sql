-- A tenant's saved contact filters (contacts/segments.rs): the finestra.v1.ContactFilter
-- protobuf, checked when saved.
CREATE TABLE segments (
    tenant_id   text NOT NULL,
    segment_id  text NOT NULL,
    name        text NOT NULL,
    filter      bytea NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, segment_id)
);
CREATE INDEX contacts_last_inbound ON contacts (tenant_id, last_inbound_at);
