//! The incident timelines in the audit chain.
//!
//! Steps are written by many hands (operators, carers, the stage, timers,
//! notices); rather than make each writer append to the chain, a sealer
//! gathers the steps not sealed yet, a few seconds after they were written,
//! and appends one `timeline_sealed` entry holding how many they are and the
//! SHA-256 of their content, marking each with that entry's id. `audit
//! verify` recomputes every seal: a step edited, removed or unmarked after
//! it was sealed breaks the chain at its seal. A step committed late (on
//! PostgreSQL, ids are not committed in order) is simply sealed next time.

use super::audit::AuditSql;
use sha2::{Digest, Sha256};
use sqlx::SqlStr;

use super::{AuditEntry, Db, StoreError, now_ms};

/// At most this many steps in one seal.
const SEAL_BATCH: i64 = 2000;

/// One step as sealed: every column a reader relies on.
pub(super) type StepRow = (
    i64,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

/// The hash over steps in id order (fields separated by 0x1f, steps by 0x1e).
pub(super) fn steps_hash(rows: &[StepRow]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (id, incident, at, actor, action, from, to, detail) in rows {
        for field in [
            id.to_string().as_str(),
            &incident.to_string(),
            &at.to_string(),
            actor,
            action,
            from.as_deref().unwrap_or("\u{0}"),
            to.as_deref().unwrap_or("\u{0}"),
            detail,
        ] {
            h.update(field.as_bytes());
            h.update([0x1f]);
        }
        h.update([0x1e]);
    }
    h.finalize().into()
}

/// What a seal entry says: `<count> steps <first>..<last> sha256 <hex>`.
pub(super) fn seal_detail(rows: &[StepRow]) -> String {
    format!(
        "{} steps {}..{} sha256 {}",
        rows.len(),
        rows.first().map_or(0, |r| r.0),
        rows.last().map_or(0, |r| r.0),
        hex::encode(steps_hash(rows))
    )
}

/// The seals' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait SealSql {
    /// Seal the steps `select` finds before `before`, in a transaction begun
    /// with `begin` ([`Db::begin_write`], as a [`SqlStr`]: as a `&'static
    /// str` the compiler fails to prove the callers' futures `Send`); how many.
    async fn seal_steps(
        &mut self,
        begin: &'static str,
        select: &str,
        before: i64,
        now: i64,
    ) -> Result<usize, sqlx::Error>;
    /// The steps audit entry `seal` sealed, in id order.
    async fn sealed_steps(&mut self, seal: i64) -> Result<Vec<StepRow>, sqlx::Error>;
    /// How many steps name audit entry `seal` as their seal.
    async fn sealed_step_count(&mut self, seal: i64) -> Result<i64, sqlx::Error>;
}

impl<C> SealSql for C
where
    C: sqlx::Connection + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn seal_steps(
        &mut self,
        begin: &'static str,
        select: &str,
        before: i64,
        now: i64,
    ) -> Result<usize, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let rows: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(before)
            .bind(SEAL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let detail = seal_detail(&rows);
        let entry = AuditEntry {
            actor: "system",
            action: "timeline_sealed",
            subject: "timeline",
            detail: &detail,
        };
        let seal: i64 = tx.append_audit(&entry, now).await?;
        // By id, one statement per slice: exactly the steps hashed, not
        // one committed meanwhile.
        for chunk in rows.chunks(500) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!("UPDATE incident_events SET sealed_by = $1 WHERE id IN ({list})");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(seal);
            for r in chunk {
                q = q.bind(r.0);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    async fn sealed_steps(&mut self, seal: i64) -> Result<Vec<StepRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, incident_id, at, actor, action, from_state, to_state, detail \
             FROM incident_events WHERE sealed_by = $1 ORDER BY id",
        )
        .bind(seal)
        .fetch_all(self)
        .await
    }

    async fn sealed_step_count(&mut self, seal: i64) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM incident_events WHERE sealed_by = $1")
            .bind(seal)
            .fetch_one(self)
            .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Seal the steps written before `before` (ms) and not sealed yet; returns
    /// how many. Safe to run on several servers at once.
    pub async fn seal_timeline(&self, before: i64) -> Result<usize, StoreError> {
        // PostgreSQL: two sealers never take the same steps.
        let lock = if matches!(self, Db::Postgres(..)) {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let select = format!(
            "SELECT id, incident_id, at, actor, action, from_state, to_state, detail \
             FROM incident_events WHERE sealed_by IS NULL AND at < $1 ORDER BY id LIMIT $2{lock}"
        );
        let now = now_ms();
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .seal_steps(begin, &select, before, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .seal_steps(begin, &select, before, now)
                    .await
            }
        }?)
    }

    /// Whether the steps sealed by audit entry `seal` are still what its
    /// `detail` says they were (none at all only when `may_be_empty`: a
    /// purge that left no step of the seals it retired).
    pub(super) async fn seal_holds(
        &self,
        seal: i64,
        detail: &str,
        may_be_empty: bool,
    ) -> Result<bool, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.sealed_steps(seal).await,
            Db::Postgres(p, _) => p.acquire().await?.sealed_steps(seal).await,
        }?;
        Ok((may_be_empty || !rows.is_empty()) && seal_detail(&rows) == detail)
    }

    /// Whether no step names audit entry `seal` as its seal (a seal a purge
    /// retired has handed its surviving steps to the purge).
    pub(super) async fn seal_is_empty(&self, seal: i64) -> Result<bool, StoreError> {
        let n = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.sealed_step_count(seal).await,
            Db::Postgres(p, _) => p.acquire().await?.sealed_step_count(seal).await,
        }?;
        Ok(n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: i64, detail: &str) -> StepRow {
        (
            id,
            7,
            1_000,
            "operator:li".into(),
            "claim".into(),
            Some("new".into()),
            None,
            detail.into(),
        )
    }

    #[test]
    fn a_seal_says_what_it_covers_and_any_change_shows() {
        let rows = vec![step(3, "a"), step(5, "b")];
        let d = seal_detail(&rows);
        assert!(d.starts_with("2 steps 3..5 sha256 "), "{d}");
        assert_ne!(seal_detail(&[step(3, "a"), step(5, "c")]), d, "an edit");
        assert_ne!(seal_detail(&[step(3, "a")]), d, "a removal");
        // Fields cannot be shifted from one into the next.
        let shifted = vec![
            (
                3,
                7,
                1_000,
                "operator:l".into(),
                "iclaim".into(),
                Some("new".into()),
                None,
                "a".into(),
            ),
            step(5, "b"),
        ];
        assert_ne!(seal_detail(&shifted), d);
        let none_vs_empty = vec![
            (
                3,
                7,
                1_000,
                "operator:li".into(),
                "claim".into(),
                Some("new".into()),
                Some(String::new()),
                "a".into(),
            ),
            step(5, "b"),
        ];
        assert_ne!(
            seal_detail(&none_vs_empty),
            d,
            "no state is not an empty state"
        );
    }
}
