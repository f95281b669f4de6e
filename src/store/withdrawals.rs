//! Offers that end with their incident: withdrawn in the transaction that ends
//! it, their deadlines cancelled, and the carers' phones told afterwards from
//! what the database says is owed.

use super::{Db, StoreError, now_ms, on_pool, on_write_pool};

/// A withdrawal the carer's phone has still to hear of.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct Withdrawal {
    pub dispatch_id: i64,
    pub incident_id: i64,
    pub carer_id: i64,
    /// The incident's state, which says why (`resolved`, `closed`, `cancelled`, `merged`).
    #[serde(skip)]
    pub incident_state: String,
    pub withdrawn_at: i64,
}

impl Withdrawal {
    /// Why, as the carer's phone reads it: `incident_closed`, `incident_cancelled` …
    pub fn reason(&self) -> String {
        format!("incident_{}", self.incident_state)
    }
}

impl Db {
    /// Withdrawals not yet sent to the carers' phones, oldest first.
    pub async fn owed_withdrawals(&self, limit: i64) -> Result<Vec<Withdrawal>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT d.id AS dispatch_id, d.incident_id, d.carer_id, \
             i.state AS incident_state, d.withdrawn_at \
             FROM dispatches d JOIN incidents i ON i.id = d.incident_id \
             WHERE d.state = 'withdrawn' AND d.withdrawal_sent_at IS NULL \
             ORDER BY d.id LIMIT $1"
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Withdrawals handed to the broker.
    pub async fn mark_withdrawals_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Integers read from the database: listed inline.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        on_write_pool!(self, |p| sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE dispatches SET withdrawal_sent_at = $1 \
             WHERE id IN ({list}) AND withdrawal_sent_at IS NULL"
        )))
        .persistent(false)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
