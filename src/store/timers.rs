//! Deadlines kept in the database: claim and offer timers, fired once each.

use super::incidents::OPEN;
use super::{Db, StoreError, insert_timer, now_ms, on_pool, on_write_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimerRow {
    pub id: i64,
    pub incident_id: i64,
    pub dispatch_id: Option<i64>,
    pub kind: String,
    pub round: i64,
    pub due_at: i64,
}

/// What a claim deadline found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimCheck {
    /// Nobody has taken the incident: alerted, and a reminder is armed.
    Overdue { round: i64 },
    /// Taken, finished, or fired before: nothing to do.
    Settled,
}

/// What an offer deadline found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferCheck {
    /// The carer never answered: the offer is expired and another is owed.
    Expired,
    Settled,
}

/// Inside a transaction `$tx`: mark a timer fired, unless another pass did;
/// evaluates to `true` when this pass fires it.
macro_rules! fire_once {
    ($tx:expr, $id:expr, $now:expr) => {
        sqlx::query("UPDATE timers SET fired_at = $1 WHERE id = $2 AND fired_at IS NULL")
            .bind($now)
            .bind($id)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            == 1
    };
}

impl Db {
    /// Timers due at `now`, oldest first.
    pub async fn due_timers(&self, now: i64, limit: i64) -> Result<Vec<TimerRow>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT id, incident_id, dispatch_id, kind, round, due_at FROM timers \
             WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2"
        )
        .bind(now)
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Fire a claim deadline: if the incident is still open and unclaimed,
    /// record that it is overdue and arm the next reminder at `remind_at`.
    pub async fn fire_claim_timer(
        &self,
        t: &TimerRow,
        remind_at: i64,
    ) -> Result<ClaimCheck, StoreError> {
        let now = now_ms();
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
            if !fire_once!(tx, t.id, now) {
                return Ok(ClaimCheck::Settled);
            }
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT state, claimed_by FROM incidents WHERE id = $1")
                    .bind(t.incident_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let overdue = matches!(&row, Some((state, None))
                if pingantong_domain::State::parse(state).is_some_and(|s| s.is_open()));
            let check = if overdue {
                let round = t.round + 1;
                sqlx::query(
                    "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
                     VALUES ($1, $2, 'system', 'claim_overdue', $3)",
                )
                .bind(t.incident_id)
                .bind(now)
                .bind(format!("not claimed by an operator; reminder {round}"))
                .execute(&mut *tx)
                .await?;
                insert_timer!(tx, t.incident_id, None::<i64>, "claim", round, remind_at);
                ClaimCheck::Overdue { round }
            } else {
                ClaimCheck::Settled
            };
            tx.commit().await?;
            Ok(check)
        })
    }

    /// Fire an offer deadline: an offer still unanswered expires.
    pub async fn fire_offer_timer(&self, t: &TimerRow) -> Result<OfferCheck, StoreError> {
        let now = now_ms();
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
            if !fire_once!(tx, t.id, now) {
                return Ok(OfferCheck::Settled);
            }
            // Only an offer still pending on an incident still open expires
            // (and so passes to the next carer): an ended incident's offers
            // are withdrawn with it, and this guards older rows all the same.
            let expired = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE dispatches SET state = 'expired', updated_at = $1 \
                 WHERE id = $2 AND state = 'offered' AND EXISTS (SELECT 1 FROM incidents i \
                 WHERE i.id = dispatches.incident_id AND i.{OPEN})"
            )))
            .bind(now)
            .bind(t.dispatch_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if expired {
                sqlx::query(
                    "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
                     VALUES ($1, $2, 'system', 'offer_expired', $3)",
                )
                .bind(t.incident_id)
                .bind(now)
                .bind(format!(
                    "dispatch {} not answered in time",
                    t.dispatch_id.unwrap_or(0)
                ))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(if expired {
                OfferCheck::Expired
            } else {
                OfferCheck::Settled
            })
        })
    }

    /// Record on the timeline that supervisors were alerted, and why.
    pub async fn note_supervisor_alert(
        &self,
        incident_id: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        on_write_pool!(self, |p| sqlx::query(
            "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
             VALUES ($1, $2, 'system', 'supervisor_alerted', $3)"
        )
        .bind(incident_id)
        .bind(now_ms())
        .bind(why)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
