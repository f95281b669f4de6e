//! Emergency hand-offs (120 ambulance, 110 police, 119 fire): who called whom,
//! the reference they gave, and the summary the hospital needs.

use serde_json::json;

use super::{Db, StoreError, Transition, TransitionError, now_ms, on_pool, on_write_pool};
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
        let id: i64 = on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO handoffs (incident_id, service, reference, operator, at, summary) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(incident_id)
            .bind(service)
            .bind(reference)
            .bind(operator)
            .bind(now)
            .bind(&text)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
                 VALUES ($1, $2, $3, 'emergency_handoff', $4)",
            )
            .bind(incident_id)
            .bind(now)
            .bind(operator)
            .bind(format!("hand-off {id}: {detail}"))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            id
        });
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
        let incident: Option<(i64,)> = on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
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
            row
        });
        incident.map(|_| ()).ok_or(HandoffError::NotFound(id))
    }

    /// Hand-offs without an outcome yet: the follow-up list.
    pub async fn open_handoffs(&self) -> Result<Vec<Handoff>, StoreError> {
        let rows: Vec<HandoffRow> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id, incident_id, service, reference, operator, at, summary, outcome \
             FROM handoffs WHERE outcome IS NULL ORDER BY at"
        )
        .fetch_all(p)
        .await)?;
        rows.into_iter()
            .map(|r| from_row(self.vault(), r))
            .collect()
    }

    /// Every hand-off of one incident, oldest first.
    pub async fn handoffs_of(&self, incident_id: i64) -> Result<Vec<Handoff>, StoreError> {
        let rows: Vec<HandoffRow> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id, incident_id, service, reference, operator, at, summary, outcome \
             FROM handoffs WHERE incident_id = $1 ORDER BY id"
        )
        .bind(incident_id)
        .fetch_all(p)
        .await)?;
        rows.into_iter()
            .map(|r| from_row(self.vault(), r))
            .collect()
    }
}
