-- Deadlines that must survive a restart: an incident not claimed in time, an
-- offer not answered in time. Fired once each; a reminder is a new row.
CREATE TABLE timers (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    dispatch_id INTEGER REFERENCES dispatches (id),
    kind        TEXT NOT NULL CHECK (kind IN ('claim', 'offer')),
    round       INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    fired_at    INTEGER
);
CREATE INDEX timers_pending ON timers (due_at) WHERE fired_at IS NULL;
