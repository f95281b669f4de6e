//! MQTT credentials for devices and carers' phones, managed by admins.
//!
//! Issuing answers the password once (it is derived, never stored; issuing
//! again rotates it). Rotating or revoking cuts off the identity's live
//! connections to the embedded broker at once. Each change is audited.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_pipeline::broker::gate::Sessions;
use pingantong_pipeline::mqtt::acl::Principal;
use pingantong_pipeline::mqtt::credential::CredentialKey;
use pingantong_store::{CredentialError, CredentialRow, Db};

const ADMINS: &[Role] = &[Role::Admin];

/// What the credential routes need.
#[derive(Clone)]
pub struct MqttCredentials {
    pub db: Db,
    pub key: CredentialKey,
    /// The embedded broker's live sessions; `None` with an external broker.
    pub sessions: Option<Sessions>,
}

/// The caller is checked against the database.
impl axum::extract::FromRef<MqttCredentials> for Db {
    fn from_ref(s: &MqttCredentials) -> Db {
        s.db.clone()
    }
}

pub fn router(state: MqttCredentials) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list, issue))
        .routes(routes!(revoke))
        .with_state(state)
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Username {
    /// `devices/<device id>` or `carers/<carer id>`.
    username: String,
}

/// A credential just issued: the only time its password is shown.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Issued {
    username: String,
    password: String,
    generation: i64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Listed {
    username: String,
    generation: i64,
    revoked: bool,
}

impl From<CredentialRow> for Listed {
    fn from(r: CredentialRow) -> Self {
        Self {
            username: r.username,
            generation: r.generation,
            revoked: r.revoked,
        }
    }
}

fn from_credential_error(e: CredentialError) -> ApiError {
    match e {
        CredentialError::NotRegistered(_) | CredentialError::ServerFromApi => {
            ApiError::BadRequest(e.to_string())
        }
        CredentialError::NotFound(_) => ApiError::NotFound,
        CredentialError::Store(s) => ApiError::Internal(s.into()),
    }
}

/// A device's or carer's username, as the API may issue it.
fn principal(name: &str) -> Result<Principal, ApiError> {
    match Principal::from_username(name) {
        Ok(Principal::Server(_)) => Err(from_credential_error(CredentialError::ServerFromApi)),
        Ok(p) => Ok(p),
        Err(e) => Err(ApiError::BadRequest(e.to_string())),
    }
}

/// Every MQTT credential issued (never a password).
#[utoipa::path(
    get, path = "/api/v1/mqtt/credentials", tag = "mqtt",
    responses(
        (status = 200, body = [Listed]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(
    State(s): State<MqttCredentials>,
    caller: Caller,
) -> Result<Json<Vec<Listed>>, ApiError> {
    caller.require(ADMINS)?;
    Ok(Json(
        s.db.mqtt_credentials()
            .await?
            .into_iter()
            .map(Listed::from)
            .collect(),
    ))
}

/// Issue a device's or carer's MQTT credential, or rotate it (the old
/// password stops working and its connections end). The password is in this
/// answer only.
#[utoipa::path(
    post, path = "/api/v1/mqtt/credentials", tag = "mqtt",
    request_body = Username,
    responses(
        (status = 201, body = Issued),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn issue(
    State(s): State<MqttCredentials>,
    caller: Caller,
    body: Result<Json<Username>, JsonRejection>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    caller.require(ADMINS)?;
    let Json(req) = body?;
    let p = principal(&req.username)?;
    let generation =
        s.db.issue_mqtt_credential(&p, &caller.actor())
            .await
            .map_err(from_credential_error)?;
    if let Some(sessions) = &s.sessions {
        sessions.end(&req.username);
    }
    Ok((
        StatusCode::CREATED,
        Json(Issued {
            password: s.key.password(&req.username, generation),
            username: req.username,
            generation,
        }),
    ))
}

/// Revoke a credential: it cannot connect again and its connections end.
#[utoipa::path(
    post, path = "/api/v1/mqtt/credentials/revoke", tag = "mqtt",
    request_body = Username,
    responses(
        (status = 204),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn revoke(
    State(s): State<MqttCredentials>,
    caller: Caller,
    body: Result<Json<Username>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(ADMINS)?;
    let Json(req) = body?;
    principal(&req.username)?;
    s.db.revoke_mqtt_credential(&req.username, &caller.actor())
        .await
        .map_err(from_credential_error)?;
    if let Some(sessions) = &s.sessions {
        sessions.end(&req.username);
    }
    Ok(StatusCode::NO_CONTENT)
}
