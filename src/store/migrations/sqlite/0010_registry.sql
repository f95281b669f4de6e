-- The registry kept over HTTP: a client's number in the city's (or a
-- provider's) own register, so spreadsheets and device rows can name them,
-- and contacts taken off a client's list.

-- Unique where given; NULL for clients entered by hand.
ALTER TABLE clients ADD COLUMN external_ref TEXT;
CREATE UNIQUE INDEX clients_external_ref ON clients (external_ref);
-- The registry lists clients by district and street.
CREATE INDEX clients_area ON clients (district, street);

-- A contact taken off the list after notices were sent to them keeps its row
-- (the notices name it), with no channel and a position below zero (-id).
ALTER TABLE contacts ADD COLUMN removed_at INTEGER;
