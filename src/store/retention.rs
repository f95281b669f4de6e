//! Retention: what is kept no longer than its purpose needs (PIPL art. 19).
//!
//! Past their periods, frames as received are emptied (the decoded kind,
//! device, sequence and times stay: they are what the reports count), the
//! positions devices reported are removed, and closed incidents lose their
//! timeline, hand-offs and family notices — the incident row stays with its
//! times and outcome, so the city's figures for old months do not change.
//!
//! The timeline is sealed into the audit chain (`store::seals`); deleting
//! sealed steps would break their seals. So a purge first checks each seal
//! it touches still holds, deletes the steps, seals the steps those seals
//! kept that remain, and says so in one `timeline_purged` entry naming the
//! seals it retires: `audit verify` checks the survivors against it and no
//! longer the retired seals. All of it in one transaction.

use super::audit::AuditSql;
use super::audit::sealed_part;
use super::backend::Affected;
use super::seals::{StepRow, seal_detail};
use super::{AuditEntry, Db, StoreError};
use sqlx::SqlStr;

/// Days to keep each kind of record; 0 keeps it for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub frames_days: u32,
    pub positions_days: u32,
    pub closed_incidents_days: u32,
}

const DAY_MS: i64 = 86_400_000;
/// Rows per transaction.
const BATCH: i64 = 500;

/// The cut-off times (ms) of a policy at `now`: records older are purged.
/// Pure, so the policy's arithmetic is tested apart from the database.
pub fn cutoffs(p: &RetentionPolicy, now: i64) -> Cutoffs {
    let before = |days: u32| (days > 0).then(|| now - i64::from(days) * DAY_MS);
    Cutoffs {
        frames: before(p.frames_days),
        positions: before(p.positions_days),
        closed_incidents: before(p.closed_incidents_days),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub frames: Option<i64>,
    pub positions: Option<i64>,
    pub closed_incidents: Option<i64>,
}

/// What one purge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Alarms whose frame was emptied.
    pub frames: u64,
    /// Frames that could not be parsed, deleted.
    pub rejected_frames: u64,
    /// Alarms and devices' last reports whose position was removed.
    pub positions: u64,
    pub incidents: u64,
    pub steps: u64,
}

/// Where a purge of the alarms table stopped (alarm ids grow with time, so
/// the next purge starts there rather than reading every row again).
#[derive(Debug, Default, Clone, Copy)]
pub struct PurgeCursor {
    frames: i64,
    positions: i64,
}

/// The purges' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait RetentionSql {
    /// Delete the frames that could not be parsed received before `before`.
    async fn delete_rejected_frames(&mut self, before: i64) -> Result<u64, sqlx::Error>;
    /// Remove the positions of devices' last reports heard before `before`.
    async fn clear_presence_positions(&mut self, before: i64) -> Result<u64, sqlx::Error>;
    /// A batch of alarms after id `after` (id, received_at, whether `select`
    /// finds it still holds something).
    async fn alarm_purge_rows(
        &mut self,
        select: &str,
        after: i64,
    ) -> Result<Vec<(i64, i64, i32)>, sqlx::Error>;
    /// Run the purge `sql` on its alarms, binding `empty` if given.
    async fn purge_alarm_ids(
        &mut self,
        sql: &str,
        empty: Option<Vec<u8>>,
    ) -> Result<u64, sqlx::Error>;
    /// One batch of closed incidents found by `select` before `before`
    /// purged, in a transaction begun with `begin` ([`Db::begin_write`], as a
    /// [`SqlStr`]: as a `&'static str` the compiler fails to prove the
    /// callers' futures `Send`); `lock_purges`: one purge at a time
    /// (PostgreSQL). Returns (incidents, steps).
    async fn purge_closed_batch(
        &mut self,
        begin: &'static str,
        lock_purges: bool,
        select: &str,
        before: i64,
        now: i64,
    ) -> Result<(u64, u64), StoreError>;
}

impl<C> RetentionSql for C
where
    C: sqlx::Connection + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> i32: sqlx::Decode<'q, C::Database>,
    i32: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn delete_rejected_frames(&mut self, before: i64) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM rejected_frames WHERE received_at < $1")
                .bind(before)
                .execute(self)
                .await?
                .affected(),
        )
    }

    async fn clear_presence_positions(&mut self, before: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE device_presence SET position = NULL, lat = NULL, lon = NULL, \
             accuracy_m = NULL WHERE heard_at < $1 AND (position IS NOT NULL OR lat IS NOT NULL)",
        )
        .bind(before)
        .execute(self)
        .await?
        .affected())
    }

    async fn alarm_purge_rows(
        &mut self,
        select: &str,
        after: i64,
    ) -> Result<Vec<(i64, i64, i32)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(after)
            .fetch_all(self)
            .await
    }

    async fn purge_alarm_ids(
        &mut self,
        sql: &str,
        empty: Option<Vec<u8>>,
    ) -> Result<u64, sqlx::Error> {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql));
        let q = match empty {
            Some(e) => q.bind(e),
            None => q,
        };
        Ok(q.execute(self).await?.affected())
    }

    async fn purge_closed_batch(
        &mut self,
        begin: &'static str,
        lock_purges: bool,
        select: &str,
        before: i64,
        now: i64,
    ) -> Result<(u64, u64), StoreError> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        if lock_purges {
            // Two servers' purges may touch steps under one seal: one at
            // a time (SQLite's write transaction is already alone).
            sqlx::query("SELECT pg_advisory_xact_lock(7311001)")
                .execute(&mut *tx)
                .await?;
        }
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(select))
            .bind(before)
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        // The seals that cover any step to go, each checked intact first:
        // a purge never hides an edit made before it.
        let seals: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, detail FROM audit_log WHERE id IN (SELECT DISTINCT sealed_by \
             FROM incident_events WHERE incident_id IN ({list}) AND sealed_by IS NOT NULL) \
             ORDER BY id"
        )))
        .fetch_all(&mut *tx)
        .await?;
        for (seal, detail) in &seals {
            let steps: Vec<StepRow> = sqlx::query_as(
                "SELECT id, incident_id, at, actor, action, from_state, to_state, detail \
                 FROM incident_events WHERE sealed_by = $1 ORDER BY id",
            )
            .bind(seal)
            .fetch_all(&mut *tx)
            .await?;
            if seal_detail(&steps) != sealed_part(detail) {
                return Err(StoreError::CommitFailed(format!(
                    "retention: timeline seal {seal} does not hold; run `audit verify` \
                     (nothing was purged)"
                )));
            }
        }
        let steps = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM incident_events WHERE incident_id IN ({list})"
        )))
        .execute(&mut *tx)
        .await?
        .affected();
        for table in ["handoffs", "notifications"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE incident_id IN ({list})"
            )))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE incidents SET purged_at = $1 WHERE id IN ({list})"
        )))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if !seals.is_empty() {
            let retired = seals
                .iter()
                .map(|s| s.0.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let survivors: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, incident_id, at, actor, action, from_state, to_state, detail \
                 FROM incident_events WHERE sealed_by IN ({retired}) ORDER BY id"
            )))
            .fetch_all(&mut *tx)
            .await?;
            let detail = format!(
                "retires {retired}; purged {steps} steps of {} incidents; {}",
                ids.len(),
                seal_detail(&survivors)
            );
            let entry = AuditEntry {
                actor: "system",
                action: "timeline_purged",
                subject: "timeline",
                detail: &detail,
            };
            let purge: i64 = tx.append_audit(&entry, now).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE incident_events SET sealed_by = $1 WHERE sealed_by IN ({retired})"
            )))
            .bind(purge)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((ids.len() as u64, steps))
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Purge what `policy` no longer keeps, at `now`. Safe to run on several
    /// servers at once; each batch commits on its own.
    pub async fn purge_expired(
        &self,
        policy: &RetentionPolicy,
        now: i64,
        cursor: &mut PurgeCursor,
    ) -> Result<PurgeReport, StoreError> {
        let c = cutoffs(policy, now);
        let mut report = PurgeReport::default();
        if let Some(before) = c.frames {
            report.frames = self
                .purge_alarm_columns(
                    before,
                    &mut cursor.frames,
                    "length(raw) > 0 OR decoded <> '{}'",
                    "raw = $1, decoded = '{}'",
                )
                .await?;
            report.rejected_frames = match self {
                Db::Sqlite { write, .. } => {
                    write.acquire().await?.delete_rejected_frames(before).await
                }
                Db::Postgres(p, _) => p.acquire().await?.delete_rejected_frames(before).await,
            }?;
        }
        if let Some(before) = c.positions {
            report.positions = self
                .purge_alarm_columns(
                    before,
                    &mut cursor.positions,
                    "position IS NOT NULL OR lat IS NOT NULL",
                    "position = NULL, lat = NULL, lon = NULL, accuracy_m = NULL",
                )
                .await?;
            report.positions += match self {
                Db::Sqlite { write, .. } => {
                    write
                        .acquire()
                        .await?
                        .clear_presence_positions(before)
                        .await
                }
                Db::Postgres(p, _) => p.acquire().await?.clear_presence_positions(before).await,
            }?;
        }
        if let Some(before) = c.closed_incidents {
            loop {
                let (incidents, steps) = self.purge_closed_incidents(before, now).await?;
                report.incidents += incidents;
                report.steps += steps;
                if incidents < BATCH as u64 {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Set `set` on alarms received before `before` that `needs` says still
    /// hold something, walking ids from `after` on.
    async fn purge_alarm_columns(
        &self,
        before: i64,
        after: &mut i64,
        needs: &str,
        set: &str,
    ) -> Result<u64, StoreError> {
        let select = format!(
            "SELECT id, received_at, CASE WHEN {needs} THEN 1 ELSE 0 END FROM alarms \
             WHERE id > $1 ORDER BY id LIMIT {BATCH}"
        );
        let mut done = 0;
        loop {
            let rows = match self {
                Db::Sqlite { read, .. } => {
                    read.acquire()
                        .await?
                        .alarm_purge_rows(&select, *after)
                        .await
                }
                Db::Postgres(p, _) => p.acquire().await?.alarm_purge_rows(&select, *after).await,
            }?;
            let old: Vec<&(i64, i64, i32)> = rows.iter().take_while(|r| r.1 < before).collect();
            let ids: Vec<i64> = old.iter().filter(|r| r.2 == 1).map(|r| r.0).collect();
            if !ids.is_empty() {
                // Integers read from the database: listed inline.
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                let sql = format!("UPDATE alarms SET {set} WHERE id IN ({list})");
                let empty = set.contains("$1").then(Vec::<u8>::new);
                done += match self {
                    Db::Sqlite { write, .. } => {
                        write.acquire().await?.purge_alarm_ids(&sql, empty).await
                    }
                    Db::Postgres(p, _) => p.acquire().await?.purge_alarm_ids(&sql, empty).await,
                }?;
            }
            match old.last() {
                Some(last) => *after = last.0,
                None => break,
            }
            if old.len() < rows.len() || rows.len() < BATCH as usize {
                break;
            }
        }
        Ok(done)
    }

    /// One batch of closed incidents past `before`: their timeline, hand-offs
    /// and notices removed, retired seals re-sealed. Returns (incidents, steps).
    async fn purge_closed_incidents(
        &self,
        before: i64,
        now: i64,
    ) -> Result<(u64, u64), StoreError> {
        let begin = self.begin_write();
        let lock_purges = matches!(self, Db::Postgres(..));
        let lock = if lock_purges { " FOR UPDATE" } else { "" };
        let select = format!(
            "SELECT id FROM incidents WHERE purged_at IS NULL AND closed_at IS NOT NULL \
             AND closed_at < $1 AND state IN ('resolved', 'closed', 'cancelled', 'merged') \
             ORDER BY id LIMIT {BATCH}{lock}"
        );
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .purge_closed_batch(begin, lock_purges, &select, before, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .purge_closed_batch(begin, lock_purges, &select, before, now)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_count_days_back_and_zero_keeps_for_ever() {
        let p = RetentionPolicy {
            frames_days: 180,
            positions_days: 0,
            closed_incidents_days: 1825,
        };
        let now = 2_000_000_000_000;
        let c = cutoffs(&p, now);
        assert_eq!(c.frames, Some(now - 180 * DAY_MS));
        assert_eq!(c.positions, None);
        assert_eq!(c.closed_incidents, Some(now - 1825 * DAY_MS));
    }
}
