-- The servers sharing this database. Each holds a lease on its instance id,
-- renewed every few seconds: past `lease_until` (and after a clean stop,
-- `stopped_at`) it is taken for gone, and its share of the work passes to
-- the others. A second server started with a live instance id is refused:
-- two processes answering as one would split a device's reports and an
-- MQTT session between them.
CREATE TABLE servers (
    instance_id  TEXT    PRIMARY KEY,
    -- This run of the server (random per start): a restart takes its own
    -- instance id back at once, a second process cannot.
    boot_id      TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    -- Where it runs: a restart on the same host finds its predecessor's
    -- process gone and takes the id at once.
    host         TEXT    NOT NULL,
    pid          INTEGER  NOT NULL,
    started_at   INTEGER  NOT NULL,
    renewed_at   INTEGER  NOT NULL,
    lease_until  INTEGER  NOT NULL,
    stopped_at   INTEGER
);

-- Reports heard by any server since a moment: each server follows the
-- devices the others hear, so a server's death leaves none unwatched.
CREATE INDEX device_presence_heard ON device_presence (heard_at);

-- Offers and withdrawals are handed to the broker by one server: the one
-- that made the offer holds it for a few seconds while it publishes; a
-- sweep takes an owed one the same way, so two servers' sweeps never both
-- send it, and one that dies mid-publish leaves it to the next sweep.
ALTER TABLE dispatches ADD COLUMN offer_lease_until INTEGER;
ALTER TABLE dispatches ADD COLUMN withdrawal_lease_until INTEGER;
