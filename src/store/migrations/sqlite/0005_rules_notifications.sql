-- Routing rules and the family / keyholder notification cascade.

-- A rule may advise the operator to hand the incident to 120 or 110.
ALTER TABLE incidents ADD COLUMN advised_service TEXT;

-- How a contact hears of an alarm: an app on MQTT, a webhook, or e-mail.
-- NULL: the operator telephones them.
ALTER TABLE contacts ADD COLUMN notify_channel TEXT CHECK (notify_channel IN ('mqtt', 'webhook', 'email'));
ALTER TABLE contacts ADD COLUMN notify_address TEXT NOT NULL DEFAULT '';

-- One row per incident and contact, in the client's order. `waiting` rows start
-- when everyone before them has been tried (cascade); `next_attempt_at` is
-- also the lease of an attempt in flight, so a crash mid-send retries.
CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY,
    incident_id     INTEGER NOT NULL REFERENCES incidents (id),
    contact_id      INTEGER NOT NULL REFERENCES contacts (id),
    position        INTEGER NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('mqtt', 'webhook', 'email')),
    address         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('waiting', 'pending', 'delivered', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (incident_id, contact_id)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_incident ON notifications (incident_id, position);
