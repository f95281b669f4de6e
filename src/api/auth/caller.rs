//! Who is calling: the bearer token of a live session, resolved to its account.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::ApiError;
use pingantong_domain::Role;
use pingantong_store::{Db, now_ms};

/// Bytes of randomness in a session token.
const TOKEN_BYTES: usize = 32;

/// The one answer for a token that does not open a live session: whether it
/// never existed, expired, was revoked or its account disabled is the
/// server's business.
const NOT_LIVE: &str = "invalid or expired session; log in again";

/// A new session token (64 lower-case hex digits, 256 random bits) and the
/// SHA-256 the store keeps in its place.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; TOKEN_BYTES];
    // ThreadRng: ChaCha seeded from the operating system, fit for secrets.
    rand::rng().fill_bytes(&mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = token_hash(&token);
    (token, hash)
}

/// What the store keeps of a token: the SHA-256 of its text. A token has
/// 256 bits of entropy, so a fast hash is enough (no password stretching).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Looks like a token this server issues: saves a database round trip for junk.
fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_BYTES * 2
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The account behind the request's bearer token. Any handler that takes a
/// `Caller` answers 401 to a request without a live session.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub carer_id: Option<i64>,
    pub provider_id: Option<i64>,
    /// When this session ends (ms since the epoch).
    pub expires_at: i64,
    #[serde(skip)]
    pub(crate) token_hash: [u8; 32],
}

impl Caller {
    /// Refuse (403) a caller whose role is not among `allowed`.
    pub fn require(&self, allowed: &'static [Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(allowed))
        }
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized(
            "missing Authorization: Bearer token",
        ))?;
        if !well_formed(token) {
            return Err(ApiError::Unauthorized(NOT_LIVE));
        }
        let token_hash = token_hash(token);
        let db = Db::from_ref(state);
        let session = db.session_user(&token_hash).await?;
        let now = now_ms();
        if let Some(s) = &session
            && s.is_live(now)
            && s.worth_touching(now)
        {
            // Used: not idle. A write that fails leaves the request served.
            let _ = db.touch_session(&token_hash, now).await;
        }
        match session {
            Some(s) if s.is_live(now) => Ok(Caller {
                user_id: s.user_id,
                username: s.username,
                role: s.role,
                carer_id: s.carer_id,
                provider_id: s.provider_id,
                expires_at: s.expires_at,
                token_hash,
            }),
            _ => Err(ApiError::Unauthorized(NOT_LIVE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_well_formed_and_hashed() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        assert_eq!(ha, token_hash(&a));
        assert!(!well_formed(&a.to_uppercase()));
        assert!(!well_formed(&a[1..]));
    }

    #[test]
    fn bearer_header() {
        let parts = |v: &str| {
            axum::http::Request::builder()
                .header(AUTHORIZATION, v)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(bearer(&parts("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&parts("bearer abc")), Some("abc"));
        assert_eq!(bearer(&parts("Basic abc")), None);
        assert_eq!(bearer(&parts("Bearer")), None);
    }
}
