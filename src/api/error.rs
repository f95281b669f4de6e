//! What the HTTP API answers when it says no: a status and `{"error": "…"}`, always JSON.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::response::{IntoResponse, Response};

use pingantong_domain::Role;
use pingantong_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A body or parameter the API cannot use; the status is the extractor's (400, 413, 415, 422).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this needs the role {}", roles(.0))]
    Forbidden(&'static [Role]),
    #[error("no such resource")]
    NotFound,
    /// A request the API understood but cannot take as it stands (a bad field value).
    #[error("{0}")]
    BadRequest(String),
    /// The resource is not in a state that allows this (claimed by someone
    /// else, already closed, an answer out of order).
    #[error("{0}")]
    Conflict(String),
    /// A part of the server this needs is not running (the incident stage at shutdown).
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Too many password checks queued; the client may retry shortly.
    #[error("too many log-ins at once; try again in a moment")]
    Busy,
    /// Log-ins refused for a while after too many failures (an account or an
    /// address); `retry_after_s` says for how long.
    #[error("{message}")]
    Throttled { message: String, retry_after_s: u64 },
    /// The server's fault (database down, a task lost): logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

fn roles(r: &[Role]) -> String {
    r.iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Rejected {
            status: r.status(),
            message: r.body_text(),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Rejected { status, .. } => *status,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Busy | ApiError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            pingantong_telemetry::events::RequestFailed {
                error: &format_args!("{e:#}"),
            }
            .emit();
        }
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        match self {
            ApiError::Unauthorized(_) => {
                (status, [(WWW_AUTHENTICATE, "Bearer")], body).into_response()
            }
            ApiError::Busy => (status, [(RETRY_AFTER, "1".to_owned())], body).into_response(),
            ApiError::Throttled { retry_after_s, .. } => (
                status,
                [(RETRY_AFTER, retry_after_s.max(1).to_string())],
                body,
            )
                .into_response(),
            _ => (status, body).into_response(),
        }
    }
}
