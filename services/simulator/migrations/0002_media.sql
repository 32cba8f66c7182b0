-- Files the network holds: uploaded by a business through the Cloud API (to send by id), or
-- sent by a user to a number (for the business to download).
CREATE TABLE media (
    network         text NOT NULL,
    media_id        text NOT NULL,
    -- The number it was uploaded for, or that the user sent it to.
    phone_number_id text NOT NULL,
    content_type    text NOT NULL,
    -- Hex SHA-256 of `data`.
    sha256          text NOT NULL,
    filename        text NOT NULL DEFAULT '',
    data            bytea NOT NULL,
    from_user       boolean NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (network, media_id)
);
