//! Console accounts for admins: list them, disable and re-enable them, lift
//! a log-in lock, give one a new password. Each change is audited with the admin's name, in the
//! same transaction as the change; a disabled account's sessions (and their
//! live feeds) stop at once, a new password ends the old sessions.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{PasswordError, hash_password};
use super::{ApiError, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_store::{Db, UserError, UserSummary, valid_username};

/// Only admins manage accounts.
const ADMINS: &[Role] = &[Role::Admin];

pub fn router(db: Db) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(disable))
        .routes(routes!(enable))
        .routes(routes!(unlock))
        .routes(routes!(reset_password))
        .with_state(db)
}

fn from_user_error(e: UserError) -> ApiError {
    match e {
        UserError::NotFound(_) => ApiError::NotFound,
        other => ApiError::Internal(other.into()),
    }
}

/// An admin acting on the account the path names (checked before any
/// database work: a name no account can have is not found).
fn admin_on<'a>(caller: &Caller, name: &'a str) -> Result<&'a str, ApiError> {
    caller.require(ADMINS)?;
    if valid_username(name) {
        Ok(name)
    } else {
        Err(ApiError::NotFound)
    }
}

/// A change to an account made (204), or why not.
fn done(result: Result<(), UserError>) -> Result<StatusCode, ApiError> {
    result.map_err(from_user_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every account, by name, with its role, state and open sessions.
#[utoipa::path(
    get, path = "/api/v1/users", tag = "accounts",
    responses(
        (status = 200, body = [UserSummary]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list(State(db): State<Db>, caller: Caller) -> Result<Json<Vec<UserSummary>>, ApiError> {
    caller.require(ADMINS)?;
    Ok(Json(db.list_users().await?))
}

/// Disable an account: its sessions stop working at once, its feeds close.
#[utoipa::path(
    post, path = "/api/v1/users/{username}/disable", tag = "accounts",
    params(("username" = String, Path)),
    responses(
        (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn disable(
    State(db): State<Db>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = admin_on(&caller, &name)?;
    // An admin who locks themselves out needs another admin (or the CLI) to
    // get back in: refused rather than done by a slip.
    if name == caller.username {
        return Err(ApiError::Conflict(
            "an admin cannot disable their own account".into(),
        ));
    }
    done(db.set_user_disabled(name, true, &caller.actor()).await)
}

/// Enable a disabled account again.
#[utoipa::path(
    post, path = "/api/v1/users/{username}/enable", tag = "accounts",
    params(("username" = String, Path)),
    responses(
        (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn enable(
    State(db): State<Db>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = admin_on(&caller, &name)?;
    done(db.set_user_disabled(name, false, &caller.actor()).await)
}

/// Lift a log-in lock (after too many failed log-ins) before its time.
#[utoipa::path(
    post, path = "/api/v1/users/{username}/unlock", tag = "accounts",
    params(("username" = String, Path)),
    responses(
        (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn unlock(
    State(db): State<Db>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = admin_on(&caller, &name)?;
    done(db.unlock_user(name, &caller.actor()).await)
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    /// At least 8 characters.
    password: String,
}

/// Give an account a new password; its open sessions end.
#[utoipa::path(
    post, path = "/api/v1/users/{username}/password", tag = "accounts",
    params(("username" = String, Path)),
    request_body = NewPassword,
    responses(
        (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn reset_password(
    State(db): State<Db>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<NewPassword>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let name = admin_on(&caller, &name)?.to_owned();
    let Json(req) = body?;
    let hash = tokio::task::spawn_blocking(move || hash_password(&req.password))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e: PasswordError| ApiError::BadRequest(e.to_string()))?;
    done(db.reset_password(&name, &hash, &caller.actor()).await)
}
