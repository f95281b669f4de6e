//! Offers that end with their incident: withdrawn in the transaction that ends
//! it, their deadlines cancelled, and the carers' phones told afterwards from
//! what the database says is owed.

use super::{Db, StoreError, now_ms};

/// A withdrawal the carer's phone has still to hear of.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct Withdrawal {
    pub dispatch_id: i64,
    pub incident_id: i64,
    pub carer_id: i64,
    /// The incident's state, which says why (`resolved`, `closed`, `cancelled`, `merged`).
    #[serde(skip)]
    pub incident_state: pingantong_domain::State,
    pub withdrawn_at: i64,
}

impl Withdrawal {
    /// Why, as the carer's phone reads it: `incident_closed`, `incident_cancelled` …
    pub fn reason(&self) -> String {
        format!("incident_{}", self.incident_state)
    }
}

/// The withdrawals' statements, written once for both backends (see
/// [`super::tx`]).
pub(crate) trait WithdrawalSql {
    /// Withdrawals not yet sent to the carers' phones, oldest first.
    async fn owed_withdrawals(&mut self, limit: i64) -> Result<Vec<Withdrawal>, sqlx::Error>;
    /// Hold owed withdrawals (not held by another server) until `until`;
    /// their ids, at most `limit`.
    async fn claim_withdrawals(
        &mut self,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<(i64,)>, sqlx::Error>;
    /// Withdrawals not yet sent among `ids` (integers the database returned).
    async fn withdrawals_among(&mut self, ids: &str) -> Result<Vec<Withdrawal>, sqlx::Error>;
    /// Mark withdrawals handed to the broker at `now`.
    async fn mark_withdrawals_sent(&mut self, ids: &[i64], now: i64) -> Result<(), sqlx::Error>;
}

impl<C> WithdrawalSql for C
where
    C: sqlx::Connection,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'r> Withdrawal: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn owed_withdrawals(&mut self, limit: i64) -> Result<Vec<Withdrawal>, sqlx::Error> {
        sqlx::query_as(
            "SELECT d.id AS dispatch_id, d.incident_id, d.carer_id, \
             i.state AS incident_state, d.withdrawn_at \
             FROM dispatches d JOIN incidents i ON i.id = d.incident_id \
             WHERE d.state = 'withdrawn' AND d.withdrawal_sent_at IS NULL \
             ORDER BY d.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn claim_withdrawals(
        &mut self,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<(i64,)>, sqlx::Error> {
        const FREE: &str = "(withdrawal_lease_until IS NULL OR withdrawal_lease_until <= $2)";
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE dispatches SET withdrawal_lease_until = $1 \
             WHERE id IN (SELECT id FROM dispatches WHERE state = 'withdrawn' \
             AND withdrawal_sent_at IS NULL AND {FREE} ORDER BY id LIMIT $3) AND {FREE} \
             RETURNING id"
        )))
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn withdrawals_among(&mut self, ids: &str) -> Result<Vec<Withdrawal>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT d.id AS dispatch_id, d.incident_id, d.carer_id, \
             i.state AS incident_state, d.withdrawn_at \
             FROM dispatches d JOIN incidents i ON i.id = d.incident_id \
             WHERE d.id IN ({ids}) AND d.state = 'withdrawn' AND d.withdrawal_sent_at IS NULL \
             ORDER BY d.id"
        )))
        .persistent(false)
        .fetch_all(self)
        .await
    }

    async fn mark_withdrawals_sent(&mut self, ids: &[i64], now: i64) -> Result<(), sqlx::Error> {
        // Integers read from the database: listed inline.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE dispatches SET withdrawal_sent_at = $1 \
             WHERE id IN ({list}) AND withdrawal_sent_at IS NULL"
        )))
        .persistent(false)
        .bind(now)
        .execute(self)
        .await?;
        Ok(())
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Withdrawals not yet sent to the carers' phones, oldest first.
    pub async fn owed_withdrawals(&self, limit: i64) -> Result<Vec<Withdrawal>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.owed_withdrawals(limit).await,
            Db::Postgres(p, _) => p.acquire().await?.owed_withdrawals(limit).await,
        }?)
    }

    /// Take up to `limit` owed withdrawals for this server to send, each held
    /// for [`crate::PUBLISH_LEASE_MS`]: two servers' sweeps never both send
    /// one, and one a dead server held is sent by the next sweep after.
    pub async fn claim_owed_withdrawals(&self, limit: i64) -> Result<Vec<Withdrawal>, StoreError> {
        // Read first: a sweep finds none owed almost always, and a write on
        // every sweep would queue behind an outage on SQLite's one writer.
        if self.owed_withdrawals(1).await?.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let until = now + crate::PUBLISH_LEASE_MS;
        let taken = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .claim_withdrawals(now, until, limit)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .claim_withdrawals(now, until, limit)
                    .await
            }
        }?;
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        // Integers the database just returned: listed inline.
        let ids = taken
            .iter()
            .map(|(id,)| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.withdrawals_among(&ids).await,
            Db::Postgres(p, _) => p.acquire().await?.withdrawals_among(&ids).await,
        }?)
    }

    /// Withdrawals handed to the broker.
    pub async fn mark_withdrawals_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write.acquire().await?.mark_withdrawals_sent(ids, now).await
            }
            Db::Postgres(p, _) => p.acquire().await?.mark_withdrawals_sent(ids, now).await,
        }?)
    }
}
