-- Log-in throttling per account: failed log-ins since the last good one, and
-- until when the account refuses log-ins after too many (an admin can unlock).
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until INTEGER;
