-- MQTT credentials: a password is derived from the server's key, the username
-- and the generation, so only the generation is kept. Rotating bumps it (the
-- old password stops working); revoking keeps the row so the next issue
-- cannot bring an old password back.
CREATE TABLE mqtt_credentials (
    username   TEXT    PRIMARY KEY,
    generation BIGINT  NOT NULL,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at BIGINT  NOT NULL
);
