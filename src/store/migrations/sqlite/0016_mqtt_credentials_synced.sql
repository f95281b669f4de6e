-- What an external broker (Mosquitto's dynamic security) was last told of
-- each credential: the server pushes a change once, not at every start.
ALTER TABLE mqtt_credentials ADD COLUMN synced_generation BIGINT;
ALTER TABLE mqtt_credentials ADD COLUMN synced_revoked BOOLEAN;
