//! Incidents for the console: the queue, one incident with everything an
//! operator needs, and what they do to it. Every action and every look at a
//! resident's profile is written to the audit log.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ACTORS, ApiError, ApiState, Caller, ErrorBody, STAFF};
use crate::domain::Action;
use crate::incident::CommandError;
use crate::store::{
    AuditEntry, DeviceStatus, DispatchRow, HandoffError, IncidentSummary, NotificationRow,
    QueueFilter, QueueRow, TimelineEntry, Transition, TransitionError,
};

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only incidents still needing someone (default true).
    open: Option<bool>,
    /// `life_safety` or `technical`.
    lane: Option<String>,
    /// At most this many (1–1000, default 200).
    limit: Option<i64>,
}

/// The queue: life-safety first, then technical; oldest first within each.
#[utoipa::path(
    get, path = "/api/v1/incidents", tag = "incidents",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<QueueRow>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<QueueRow>>, ApiError> {
    caller.require(STAFF)?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(l) = &q.lane
        && !matches!(l.as_str(), "life_safety" | "technical" | "informational")
    {
        return Err(ApiError::BadRequest(
            "lane must be life_safety, technical or informational".into(),
        ));
    }
    let rows =
        s.db.queue(&QueueFilter {
            open_only: q.open.unwrap_or(true),
            lane: q.lane.as_deref(),
            limit: q.limit.unwrap_or(200),
        })
        .await?;
    Ok(Json(rows))
}

/// A resident as the operator sees them: who, where, what they live with, who to call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub id: i64,
    pub name: String,
    pub address: String,
    pub district: String,
    pub street: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub language: String,
    pub medical_notes: String,
    pub medications: String,
    pub allergies: String,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<String>,
    pub away_until: Option<i64>,
    pub contacts: Vec<ContactView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub position: i64,
    pub name: String,
    pub relation: String,
    pub phone: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HandoffView {
    pub id: i64,
    pub service: String,
    pub reference: String,
    pub operator: String,
    pub at: i64,
    /// What the ambulance crew and the hospital were given.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    pub outcome: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentDetail {
    pub incident: IncidentSummary,
    pub client: Option<ClientView>,
    pub devices: Vec<DeviceStatus>,
    pub timeline: Vec<TimelineEntry>,
    pub dispatches: Vec<DispatchRow>,
    pub handoffs: Vec<HandoffView>,
    pub notifications: Vec<NotificationRow>,
}

/// One incident with its resident, devices, timeline, dispatches, hand-offs and family notices.
#[utoipa::path(
    get, path = "/api/v1/incidents/{id}", tag = "incidents",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = IncidentDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn detail(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<IncidentDetail>, ApiError> {
    caller.require(STAFF)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let incident = s.db.incident_summary(id).await?.ok_or(ApiError::NotFound)?;
    let client = match incident.client_id {
        Some(c) => s.db.client_profile(c).await?,
        None => None,
    };
    let devices = match &client {
        Some(c) => s.db.client_devices(c.id).await?,
        None => Vec::new(),
    };
    if let Some(c) = &client {
        // Medical data: every look is on record.
        s.db.audit(AuditEntry {
            actor: &caller.actor(),
            action: "profile_read",
            subject: &format!("client:{}", c.id),
            detail: &format!("incident {id}"),
        })
        .await?;
    }
    let handoffs =
        s.db.handoffs_of(id)
            .await?
            .into_iter()
            .map(|h| HandoffView {
                id: h.id,
                service: h.service,
                reference: h.reference,
                operator: h.operator,
                at: h.at,
                summary: h.summary,
                outcome: h.outcome,
            })
            .collect();
    Ok(Json(IncidentDetail {
        client: client.map(|c| ClientView {
            id: c.id,
            name: c.name,
            address: c.address,
            district: c.district,
            street: c.street,
            lat: c.lat,
            lon: c.lon,
            language: c.language,
            medical_notes: c.medical_notes,
            medications: c.medications,
            allergies: c.allergies,
            birth_year: c.birth_year,
            subsidy_category: c.subsidy_category,
            away_until: c.away_until,
            contacts: c
                .contacts
                .into_iter()
                .map(|k| ContactView {
                    position: k.position,
                    name: k.name,
                    relation: k.relation,
                    phone: k.phone,
                })
                .collect(),
        }),
        devices,
        timeline: s.db.timeline(id).await?,
        dispatches: s.db.dispatches_of(id).await?,
        handoffs,
        notifications: s.db.notifications_of(id).await?,
        incident,
    }))
}

/// What an operator says with a step.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    /// Reason or note for the timeline.
    #[serde(default)]
    pub detail: Option<String>,
    /// Outcome code, required to close (e.g. `help_given`, `false_alarm`, `hospital`).
    #[serde(default)]
    pub outcome: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepDone {
    pub id: i64,
    /// The incident's state after the step.
    pub state: String,
}

/// Longest free text accepted in a note, a reason or an outcome.
const TEXT_MAX: usize = 2000;

fn text(field: &str, v: Option<&str>) -> Result<String, ApiError> {
    let v = v.unwrap_or("").trim();
    if v.len() > TEXT_MAX || v.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "{field} must be at most {TEXT_MAX} bytes of text"
        )));
    }
    Ok(v.to_owned())
}

async fn step(
    s: &ApiState,
    caller: &Caller,
    id: i64,
    action: Action,
    body: &StepBody,
) -> Result<Json<StepDone>, ApiError> {
    caller.require(ACTORS)?;
    let detail = text("detail", body.detail.as_deref())?;
    let outcome = text("outcome", body.outcome.as_deref())?;
    if action == Action::Close && outcome.is_empty() {
        return Err(ApiError::BadRequest("closing needs an outcome code".into()));
    }
    let actor = format!("operator:{}", caller.username);
    let state =
        s.db.transition_audited(
            &Transition {
                incident_id: id,
                action,
                actor: &actor,
                detail: &detail,
                outcome: (!outcome.is_empty()).then_some(outcome.as_str()),
                merged_into: None,
            },
            &AuditEntry {
                actor: &caller.actor(),
                action: &format!("incident_{}", action.as_str()),
                subject: &format!("incident:{id}"),
                detail: &detail,
            },
        )
        .await
        .map_err(transition_error)?;
    s.feed.changed.notify_one();
    Ok(Json(StepDone {
        id,
        state: state.as_str().to_owned(),
    }))
}

fn transition_error(e: TransitionError) -> ApiError {
    match e {
        TransitionError::NotFound(_) => ApiError::NotFound,
        TransitionError::Illegal(_) | TransitionError::AlreadyClaimed(..) => {
            ApiError::Conflict(e.to_string())
        }
        TransitionError::UnknownState { .. } => ApiError::Conflict(e.to_string()),
        TransitionError::Store(e) => e.into(),
    }
}

/// A step's body is optional: none (or empty) is no detail and no outcome.
fn body_or_default(body: &[u8]) -> Result<StepBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StepBody::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("not a step body: {e}"),
    })
}

macro_rules! step_handler {
    ($name:ident, $action:expr, $path:literal, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(
            post, path = $path, tag = "incidents",
            params(("id" = i64, Path)),
            request_body(content = Option<StepBody>, content_type = "application/json"),
            responses(
                (status = 200, body = StepDone),
                (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
                (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
                (status = 409, body = ErrorBody, description = "not allowed from the incident's state"),
                (status = 422, body = ErrorBody),
            ),
            security(("bearer" = []))
        )]
        pub async fn $name(
            State(s): State<ApiState>,
            caller: Caller,
            id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
            body: axum::body::Bytes,
        ) -> Result<Json<StepDone>, ApiError> {
            let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
            let body = body_or_default(&body)?;
            step(&s, &caller, id, $action, &body).await
        }
    };
}

step_handler!(
    claim,
    Action::Claim,
    "/api/v1/incidents/{id}/claim",
    "Take the incident: it is yours until closed."
);
step_handler!(
    contact,
    Action::Contact,
    "/api/v1/incidents/{id}/contact",
    "Voice contact made (resident, family or neighbour)."
);
step_handler!(
    resolve,
    Action::Resolve,
    "/api/v1/incidents/{id}/resolve",
    "Help was given."
);
step_handler!(
    close,
    Action::Close,
    "/api/v1/incidents/{id}/close",
    "Close a resolved incident with an outcome code."
);
step_handler!(
    cancel,
    Action::Cancel,
    "/api/v1/incidents/{id}/cancel",
    "Cancel: the resident is fine, or it was a false alarm."
);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    pub text: String,
}

/// Write a note on the incident's timeline.
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/notes", tag = "incidents",
    params(("id" = i64, Path)),
    request_body = NoteBody,
    responses(
        (status = 201, body = StepDone),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn note(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: Result<Json<NoteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<StepDone>), ApiError> {
    caller.require(ACTORS)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(body) = body?;
    let note = text("text", Some(&body.text))?;
    if note.is_empty() {
        return Err(ApiError::BadRequest("a note needs text".into()));
    }
    let actor = format!("operator:{}", caller.username);
    let added =
        s.db.add_note(
            id,
            &actor,
            &note,
            &AuditEntry {
                actor: &caller.actor(),
                action: "incident_note",
                subject: &format!("incident:{id}"),
                detail: "",
            },
        )
        .await?;
    if !added {
        return Err(ApiError::NotFound);
    }
    s.feed.changed.notify_one();
    let state =
        s.db.incident_summary(id)
            .await?
            .map(|i| i.state)
            .unwrap_or_default();
    Ok((StatusCode::CREATED, Json(StepDone { id, state })))
}

/// A carer who could go, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CarerSuggestion {
    pub carer_id: i64,
    pub name: String,
    pub provider_id: i64,
    pub distance_m: Option<f64>,
    /// Not of the provider contracted for the resident's street.
    pub fallback: bool,
}

/// Carers available for this incident, in the order the server would ask them.
#[utoipa::path(
    get, path = "/api/v1/incidents/{id}/carers", tag = "incidents",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = Vec<CarerSuggestion>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn carers(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<CarerSuggestion>>, ApiError> {
    caller.require(STAFF)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let incident = s.db.incident_summary(id).await?.ok_or(ApiError::NotFound)?;
    let Some(client) = incident.client_id else {
        return Ok(Json(Vec::new()));
    };
    let Some(client) = s.db.client_profile(client).await? else {
        return Ok(Json(Vec::new()));
    };
    let candidates =
        s.db.carer_candidates(&client.district, &client.street)
            .await?;
    let mut out = Vec::new();
    for d in crate::routing::ranked(client.lat.zip(client.lon), &candidates) {
        let name =
            s.db.carer(d.carer_id)
                .await?
                .map(|c| c.name)
                .unwrap_or_default();
        out.push(CarerSuggestion {
            carer_id: d.carer_id,
            name,
            provider_id: d.provider_id,
            distance_m: d.distance_m,
            fallback: d.fallback,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchBody {
    pub carer_id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DispatchDone {
    pub dispatch_id: i64,
}

/// Offer the incident to a carer of the operator's choosing.
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/dispatch", tag = "incidents",
    params(("id" = i64, Path)),
    request_body = DispatchBody,
    responses(
        (status = 201, body = DispatchDone),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dispatch(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: Result<Json<DispatchBody>, JsonRejection>,
) -> Result<(StatusCode, Json<DispatchDone>), ApiError> {
    caller.require(ACTORS)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(body) = body?;
    let dispatch_id = s
        .stage
        .offer(id, body.carer_id, format!("operator:{}", caller.username))
        .await
        .map_err(command_error)?;
    s.db.audit(AuditEntry {
        actor: &caller.actor(),
        action: "incident_dispatch",
        subject: &format!("incident:{id}"),
        detail: &format!("dispatch {dispatch_id} to carer {}", body.carer_id),
    })
    .await?;
    s.feed.changed.notify_one();
    Ok((StatusCode::CREATED, Json(DispatchDone { dispatch_id })))
}

pub(super) fn command_error(e: CommandError) -> ApiError {
    match e {
        CommandError::Stopped => ApiError::Unavailable("the server is stopping; try again"),
        CommandError::Refused(why) => ApiError::Conflict(why),
        CommandError::Reply(r) if r.is_transient() => {
            ApiError::Unavailable("the database is unavailable; try again")
        }
        CommandError::Reply(r) => ApiError::Conflict(r.to_string()),
        CommandError::Store(e) => e.into(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffBody {
    /// `120` (ambulance), `110` (police) or `119` (fire).
    pub service: String,
    /// The reference the service gave.
    #[serde(default)]
    pub reference: String,
}

/// Record a call to an emergency service, with the resident's medical summary.
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/handoff", tag = "incidents",
    params(("id" = i64, Path)),
    request_body = HandoffBody,
    responses(
        (status = 201, body = HandoffView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn handoff(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: Result<Json<HandoffBody>, JsonRejection>,
) -> Result<(StatusCode, Json<HandoffView>), ApiError> {
    caller.require(ACTORS)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(body) = body?;
    let reference = text("reference", Some(&body.reference))?;
    let operator = format!("operator:{}", caller.username);
    let h =
        s.db.record_handoff(id, &body.service, &reference, &operator)
            .await
            .map_err(|e| match e {
                HandoffError::Service(_) => ApiError::BadRequest(e.to_string()),
                HandoffError::NoClient(_) => ApiError::Conflict(e.to_string()),
                HandoffError::NotFound(_) => ApiError::NotFound,
                HandoffError::Transition(t) => transition_error(t),
                HandoffError::Store(e) => e.into(),
            })?;
    s.db.audit(AuditEntry {
        actor: &caller.actor(),
        action: "incident_handoff",
        subject: &format!("incident:{id}"),
        detail: &format!("{} {}", h.service, h.reference),
    })
    .await?;
    s.feed.changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(HandoffView {
            id: h.id,
            service: h.service,
            reference: h.reference,
            operator: h.operator,
            at: h.at,
            summary: h.summary,
            outcome: h.outcome,
        }),
    ))
}
