-- A review recorded but not yet told to Finestra (its webhook failed): the reviewer tells it
-- again until it is delivered.
ALTER TABLE templates ADD COLUMN untold boolean NOT NULL DEFAULT false;
CREATE INDEX templates_untold ON templates (network) WHERE untold;
