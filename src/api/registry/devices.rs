//! Devices over HTTP: list, one device, provision, change, retire. A secret
//! goes in as hex and never comes out: lists say only whether there is one.
//!
//! Request bodies are tagged by `protocol`, because what a device's secret
//! must be depends on it: a native pendant's HMAC key (16 to 64 bytes), a
//! DC-09 account's AES key (16, 24 or 32 bytes, or none), nothing for the
//! others.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

use super::fields;
use super::{REGISTRARS, bad, edit_error, filter_text, limit};
use crate::{ApiError, ApiState, Caller, ErrorBody, STAFF};
use pingantong_store::{ClientRef, DeviceListRow, DeviceQuery, DeviceUpdate};

/// A device protocol.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Native,
    Gt06,
    Watch,
    H02,
    Eview,
    SiaDc09,
    Mqtt,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Gt06 => "gt06",
            Protocol::Watch => "watch",
            Protocol::H02 => "h02",
            Protocol::Eview => "eview",
            Protocol::SiaDc09 => "sia_dc09",
            Protocol::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this client's devices.
    client_id: Option<i64>,
    #[param(inline)]
    protocol: Option<Protocol>,
    /// Retired devices too (default false).
    retired: Option<bool>,
    /// Devices after this id (the last id of the previous page).
    #[param(max_length = 32)]
    after: Option<String>,
    /// At most this many (default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Devices in id order, filtered; no secrets.
#[utoipa::path(
    get, path = "/api/v1/devices", tag = "registry",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<DeviceListRow>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<DeviceListRow>>, ApiError> {
    caller.require(STAFF)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit = limit(q.limit, 200, 1000)?;
    if q.after.as_ref().is_some_and(|a| a.chars().count() > 32) {
        return Err(bad("after must be at most 32 characters".into()));
    }
    let after = filter_text(q.after).unwrap_or_default();
    let rows =
        s.db.devices_page(&DeviceQuery {
            client_id: q.client_id,
            protocol: q.protocol.map(Protocol::as_str),
            include_retired: q.retired.unwrap_or(false),
            after: &after,
            limit,
        })
        .await?;
    Ok(Json(rows))
}

/// One device (retired ones too); no secret.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}", tag = "registry",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = DeviceListRow),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceListRow>, ApiError> {
    caller.require(STAFF)?;
    let id = device_path(id)?;
    let row = s.db.device_listing(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(row))
}

/// A device id from the path: one that cannot be a device id names no device.
fn device_path(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    pingantong_protocol::DeviceId::parse(&id)
        .map(|d| d.as_str().to_owned())
        .map_err(|_| ApiError::NotFound)
}

/// A device to provision.
#[derive(Debug, Deserialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum NewDeviceBody {
    Native(NewNative),
    SiaDc09(NewDc09),
    Gt06(NewKeyless),
    Watch(NewKeyless),
    H02(NewKeyless),
    Eview(NewKeyless),
    Mqtt(NewKeyless),
}

const NATIVE_DOC: &str = "A pendant on the native protocol: every frame is signed with its key.";
const DC09_DOC: &str = "A SIA DC-09 account (the id is the account number).";
const KEYLESS_DOC: &[(&str, &str)] = &[
    ("gt06", "A GT06 tracker (the id is its IMEI); no key."),
    ("watch", "A 3G/4G watch; no key."),
    ("h02", "An H02 tracker; no key."),
    ("eview", "An Eview pendant; no key."),
    (
        "mqtt",
        "A device reporting over MQTT (its broker log-in is its proof); no key.",
    ),
];

impl utoipa::PartialSchema for NewDeviceBody {
    fn schema() -> RefOr<Schema> {
        let mut variants = vec![
            ("native", NATIVE_DOC, NewNative::schema()),
            ("sia_dc09", DC09_DOC, NewDc09::schema()),
        ];
        variants.extend(
            KEYLESS_DOC
                .iter()
                .map(|(p, d)| (*p, *d, NewKeyless::schema())),
        );
        super::tagged("protocol", variants)
    }
}

impl ToSchema for NewDeviceBody {}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNative {
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$")]
    id: String,
    /// HMAC-SHA256 key, 16 to 64 bytes as hex.
    #[schema(pattern = "^([0-9A-Fa-f]{2}){16,64}$")]
    secret: String,
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 1)]
    client_id: Option<i64>,
    /// Its own expected interval between reports (default: the protocol's).
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 10, maximum = 604800)]
    heartbeat_secs: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDc09 {
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$")]
    id: String,
    /// AES key of 16, 24 or 32 bytes as hex; absent or empty for a plain account.
    #[serde(default)]
    #[schema(pattern = "^(([0-9A-Fa-f]{16}){2,4})?$")]
    secret: Option<String>,
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 1)]
    client_id: Option<i64>,
    /// Its own expected interval between reports (default: the protocol's).
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 10, maximum = 604800)]
    heartbeat_secs: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyless {
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9._:-]+$")]
    id: String,
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 1)]
    client_id: Option<i64>,
    /// Its own expected interval between reports (default: the protocol's).
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 10, maximum = 604800)]
    heartbeat_secs: Option<i64>,
}

/// The parts every variant has: protocol, id, secret (hex), client, heartbeat.
type Parts<'a> = (
    &'static str,
    &'a str,
    Option<&'a str>,
    Option<i64>,
    Option<i64>,
);

impl NewDeviceBody {
    fn parts(&self) -> Parts<'_> {
        fn keyless<'a>(p: &'static str, d: &'a NewKeyless) -> Parts<'a> {
            (p, &d.id, None, d.client_id, d.heartbeat_secs)
        }
        match self {
            NewDeviceBody::Native(d) => (
                "native",
                &d.id,
                Some(&d.secret),
                d.client_id,
                d.heartbeat_secs,
            ),
            NewDeviceBody::SiaDc09(d) => (
                "sia_dc09",
                &d.id,
                d.secret.as_deref(),
                d.client_id,
                d.heartbeat_secs,
            ),
            NewDeviceBody::Gt06(d) => keyless("gt06", d),
            NewDeviceBody::Watch(d) => keyless("watch", d),
            NewDeviceBody::H02(d) => keyless("h02", d),
            NewDeviceBody::Eview(d) => keyless("eview", d),
            NewDeviceBody::Mqtt(d) => keyless("mqtt", d),
        }
    }
}

fn client_id(v: Option<i64>) -> Result<ClientRef, ApiError> {
    match v {
        None => Ok(ClientRef::Nobody),
        Some(id) if id >= 1 => Ok(ClientRef::Id(id)),
        Some(_) => Err(bad("client_id: 1 or more".into())),
    }
}

/// Provision a device (or provision a retired one again). It is usable at
/// once: its first frame is checked against this secret.
#[utoipa::path(
    post, path = "/api/v1/devices", tag = "registry",
    request_body = NewDeviceBody,
    responses(
        (status = 201, body = DeviceListRow),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already provisioned, or no such client"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<NewDeviceBody>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceListRow>), ApiError> {
    caller.require(REGISTRARS)?;
    let Json(body) = body?;
    let (protocol, id, secret, client, heartbeat) = body.parts();
    let entry =
        fields::device_entry(id, protocol, secret, client_id(client)?, heartbeat).map_err(bad)?;
    s.db.provision_device(&entry, &caller.actor())
        .await
        .map_err(edit_error)?;
    let row =
        s.db.device_listing(&entry.id)
            .await?
            .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// A change to a device in service: its client and heartbeat interval are
/// replaced (`null`: none, the protocol's), its secret only when given. The
/// protocol must be the device's own.
#[derive(Debug, Deserialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum DeviceChangeBody {
    Native(NativeChange),
    SiaDc09(Dc09Change),
    Gt06(KeylessChange),
    Watch(KeylessChange),
    H02(KeylessChange),
    Eview(KeylessChange),
    Mqtt(KeylessChange),
}

impl utoipa::PartialSchema for DeviceChangeBody {
    fn schema() -> RefOr<Schema> {
        let mut variants = vec![
            ("native", NATIVE_DOC, NativeChange::schema()),
            ("sia_dc09", DC09_DOC, Dc09Change::schema()),
        ];
        variants.extend(
            KEYLESS_DOC
                .iter()
                .map(|(p, d)| (*p, *d, KeylessChange::schema())),
        );
        super::tagged("protocol", variants)
    }
}

impl ToSchema for DeviceChangeBody {}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeChange {
    /// A new HMAC key (16 to 64 bytes as hex); absent keeps the current one.
    #[serde(default)]
    #[schema(pattern = "^([0-9A-Fa-f]{2}){16,64}$")]
    secret: Option<String>,
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 1)]
    client_id: Option<i64>,
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 10, maximum = 604800)]
    heartbeat_secs: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dc09Change {
    /// A new AES key (16, 24 or 32 bytes as hex), or empty for none;
    /// absent keeps the current one.
    #[serde(default)]
    #[schema(pattern = "^(([0-9A-Fa-f]{16}){2,4})?$")]
    secret: Option<String>,
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 1)]
    client_id: Option<i64>,
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 10, maximum = 604800)]
    heartbeat_secs: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeylessChange {
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 1)]
    client_id: Option<i64>,
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 10, maximum = 604800)]
    heartbeat_secs: Option<i64>,
}

impl DeviceChangeBody {
    /// Protocol, new secret (hex; `None` keeps the old), client, heartbeat.
    fn parts(&self) -> (&'static str, Option<&str>, Option<i64>, Option<i64>) {
        let keyless = |p, c: &KeylessChange| (p, None, c.client_id, c.heartbeat_secs);
        match self {
            DeviceChangeBody::Native(c) => {
                ("native", c.secret.as_deref(), c.client_id, c.heartbeat_secs)
            }
            DeviceChangeBody::SiaDc09(c) => (
                "sia_dc09",
                c.secret.as_deref(),
                c.client_id,
                c.heartbeat_secs,
            ),
            DeviceChangeBody::Gt06(c) => keyless("gt06", c),
            DeviceChangeBody::Watch(c) => keyless("watch", c),
            DeviceChangeBody::H02(c) => keyless("h02", c),
            DeviceChangeBody::Eview(c) => keyless("eview", c),
            DeviceChangeBody::Mqtt(c) => keyless("mqtt", c),
        }
    }
}

/// Change a device: its client, its heartbeat interval, and (rotation) its secret.
#[utoipa::path(
    put, path = "/api/v1/devices/{id}", tag = "registry",
    params(("id" = String, Path)),
    request_body = DeviceChangeBody,
    responses(
        (status = 200, body = DeviceListRow),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "retired, another protocol, or no such client"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<DeviceChangeBody>, JsonRejection>,
) -> Result<Json<DeviceListRow>, ApiError> {
    caller.require(REGISTRARS)?;
    let id = device_path(id)?;
    let Json(body) = body?;
    let (protocol, secret, client, heartbeat) = body.parts();
    let secret = match (protocol, secret) {
        (_, None) => None,
        (p, Some(hex)) => Some(fields::device_secret(p, Some(hex)).map_err(bad)?),
    };
    client_id(client)?;
    let heartbeat_secs = heartbeat
        .map(|h| fields::within("heartbeat_secs", h, fields::HEARTBEAT_SECS))
        .transpose()
        .map_err(bad)?;
    s.db.update_device(
        &id,
        &DeviceUpdate {
            protocol: protocol.to_owned(),
            client_id: client,
            heartbeat_secs,
            secret,
        },
        &caller.actor(),
    )
    .await
    .map_err(edit_error)?;
    let row = s.db.device_listing(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(row))
}

/// Retire a device: from the directory's next sweep (seconds) its frames
/// are stored as from an unknown device and raise nothing for a client.
/// Retiring a retired device changes nothing.
#[utoipa::path(
    post, path = "/api/v1/devices/{id}/retire", tag = "registry",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = DeviceListRow),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn retire(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceListRow>, ApiError> {
    caller.require(REGISTRARS)?;
    let id = device_path(id)?;
    s.db.retire_device(&id, &caller.actor())
        .await
        .map_err(edit_error)?;
    let row = s.db.device_listing(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(row))
}
