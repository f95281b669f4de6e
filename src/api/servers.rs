//! The servers sharing the database, for the console: which are up.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_pipeline::cluster::Membership;
use pingantong_store::{Db, now_ms};

/// Who sees the servers: the staff of the centre.
const READERS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Operator];

#[derive(Clone)]
struct Servers {
    db: Db,
    cluster: Arc<Membership>,
}

impl axum::extract::FromRef<Servers> for Db {
    fn from_ref(s: &Servers) -> Db {
        s.db.clone()
    }
}

pub fn router(db: Db, cluster: Arc<Membership>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .with_state(Servers { db, cluster })
}

/// Every server that joined this database: up (its lease holds), stopped,
/// or gone silent; `this` is the one answering.
#[utoipa::path(
    get, path = "/api/v1/servers", tag = "health",
    responses(
        (status = 200, description = "`[{instance_id, version, host, pid, started_at, renewed_at, lease_until, stopped_at, up, this}]`", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(State(s): State<Servers>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(READERS)?;
    let now = now_ms();
    let servers = s.db.servers().await?;
    Ok(Json(Value::Array(
        servers
            .into_iter()
            .map(|row| {
                let mut v = json!(row);
                v["up"] = json!(row.is_up(now));
                v["this"] = json!(row.instance_id == s.cluster.instance());
                v
            })
            .collect(),
    )))
}
