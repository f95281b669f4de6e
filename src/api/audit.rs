//! The audit log over HTTP: `GET /api/v1/audit/verify` checks the whole chain.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, Caller};
use crate::domain::Role;
use crate::store::Db;

/// Who may check the chain.
const VERIFIERS: &[Role] = &[Role::Admin, Role::Supervisor];

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/v1/audit/verify", get(verify))
        .with_state(db)
}

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
