-- Wellbeing checks: residents whose devices have not been used for a while
-- are called; each call and its outcome is kept.

-- Last press, cancel or periodic test of the device: someone used it.
ALTER TABLE devices ADD COLUMN used_at INTEGER;

CREATE TABLE wellbeing_checks (
    id        INTEGER PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients (id),
    at        INTEGER NOT NULL,
    operator  TEXT NOT NULL,
    outcome   TEXT NOT NULL CHECK (outcome IN ('well', 'needs_help', 'no_answer', 'visited', 'away')),
    note      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX wellbeing_checks_client ON wellbeing_checks (client_id, at);
