-- Service-level figures for the city: when each offer was accepted and the
-- carer arrived, kept on the offer itself (the provider is on the same row),
-- and an index for reports that read a month of incidents.
ALTER TABLE dispatches ADD COLUMN accepted_at BIGINT;
ALTER TABLE dispatches ADD COLUMN arrived_at BIGINT;

-- Offers answered before this migration: the time is on the incident's
-- timeline, written by the same carer ('carer:<id>') with that answer.
UPDATE dispatches SET accepted_at = (
    SELECT MIN(e.at) FROM incident_events e
    WHERE e.incident_id = dispatches.incident_id AND e.action = 'carer_accepted'
      AND e.actor = 'carer:' || dispatches.carer_id
) WHERE state IN ('accepted', 'arrived', 'completed');
UPDATE dispatches SET arrived_at = (
    SELECT MIN(e.at) FROM incident_events e
    WHERE e.incident_id = dispatches.incident_id AND e.action = 'carer_arrived'
      AND e.actor = 'carer:' || dispatches.carer_id
) WHERE state IN ('arrived', 'completed');

CREATE INDEX incidents_opened ON incidents (opened_at);
