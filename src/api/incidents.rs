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
use pingantong_domain::{Action, CancelReason, State as IncidentState};
use pingantong_pipeline::incident::CommandError;
use pingantong_protocol::Lane;
use pingantong_store::{
    AuditEntry, DeviceStatus, DispatchRow, HandoffError, IncidentSummary, NotificationRow,
    QueueFilter, QueueRow, TimelineEntry, Transition, TransitionError,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only incidents still needing someone (default true); ignored with `state`.
    open: Option<bool>,
    /// Only this lane.
    #[param(inline)]
    lane: Option<Lane>,
    /// Only incidents in exactly this state, open or not (`resolved`: help
    /// was given and an operator has still to close it). Overrides `open`.
    #[param(inline)]
    state: Option<IncidentState>,
    /// At most this many (default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The queue: life-safety first, then technical; oldest first within each.
/// With `state`, the incidents in that state instead (the same order).
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
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let rows =
        s.db.queue(&QueueFilter {
            open_only: q.open.unwrap_or(true),
            lane: q.lane.map(Lane::as_str),
            state: q.state.map(IncidentState::as_str),
            limit,
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
    /// The code of the key safe at the door, to read to a carer or crew.
    pub key_safe: String,
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

impl From<pingantong_store::Handoff> for HandoffView {
    fn from(h: pingantong_store::Handoff) -> Self {
        Self {
            id: h.id,
            service: h.service,
            reference: h.reference,
            operator: h.operator,
            at: h.at,
            summary: h.summary,
            outcome: h.outcome,
        }
    }
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
            .map(HandoffView::from)
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
            key_safe: c.key_safe,
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
    #[schema(max_length = 2000)]
    pub detail: Option<String>,
    /// Outcome code (e.g. `help_given`, `false_alarm`, `hospital`).
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub outcome: Option<String>,
    /// Resolve an incident another operator holds, taking it over (recorded
    /// on the timeline and the audit log). Without it that is refused (409).
    #[serde(default)]
    pub take_over: bool,
}

/// Closing says how it ended.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {
    /// Outcome code (e.g. `help_given`, `false_alarm`, `hospital`, `no_action_needed`).
    #[schema(min_length = 1, max_length = 2000, pattern = "\\S")]
    pub outcome: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub detail: Option<String>,
    /// Close an incident another operator holds, taking it over.
    #[serde(default)]
    pub take_over: bool,
}

/// Cancelling a call for help (a life-safety incident) says why, from a fixed
/// list, and confirms it; a technical job may be cancelled with neither.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why: `resident_false_alarm`, `duplicate`, `test`, `device_fault`, `operator_error`.
    #[serde(default)]
    pub reason: Option<CancelReason>,
    /// `true`: the operator confirmed the cancel (the console asks).
    #[serde(default)]
    pub confirm: bool,
    /// A note for the timeline.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub detail: Option<String>,
    /// Cancel an incident another operator holds, taking it over.
    #[serde(default)]
    pub take_over: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepDone {
    pub id: i64,
    /// The incident's state after the step.
    pub state: IncidentState,
}

/// Longest free text accepted in a note, a reason or an outcome, in characters.
const TEXT_MAX: usize = 2000;

/// Free text as stored: trimmed, at most [`TEXT_MAX`] characters, NUL (which
/// PostgreSQL text cannot hold) shown as U+FFFD rather than refused.
pub(super) fn text(field: &str, v: Option<&str>) -> Result<String, ApiError> {
    clean_text(field, v.unwrap_or(""), TEXT_MAX)
}

pub(super) fn clean_text(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    if v.chars().count() > max {
        return Err(ApiError::BadRequest(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(v.trim().replace('\0', "\u{fffd}"))
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
                take_over: body.take_over,
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
    if !state.is_open() {
        // Offers the end took back are owed to the carers' phones: sent now.
        s.stage.send_withdrawals();
    }
    s.feed.changed.notify_one();
    Ok(Json(StepDone { id, state }))
}

fn transition_error(e: TransitionError) -> ApiError {
    match e {
        TransitionError::NotFound(_) => ApiError::NotFound,
        TransitionError::Illegal(_)
        | TransitionError::AlreadyClaimed(..)
        | TransitionError::ClaimedByOther { .. } => ApiError::Conflict(e.to_string()),
        TransitionError::CancelReasonNeeded { .. } => ApiError::BadRequest(e.to_string()),
        TransitionError::UnknownState { .. } => ApiError::Conflict(e.to_string()),
        TransitionError::Store(e) => e.into(),
    }
}

/// A step's body is optional: none, empty or `null` is no detail and no outcome.
fn body_or_default(body: &[u8]) -> Result<StepBody, ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
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
/// Close a resolved incident with an outcome code.
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/close", tag = "incidents",
    params(("id" = i64, Path)),
    request_body = CloseBody,
    responses(
        (status = 200, body = StepDone),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not allowed from the incident's state"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn close(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: Result<Json<CloseBody>, JsonRejection>,
) -> Result<Json<StepDone>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(body) = body?;
    let step_body = StepBody {
        detail: body.detail,
        outcome: Some(body.outcome),
        take_over: body.take_over,
    };
    step(&s, &caller, id, Action::Close, &step_body).await
}

/// Cancel: the resident is fine, or it was a false alarm. A life-safety
/// incident needs a `reason` from the list and `confirm: true`.
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/cancel", tag = "incidents",
    params(("id" = i64, Path)),
    request_body(content = Option<CancelBody>, content_type = "application/json"),
    responses(
        (status = 200, body = StepDone),
        (status = 400, body = ErrorBody, description = "a call for help without a reason or confirmation"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not allowed from the incident's state, or another operator holds it"),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<StepDone>, ApiError> {
    caller.require(ACTORS)?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let trimmed = body.trim_ascii();
    let body: CancelBody = if trimmed.is_empty() || trimmed == b"null" {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("not a cancel body: {e}"),
        })?
    };
    let incident = s.db.incident_summary(id).await?.ok_or(ApiError::NotFound)?;
    if incident.lane == "life_safety" {
        // The store refuses a cancel without a reason too; the confirmation
        // is the console's question, asked here of every client.
        if body.reason.is_none() {
            return Err(ApiError::BadRequest(format!(
                "cancelling a call for help needs a reason, one of: {}",
                CancelReason::list()
            )));
        }
        if !body.confirm {
            return Err(ApiError::BadRequest(
                "cancelling a call for help needs confirm: true".into(),
            ));
        }
    }
    let step_body = StepBody {
        detail: body.detail,
        outcome: body.reason.map(|r| r.as_str().to_owned()),
        take_over: body.take_over,
    };
    step(&s, &caller, id, Action::Cancel, &step_body).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    #[schema(min_length = 1, max_length = 2000, pattern = "\\S")]
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
    // The note is in: the incident is there (incidents are never deleted).
    let state =
        s.db.incident_summary(id)
            .await?
            .map(|i| i.state)
            .ok_or(ApiError::NotFound)?;
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
    let mut candidates =
        s.db.carer_candidates(&client.district, &client.street)
            .await?;
    // A carer who holds a live offer for this incident already is not
    // suggested (the console pre-selects the first): a second offer to them
    // would be refused. They are in the incident's dispatches.
    let holding: Vec<i64> =
        s.db.dispatches_of(id)
            .await?
            .into_iter()
            .filter(|d| d.state.is_live())
            .map(|d| d.carer_id)
            .collect();
    for c in &mut candidates {
        if c.carer_id.is_some_and(|id| holding.contains(&id)) {
            c.carer_id = None;
        }
    }
    // Ranked from where the alarm says the person is, else from home.
    let from =
        s.db.incident_position(id)
            .await?
            .or(client.lat.zip(client.lon));
    let mut out = Vec::new();
    for d in pingantong_pipeline::routing::ranked(from, &candidates) {
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
    #[serde(deserialize_with = "whole_number")]
    pub carer_id: i64,
}

/// An integer, written as JSON allows it (`7` or `7.0`).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number"
        ))),
    }
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
    pub service: Service,
    /// The reference the service gave.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub reference: String,
}

/// `120` (ambulance), `110` (police) or `119` (fire).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
pub enum Service {
    #[serde(rename = "120")]
    Ambulance,
    #[serde(rename = "110")]
    Police,
    #[serde(rename = "119")]
    Fire,
}

impl Service {
    fn code(self) -> &'static str {
        match self {
            Service::Ambulance => "120",
            Service::Police => "110",
            Service::Fire => "119",
        }
    }
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
        s.db.record_handoff(id, body.service.code(), &reference, &operator)
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
    Ok((StatusCode::CREATED, Json(HandoffView::from(h))))
}
