//! The wellbeing work list: residents whose devices nobody has used for a
//! while are called, and each call's outcome is kept.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{ACTORS, ApiError, ApiState, Caller, ErrorBody, STAFF};
use pingantong_store::{AuditEntry, WELLBEING_OUTCOMES, WellbeingRow, now_ms};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Unused for at least this many hours (default 24).
    #[param(minimum = 1, maximum = 720)]
    hours: Option<i64>,
    /// At most this many (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<i64>,
}

/// Residents to call: no press, cancel or test on any of their devices for
/// `hours`, not called in that time, not away; longest silence first.
#[utoipa::path(
    get, path = "/api/v1/wellbeing", tag = "wellbeing",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<WellbeingRow>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<WellbeingRow>>, ApiError> {
    caller.require(STAFF)?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let hours = q.hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::BadRequest(
            "hours must be between 1 and 720".into(),
        ));
    }
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 5000".into(),
        ));
    }
    let now = now_ms();
    let rows =
        s.db.wellbeing_list(now - hours * 3_600_000, now, limit)
            .await?;
    Ok(Json(rows))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    pub outcome: CheckOutcome,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub note: String,
}

/// How the call went.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    Well,
    NeedsHelp,
    NoAnswer,
    Visited,
    Away,
}

impl CheckOutcome {
    fn as_str(self) -> &'static str {
        match self {
            CheckOutcome::Well => "well",
            CheckOutcome::NeedsHelp => "needs_help",
            CheckOutcome::NoAnswer => "no_answer",
            CheckOutcome::Visited => "visited",
            CheckOutcome::Away => "away",
        }
    }
}

/// Record a wellbeing call and how it went.
#[utoipa::path(
    post, path = "/api/v1/clients/{id}/wellbeing-checks", tag = "wellbeing",
    params(("id" = i64, Path)),
    request_body = CheckBody,
    responses(
        (status = 201),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<CheckBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(ACTORS)?;
    let Path(client) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(body) = body?;
    let outcome = body.outcome.as_str();
    debug_assert!(WELLBEING_OUTCOMES.contains(&outcome));
    let note = super::incidents::clean_text("note", &body.note, 2000)?;
    let recorded =
        s.db.record_wellbeing_check(
            client,
            &format!("operator:{}", caller.username),
            outcome,
            &note,
            &AuditEntry {
                actor: &caller.actor(),
                action: "wellbeing_check",
                subject: &format!("client:{client}"),
                detail: outcome,
            },
        )
        .await?;
    if recorded {
        Ok(StatusCode::CREATED)
    } else {
        Err(ApiError::NotFound)
    }
}
