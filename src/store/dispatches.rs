//! Dispatch offers after they are sent: carers' replies and further offers.

use pingantong_domain::{DispatchState, State};

use super::audit::AuditSql;
use super::tx::TxSql;
use super::{AuditEntry, CarerRow, Db, NewDispatch, StoreError, now_ms};

/// A carer's answer to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarerAnswer {
    Accept,
    Decline,
    Arrived,
    Completed,
}

impl CarerAnswer {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accept" => Self::Accept,
            "decline" => Self::Decline,
            "arrived" => Self::Arrived,
            "completed" => Self::Completed,
            _ => return None,
        })
    }

    /// As a carer says it (`accept`, `decline`, `arrived`, `completed`).
    pub fn verb(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Decline => "decline",
            Self::Arrived => "arrived",
            Self::Completed => "completed",
        }
    }

    /// The dispatch state this answer leads to.
    pub fn state(self) -> DispatchState {
        match self {
            Self::Accept => DispatchState::Accepted,
            Self::Decline => DispatchState::Declined,
            Self::Arrived => DispatchState::Arrived,
            Self::Completed => DispatchState::Completed,
        }
    }

    /// Dispatch states the answer may follow; the state it leads to is
    /// accepted again, so a repeated reply is harmless. A job goes accepted →
    /// arrived → completed: "completed" from a carer who never said they
    /// arrived would resolve an incident nobody attended.
    fn allowed_from(self) -> &'static [DispatchState] {
        use DispatchState::*;
        match self {
            Self::Accept => &[Offered, Accepted],
            Self::Decline => &[Offered, Declined],
            Self::Arrived => &[Accepted, Arrived],
            Self::Completed => &[Arrived, Completed],
        }
    }

    /// The state the answer follows, as a refusal explains it.
    fn follows(self) -> &'static str {
        match self {
            Self::Accept | Self::Decline => "an offer",
            Self::Arrived => "accept",
            Self::Completed => "arrived",
        }
    }
}

impl std::fmt::Display for CarerAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.verb())
    }
}

/// Dispatch states in which the carer still has the job (the partial unique
/// index `dispatches_one_live_per_carer` uses the same list).
pub(super) const LIVE: &str = "('offered', 'accepted', 'arrived')";

#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("dispatch {0} does not exist")]
    NotFound(i64),
    #[error("dispatch {dispatch} was offered to carer {owner}, not to carer {carer}")]
    NotYours {
        dispatch: i64,
        carer: i64,
        owner: i64,
    },
    #[error("dispatch {dispatch} is {state}; {answer} only follows {}", answer.follows())]
    OutOfOrder {
        dispatch: i64,
        state: DispatchState,
        answer: CarerAnswer,
    },
    /// The incident ended and took the offer back.
    #[error("dispatch {dispatch} was withdrawn: incident {incident} is {incident_state}")]
    Withdrawn {
        dispatch: i64,
        incident: i64,
        incident_state: State,
    },
    #[error("incident {incident} is {incident_state}; dispatch {dispatch} cannot be {answer}ed")]
    IncidentEnded {
        dispatch: i64,
        incident: i64,
        incident_state: State,
        answer: CarerAnswer,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReplyError {
    fn from(e: sqlx::Error) -> Self {
        ReplyError::Store(e.into())
    }
}

impl ReplyError {
    /// Why, in one word, for the log and the refusals metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplyError::NotFound(_) => "unknown_dispatch",
            ReplyError::NotYours { .. } => "not_yours",
            ReplyError::OutOfOrder { .. } => "out_of_order",
            ReplyError::Withdrawn { .. } => "withdrawn",
            ReplyError::IncidentEnded { .. } => "incident_ended",
            ReplyError::Store(_) => "store",
        }
    }
}

/// Why a further offer was not made.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("incident {0} does not exist")]
    NotFound(i64),
    #[error("incident {incident} is {state}: it takes no more offers")]
    Ended { incident: i64, state: State },
    /// At most one live offer per carer per incident.
    #[error(
        "carer {carer} already holds dispatch {dispatch} ({state}) for incident {incident}; \
         no second offer is made"
    )]
    AlreadyHeld {
        carer: i64,
        incident: i64,
        dispatch: i64,
        state: DispatchState,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for OfferError {
    fn from(e: sqlx::Error) -> Self {
        OfferError::Store(e.into())
    }
}

/// The dispatches' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait DispatchSql {
    /// A carer's answer in a transaction of its own, begun with `begin`
    /// (see [`Db::apply_carer_answer`]).
    async fn answer_offer(
        &mut self,
        begin: &'static str,
        dispatch_id: i64,
        carer_id: i64,
        answer: CarerAnswer,
        detail: &str,
        now: i64,
    ) -> Result<(i64, bool), ReplyError>;
    /// A further offer in a transaction of its own (see [`Db::add_offer`]).
    #[allow(clippy::too_many_arguments)]
    async fn offer_again(
        &mut self,
        begin: &'static str,
        incident_id: i64,
        d: &NewDispatch,
        offer_due_at: i64,
        actor: &str,
        why: &str,
        now: i64,
    ) -> Result<i64, OfferError>;
    async fn carers_asked(&mut self, incident_id: i64) -> Result<Vec<(i64,)>, sqlx::Error>;
    async fn dispatch_rows(
        &mut self,
        incident_id: i64,
    ) -> Result<Vec<(i64, i64, String)>, sqlx::Error>;
    async fn client_of_incident(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<(Option<i64>,)>, sqlx::Error>;
    async fn kind_of_incident(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<(String,)>, sqlx::Error>;
    async fn carer_row(&mut self, carer_id: i64) -> Result<Option<CarerRow>, sqlx::Error>;
}

impl<C> DispatchSql for C
where
    C: sqlx::Connection + TxSql + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> &'q str:
        sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database> + sqlx::Type<C::Database>,
    str: sqlx::Type<C::Database>,
    for<'q> f64: sqlx::Decode<'q, C::Database>,
    f64: sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Decode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn answer_offer(
        &mut self,
        begin: &'static str,
        dispatch_id: i64,
        carer_id: i64,
        answer: CarerAnswer,
        detail: &str,
        now: i64,
    ) -> Result<(i64, bool), ReplyError> {
        let lock = super::backend::row_lock::<C::Database>();
        // The incident's row first, then the dispatch's: the order a step
        // that ends the incident (and withdraws its offers) takes them in.
        let incident_select = format!(
            "SELECT i.id, i.state FROM incidents i WHERE i.id = \
             (SELECT d.incident_id FROM dispatches d WHERE d.id = $1){lock}"
        );
        let select =
            format!("SELECT incident_id, carer_id, state FROM dispatches WHERE id = $1{lock}");
        // As a `SqlStr`: a future holding the `&'static str` itself is not
        // taken for `Send` by the API's handlers.
        let mut tx = self.begin_with(sqlx::SqlStr::from_static(begin)).await?;
        let incident_row: Option<(i64, State)> =
            sqlx::query_as(sqlx::AssertSqlSafe(incident_select))
                .bind(dispatch_id)
                .fetch_optional(&mut *tx)
                .await?;
        let row: Option<(i64, i64, DispatchState)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(dispatch_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (Some((incident, owner, state)), Some((_, incident_state))) = (row, incident_row)
        else {
            return Err(ReplyError::NotFound(dispatch_id));
        };
        if owner != carer_id {
            return Err(ReplyError::NotYours {
                dispatch: dispatch_id,
                carer: carer_id,
                owner,
            });
        }
        if state == DispatchState::Withdrawn {
            return Err(ReplyError::Withdrawn {
                dispatch: dispatch_id,
                incident,
                incident_state,
            });
        }
        // Offers are withdrawn as their incident ends; this guards rows
        // written by an older server all the same.
        if answer == CarerAnswer::Accept
            && state == DispatchState::Offered
            && !incident_state.is_open()
        {
            return Err(ReplyError::IncidentEnded {
                dispatch: dispatch_id,
                incident,
                incident_state,
                answer,
            });
        }
        if !answer.allowed_from().contains(&state) {
            return Err(ReplyError::OutOfOrder {
                dispatch: dispatch_id,
                state,
                answer,
            });
        }
        let fresh = state != answer.state();
        if fresh {
            // The first accept and the first arrival keep their time: the
            // city's attendance figures are measured from them.
            sqlx::query(
                "UPDATE dispatches SET state = $1, updated_at = $2, \
                 accepted_at = COALESCE(accepted_at, $3), arrived_at = COALESCE(arrived_at, $4) \
                 WHERE id = $5",
            )
            .bind(answer.state())
            .bind(now)
            .bind((answer == CarerAnswer::Accept).then_some(now))
            .bind((answer == CarerAnswer::Arrived).then_some(now))
            .bind(dispatch_id)
            .execute(&mut *tx)
            .await?;
            // Busy while on any job (accepted or arrived), read from the
            // dispatches rather than from this answer: a carer who
            // completes one of two jobs is still on the other.
            sqlx::query(
                "UPDATE carers SET updated_at = $1, busy = EXISTS (SELECT 1 FROM dispatches d \
                 WHERE d.carer_id = $2 AND d.state IN ('accepted', 'arrived')) WHERE id = $2",
            )
            .bind(now)
            .bind(carer_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(incident)
            .bind(now)
            .bind(format!("carer:{carer_id}"))
            .bind(format!("carer_{}", answer.state()))
            .bind(format!(
                "dispatch {dispatch_id}{}{detail}",
                if detail.is_empty() { "" } else { ": " }
            ))
            .execute(&mut *tx)
            .await?;
            // A carer's answer is someone's act, as an operator's is: in
            // the audit chain, with the change it made.
            let actor = format!("carer:{carer_id}");
            let action = format!("carer_{}", answer.state());
            let subject = format!("dispatch:{dispatch_id}");
            let detail = format!(
                "incident {incident}{}{detail}",
                if detail.is_empty() { "" } else { ": " }
            );
            let entry = AuditEntry {
                actor: &actor,
                action: &action,
                subject: &subject,
                detail: &detail,
            };
            tx.append_audit(&entry, now).await?;
        }
        tx.commit().await?;
        Ok((incident, fresh))
    }

    async fn offer_again(
        &mut self,
        begin: &'static str,
        incident_id: i64,
        d: &NewDispatch,
        offer_due_at: i64,
        actor: &str,
        why: &str,
        now: i64,
    ) -> Result<i64, OfferError> {
        // The incident's row is locked against a step that ends it meanwhile
        // (PostgreSQL; SQLite's write transaction is alone).
        let lock = super::backend::row_lock::<C::Database>();
        let select = format!("SELECT state FROM incidents WHERE id = $1{lock}");
        let mut tx = self.begin_with(sqlx::SqlStr::from_static(begin)).await?;
        let state: Option<(State,)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(incident_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((state,)) = state else {
            return Err(OfferError::NotFound(incident_id));
        };
        if !state.is_open() {
            return Err(OfferError::Ended {
                incident: incident_id,
                state,
            });
        }
        let held: Option<(i64, DispatchState)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, state FROM dispatches WHERE incident_id = $1 AND carer_id = $2 \
             AND state IN {LIVE}"
        )))
        .bind(incident_id)
        .bind(d.carer_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((dispatch, state)) = held {
            return Err(OfferError::AlreadyHeld {
                carer: d.carer_id,
                incident: incident_id,
                dispatch,
                state,
            });
        }
        let id = tx.offer(incident_id, d, offer_due_at, now).await?;
        sqlx::query(
            "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
             VALUES ($1, $2, $3, 'carer_offered', $4)",
        )
        .bind(incident_id)
        .bind(now)
        .bind(actor)
        .bind(format!(
            "dispatch {id}: carer {} of provider {}{} ({why})",
            d.carer_id,
            d.provider_id,
            if d.fallback {
                " (fallback provider)"
            } else {
                ""
            }
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn carers_asked(&mut self, incident_id: i64) -> Result<Vec<(i64,)>, sqlx::Error> {
        sqlx::query_as("SELECT DISTINCT carer_id FROM dispatches WHERE incident_id = $1")
            .bind(incident_id)
            .fetch_all(self)
            .await
    }

    async fn dispatch_rows(
        &mut self,
        incident_id: i64,
    ) -> Result<Vec<(i64, i64, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, carer_id, state FROM dispatches WHERE incident_id = $1 ORDER BY id",
        )
        .bind(incident_id)
        .fetch_all(self)
        .await
    }

    async fn client_of_incident(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<(Option<i64>,)>, sqlx::Error> {
        sqlx::query_as("SELECT client_id FROM incidents WHERE id = $1")
            .bind(incident_id)
            .fetch_optional(self)
            .await
    }

    async fn kind_of_incident(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<(String,)>, sqlx::Error> {
        sqlx::query_as("SELECT kind FROM incidents WHERE id = $1")
            .bind(incident_id)
            .fetch_optional(self)
            .await
    }

    async fn carer_row(&mut self, carer_id: i64) -> Result<Option<CarerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, provider_id, name, lat, lon, on_duty, busy FROM carers WHERE id = $1",
        )
        .bind(carer_id)
        .fetch_optional(self)
        .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Record a carer's answer on the dispatch and the incident's timeline.
    /// Returns the incident's id and whether the answer was new (not a repeat).
    pub async fn apply_carer_answer(
        &self,
        dispatch_id: i64,
        carer_id: i64,
        answer: CarerAnswer,
        detail: &str,
    ) -> Result<(i64, bool), ReplyError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.answer_offer(begin, dispatch_id, carer_id, answer, detail, now)
                    .await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.answer_offer(begin, dispatch_id, carer_id, answer, detail, now)
                    .await
            }
        }
    }

    /// Carers asked already about this incident, whatever they answered:
    /// those who declined or let the offer expire are not asked again, and
    /// those who hold an offer have it.
    pub async fn carers_passed_over(&self, incident_id: i64) -> Result<Vec<i64>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.carers_asked(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.carers_asked(incident_id).await,
        }?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// A further offer on an incident already routed (after a decline or a
    /// timeout, or an operator's choice). Refused when the incident has ended
    /// or the carer holds a live offer for it already.
    pub async fn add_offer(
        &self,
        incident_id: i64,
        d: &NewDispatch,
        offer_due_at: i64,
        actor: &str,
        why: &str,
    ) -> Result<i64, OfferError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.offer_again(begin, incident_id, d, offer_due_at, actor, why, now)
                    .await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.offer_again(begin, incident_id, d, offer_due_at, actor, why, now)
                    .await
            }
        }
    }

    /// (state of every dispatch of an incident, in order) — tests and summaries.
    pub async fn dispatch_states(
        &self,
        incident_id: i64,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.dispatch_rows(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.dispatch_rows(incident_id).await,
        }?)
    }

    /// The client of an incident, if it has one.
    pub async fn incident_client(&self, incident_id: i64) -> Result<Option<i64>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.client_of_incident(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.client_of_incident(incident_id).await,
        }?;
        Ok(row.and_then(|r| r.0))
    }

    /// The kind of an incident, which names its rule.
    pub async fn incident_kind(&self, incident_id: i64) -> Result<Option<String>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.kind_of_incident(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.kind_of_incident(incident_id).await,
        }?;
        Ok(row.map(|r| r.0))
    }

    /// One carer, on duty or not.
    pub async fn carer(&self, carer_id: i64) -> Result<Option<CarerRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.carer_row(carer_id).await,
            Db::Postgres(p, _) => p.acquire().await?.carer_row(carer_id).await,
        }?)
    }
}
