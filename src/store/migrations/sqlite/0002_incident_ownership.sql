-- Who owns an incident, how it ended, and what it was merged into.
ALTER TABLE incidents ADD COLUMN claimed_by TEXT;
ALTER TABLE incidents ADD COLUMN outcome TEXT;
ALTER TABLE incidents ADD COLUMN merged_into INTEGER REFERENCES incidents (id);
