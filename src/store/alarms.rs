//! Alarm rows: the batched insert behind group commit, and the recovery queries.

use std::collections::HashMap;

use pingantong_protocol::{EventKind, Location};
use sqlx::QueryBuilder;

use super::{Db, StoreError};
use crate::vault::{Field, VaultError};

/// Batches of up to this many alarms keep their insert prepared (a
/// statement per size): the sizes a writer sees most.
const CACHED_BATCH: usize = 8;

pub use pingantong_protocol::AuthStatus;

/// One received event, ready to be stored.
#[derive(Debug, Clone)]
pub struct AlarmRecord {
    pub received_at: i64,
    pub protocol: &'static str,
    pub peer: String,
    pub device_id: String,
    pub seq: i64,
    pub kind: EventKind,
    pub device_time: Option<i64>,
    pub battery: Option<i64>,
    pub location: Option<Location>,
    pub auth: AuthStatus,
    pub raw: Vec<u8>,
    /// The decoded event as JSON, for people reading the table.
    pub decoded: String,
    /// Identifies one event across retries: a retried frame has the same key.
    pub dedup_key: String,
    /// `Some(w)`: a copy with the same key is a retry only if it arrives within
    /// `w` milliseconds of the stored one; later, it is a new event (a counter
    /// that restarted or wrapped and happened to say the same thing). `None`:
    /// the key is unique for ever (the server's own verdicts).
    pub retry_window_ms: Option<i64>,
}

/// The key a record is stored under: a windowed key carries its slot of
/// `window` milliseconds, so the unique index holds only within a slot and
/// the slot before is looked up (see [`retransmissions`]).
fn stored_key(a: &AlarmRecord) -> String {
    match a.retry_window_ms {
        Some(w) => format!("{}@{}", a.dedup_key, a.received_at.div_euclid(w)),
        None => a.dedup_key.clone(),
    }
}

/// The key a copy received within the window but in the previous slot has.
fn previous_key(a: &AlarmRecord) -> Option<String> {
    let w = a.retry_window_ms?;
    Some(format!(
        "{}@{}",
        a.dedup_key,
        a.received_at.div_euclid(w) - 1
    ))
}

/// Which records of a batch repeat an event stored less than their window
/// ago in the previous slot (`earlier`: stored key → its `received_at`), or
/// an earlier record of the same batch. Copies within one slot meet in the
/// unique index instead. Together: a retry within the window is found
/// wherever the slot edges fall, and a copy after it is a new event.
fn retransmissions(batch: &[AlarmRecord], earlier: &HashMap<String, i64>) -> Vec<bool> {
    let mut seen: HashMap<String, i64> = HashMap::new();
    batch
        .iter()
        .map(|a| {
            let within = |at: &i64| a.retry_window_ms.is_some_and(|w| a.received_at - at < w);
            let repeat = previous_key(a)
                .is_some_and(|k| earlier.get(&k).or_else(|| seen.get(&k)).is_some_and(within));
            if !repeat {
                seen.entry(stored_key(a)).or_insert(a.received_at);
            }
            repeat
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored now, with this row id.
    Stored(i64),
    /// Stored before (a retry): nothing new was written.
    Duplicate,
    /// A verified heartbeat: noted as the device's latest report, written
    /// with the others within a second (see `store::presence`), no row.
    Noted,
}

/// An alarm committed but not yet handled by the incident stage.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnprocessedAlarm {
    pub id: i64,
    pub received_at: i64,
    pub device_id: String,
    pub kind: String,
    pub auth: String,
    /// Where the device said it was.
    pub at: Option<(f64, f64)>,
}

/// A record with what is sealed of it.
pub(crate) struct Sealed<'a> {
    a: &'a AlarmRecord,
    key: String,
    raw: Vec<u8>,
    decoded: String,
    position: Option<String>,
}

/// A row of [`Db::unprocessed_alarms`] before its position is opened.
type UnprocessedRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<f64>,
    Option<f64>,
);

/// The alarms' statements, written once for both backends (see
/// [`super::tx`]).
pub(crate) trait AlarmSql {
    /// Insert sealed records in one statement; the id and stored key of
    /// each one new (see [`Db::insert_alarms`]).
    async fn insert_alarms(
        &mut self,
        records: &[Sealed<'_>],
        rules: &pingantong_domain::rules::Rules,
    ) -> Result<Vec<(i64, String)>, sqlx::Error>;
    /// Which of these stored keys are stored, with when each was received.
    async fn stored_before(&mut self, keys: &[String]) -> Result<Vec<(String, i64)>, sqlx::Error>;
    /// Keep bytes that could not be parsed (sealed), with the reason.
    async fn insert_rejected_frame(
        &mut self,
        protocol: &str,
        peer: &str,
        reason: &str,
        raw: &[u8],
        now: i64,
    ) -> Result<(), sqlx::Error>;
    /// See [`Db::unprocessed_alarms`].
    async fn unprocessed_alarms(
        &mut self,
        after_id: i64,
        limit: i64,
        kinds: Option<&[String]>,
    ) -> Result<Vec<UnprocessedRow>, sqlx::Error>;
    /// How many alarms with this kind are stored.
    async fn count_alarms(&mut self, kind: Option<EventKind>) -> Result<i64, sqlx::Error>;
    /// How many events with this device and sequence number are stored.
    async fn count_copies(&mut self, device_id: &str, seq: i64) -> Result<i64, sqlx::Error>;
    async fn count_rejected_frames(&mut self) -> Result<i64, sqlx::Error>;
    /// (auth, processed_at, incident id) of every stored copy of (device, seq).
    async fn alarm_states(
        &mut self,
        device_id: &str,
        seq: i64,
    ) -> Result<Vec<(String, Option<i64>, Option<i64>)>, sqlx::Error>;
    /// How many events each peer delivered.
    async fn alarms_by_peer(&mut self) -> Result<Vec<(String, i64)>, sqlx::Error>;
}

impl<C> AlarmSql for C
where
    C: sqlx::Connection,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Decode<'q, C::Database>,
    Option<f64>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> &'q [u8]: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn insert_alarms(
        &mut self,
        records: &[Sealed<'_>],
        rules: &pingantong_domain::rules::Rules,
    ) -> Result<Vec<(i64, String)>, sqlx::Error> {
        let mut qb = QueryBuilder::new(
            "INSERT INTO alarms (received_at, protocol, peer, device_id, seq, kind, \
             device_time, battery, position, auth, raw, decoded, dedup_key, \
             processed_at, client_id) ",
        );
        qb.push_values(records, |mut b, r| {
            let a = r.a;
            b.push_bind(a.received_at)
                .push_bind(a.protocol)
                .push_bind(a.peer.clone())
                .push_bind(a.device_id.clone())
                .push_bind(a.seq)
                .push_bind(a.kind.name())
                .push_bind(a.device_time)
                .push_bind(a.battery)
                .push_bind(r.position.clone())
                .push_bind(a.auth.as_str())
                .push_bind(r.raw.clone())
                .push_bind(r.decoded.clone())
                .push_bind(r.key.clone())
                .push_bind((!rules.needs_incident_stage(a.kind)).then_some(a.received_at))
                // Whose the event is: the device's holder as it is committed
                // (a reissued device's earlier events stay its earlier holder's).
                .push("(SELECT client_id FROM devices WHERE id = ")
                .push_bind_unseparated(a.device_id.clone())
                .push_unseparated(")");
        });
        qb.push(" ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key");
        // A single statement is its own transaction: one commit, one fsync.
        // The usual batches' statements stay prepared; a large batch's
        // is one of a kind and would only push them out of the cache.
        qb.build_query_as()
            .persistent(records.len() <= CACHED_BATCH)
            .fetch_all(self)
            .await
    }

    async fn stored_before(&mut self, keys: &[String]) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let mut qb =
            QueryBuilder::new("SELECT dedup_key, received_at FROM alarms WHERE dedup_key IN (");
        let mut list = qb.separated(", ");
        for k in keys {
            list.push_bind(k.clone());
        }
        list.push_unseparated(")");
        qb.build_query_as()
            .persistent(keys.len() <= CACHED_BATCH)
            .fetch_all(self)
            .await
    }

    async fn insert_rejected_frame(
        &mut self,
        protocol: &str,
        peer: &str,
        reason: &str,
        raw: &[u8],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO rejected_frames (received_at, protocol, peer, reason, raw) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now)
        .bind(protocol)
        .bind(peer)
        .bind(reason)
        .bind(raw)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn unprocessed_alarms(
        &mut self,
        after_id: i64,
        limit: i64,
        kinds: Option<&[String]>,
    ) -> Result<Vec<UnprocessedRow>, sqlx::Error> {
        let mut qb = QueryBuilder::new(
            "SELECT id, received_at, device_id, kind, auth, position, lat, lon FROM alarms \
             WHERE processed_at IS NULL AND id > ",
        );
        qb.push_bind(after_id);
        if let Some(kinds) = kinds {
            qb.push(" AND kind IN (");
            let mut list = qb.separated(", ");
            for k in kinds {
                list.push_bind(k.clone());
            }
            list.push_unseparated(")");
        }
        qb.push(" ORDER BY id LIMIT ");
        qb.push_bind(limit);
        qb.build_query_as().fetch_all(self).await
    }

    async fn count_alarms(&mut self, kind: Option<EventKind>) -> Result<i64, sqlx::Error> {
        let n: (i64,) = match kind {
            Some(k) => {
                sqlx::query_as("SELECT COUNT(*) FROM alarms WHERE kind = $1")
                    .bind(k.name())
                    .fetch_one(self)
                    .await?
            }
            None => {
                sqlx::query_as("SELECT COUNT(*) FROM alarms")
                    .fetch_one(self)
                    .await?
            }
        };
        Ok(n.0)
    }

    async fn count_copies(&mut self, device_id: &str, seq: i64) -> Result<i64, sqlx::Error> {
        let n: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM alarms WHERE device_id = $1 AND seq = $2")
                .bind(device_id)
                .bind(seq)
                .fetch_one(self)
                .await?;
        Ok(n.0)
    }

    async fn count_rejected_frames(&mut self) -> Result<i64, sqlx::Error> {
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rejected_frames")
            .fetch_one(self)
            .await?;
        Ok(n.0)
    }

    async fn alarm_states(
        &mut self,
        device_id: &str,
        seq: i64,
    ) -> Result<Vec<(String, Option<i64>, Option<i64>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT auth, processed_at, incident_id FROM alarms \
             WHERE device_id = $1 AND seq = $2 ORDER BY id",
        )
        .bind(device_id)
        .bind(seq)
        .fetch_all(self)
        .await
    }

    async fn alarms_by_peer(&mut self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT peer, COUNT(*) FROM alarms GROUP BY peer ORDER BY peer")
            .fetch_all(self)
            .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool; the inserts, and the read that must
// see every earlier batch committed, to the write pool.
impl Db {
    /// Insert a batch in one transaction (one fsync). Returns, per record and in
    /// order, whether it was new or a duplicate of an earlier commit.
    /// Events the rules give no work are complete once stored (`processed_at` set).
    pub async fn insert_alarms(
        &self,
        batch: &[AlarmRecord],
        rules: &pingantong_domain::rules::Rules,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let earlier = self.stored_before(batch).await?;
        let repeats = retransmissions(batch, &earlier);
        // Frames and positions are sealed before they reach the database.
        let vault = self.vault();
        let fresh_records = batch
            .iter()
            .zip(&repeats)
            .filter(|(_, repeat)| !**repeat)
            .map(|(a, _)| {
                Ok(Sealed {
                    a,
                    key: stored_key(a),
                    raw: vault.seal_bytes(Field::Frame, &a.raw)?,
                    decoded: vault.seal_text(Field::Decoded, &a.decoded)?,
                    position: vault.seal_position(
                        a.location
                            .map(|l| (l.lat, l.lon, l.accuracy_m.map(i64::from))),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, VaultError>>()?;
        let rows: Vec<(i64, String)> = if fresh_records.is_empty() {
            Vec::new()
        } else {
            match self {
                Db::Sqlite { write, .. } => {
                    let mut c = write.acquire().await?;
                    c.insert_alarms(&fresh_records, rules).await
                }
                Db::Postgres(p, _) => {
                    let mut c = p.acquire().await?;
                    c.insert_alarms(&fresh_records, rules).await
                }
            }?
        };
        // A key inserted now is returned once; the first record carrying it is
        // the stored one, any later copy in the same batch is a duplicate.
        let mut fresh: HashMap<String, i64> = rows.into_iter().map(|(id, k)| (k, id)).collect();
        let outcomes = batch
            .iter()
            .zip(&repeats)
            .map(
                |(a, repeat)| match (*repeat, fresh.remove(&stored_key(a))) {
                    (false, Some(id)) => CommitOutcome::Stored(id),
                    _ => CommitOutcome::Duplicate,
                },
            )
            .collect();
        Ok(outcomes)
    }

    /// The previous slot's keys of a batch's windowed records that are stored,
    /// with when each was received. Read on the write connection, after every
    /// earlier batch of this server committed.
    async fn stored_before(
        &self,
        batch: &[AlarmRecord],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let keys: Vec<String> = batch.iter().filter_map(previous_key).collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = match self {
            Db::Sqlite { write, .. } => write.acquire().await?.stored_before(&keys).await,
            Db::Postgres(p, _) => p.acquire().await?.stored_before(&keys).await,
        }?;
        Ok(rows.into_iter().collect())
    }

    /// Keep bytes that could not be parsed, with the reason.
    pub async fn insert_rejected_frame(
        &self,
        protocol: &str,
        peer: &str,
        reason: &str,
        raw: &[u8],
    ) -> Result<(), StoreError> {
        let now = super::now_ms();
        let raw = self.vault().seal_bytes(Field::Rejected, raw)?;
        Ok(match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.insert_rejected_frame(protocol, peer, reason, &raw, now)
                    .await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.insert_rejected_frame(protocol, peer, reason, &raw, now)
                    .await
            }
        }?)
    }

    /// Alarms committed but not handled by the incident stage, oldest first.
    /// Only of these kinds, when given: the life-safety ones are found in a
    /// backlog of technical events without reading the backlog out.
    pub async fn unprocessed_alarms(
        &self,
        after_id: i64,
        limit: i64,
        kinds: Option<&[String]>,
    ) -> Result<Vec<UnprocessedAlarm>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => {
                let mut c = read.acquire().await?;
                c.unprocessed_alarms(after_id, limit, kinds).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.unprocessed_alarms(after_id, limit, kinds).await
            }
        }?;
        rows.into_iter()
            .map(
                |(id, received_at, device_id, kind, auth, position, lat, lon)| {
                    Ok(UnprocessedAlarm {
                        id,
                        received_at,
                        device_id,
                        kind,
                        auth,
                        // Sealed, or plain from before encryption (until re-sealed).
                        at: self.position(position.as_deref(), lat, lon)?,
                    })
                },
            )
            .collect()
    }

    /// How many alarms with this kind are stored (used by reports and tests).
    pub async fn count_alarms(&self, kind: Option<EventKind>) -> Result<i64, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.count_alarms(kind).await,
            Db::Postgres(p, _) => p.acquire().await?.count_alarms(kind).await,
        }?)
    }

    /// Whether an event with this device and sequence number is stored.
    pub async fn alarm_stored(&self, device_id: &str, seq: i64) -> Result<bool, StoreError> {
        let n = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.count_copies(device_id, seq).await,
            Db::Postgres(p, _) => p.acquire().await?.count_copies(device_id, seq).await,
        }?;
        Ok(n > 0)
    }

    pub async fn count_rejected_frames(&self) -> Result<i64, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.count_rejected_frames().await,
            Db::Postgres(p, _) => p.acquire().await?.count_rejected_frames().await,
        }?)
    }

    /// (auth, processed, incident id) of every stored copy of (device, seq).
    pub async fn alarm_states(
        &self,
        device_id: &str,
        seq: i64,
    ) -> Result<Vec<(String, bool, Option<i64>)>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.alarm_states(device_id, seq).await,
            Db::Postgres(p, _) => p.acquire().await?.alarm_states(device_id, seq).await,
        }?;
        Ok(rows
            .into_iter()
            .map(|(a, p, i)| (a, p.is_some(), i))
            .collect())
    }

    /// How many events each peer delivered (which server instance took an MQTT event).
    pub async fn alarms_by_peer(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.alarms_by_peer().await,
            Db::Postgres(p, _) => p.acquire().await?.alarms_by_peer().await,
        }?)
    }
}
