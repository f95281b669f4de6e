//! Moving an incident through its state machine, one transaction per step,
//! each step written to the incident's timeline.

use super::audit::AuditSql;
use super::tx::TxSql;
use super::{AuditEntry, Db, StoreError, now_ms};
use pingantong_domain::{Action, CancelReason, IllegalTransition, State};

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("incident {0} does not exist")]
    NotFound(i64),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("incident {0} is already claimed by {1}")]
    AlreadyClaimed(i64, String),
    /// Ending another operator's incident needs an explicit take-over.
    #[error("incident {id} is claimed by {owner}; to {action} it, take it over (take_over: true)")]
    ClaimedByOther {
        id: i64,
        owner: String,
        action: Action,
    },
    /// A call for help is cancelled only with a reason from the fixed list.
    #[error(
        "cancelling life-safety incident {id} needs a reason, one of: {}",
        CancelReason::list()
    )]
    CancelReasonNeeded { id: i64 },
    #[error("incident {id} has state {state:?}, which this server does not know")]
    UnknownState { id: i64, state: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TransitionError {
    fn from(e: sqlx::Error) -> Self {
        TransitionError::Store(e.into())
    }
}

/// One step: who does what to which incident, and why.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub incident_id: i64,
    pub action: Action,
    /// `operator:<name>`, `carer:<id>`, `resident`, `system`.
    pub actor: &'a str,
    /// Reason code or free text for the timeline.
    pub detail: &'a str,
    /// Outcome code, with [`Action::Close`].
    pub outcome: Option<&'a str>,
    /// The incident this one folds into, with [`Action::Merge`].
    pub merged_into: Option<i64>,
    /// An operator resolving, closing or cancelling an incident another
    /// operator holds takes it over: written on the timeline (and the audit),
    /// and refused without this.
    pub take_over: bool,
}

/// Actions that end an incident on its holder's behalf: another operator
/// needs to take it over first.
fn ends_for_the_holder(action: Action) -> bool {
    matches!(action, Action::Resolve | Action::Close | Action::Cancel)
}

/// The steps' statements, written once for both backends (see
/// [`super::tx`]).
pub(crate) trait TransitionSql {
    /// Apply one step in a transaction of its own, begun with `begin` (see
    /// [`Db::transition_audited`]).
    async fn transition(
        &mut self,
        t: &Transition<'_>,
        audit: Option<&AuditEntry<'_>>,
        begin: &'static str,
        now: i64,
    ) -> Result<State, TransitionError>;
    /// An incident's state as stored.
    async fn incident_state(&mut self, incident_id: i64) -> Result<Option<String>, sqlx::Error>;
}

impl<C> TransitionSql for C
where
    C: sqlx::Connection + TxSql + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn transition(
        &mut self,
        t: &Transition<'_>,
        audit: Option<&AuditEntry<'_>>,
        begin: &'static str,
        now: i64,
    ) -> Result<State, TransitionError> {
        // PostgreSQL needs the row locked against a concurrent step; SQLite
        // has one write connection, so the transaction is already alone.
        let lock = super::backend::row_lock::<C::Database>();
        let select = format!("SELECT state, claimed_by, lane FROM incidents WHERE id = $1{lock}");
        // As a `SqlStr` first: a future holding the `&'static str` itself is
        // not taken for `Send` (sqlx's trait is only for `'static`, and the
        // compiler asks it of every lifetime there).
        let mut tx = self.begin_with(sqlx::SqlStr::from_static(begin)).await?;
        let row: Option<(String, Option<String>, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(t.incident_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, claimed_by, lane)) = row else {
            return Err(TransitionError::NotFound(t.incident_id));
        };
        let from = State::parse(&state).ok_or(TransitionError::UnknownState {
            id: t.incident_id,
            state: state.clone(),
        })?;
        if t.action == Action::Claim
            && let Some(owner) = &claimed_by
        {
            return Err(TransitionError::AlreadyClaimed(
                t.incident_id,
                owner.clone(),
            ));
        }
        let to = from.apply(t.action)?;
        // Carers and the system act on any incident; an operator ends
        // only their own or one nobody holds, unless taking it over.
        let taken_from = match claimed_by {
            Some(owner)
                if t.actor.starts_with("operator:")
                    && owner != t.actor
                    && ends_for_the_holder(t.action) =>
            {
                if !t.take_over {
                    return Err(TransitionError::ClaimedByOther {
                        id: t.incident_id,
                        owner,
                        action: t.action,
                    });
                }
                Some(owner)
            }
            _ => None,
        };
        if t.action == Action::Cancel
            && lane == "life_safety"
            && t.outcome.and_then(CancelReason::parse).is_none()
        {
            return Err(TransitionError::CancelReasonNeeded { id: t.incident_id });
        }
        if let Some(owner) = &taken_from {
            sqlx::query("UPDATE incidents SET claimed_by = $1 WHERE id = $2")
                .bind(t.actor)
                .bind(t.incident_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO incident_events (incident_id, at, actor, action, from_state, \
                 to_state, detail) VALUES ($1, $2, $3, 'take_over', $4, $4, $5)",
            )
            .bind(t.incident_id)
            .bind(now)
            .bind(t.actor)
            .bind(from.as_str())
            .bind(format!("from {owner}, to {}", t.action))
            .execute(&mut *tx)
            .await?;
            if let Some(entry) = audit {
                let detail = format!("from {owner}");
                tx.append_audit(
                    &AuditEntry {
                        action: "incident_take_over",
                        detail: &detail,
                        ..*entry
                    },
                    now,
                )
                .await?;
            }
        }
        sqlx::query(
            "UPDATE incidents SET state = $1, updated_at = $2, \
             claimed_by = CASE WHEN $3 THEN $4 ELSE claimed_by END, \
             outcome = COALESCE($5, outcome), merged_into = COALESCE($6, merged_into), \
             closed_at = CASE WHEN $7 THEN $2 ELSE closed_at END \
             WHERE id = $8",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(t.action == Action::Claim)
        .bind(t.actor)
        .bind(t.outcome)
        .bind(t.merged_into)
        .bind(to.closes())
        .bind(t.incident_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO incident_events (incident_id, at, actor, action, from_state, \
             to_state, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.incident_id)
        .bind(now)
        .bind(t.actor)
        .bind(t.action.as_str())
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(t.detail)
        .execute(&mut *tx)
        .await?;
        // The offers end with the incident, in the same transaction: no
        // carer can take a job on an incident that is over.
        tx.withdraw(t.incident_id, to, now).await?;
        if let Some(entry) = audit {
            tx.append_audit(entry, now).await?;
        }
        tx.commit().await?;
        Ok(to)
    }

    async fn incident_state(&mut self, incident_id: i64) -> Result<Option<String>, sqlx::Error> {
        let row: Option<(String,)> = sqlx::query_as("SELECT state FROM incidents WHERE id = $1")
            .bind(incident_id)
            .fetch_optional(self)
            .await?;
        Ok(row.map(|(s,)| s))
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, steps to the write pool.
impl Db {
    /// Apply one step if the state machine allows it; refuse it otherwise.
    /// Returns the new state.
    pub async fn transition(&self, t: &Transition<'_>) -> Result<State, TransitionError> {
        self.transition_with(t, None).await
    }

    /// As [`Db::transition`], with the audit entry of the person who did it
    /// written in the same transaction: no step without its record.
    pub async fn transition_audited(
        &self,
        t: &Transition<'_>,
        audit: &AuditEntry<'_>,
    ) -> Result<State, TransitionError> {
        self.transition_with(t, Some(audit)).await
    }

    async fn transition_with(
        &self,
        t: &Transition<'_>,
        audit: Option<&AuditEntry<'_>>,
    ) -> Result<State, TransitionError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.transition(t, audit, begin, now).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.transition(t, audit, begin, now).await
            }
        }
    }

    /// The current state of an incident.
    pub async fn incident_state(&self, incident_id: i64) -> Result<Option<State>, StoreError> {
        let state = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.incident_state(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.incident_state(incident_id).await,
        }?;
        Ok(state.and_then(|s| State::parse(&s)))
    }
}
