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

/// Inside a transaction `$tx` that moves incident `$incident` to `$to`
/// ([`pingantong_domain::State`]): withdraw the offers that state takes back
/// ([`pingantong_domain::State::withdraws`]), cancel their deadlines, write a
/// timeline line each and free the carers who were on their way and have no
/// other job. Evaluates to how many were withdrawn.
macro_rules! withdraw_in_tx {
    ($tx:expr, $incident:expr, $to:expr, $now:expr) => {{
        let incident_id: i64 = $incident;
        let now: i64 = $now;
        let states = pingantong_domain::State::withdraws($to);
        let mut withdrawn: Vec<(i64, i64, Option<i64>)> = Vec::new();
        if !states.is_empty() {
            // The offers' deadlines first: a deadline firing meanwhile (which
            // holds its timer's row, then wants the offer's) is waited for,
            // not deadlocked with; the offer it expired is then not withdrawn,
            // and its next offer is refused on this incident's lock.
            // Fired or cancelled: either way nothing is left to do at them.
            sqlx::query(
                "UPDATE timers SET fired_at = $1 WHERE incident_id = $2 \
                 AND kind = 'offer' AND fired_at IS NULL",
            )
            .bind(now)
            .bind(incident_id)
            .execute(&mut *$tx)
            .await?;
            let list = states
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ");
            withdrawn = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE dispatches SET state = 'withdrawn', withdrawn_at = $1, updated_at = $1 \
                 WHERE incident_id = $2 AND state IN ({list}) \
                 RETURNING id, carer_id, accepted_at"
            )))
            .bind(now)
            .bind(incident_id)
            .fetch_all(&mut *$tx)
            .await?;
        }
        for &(dispatch, carer, accepted) in &withdrawn {
            $crate::incidents::insert_event!(
                $tx,
                incident_id,
                now,
                "system",
                "offer_withdrawn",
                None::<&str>,
                &format!(
                    "dispatch {dispatch} to carer {carer}{}: the incident is {}",
                    if accepted.is_some() {
                        " (on the way)"
                    } else {
                        ""
                    },
                    $to.as_str()
                )
            )?;
            if accepted.is_some() {
                sqlx::query(
                    "UPDATE carers SET busy = FALSE, updated_at = $1 WHERE id = $2 \
                     AND NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.carer_id = $2 \
                     AND d.state IN ('accepted', 'arrived'))",
                )
                .bind(now)
                .bind(carer)
                .execute(&mut *$tx)
                .await?;
            }
        }
        withdrawn.len()
    }};
}
pub(crate) use withdraw_in_tx;

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
