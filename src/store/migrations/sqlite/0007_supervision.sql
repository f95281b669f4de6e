-- Device supervision: which devices are watched, their own heartbeat interval,
-- and clients away from home (hospital, travel) whose devices are not chased.

-- First time the device was heard from: from then on a silence is an alarm.
ALTER TABLE devices ADD COLUMN heard_at INTEGER;
-- Expected interval between two reports; NULL: the protocol's default.
ALTER TABLE devices ADD COLUMN heartbeat_secs INTEGER;
-- Until then the client's devices may be silent without an offline alarm.
ALTER TABLE clients ADD COLUMN away_until INTEGER;
