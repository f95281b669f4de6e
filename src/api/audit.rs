//! The audit log over HTTP: `GET /api/v1/audit/verify` checks the whole chain.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_store::Db;

/// Who may check the chain.
const VERIFIERS: &[Role] = &[Role::Admin, Role::Supervisor];

pub fn router(db: Db) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(verify)).with_state(db)
}

/// Check the audit log's hash chain, first entry to last.
#[utoipa::path(
    get, path = "/api/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "`{ok, entries, broken: null | {id, fault, why}}`", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn verify(State(db): State<Db>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(VERIFIERS)?;
    let report = db.verify_audit_chain().await?;
    Ok(Json(json!({
        "ok": report.is_ok(),
        "entries": report.entries,
        "broken": report.broken.map(|b| json!({
            "id": b.id,
            "fault": b.fault,
            "why": b.fault.to_string(),
        })),
    })))
}
