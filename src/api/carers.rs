//! A carer's own view: the offers and jobs given to them, and their answers
//! (the same answers a carer's app may send over MQTT).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::ToSchema;

use super::incidents::{clean_text, command_error};
use super::{ApiError, ApiState, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_store::{AuditEntry, CarerAnswer, CarerJob};

const CARERS: &[Role] = &[Role::Carer];

fn my_carer_id(caller: &Caller) -> Result<i64, ApiError> {
    caller.require(CARERS)?;
    // An account of role carer always names its carer; one that does not is
    // refused rather than shown someone else's jobs.
    caller.carer_id.ok_or(ApiError::Forbidden(CARERS))
}

/// My offers and jobs not yet finished, newest first, with what I need at the
/// door; an offer withdrawn in the last hour (its incident ended) is listed
/// with state `withdrawn` and without the resident's medical details.
#[utoipa::path(
    get, path = "/api/v1/carer/jobs", tag = "carers",
    responses(
        (status = 200, body = Vec<CarerJob>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn jobs(
    State(s): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<CarerJob>>, ApiError> {
    let carer = my_carer_id(&caller)?;
    let jobs = s.db.carer_jobs(carer).await?;
    for j in jobs
        .iter()
        .filter(|j| j.state != pingantong_domain::DispatchState::Withdrawn)
    {
        s.db.audit(AuditEntry {
            actor: &caller.actor(),
            action: "profile_read",
            subject: &format!("client:{}", j.client_id),
            detail: &format!("dispatch {}", j.dispatch_id),
        })
        .await?;
    }
    Ok(Json(jobs))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    pub action: AnswerAction,
    /// Why a decline (e.g. `too_far`, `busy`).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
    /// How a job ended, with `completed` (e.g. `help_given`, `hospital`).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerAction {
    Accept,
    Decline,
    Arrived,
    Completed,
}

impl AnswerAction {
    fn answer(self) -> CarerAnswer {
        match self {
            AnswerAction::Accept => CarerAnswer::Accept,
            AnswerAction::Decline => CarerAnswer::Decline,
            AnswerAction::Arrived => CarerAnswer::Arrived,
            AnswerAction::Completed => CarerAnswer::Completed,
        }
    }
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Answered {
    pub dispatch_id: i64,
    pub action: AnswerAction,
}

/// Answer an offer or report on a job: accept, decline (with a reason), arrived, completed (with an outcome).
#[utoipa::path(
    post, path = "/api/v1/dispatches/{id}/answer", tag = "carers",
    params(("id" = i64, Path)),
    request_body = AnswerBody,
    responses(
        (status = 200, body = Answered),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not your dispatch, or not in a state this answer follows"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn answer(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: Result<Json<AnswerBody>, JsonRejection>,
) -> Result<Json<Answered>, ApiError> {
    let carer = my_carer_id(&caller)?;
    let Path(dispatch) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(body) = body?;
    let action = body.action.answer();
    let reason = body
        .reason
        .as_deref()
        .map(|t| clean_text("reason", t, 500))
        .transpose()?;
    let outcome = body
        .outcome
        .as_deref()
        .map(|t| clean_text("outcome", t, 500))
        .transpose()?;
    s.stage
        .answer(carer, dispatch, action, reason.clone(), outcome.clone())
        .await
        .map_err(command_error)?;
    s.db.audit(AuditEntry {
        actor: &caller.actor(),
        action: &format!("dispatch_{}", action.verb()),
        subject: &format!("dispatch:{dispatch}"),
        detail: reason.as_deref().or(outcome.as_deref()).unwrap_or(""),
    })
    .await?;
    s.feed.changed.notify_one();
    Ok(Json(Answered {
        dispatch_id: dispatch,
        action: body.action,
    }))
}
