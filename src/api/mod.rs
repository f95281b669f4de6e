//! HTTP: health, readiness and metrics; console log-in and the audit log (the
//! operator console and its API grow here). Every error body is JSON.

mod audit;
pub mod auth;
mod error;

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthConfig, Caller};
pub use error::ApiError;

use crate::dispatch::MqttStatus;
use crate::store::Db;

#[derive(Clone)]
struct AppState {
    db: Db,
    mqtt: MqttStatus,
    metrics: Option<PrometheusHandle>,
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

pub fn router(db: Db, mqtt: MqttStatus, auth: AuthConfig) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            db: db.clone(),
            mqtt,
            metrics: metrics(),
        })
        .merge(auth::router(db.clone(), auth))
        .merge(audit::router(db))
        // Last: it applies to the routes already added.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound })
}

/// Serve on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    mqtt: MqttStatus,
    auth: AuthConfig,
    shutdown: CancellationToken,
) {
    let app = router(db, mqtt, auth);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// Ready when the database answers and the broker is connected; the body says
/// which part is down (a server without MQTT still takes TCP alarms).
async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let db_ok = s.db.ping().await.is_ok();
    let mqtt_ok = s.mqtt.is_up();
    let status = if db_ok && mqtt_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "database": if db_ok { "ok" } else { "down" },
        "mqtt": if mqtt_ok { "up" } else { "down" },
    });
    (status, Json(body))
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
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
