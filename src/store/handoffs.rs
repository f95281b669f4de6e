//! Emergency hand-offs (120 ambulance, 110 police, 119 fire): who called whom,
//! the reference they gave, and the summary the hospital needs.

use serde_json::json;

use super::{Db, StoreError, Transition, TransitionError, now_ms};
use crate::vault::{Field, Vault};
use pingantong_domain::Action;

#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    pub id: i64,
    pub incident_id: i64,
    pub service: String,
    pub reference: String,
    pub operator: String,
    pub at: i64,
    pub summary: serde_json::Value,
    pub outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("service {0:?} is not 120, 110 or 119")]
    Service(String),
    #[error("incident {0} has no resident on file; record the hand-off on the timeline instead")]
    NoClient(i64),
    #[error("hand-off {0} does not exist")]
    NotFound(i64),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for HandoffError {
    fn from(e: sqlx::Error) -> Self {
        HandoffError::Store(e.into())
    }
}

type HandoffRow = (
    i64,
    i64,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
);

fn from_row(v: &Vault, r: HandoffRow) -> Result<Handoff, StoreError> {
    let summary = v.open_text(Field::Handoff, &r.6)?;
    Ok(Handoff {
        id: r.0,
        incident_id: r.1,
        service: r.2,
        reference: r.3,
        operator: r.4,
        at: r.5,
        summary: serde_json::from_str(&summary).unwrap_or_default(),
        outcome: r.7,
    })
}

/// A hand-off to insert, its summary sealed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewHandoff<'a> {
    pub incident_id: i64,
    pub service: &'a str,
    pub reference: &'a str,
    pub operator: &'a str,
    pub at: i64,
    pub summary: &'a str,
}

/// The hand-offs' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait HandoffSql {
    /// Insert a hand-off with its timeline line (`detail` after its id), in
    /// a transaction of its own; its id.
    async fn insert_handoff(
        &mut self,
        h: &NewHandoff<'_>,
        detail: &str,
    ) -> Result<i64, sqlx::Error>;
    /// Record hand-off `id`'s outcome with its timeline line; its incident,
    /// if the hand-off exists.
    async fn set_handoff_outcome(
        &mut self,
        id: i64,
        outcome: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<(i64,)>, sqlx::Error>;
    /// Hand-offs without an outcome, oldest first.
    async fn open_handoff_rows(&mut self) -> Result<Vec<HandoffRow>, sqlx::Error>;
    /// One incident's hand-offs, in order.
    async fn handoff_rows_of(&mut self, incident_id: i64) -> Result<Vec<HandoffRow>, sqlx::Error>;
}

impl<C> HandoffSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn insert_handoff(
        &mut self,
        h: &NewHandoff<'_>,
        detail: &str,
    ) -> Result<i64, sqlx::Error> {
        let mut tx = self.begin().await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO handoffs (incident_id, service, reference, operator, at, summary) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(h.incident_id)
        .bind(h.service)
        .bind(h.reference)
        .bind(h.operator)
        .bind(h.at)
        .bind(h.summary)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
             VALUES ($1, $2, $3, 'emergency_handoff', $4)",
        )
        .bind(h.incident_id)
        .bind(h.at)
        .bind(h.operator)
        .bind(format!("hand-off {id}: {detail}"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn set_handoff_outcome(
        &mut self,
        id: i64,
        outcome: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<(i64,)>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE handoffs SET outcome = $1, outcome_at = $2 WHERE id = $3 RETURNING incident_id",
        )
        .bind(outcome)
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((incident,)) = row {
            sqlx::query(
                "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
                 VALUES ($1, $2, $3, 'handoff_outcome', $4)",
            )
            .bind(incident)
            .bind(now)
            .bind(actor)
            .bind(format!("hand-off {id}: {outcome}"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    async fn open_handoff_rows(&mut self) -> Result<Vec<HandoffRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, incident_id, service, reference, operator, at, summary, outcome \
             FROM handoffs WHERE outcome IS NULL ORDER BY at",
        )
        .fetch_all(self)
        .await
    }

    async fn handoff_rows_of(&mut self, incident_id: i64) -> Result<Vec<HandoffRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, incident_id, service, reference, operator, at, summary, outcome \
             FROM handoffs WHERE incident_id = $1 ORDER BY id",
        )
        .bind(incident_id)
        .fetch_all(self)
        .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Record a call to an emergency service: the incident moves to
    /// *dispatched* (never back), and the hand-off keeps a medical summary
    /// of the resident as it stood at that moment.
    pub async fn record_handoff(
        &self,
        incident_id: i64,
        service: &str,
        reference: &str,
        operator: &str,
    ) -> Result<Handoff, HandoffError> {
        if !matches!(service, "120" | "110" | "119") {
            return Err(HandoffError::Service(service.to_owned()));
        }
        let client_id = self
            .incident_client(incident_id)
            .await?
            .ok_or(HandoffError::NoClient(incident_id))?;
        let client = self
            .client_profile(client_id)
            .await?
            .ok_or(HandoffError::NoClient(incident_id))?;
        let position = self.incident_position(incident_id).await?;
        let detail = format!("{service} called, reference {reference:?}");
        // The state machine first: a closed incident takes no hand-off.
        self.transition(&Transition {
            incident_id,
            action: Action::Dispatch,
            actor: operator,
            detail: &detail,
            outcome: None,
            merged_into: None,
            take_over: false,
        })
        .await?;
        let now = now_ms();
        // Mean Gregorian year in ms: good to the year, which is all a crew needs.
        const MS_PER_YEAR: i64 = 31_556_952_000;
        let age = client.birth_year.map(|y| 1970 + now / MS_PER_YEAR - y);
        let summary = json!({
            "name": client.name,
            "age": age,
            "address": client.address,
            "district": client.district,
            "street": client.street,
            "home": client.lat.zip(client.lon).map(|(lat, lon)| json!({"lat": lat, "lon": lon})),
            "last_known_position": position.map(|(lat, lon)| json!({"lat": lat, "lon": lon})),
            "language": client.language,
            "conditions": client.medical_notes,
            "medications": client.medications,
            "allergies": client.allergies,
            "contacts": client.contacts.iter().map(|c| json!({
                "name": c.name, "relation": c.relation, "phone": c.phone,
            })).collect::<Vec<_>>(),
        });
        let text = self
            .vault()
            .seal_text(Field::Handoff, &summary.to_string())
            .map_err(StoreError::from)?;
        let new = NewHandoff {
            incident_id,
            service,
            reference,
            operator,
            at: now,
            summary: &text,
        };
        let id = match self {
            Db::Sqlite { write, .. } => write.acquire().await?.insert_handoff(&new, &detail).await,
            Db::Postgres(p, _) => p.acquire().await?.insert_handoff(&new, &detail).await,
        }?;
        Ok(Handoff {
            id,
            incident_id,
            service: service.to_owned(),
            reference: reference.to_owned(),
            operator: operator.to_owned(),
            at: now,
            summary,
            outcome: None,
        })
    }

    /// What came of a hand-off (admitted, treated at home, no transport …).
    pub async fn handoff_outcome(
        &self,
        id: i64,
        outcome: &str,
        actor: &str,
    ) -> Result<(), HandoffError> {
        let now = now_ms();
        let incident = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_handoff_outcome(id, outcome, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .set_handoff_outcome(id, outcome, actor, now)
                    .await
            }
        }?;
        incident.map(|_| ()).ok_or(HandoffError::NotFound(id))
    }

    /// Hand-offs without an outcome yet: the follow-up list.
    pub async fn open_handoffs(&self) -> Result<Vec<Handoff>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.open_handoff_rows().await,
            Db::Postgres(p, _) => p.acquire().await?.open_handoff_rows().await,
        }?;
        rows.into_iter()
            .map(|r| from_row(self.vault(), r))
            .collect()
    }

    /// Every hand-off of one incident, oldest first.
    pub async fn handoffs_of(&self, incident_id: i64) -> Result<Vec<Handoff>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.handoff_rows_of(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.handoff_rows_of(incident_id).await,
        }?;
        rows.into_iter()
            .map(|r| from_row(self.vault(), r))
            .collect()
    }
}
