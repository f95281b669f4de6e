-- Lookups the alarm path makes for every incident, which read every row ever
-- written without these — cost that grows with the city's history. Found at
-- 100,000 pendants and 1,000 presses/s, where they held the database's
-- readers and its one writer for hundreds of milliseconds at a time:
-- routing counts each provider's jobs under way for every decision;
CREATE INDEX dispatches_provider_state ON dispatches (provider_id, state);
-- a family notice looks up the last position the incident's alarms reported;
CREATE INDEX alarms_incident ON alarms (incident_id, id) WHERE incident_id IS NOT NULL;
-- an incident's offers and the recovery sweep's owed routing.
CREATE INDEX dispatches_incident ON dispatches (incident_id);
CREATE INDEX incidents_unrouted ON incidents (id) WHERE routed_at IS NULL;
