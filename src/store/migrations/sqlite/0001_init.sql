-- Ping An Tong schema, SQLite flavour. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE clients (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL,
    address          TEXT    NOT NULL,
    district         TEXT    NOT NULL,
    street           TEXT    NOT NULL,
    lat              REAL,
    lon              REAL,
    language         TEXT    NOT NULL DEFAULT 'zh-CN',
    medical_notes    TEXT    NOT NULL DEFAULT '',
    medications      TEXT    NOT NULL DEFAULT '',
    subsidy_category TEXT CHECK (subsidy_category IN ('destitute', 'advanced_age', 'living_alone', 'special_contribution')),
    updated_at       INTEGER NOT NULL
);
CREATE INDEX clients_updated ON clients (updated_at);

CREATE TABLE contacts (
    id         INTEGER PRIMARY KEY,
    client_id  INTEGER NOT NULL REFERENCES clients (id),
    position   INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    relation   TEXT    NOT NULL,
    phone      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (client_id, position)
);
CREATE INDEX contacts_updated ON contacts (updated_at);

CREATE TABLE devices (
    id         TEXT    PRIMARY KEY,
    protocol   TEXT    NOT NULL,
    secret     BLOB    NOT NULL,
    client_id  INTEGER REFERENCES clients (id),
    retired    INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
CREATE INDEX devices_updated ON devices (updated_at);
CREATE INDEX devices_client ON devices (client_id);

CREATE TABLE providers (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    service_types TEXT    NOT NULL DEFAULT 'home_visit',
    capacity      INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL
);

-- A provider is contracted for a whole district (street NULL) or for single streets.
CREATE TABLE provider_coverage (
    provider_id INTEGER NOT NULL REFERENCES providers (id),
    district    TEXT    NOT NULL,
    street      TEXT,
    rank        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX provider_coverage_area ON provider_coverage (district, street);

CREATE TABLE carers (
    id          INTEGER PRIMARY KEY,
    provider_id INTEGER NOT NULL REFERENCES providers (id),
    name        TEXT    NOT NULL,
    phone       TEXT    NOT NULL DEFAULT '',
    lat         REAL    NOT NULL,
    lon         REAL    NOT NULL,
    on_duty     INTEGER NOT NULL DEFAULT 0,
    busy        INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX carers_provider ON carers (provider_id, on_duty);

-- Every event any device sent, verified or not, exactly as received and as decoded.
CREATE TABLE alarms (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL,
    protocol     TEXT    NOT NULL,
    peer         TEXT    NOT NULL,
    device_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    device_time  INTEGER,
    battery      INTEGER,
    lat          REAL,
    lon          REAL,
    accuracy_m   INTEGER,
    auth         TEXT    NOT NULL CHECK (auth IN ('verified', 'bad_tag', 'unknown_device')),
    raw          BLOB    NOT NULL,
    decoded      TEXT    NOT NULL,
    dedup_key    TEXT    NOT NULL UNIQUE,
    processed_at INTEGER,
    incident_id  INTEGER
);
CREATE INDEX alarms_device ON alarms (device_id, id);
CREATE INDEX alarms_unprocessed ON alarms (id) WHERE processed_at IS NULL;

-- Bytes that could not be parsed at all: kept for forensics, never silently dropped.
CREATE TABLE rejected_frames (
    id          INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    protocol    TEXT    NOT NULL,
    peer        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    raw         BLOB    NOT NULL
);

CREATE TABLE incidents (
    id               INTEGER PRIMARY KEY,
    opened_at        INTEGER NOT NULL,
    opening_alarm_id INTEGER NOT NULL UNIQUE REFERENCES alarms (id),
    fold_key         TEXT    NOT NULL,
    client_id        INTEGER REFERENCES clients (id),
    device_id        TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    lane             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    verified         INTEGER NOT NULL,
    press_count      INTEGER NOT NULL DEFAULT 1,
    last_press_at    INTEGER NOT NULL,
    cancel_requested_at INTEGER,
    -- Set once routing ran (an offer was made, or none was possible); NULL means it is owed.
    routed_at        INTEGER,
    closed_at        INTEGER,
    updated_at       INTEGER NOT NULL
);
-- One open incident per person (or per unknown device): repeated presses fold into it.
CREATE UNIQUE INDEX incidents_one_open ON incidents (fold_key)
    WHERE state NOT IN ('resolved', 'closed', 'cancelled', 'merged');
CREATE INDEX incidents_state ON incidents (state, opened_at);

CREATE TABLE incident_events (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    from_state  TEXT,
    to_state    TEXT,
    detail      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);

CREATE TABLE dispatches (
    id           INTEGER PRIMARY KEY,
    incident_id  INTEGER NOT NULL REFERENCES incidents (id),
    carer_id     INTEGER NOT NULL REFERENCES carers (id),
    provider_id  INTEGER NOT NULL REFERENCES providers (id),
    distance_m   REAL,
    fallback     INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL,
    offered_at   INTEGER NOT NULL,
    published_at INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX dispatches_unpublished ON dispatches (id) WHERE published_at IS NULL;

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    detail    TEXT    NOT NULL DEFAULT '',
    prev_hash BLOB,
    hash      BLOB    NOT NULL
);
