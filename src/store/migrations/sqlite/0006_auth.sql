-- Operator console accounts and their log-in sessions.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    -- Argon2 PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash): the parameters travel with the hash.
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL
                  CHECK (role IN ('operator', 'supervisor', 'carer', 'regulator', 'admin')),
    -- A carer's account is that carer; provider staff see their provider's work.
    carer_id      INTEGER REFERENCES carers (id),
    provider_id   INTEGER REFERENCES providers (id),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    -- SHA-256 of the bearer token: a copy of this table lets no one log in.
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX sessions_user ON sessions (user_id);
