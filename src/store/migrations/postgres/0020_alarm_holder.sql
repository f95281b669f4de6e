-- Whose an event was: the resident who held the device when it was committed.
-- A device passes from one resident to another (a pendant reissued); their
-- data export must hold the events of their time with it, not the one
-- before. Rows before this column: the device's holder now, the best known.
ALTER TABLE alarms ADD COLUMN client_id BIGINT;
UPDATE alarms SET client_id = (SELECT d.client_id FROM devices d WHERE d.id = alarms.device_id);
CREATE INDEX alarms_client ON alarms (client_id, id) WHERE client_id IS NOT NULL;
