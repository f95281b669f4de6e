//! Console log-in: `POST /api/v1/session` trades a username and password for
//! a bearer token, `DELETE /api/v1/session` ends it, `GET /api/v1/me` says
//! who the token belongs to. Every log-in, failed or not, is audited.

mod caller;
pub mod password;
mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRef, State};
use axum::http::StatusCode;
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use caller::{Caller, new_token, token_hash};
pub use password::{PasswordError, hash_password, verify_password};

use super::{ApiError, ErrorBody};
use pingantong_domain::Role;
use pingantong_store::{AuditEntry, Db, USERNAME_MAX, now_ms, valid_username};
use pingantong_telemetry::events::LoginAttempt;

/// The same answer for an unknown user, a wrong password and a disabled account.
const BAD_CREDENTIALS: &str = "wrong username or password";

/// How long a log-in waits for its turn at the password hasher before the
/// client is told to retry (429).
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct AuthConfig {
    /// Lifetime of a session from log-in.
    pub session_ttl: Duration,
    /// A session unused for this long ends (an open live feed is use).
    pub session_idle: Duration,
}

#[derive(Clone)]
struct AuthState {
    db: Db,
    ttl_ms: i64,
    idle_ms: i64,
    /// Password checks run one per two cores at most: a flood of log-ins
    /// must not take the CPU the alarm path needs.
    hashing: Arc<Semaphore>,
    addresses: Arc<throttle::AddressThrottle>,
}

impl FromRef<AuthState> for Db {
    fn from_ref(s: &AuthState) -> Db {
        s.db.clone()
    }
}

pub fn router(db: Db, cfg: AuthConfig) -> OpenApiRouter {
    // The first unknown-user log-in should not be the one that pays for the dummy hash.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(password::warm_up);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    OpenApiRouter::new()
        .routes(routes!(login, logout))
        .routes(routes!(me))
        .with_state(AuthState {
            db,
            ttl_ms: i64::try_from(cfg.session_ttl.as_millis()).unwrap_or(i64::MAX),
            idle_ms: i64::try_from(cfg.session_idle.as_millis()).unwrap_or(i64::MAX),
            hashing: Arc::new(Semaphore::new(cores.div_ceil(2))),
            addresses: Arc::default(),
        })
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct LoginResponse {
    token: String,
    expires_at: i64,
    role: Role,
}

/// Log in: a bearer token for the console and the API.
#[utoipa::path(
    post, path = "/api/v1/session", tag = "session",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "too many log-ins at once, or too many failed ones: this account or address is refused for a while", body = ErrorBody),
    )
)]
async fn login(
    State(s): State<AuthState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<LoginResponse>, ApiError> {
    let Json(req) = body?;
    let now = now_ms();
    if let Some(until) = s.addresses.locked_until(peer.ip(), now) {
        LoginAttempt {
            outcome: "address_locked",
            username: None,
        }
        .emit();
        return Err(throttled("this address", until, now));
    }
    // A name or password no account can have is refused without any work
    // (which says nothing about real accounts).
    let plausible =
        valid_username(&req.username) && req.password.len() <= password::PASSWORD_MAX_BYTES;
    let (user, password_ok) = if plausible {
        let user = s.db.login_user(&req.username).await?;
        // A locked account is refused before any password work, with the
        // same answer whether the password given is right or not.
        if let Some(until) = user
            .as_ref()
            .and_then(|u| u.locked_until)
            .filter(|t| *t > now)
        {
            LoginAttempt {
                outcome: "account_locked",
                username: None,
            }
            .emit();
            return Err(throttled("this account", until, now));
        }
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let ok = check_password(&s.hashing, req.password, stored).await?;
        (user, ok)
    } else {
        (None, false)
    };
    let user = match user {
        Some(u) if password_ok && !u.disabled => u,
        other => {
            let why = match other {
                None => "unknown user",
                Some(_) if !password_ok => "wrong password",
                Some(_) => "account disabled",
            };
            // The name as typed, escaped (it may hold anything, NUL included),
            // never the password.
            let tried: String = req.username.chars().take(USERNAME_MAX).collect();
            s.db.audit(AuditEntry {
                actor: "anonymous",
                action: "login_failed",
                subject: &format!("user:{}", tried.escape_debug()),
                detail: why,
            })
            .await?;
            if let Some(until) = s.addresses.failed(peer.ip(), now) {
                s.db.audit(AuditEntry {
                    actor: "system",
                    action: "address_locked",
                    subject: &format!("address:{}", peer.ip()),
                    detail: &format!(
                        "{} failed log-ins within {} min; refused until {until}",
                        throttle::ADDRESS_FAILURES,
                        throttle::WINDOW.as_secs() / 60
                    ),
                })
                .await?;
            }
            if let Some(u) = other.as_ref().filter(|_| !password_ok) {
                let until = now + i64::try_from(throttle::LOCKOUT.as_millis()).unwrap_or(i64::MAX);
                s.db.note_failed_login(u.id, &u.username, throttle::ACCOUNT_FAILURES, until)
                    .await?;
            }
            LoginAttempt {
                outcome: if password_ok {
                    "disabled"
                } else {
                    "bad_credentials"
                },
                username: None,
            }
            .emit();
            return Err(ApiError::Unauthorized(BAD_CREDENTIALS));
        }
    };
    if user.failed_logins > 0 {
        s.db.clear_failed_logins(user.id).await?;
    }
    let (token, hash) = new_token();
    let expires_at = now_ms().saturating_add(s.ttl_ms);
    s.db.open_session(&hash, &user, expires_at, s.idle_ms)
        .await?;
    LoginAttempt {
        outcome: "ok",
        username: Some(&user.username),
    }
    .emit();
    Ok(Json(LoginResponse {
        token,
        expires_at,
        role: user.role,
    }))
}

/// The answer to a log-in refused after too many failures.
fn throttled(what: &str, until: i64, now: i64) -> ApiError {
    let secs = u64::try_from((until - now).max(0) / 1000).unwrap_or(0);
    ApiError::Throttled {
        message: format!(
            "{what} is refused log-ins after too many failed ones; try again in {} min, or ask an admin to unlock the account",
            secs.div_ceil(60).max(1)
        ),
        retry_after_s: secs,
    }
}

/// Check a password off the runtime, waiting for a turn at the hasher; the
/// dummy hash stands in for an account that does not exist.
async fn check_password(
    hashing: &Arc<Semaphore>,
    password: String,
    stored: Option<String>,
) -> Result<bool, ApiError> {
    let permit =
        match tokio::time::timeout(HASH_QUEUE_WAIT, Arc::clone(hashing).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                LoginAttempt {
                    outcome: "busy",
                    username: None,
                }
                .emit();
                return Err(ApiError::Busy);
            }
        };
    // The permit goes with the work: a client that hangs up does not free
    // the hasher before the hash is done.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verify_password(&password, stored.as_deref())
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))
}

/// Log out: the token stops working.
#[utoipa::path(
    delete, path = "/api/v1/session", tag = "session",
    responses((status = 204), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn logout(State(s): State<AuthState>, caller: Caller) -> Result<StatusCode, ApiError> {
    s.db.revoke_session(&caller.token_hash, &caller.username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who this token belongs to.
#[utoipa::path(
    get, path = "/api/v1/me", tag = "session",
    responses((status = 200, body = Caller), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
async fn me(caller: Caller) -> Json<Caller> {
    Json(caller)
}
