//! The alarm log over HTTP: what devices sent, newest first, decoded, with
//! the bytes as received (hex) for when a device and the server disagree.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{bad, filter_text, limit};
use crate::{ApiError, ApiState, Caller, ErrorBody, STAFF};
use pingantong_store::{AlarmLogQuery, AlarmLogRow};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this device's events.
    #[param(max_length = 32)]
    device_id: Option<String>,
    /// Only events of this kind (`sos`, `fall`, `heartbeat`, `low_battery`, …).
    #[param(max_length = 32)]
    kind: Option<String>,
    /// Events before this id (the last id of the previous page).
    #[param(minimum = 1)]
    before: Option<i64>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Where the device said it was.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmPosition {
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<i64>,
}

/// One event a device sent, as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmView {
    pub id: i64,
    pub received_at: i64,
    pub protocol: String,
    /// The sender's address and port.
    pub peer: String,
    pub device_id: String,
    pub seq: i64,
    pub kind: String,
    /// The device's own clock, when it sent one.
    pub device_time: Option<i64>,
    pub battery: Option<i64>,
    pub position: Option<AlarmPosition>,
    /// `verified`, `bad_tag` (the device is known, the signature was wrong)
    /// or `unknown_device`.
    pub auth: String,
    /// The event as decoded (JSON as the listener wrote it).
    pub decoded: serde_json::Value,
    /// The bytes as received, in hex.
    pub raw_hex: String,
    pub incident_id: Option<i64>,
    /// When the incident stage handled it.
    pub processed_at: Option<i64>,
}

impl From<AlarmLogRow> for AlarmView {
    fn from(a: AlarmLogRow) -> Self {
        let raw_hex = a.raw.iter().map(|b| format!("{b:02x}")).collect();
        let decoded =
            serde_json::from_str(&a.decoded).unwrap_or(serde_json::Value::String(a.decoded));
        Self {
            position: a.lat.zip(a.lon).map(|(lat, lon)| AlarmPosition {
                lat,
                lon,
                accuracy_m: a.accuracy_m,
            }),
            id: a.id,
            received_at: a.received_at,
            protocol: a.protocol,
            peer: a.peer,
            device_id: a.device_id,
            seq: a.seq,
            kind: a.kind,
            device_time: a.device_time,
            battery: a.battery,
            auth: a.auth,
            decoded,
            raw_hex,
            incident_id: a.incident_id,
            processed_at: a.processed_at,
        }
    }
}

/// Events devices sent, newest first.
#[utoipa::path(
    get, path = "/api/v1/alarms", tag = "registry",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<AlarmView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<AlarmView>>, ApiError> {
    caller.require(STAFF)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit = limit(q.limit, 100, 1000)?;
    for (name, v) in [("device_id", &q.device_id), ("kind", &q.kind)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > 32) {
            return Err(bad(format!("{name} must be at most 32 characters")));
        }
    }
    if q.before.is_some_and(|b| b < 1) {
        return Err(bad("before must be 1 or more".into()));
    }
    let (device_id, kind) = (filter_text(q.device_id), filter_text(q.kind));
    let rows =
        s.db.alarm_log(&AlarmLogQuery {
            device_id: device_id.as_deref(),
            kind: kind.as_deref(),
            before: q.before,
            limit,
        })
        .await?;
    Ok(Json(rows.into_iter().map(AlarmView::from).collect()))
}
