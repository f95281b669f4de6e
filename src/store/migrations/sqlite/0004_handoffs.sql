-- Emergency hand-offs (120 ambulance, 110 police) with what the hospital needs.
ALTER TABLE clients ADD COLUMN allergies TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN birth_year INTEGER;

CREATE TABLE handoffs (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    service     TEXT NOT NULL CHECK (service IN ('120', '110', '119')),
    reference   TEXT NOT NULL DEFAULT '',
    operator    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    -- JSON: the client's conditions, medications, allergies, contacts, address, position.
    summary     TEXT NOT NULL,
    outcome     TEXT,
    outcome_at  INTEGER
);
CREATE INDEX handoffs_incident ON handoffs (incident_id);
