-- Sensitive values are sealed (AES-256-GCM) with data keys kept here, each
-- wrapped by the master key from the settings (see src/vault.rs).
CREATE TABLE data_keys (
    id          BIGSERIAL PRIMARY KEY,
    wrapped     BYTEA   NOT NULL,
    -- Which master key wrapped it (a hash prefix, not the key).
    master      TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    -- Set once every value was sealed under it (older keys are then deleted).
    sealed_all_at BIGINT
);

-- A key-safe code opens the resident's door for a carer who accepted.
ALTER TABLE clients ADD COLUMN key_safe TEXT NOT NULL DEFAULT '';

-- Positions are sealed into one text column; lat/lon stay NULL for new rows
-- (older rows are moved across by the server at start).
ALTER TABLE alarms ADD COLUMN position TEXT;
ALTER TABLE device_presence ADD COLUMN position TEXT;

-- A closed incident past the retention period keeps its figures (the city's
-- reports) but loses its timeline, hand-offs and notices; set when that was done.
ALTER TABLE incidents ADD COLUMN purged_at BIGINT;
