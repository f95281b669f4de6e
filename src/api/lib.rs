//! HTTP: health, readiness and metrics; console log-in, the audit log, the
//! city's reports (the operator console and its API grow here). Every error body is JSON.

mod accounts;
mod audit;
pub mod auth;
mod carers;
mod console;
mod error;
mod feed;
mod import;
mod incidents;
pub mod listener;
pub mod mqtt_credentials;
mod registry;
mod reports;
mod servers;
mod wellbeing;

use std::sync::{Arc, OnceLock};

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{AuthConfig, Caller};
pub use error::ApiError;
pub use feed::Feed;

use pingantong_domain::Role;
use pingantong_pipeline::dispatch::MqttStatus;
use pingantong_pipeline::incident::StageHandle;
use pingantong_sla::SlaTargets;
use pingantong_store::Db;
use pingantong_store::writer::WriterStats;

/// Who reads the incident queue and the residents behind it.
const STAFF: &[Role] = &[Role::Operator, Role::Supervisor, Role::Admin];
/// Who acts on incidents.
const ACTORS: &[Role] = &[Role::Operator, Role::Supervisor];

/// Every error body: `{"error": "…"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// What the API needs of the running server.
#[derive(Clone)]
pub struct ApiContext {
    pub db: Db,
    pub mqtt: MqttStatus,
    /// The database's state as the store writer's commits find it.
    pub store: Arc<WriterStats>,
    pub auth: AuthConfig,
    pub stage: StageHandle,
    pub feed: Arc<Feed>,
    /// The targets the city's reports measure against.
    pub sla: SlaTargets,
    /// HTTPS when set (the certificate and key, loaded at start).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Issues and revokes MQTT credentials.
    pub mqtt_credentials: mqtt_credentials::MqttCredentials,
    /// This server's lease among those sharing the database.
    pub cluster: Arc<pingantong_pipeline::cluster::Membership>,
}

#[derive(Clone)]
pub(crate) struct ApiState {
    db: Db,
    stage: StageHandle,
    feed: Arc<Feed>,
}

impl FromRef<ApiState> for Db {
    fn from_ref(s: &ApiState) -> Db {
        s.db.clone()
    }
}

#[derive(Clone)]
struct HealthState {
    db: Db,
    mqtt: MqttStatus,
    store: Arc<WriterStats>,
    cluster: Arc<pingantong_pipeline::cluster::Membership>,
    metrics: Option<PrometheusHandle>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ping An Tong (平安通) API",
        description = "Emergency alarm dispatch: the operator console, carers, and the city's reports. \
            Log in with POST /api/v1/session and send the token as `Authorization: Bearer …`. \
            Every error body is `{\"error\": \"…\"}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&Bearer),
    tags(
        (name = "incidents", description = "The operator queue and what operators do"),
        (name = "carers", description = "A carer's own jobs and answers"),
        (name = "wellbeing", description = "Residents to call because their devices go unused"),
        (name = "registry", description = "Clients, contacts, devices, providers, carers, the alarm log, and CSV import"),
        (name = "reports", description = "The city's monthly service figures and SLA breaches"),
        (name = "session", description = "Log-in and log-out"),
        (name = "accounts", description = "Console accounts, for admins: list, disable, enable, new password"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "mqtt", description = "MQTT credentials of devices and carers' phones, for admins"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The process-wide metrics recorder, installed on first use.
fn metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ])
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Every route and the OpenAPI document that describes exactly them.
pub fn routes(ctx: ApiContext) -> (Router, utoipa::openapi::OpenApi) {
    let health = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(render_metrics))
        .with_state(HealthState {
            db: ctx.db.clone(),
            mqtt: ctx.mqtt,
            store: Arc::clone(&ctx.store),
            cluster: Arc::clone(&ctx.cluster),
            metrics: metrics(),
        });
    let console = OpenApiRouter::new()
        .routes(routes!(incidents::list))
        .routes(routes!(incidents::detail))
        .routes(routes!(incidents::claim))
        .routes(routes!(incidents::contact))
        .routes(routes!(incidents::resolve))
        .routes(routes!(incidents::close))
        .routes(routes!(incidents::cancel))
        .routes(routes!(incidents::note))
        .routes(routes!(incidents::carers))
        .routes(routes!(incidents::dispatch))
        .routes(routes!(incidents::handoff))
        .routes(routes!(carers::jobs))
        .routes(routes!(carers::answer))
        .routes(routes!(feed::feed))
        .routes(routes!(wellbeing::list))
        .routes(routes!(wellbeing::check))
        .routes(routes!(registry::clients::list, registry::clients::create))
        .routes(routes!(registry::clients::get, registry::clients::update))
        .routes(routes!(registry::clients::away))
        .routes(routes!(registry::clients::contacts))
        .routes(routes!(registry::clients::export))
        .routes(routes!(registry::devices::list, registry::devices::create))
        .routes(routes!(registry::devices::get, registry::devices::update))
        .routes(routes!(registry::devices::retire))
        .routes(routes!(
            registry::providers::list_providers,
            registry::providers::create_provider
        ))
        .routes(routes!(
            registry::providers::list_carers,
            registry::providers::create_carer
        ))
        .routes(routes!(registry::providers::duty))
        .routes(routes!(registry::alarms::list))
        .routes(routes!(import::clients))
        .routes(routes!(import::devices))
        .with_state(ApiState {
            db: ctx.db.clone(),
            stage: ctx.stage,
            feed: ctx.feed,
        });
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health)
        .merge(auth::router(ctx.db.clone(), ctx.auth))
        .merge(audit::router(ctx.db.clone()))
        .merge(servers::router(ctx.db.clone(), Arc::clone(&ctx.cluster)))
        .merge(accounts::router(ctx.db.clone()))
        .merge(mqtt_credentials::router(ctx.mqtt_credentials))
        .merge(reports::router(ctx.db, ctx.sla))
        .merge(console)
        .split_for_parts()
}

pub fn router(ctx: ApiContext) -> Router {
    let (router, doc) = routes(ctx);
    let doc = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into()));
    router
        .merge(console::router())
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        (*doc).clone(),
                    )
                }
            }),
        )
        // Last: it applies to the routes already added.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound })
}

/// Serve on an already-bound listener until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: ApiContext, shutdown: CancellationToken) {
    use axum::serve::ListenerExt;
    let tls = ctx.tls.clone();
    let app = router(ctx);
    // The live feed writes one small event at a time: with Nagle's algorithm
    // an event written while the previous one is unacknowledged waits for
    // the operator's machine's delayed ACK, up to 40 ms.
    let listener = listener::ApiListener::new(listener, tls, shutdown.clone()).tap_io(|io| {
        let _ = listener::tcp_of(io).set_nodelay(true);
    });
    // The peer's address reaches handlers (log-in throttling per address).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// Alive (the process answers).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// How long readiness waits for the database to answer its probe: a balancer
/// asking must hear "down" within a second, not after the pool's time-out.
const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_millis(700);

/// Ready when the database takes commits and answers, the broker is
/// connected and this server holds its lease (no other process runs as it);
/// the body says which part is down (a server without MQTT still takes TCP
/// alarms), how many records wait for the database, and the live servers.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "`{database, mqtt, lease, held, servers}`", body = Object),
        (status = 503, description = "`{database, mqtt, lease, held, servers}` saying which is down", body = Object),
    )
)]
async fn ready(State(s): State<HealthState>) -> impl IntoResponse {
    // The writer's state first: SQLite locked by another process still
    // answers reads, and a stopped PostgreSQL needs no probe to say so.
    let db_ok = s.store.database_up()
        && tokio::time::timeout(PROBE_WITHIN, s.db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
    let mqtt_ok = s.mqtt.is_up();
    let lease_ok = s.cluster.holds_lease();
    let status = if db_ok && mqtt_ok && lease_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "database": if db_ok { "ok" } else { "down" },
        "mqtt": if mqtt_ok { "up" } else { "down" },
        "lease": if lease_ok { "held" } else { "lost" },
        "held": s.store.held(),
        "servers": &*s.cluster.live(),
    });
    (status, Json(body))
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, body = String, content_type = "text/plain"),
        (status = 503, body = String, content_type = "text/plain"),
    )
)]
async fn render_metrics(State(s): State<HealthState>) -> impl IntoResponse {
    match &s.metrics {
        Some(h) => {
            h.run_upkeep();
            (StatusCode::OK, h.render())
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process\n".to_owned(),
        ),
    }
}
