-- Each device's latest report: when it was last heard, its battery, its
-- position. Heartbeats ("still here") update this row instead of adding one
-- of their own to alarms: a city's fleet sends thousands a second, and as
-- rows they would take the database's writer from the alarms. Written at
-- most a second after the report; alarms still have their own rows.
CREATE TABLE device_presence (
    device_id   TEXT    PRIMARY KEY,
    protocol    TEXT    NOT NULL,
    heard_at    INTEGER NOT NULL,
    battery     INTEGER,
    lat         REAL,
    lon         REAL,
    accuracy_m  INTEGER
);

-- What the alarms already say about the devices heard from so far.
INSERT INTO device_presence (device_id, protocol, heard_at, battery, lat, lon, accuracy_m)
SELECT a.device_id, a.protocol, a.received_at,
    (SELECT b.battery FROM alarms b WHERE b.device_id = a.device_id AND b.auth = 'verified'
        AND b.battery IS NOT NULL ORDER BY b.id DESC LIMIT 1),
    g.lat, g.lon, g.accuracy_m
FROM alarms a
LEFT JOIN alarms g ON g.id = (SELECT MAX(x.id) FROM alarms x WHERE x.device_id = a.device_id
    AND x.auth = 'verified' AND x.lat IS NOT NULL)
WHERE a.id IN (SELECT MAX(id) FROM alarms WHERE auth = 'verified'
    AND kind NOT IN ('offline', 'back_online', 'missed_test') GROUP BY device_id);
