-- Every step on an incident's timeline is sealed into the audit chain: an
-- audit entry (`timeline_sealed`) holds the hash of the steps it seals, and
-- each step names that entry. NULL: not sealed yet (a few seconds old).
ALTER TABLE incident_events ADD COLUMN sealed_by BIGINT;
CREATE INDEX incident_events_unsealed ON incident_events (id) WHERE sealed_by IS NULL;
CREATE INDEX incident_events_sealed_by ON incident_events (sealed_by);
