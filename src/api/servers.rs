//! The servers sharing the database, for the console: which are up.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_pipeline::cluster::Membership;
use pingantong_store::{Db, now_ms};

/// Who sees the servers: the staff of the centre.
const READERS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Operator];

/// A server as the console shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ServerView {
    instance_id: String,
    version: String,
    host: String,
    pid: i64,
    started_at: i64,
    /// When it last renewed its lease.
    renewed_at: i64,
    lease_until: i64,
    /// Set when it stopped cleanly.
    stopped_at: Option<i64>,
    /// Its lease holds.
    up: bool,
    /// The server answering this request.
    this: bool,
}

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
        (status = 200, body = [ServerView]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(State(s): State<Servers>, caller: Caller) -> Result<Json<Vec<ServerView>>, ApiError> {
    caller.require(READERS)?;
    let now = now_ms();
    let servers = s.db.servers().await?;
    Ok(Json(
        servers
            .into_iter()
            .map(|r| ServerView {
                up: r.is_up(now),
                this: r.instance_id == s.cluster.instance(),
                instance_id: r.instance_id,
                version: r.version,
                host: r.host,
                pid: r.pid,
                started_at: r.started_at,
                renewed_at: r.renewed_at,
                lease_until: r.lease_until,
                stopped_at: r.stopped_at,
            })
            .collect(),
    ))
}
