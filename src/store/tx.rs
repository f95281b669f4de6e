//! Statements that run inside another statement's transaction, shared by
//! several parts of the store: a timeline line, a deadline armed or fired,
//! the offers an ending incident takes back. (An audit entry is
//! [`super::audit::AuditSql`]'s.)
//!
//! They are methods of [`TxSql`], implemented once for any sqlx connection
//! whose database binds and reads what they use (the `where` clauses are
//! the impl's, said once; ARCHITECTURE.md, "Backends"), and called on a
//! transaction's connection: `tx.line(…)`, `tx.withdraw(…)`.

use pingantong_domain::State;

use super::NewDispatch;
use super::backend::Affected;

/// A line on an incident's timeline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewLine<'a> {
    pub incident_id: i64,
    pub at: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub to_state: Option<&'a str>,
    pub detail: &'a str,
}

impl<'a> NewLine<'a> {
    /// A line by the system, moving no state.
    pub fn system(incident_id: i64, at: i64, action: &'a str, detail: &'a str) -> Self {
        Self {
            incident_id,
            at,
            actor: "system",
            action,
            to_state: None,
            detail,
        }
    }
}

/// A deadline to arm.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewTimer<'a> {
    pub incident_id: i64,
    pub dispatch_id: Option<i64>,
    pub kind: &'a str,
    pub round: i64,
    pub due_at: i64,
}

pub(crate) trait TxSql {
    /// Append one line to an incident's timeline.
    async fn line(&mut self, line: NewLine<'_>) -> Result<(), sqlx::Error>;
    /// Arm a deadline that survives restarts.
    async fn insert_timer(&mut self, timer: NewTimer<'_>) -> Result<(), sqlx::Error>;
    /// Mark a timer fired, unless another pass did: `true` when this one did.
    async fn fire_once(&mut self, id: i64, now: i64) -> Result<bool, sqlx::Error>;
    /// The incident moves to `to`: withdraw the offers that state takes back
    /// ([`State::withdraws`]), cancel their deadlines, write a timeline line
    /// each and free the carers who were on their way and have no other
    /// job. How many were withdrawn.
    async fn withdraw(
        &mut self,
        incident_id: i64,
        to: State,
        now: i64,
    ) -> Result<usize, sqlx::Error>;
    /// Offer an incident to a carer, with the offer's deadline (`due`); the
    /// offer's id.
    async fn offer(
        &mut self,
        incident_id: i64,
        d: &NewDispatch,
        due: i64,
        now: i64,
    ) -> Result<i64, sqlx::Error>;
}

impl<C> TxSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn line(&mut self, l: NewLine<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO incident_events (incident_id, at, actor, action, to_state, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(l.incident_id)
        .bind(l.at)
        .bind(l.actor)
        .bind(l.action)
        .bind(l.to_state)
        .bind(l.detail)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn insert_timer(&mut self, t: NewTimer<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO timers (incident_id, dispatch_id, kind, round, due_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t.incident_id)
        .bind(t.dispatch_id)
        .bind(t.kind)
        .bind(t.round)
        .bind(t.due_at)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn fire_once(&mut self, id: i64, now: i64) -> Result<bool, sqlx::Error> {
        let done =
            sqlx::query("UPDATE timers SET fired_at = $1 WHERE id = $2 AND fired_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(self)
                .await?;
        Ok(done.affected() == 1)
    }

    async fn withdraw(
        &mut self,
        incident_id: i64,
        to: State,
        now: i64,
    ) -> Result<usize, sqlx::Error> {
        let states = State::withdraws(to);
        if states.is_empty() {
            return Ok(0);
        }
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
        .execute(&mut *self)
        .await?;
        let list = states
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let withdrawn: Vec<(i64, i64, Option<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE dispatches SET state = 'withdrawn', withdrawn_at = $1, updated_at = $1 \
             WHERE incident_id = $2 AND state IN ({list}) \
             RETURNING id, carer_id, accepted_at"
        )))
        .bind(now)
        .bind(incident_id)
        .fetch_all(&mut *self)
        .await?;
        for &(dispatch, carer, accepted) in &withdrawn {
            let on_the_way = if accepted.is_some() {
                " (on the way)"
            } else {
                ""
            };
            let detail = format!(
                "dispatch {dispatch} to carer {carer}{on_the_way}: the incident is {}",
                to.as_str()
            );
            self.line(NewLine::system(
                incident_id,
                now,
                "offer_withdrawn",
                &detail,
            ))
            .await?;
            if accepted.is_some() {
                sqlx::query(
                    "UPDATE carers SET busy = FALSE, updated_at = $1 WHERE id = $2 \
                     AND NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.carer_id = $2 \
                     AND d.state IN ('accepted', 'arrived'))",
                )
                .bind(now)
                .bind(carer)
                .execute(&mut *self)
                .await?;
            }
        }
        Ok(withdrawn.len())
    }

    async fn offer(
        &mut self,
        incident_id: i64,
        d: &NewDispatch,
        due: i64,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO dispatches (incident_id, carer_id, provider_id, distance_m, \
             fallback, state, offered_at, updated_at, offer_lease_until) \
             VALUES ($1, $2, $3, $4, $5, 'offered', $6, $6, $7) RETURNING id",
        )
        .bind(incident_id)
        .bind(d.carer_id)
        .bind(d.provider_id)
        .bind(d.distance_m)
        .bind(d.fallback)
        .bind(now)
        .bind(now + super::PUBLISH_LEASE_MS)
        .fetch_one(&mut *self)
        .await?;
        self.insert_timer(NewTimer {
            incident_id,
            dispatch_id: Some(id),
            kind: "offer",
            round: 0,
            due_at: due,
        })
        .await?;
        Ok(id)
    }
}
