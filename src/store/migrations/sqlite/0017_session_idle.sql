-- Sessions also end after a time without use: when the console was last
-- used (a request, or an open live feed) and how long it may rest.
-- NULL idle_ms: a session opened before idle limits (absolute limit only).
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;
ALTER TABLE sessions ADD COLUMN idle_ms BIGINT;
