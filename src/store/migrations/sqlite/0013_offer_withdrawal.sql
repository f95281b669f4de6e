-- An offer ends with its incident: `withdrawn` is a dispatch state of its
-- own, with when it was withdrawn and when the carer's phone was told (empty:
-- the message is owed, and the incident stage's sweep sends it).
ALTER TABLE dispatches ADD COLUMN withdrawn_at INTEGER;
ALTER TABLE dispatches ADD COLUMN withdrawal_sent_at INTEGER;

-- Offers left pending on incidents that ended before this version: an offer
-- not answered on any ended incident, one accepted on an incident closed,
-- cancelled or merged (the rule the server now applies as an incident ends).
UPDATE dispatches SET state = 'withdrawn', withdrawn_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE (state = 'offered' AND incident_id IN (SELECT id FROM incidents
        WHERE state IN ('resolved', 'closed', 'cancelled', 'merged')))
   OR (state = 'accepted' AND incident_id IN (SELECT id FROM incidents
        WHERE state IN ('closed', 'cancelled', 'merged')));

-- At most one live offer per carer per incident. Where a carer holds several
-- (an operator's offer beside the automatic one), the furthest along is kept
-- (arrived, then accepted, then offered; the newest of equals).
UPDATE dispatches SET state = 'withdrawn', withdrawn_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE state IN ('offered', 'accepted', 'arrived') AND EXISTS (
    SELECT 1 FROM dispatches k
    WHERE k.incident_id = dispatches.incident_id AND k.carer_id = dispatches.carer_id
      AND k.state IN ('offered', 'accepted', 'arrived')
      AND (CASE k.state WHEN 'arrived' THEN 2 WHEN 'accepted' THEN 1 ELSE 0 END
           > CASE dispatches.state WHEN 'arrived' THEN 2 WHEN 'accepted' THEN 1 ELSE 0 END
        OR (k.state = dispatches.state AND k.id > dispatches.id)));

INSERT INTO incident_events (incident_id, at, actor, action, detail)
SELECT incident_id, withdrawn_at, 'system', 'offer_withdrawn',
       'dispatch ' || id || ' to carer ' || carer_id
       || ': withdrawn on upgrade (its incident had ended, or the carer held another offer for it)'
FROM dispatches WHERE state = 'withdrawn';
-- A phone holds no offer a day old: only the recent ones are told.
UPDATE dispatches SET withdrawal_sent_at = withdrawn_at
WHERE state = 'withdrawn' AND offered_at < CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 86400000;
UPDATE timers SET fired_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE fired_at IS NULL AND dispatch_id IN (SELECT id FROM dispatches WHERE state = 'withdrawn');
-- A carer whose only job was withdrawn is free again.
UPDATE carers SET busy = FALSE
WHERE busy = TRUE
  AND id IN (SELECT carer_id FROM dispatches WHERE state = 'withdrawn' AND accepted_at IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM dispatches d
                  WHERE d.carer_id = carers.id AND d.state IN ('accepted', 'arrived'));

CREATE UNIQUE INDEX dispatches_one_live_per_carer ON dispatches (incident_id, carer_id)
    WHERE state IN ('offered', 'accepted', 'arrived');
CREATE INDEX dispatches_withdrawal_owed ON dispatches (id)
    WHERE state = 'withdrawn' AND withdrawal_sent_at IS NULL;
