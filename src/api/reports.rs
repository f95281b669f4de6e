//! The city's reports over HTTP: `GET /api/v1/reports/monthly` (figures per
//! provider, district, street or subsidy category) and `GET /api/v1/sla/breaches`
//! (every incident over a limit), as JSON or CSV, for regulators, supervisors
//! and admins. Every read is audited: the breach list names incidents.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Query, State};
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, Caller, ErrorBody};
use pingantong_domain::Role;
use pingantong_sla::output::{render_breaches, render_report};
use pingantong_sla::{Format, Grouping, Month, SlaError, SlaTargets};
use pingantong_store::{AuditEntry, Db, now_ms};

/// Who may read the service figures.
const READERS: &[Role] = &[Role::Regulator, Role::Supervisor, Role::Admin];

#[derive(Clone)]
struct ReportsState {
    db: Db,
    targets: SlaTargets,
}

impl FromRef<ReportsState> for Db {
    fn from_ref(s: &ReportsState) -> Db {
        s.db.clone()
    }
}

pub fn router(db: Db, targets: SlaTargets) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(monthly))
        .routes(routes!(breaches))
        .with_state(ReportsState { db, targets })
}

#[derive(serde::Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct Params {
    /// `YYYY-MM`, a China Standard Time (UTC+8) month.
    month: String,
    /// `provider` (default), `district`, `street` or `category`; monthly report only.
    by: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

fn bad_request(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// The query's month and format (JSON unless asked), or a 400 naming the fault.
fn parse(q: Result<Query<Params>, QueryRejection>) -> Result<(Params, Month, Format), ApiError> {
    let Query(p) = q.map_err(|r| bad_request(r.body_text()))?;
    let month: Month = p.month.parse().map_err(|e| bad_request(format!("{e}")))?;
    let format = match &p.format {
        Some(f) => f.parse().map_err(|e| bad_request(format!("{e}")))?,
        None => Format::Json,
    };
    Ok((p, month, format))
}

impl From<SlaError> for ApiError {
    fn from(e: SlaError) -> Self {
        ApiError::Internal(e.into())
    }
}

fn file(body: String, format: Format, name: &str) -> Response {
    let disposition = format!("inline; filename=\"{name}.{}\"", format.extension());
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    r
}

async fn audit(db: &Db, caller: &Caller, subject: &str, detail: &str) -> Result<(), ApiError> {
    db.audit(AuditEntry {
        actor: &caller.actor(),
        action: "report_read",
        subject,
        detail,
    })
    .await?;
    Ok(())
}

/// The month's figures per provider, district, street or subsidy category,
/// and for the whole city: incidents per lane, handled rate (处置率), answer
/// and attend times against the targets, device availability.
#[utoipa::path(
    get, path = "/api/v1/reports/monthly", tag = "reports",
    params(Params),
    responses(
        (status = 200, description = "JSON `{month, time_zone, from_ms, to_ms, as_of_ms, targets, by, rows, total}`, or CSV", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn monthly(
    State(s): State<ReportsState>,
    caller: Caller,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(READERS)?;
    let (p, month, format) = parse(q)?;
    let by: Grouping = match &p.by {
        Some(b) => b.parse().map_err(|e| bad_request(format!("{e}")))?,
        None => Grouping::Provider,
    };
    let report = pingantong_sla::monthly_report(&s.db, month, by, &s.targets, now_ms()).await?;
    audit(
        &s.db,
        &caller,
        &format!("report:monthly:{month}"),
        &format!("by {}, {}", by.as_str(), format.extension()),
    )
    .await?;
    Ok(file(
        render_report(&report, format),
        format,
        &format!("pingantong-{month}-{}", by.as_str()),
    ))
}

/// Every incident of the month over an answer or attend limit, with the
/// longest limit it passed, why, and its intervals.
#[utoipa::path(
    get, path = "/api/v1/sla/breaches", tag = "reports",
    params(Params),
    responses(
        (status = 200, description = "JSON `{month, time_zone, from_ms, to_ms, as_of_ms, targets, breaches}`, or CSV", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn breaches(
    State(s): State<ReportsState>,
    caller: Caller,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(READERS)?;
    let (p, month, format) = parse(q)?;
    if p.by.is_some() {
        return Err(bad_request(
            "the breach list is per incident: no `by`".into(),
        ));
    }
    let list = pingantong_sla::breach_list(&s.db, month, &s.targets, now_ms()).await?;
    audit(
        &s.db,
        &caller,
        &format!("report:breaches:{month}"),
        format.extension(),
    )
    .await?;
    Ok(file(
        render_breaches(&list, format),
        format,
        &format!("pingantong-{month}-breaches"),
    ))
}
