//! Wellbeing checks: the residents whose devices nobody has used for a while
//! (no press, no cancel, no periodic test), and the calls made to them.

use super::audit::AuditSql;
use serde::Serialize;

use sqlx::SqlStr;

use super::{AuditEntry, Db, StoreError, now_ms};

/// A resident on the wellbeing work list.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct WellbeingRow {
    pub client_id: i64,
    pub name: String,
    pub district: String,
    pub street: String,
    /// Last use of any of their devices; `None`: never.
    pub last_used_at: Option<i64>,
    /// Last wellbeing call, and how it went.
    pub last_check_at: Option<i64>,
    pub last_outcome: Option<String>,
}

/// How a wellbeing call went.
pub const OUTCOMES: [&str; 5] = ["well", "needs_help", "no_answer", "visited", "away"];

/// The wellbeing checks' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait WellbeingSql {
    /// Mark devices used at these times (one statement; each device once),
    /// keeping a later use already marked.
    async fn mark_used_chunk(&mut self, latest: &[(&str, i64)]) -> Result<(), sqlx::Error>;
    /// The wellbeing work list (see [`Db::wellbeing_list`]).
    async fn wellbeing_rows(
        &mut self,
        cutoff: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<WellbeingRow>, sqlx::Error>;
    /// Record a wellbeing call with its audit entry, in a transaction begun
    /// with `begin` ([`Db::begin_write`], as a [`SqlStr`]: as a `&'static
    /// str` the compiler fails to prove the callers' futures `Send`).
    /// `false`: no such client.
    #[allow(clippy::too_many_arguments)]
    async fn insert_wellbeing_check(
        &mut self,
        begin: &'static str,
        client_id: i64,
        operator: &str,
        outcome: &str,
        note: &str,
        audit: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
}

impl<C> WellbeingSql for C
where
    C: sqlx::Connection + AuditSql,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'r> WellbeingRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn mark_used_chunk(&mut self, latest: &[(&str, i64)]) -> Result<(), sqlx::Error> {
        let mut q = sqlx::QueryBuilder::new("WITH v (id, at) AS (VALUES ");
        for (row, (id, at)) in latest.iter().enumerate() {
            q.push(if row == 0 { "(" } else { ", (" })
                .push_bind(*id)
                .push(", CAST(")
                .push_bind(*at)
                .push(" AS BIGINT))");
        }
        q.push(
            ") UPDATE devices SET used_at = v.at FROM v WHERE devices.id = v.id \
             AND (devices.used_at IS NULL OR devices.used_at < v.at)",
        );
        q.build().persistent(false).execute(self).await?;
        Ok(())
    }

    async fn wellbeing_rows(
        &mut self,
        cutoff: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<WellbeingRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT c.id AS client_id, c.name, c.district, c.street, \
             MAX(d.used_at) AS last_used_at, \
             (SELECT MAX(w.at) FROM wellbeing_checks w WHERE w.client_id = c.id) AS last_check_at, \
             (SELECT w.outcome FROM wellbeing_checks w WHERE w.client_id = c.id \
              ORDER BY w.at DESC, w.id DESC LIMIT 1) AS last_outcome \
             FROM clients c JOIN devices d ON d.client_id = c.id AND d.retired = FALSE \
             WHERE c.away_until IS NULL OR c.away_until <= $2 \
             GROUP BY c.id, c.name, c.district, c.street \
             HAVING (MAX(d.used_at) IS NULL OR MAX(d.used_at) < $1) \
             AND NOT EXISTS (SELECT 1 FROM wellbeing_checks w WHERE w.client_id = c.id AND w.at >= $1) \
             ORDER BY MAX(d.used_at) NULLS FIRST, c.id LIMIT $3",
        )
        .bind(cutoff)
        .bind(now)
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn insert_wellbeing_check(
        &mut self,
        begin: &'static str,
        client_id: i64,
        operator: &str,
        outcome: &str,
        note: &str,
        audit: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM clients WHERE id = $1")
            .bind(client_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO wellbeing_checks (client_id, at, operator, outcome, note) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(client_id)
        .bind(now)
        .bind(operator)
        .bind(outcome)
        .bind(note)
        .execute(&mut *tx)
        .await?;
        tx.append_audit(audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Record that these devices were used (pressed, cancelled, tested) at
    /// these times, one statement per chunk (see `mark_heard`). A device
    /// keeps its latest use: an older mark (a delayed frame) changes nothing.
    pub async fn mark_used(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        for chunk in used.chunks(super::registry::MARK_CHUNK) {
            // A device named twice in a chunk: its latest time (one row of
            // the join per device, or the update would pick either).
            let mut latest: Vec<(&str, i64)> = Vec::with_capacity(chunk.len());
            for (id, at) in chunk {
                match latest.iter_mut().find(|(d, _)| d == id) {
                    Some(l) => l.1 = l.1.max(*at),
                    None => latest.push((id, *at)),
                }
            }
            match self {
                Db::Sqlite { write, .. } => write.acquire().await?.mark_used_chunk(&latest).await,
                Db::Postgres(p, _) => p.acquire().await?.mark_used_chunk(&latest).await,
            }?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Residents with a device whose devices were all unused since `cutoff`,
    /// not called since `cutoff` either, and not away: longest silence first.
    pub async fn wellbeing_list(
        &self,
        cutoff: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<WellbeingRow>, StoreError> {
        let limit = limit.clamp(1, 5000);
        Ok(match self {
            Db::Sqlite { read, .. } => {
                read.acquire()
                    .await?
                    .wellbeing_rows(cutoff, now, limit)
                    .await
            }
            Db::Postgres(p, _) => p.acquire().await?.wellbeing_rows(cutoff, now, limit).await,
        }?)
    }

    /// A wellbeing call and its outcome, with its audit entry. `false`: no such client.
    pub async fn record_wellbeing_check(
        &self,
        client_id: i64,
        operator: &str,
        outcome: &str,
        note: &str,
        audit: &AuditEntry<'_>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .insert_wellbeing_check(begin, client_id, operator, outcome, note, audit, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .insert_wellbeing_check(begin, client_id, operator, outcome, note, audit, now)
                    .await
            }
        }?)
    }
}
