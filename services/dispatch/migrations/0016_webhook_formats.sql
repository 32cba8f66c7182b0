-- A webhook endpoint receives events in Finestra's own format (signed per Standard Webhooks,
-- docs/webhooks.md) or in the Cloud API's (as the network would post them, signed with
-- X-Hub-Signature-256), so a business's existing Cloud API handler works unchanged. A Cloud API
-- endpoint was verified with the GET handshake under its verify token when it was created.
ALTER TABLE webhook_endpoints
    ADD COLUMN format text NOT NULL DEFAULT 'finestra' CHECK (format IN ('finestra', 'cloud_api')),
    ADD COLUMN verify_token text;
