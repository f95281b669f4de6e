//! Deadlines kept in the database: claim and offer timers, fired once each.

use super::backend::Affected;
use super::incidents::OPEN;
use super::tx::{NewLine, NewTimer, TxSql};
use super::{Db, StoreError, now_ms};

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

/// The deadlines' own transactions, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait TimerSql {
    /// Timers due at `now`, oldest first.
    async fn due_timers(&mut self, now: i64, limit: i64) -> Result<Vec<TimerRow>, sqlx::Error>;
    /// Fire a claim deadline, in a transaction of its own (see [`Db::fire_claim_timer`]).
    async fn fire_claim(
        &mut self,
        t: &TimerRow,
        remind_at: i64,
        now: i64,
    ) -> Result<ClaimCheck, sqlx::Error>;
    /// Fire an offer deadline, in a transaction of its own (see [`Db::fire_offer_timer`]).
    async fn fire_offer(&mut self, t: &TimerRow, now: i64) -> Result<OfferCheck, sqlx::Error>;
}

impl<C> TimerSql for C
where
    C: sqlx::Connection + TxSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
{
    async fn due_timers(&mut self, now: i64, limit: i64) -> Result<Vec<TimerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, incident_id, dispatch_id, kind, round, due_at FROM timers \
             WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn fire_claim(
        &mut self,
        t: &TimerRow,
        remind_at: i64,
        now: i64,
    ) -> Result<ClaimCheck, sqlx::Error> {
        let mut tx = self.begin().await?;
        if !tx.fire_once(t.id, now).await? {
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
            let detail = format!("not claimed by an operator; reminder {round}");
            tx.line(NewLine::system(
                t.incident_id,
                now,
                "claim_overdue",
                &detail,
            ))
            .await?;
            tx.insert_timer(NewTimer {
                incident_id: t.incident_id,
                dispatch_id: None,
                kind: "claim",
                round,
                due_at: remind_at,
            })
            .await?;
            ClaimCheck::Overdue { round }
        } else {
            ClaimCheck::Settled
        };
        tx.commit().await?;
        Ok(check)
    }

    async fn fire_offer(&mut self, t: &TimerRow, now: i64) -> Result<OfferCheck, sqlx::Error> {
        let mut tx = self.begin().await?;
        if !tx.fire_once(t.id, now).await? {
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
        .affected()
            == 1;
        if expired {
            let detail = format!(
                "dispatch {} not answered in time",
                t.dispatch_id.unwrap_or(0)
            );
            tx.line(NewLine::system(
                t.incident_id,
                now,
                "offer_expired",
                &detail,
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(if expired {
            OfferCheck::Expired
        } else {
            OfferCheck::Settled
        })
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Timers due at `now`, oldest first.
    pub async fn due_timers(&self, now: i64, limit: i64) -> Result<Vec<TimerRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.due_timers(now, limit).await,
            Db::Postgres(p, _) => p.acquire().await?.due_timers(now, limit).await,
        }?)
    }

    /// Fire a claim deadline: if the incident is still open and unclaimed,
    /// record that it is overdue and arm the next reminder at `remind_at`.
    pub async fn fire_claim_timer(
        &self,
        t: &TimerRow,
        remind_at: i64,
    ) -> Result<ClaimCheck, StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.fire_claim(t, remind_at, now).await,
            Db::Postgres(p, _) => p.acquire().await?.fire_claim(t, remind_at, now).await,
        }?)
    }

    /// Fire an offer deadline: an offer still unanswered expires.
    pub async fn fire_offer_timer(&self, t: &TimerRow) -> Result<OfferCheck, StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.fire_offer(t, now).await,
            Db::Postgres(p, _) => p.acquire().await?.fire_offer(t, now).await,
        }?)
    }

    /// Record on the timeline that supervisors were alerted, and why.
    pub async fn note_supervisor_alert(
        &self,
        incident_id: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        let line = NewLine::system(incident_id, now_ms(), "supervisor_alerted", why);
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.line(line).await,
            Db::Postgres(p, _) => p.acquire().await?.line(line).await,
        }?)
    }
}
