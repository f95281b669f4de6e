//! Providers (with the districts and streets they are contracted for) and
//! their carers over HTTP.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::fields;
use super::{Location, REGISTRARS, bad, edit_error};
use crate::{ApiError, ApiState, Caller, ErrorBody, STAFF};
use pingantong_store::{CarerListRow, NewCarer, NewProvider, ProviderArea, ProviderRecord};

/// What a provider does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    HomeVisit,
    EmergencyResponse,
}

impl ServiceType {
    fn as_str(self) -> &'static str {
        match self {
            ServiceType::HomeVisit => "home_visit",
            ServiceType::EmergencyResponse => "emergency_response",
        }
    }
}

/// An area a provider is contracted for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AreaBody {
    #[schema(min_length = 1, max_length = 50, pattern = "\\S")]
    pub district: String,
    /// One street of the district; `null` or absent: the whole district.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 50, pattern = "\\S")]
    pub street: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderBody {
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    #[schema(min_items = 1, max_items = 2)]
    pub service_types: Vec<ServiceType>,
    /// Jobs it can run at once (0: no limit is applied).
    #[serde(deserialize_with = "super::whole")]
    #[schema(minimum = 0, maximum = 100000)]
    pub capacity: i64,
    #[schema(min_items = 1, max_items = 200)]
    pub coverage: Vec<AreaBody>,
    /// Contract order where several providers cover one address: lower
    /// first (a fallback provider has a higher rank). Default 0.
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 0, maximum = 1000)]
    pub rank: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: i64,
    pub name: String,
    pub service_types: Vec<String>,
    pub capacity: i64,
    pub coverage: Vec<ProviderArea>,
    pub updated_at: i64,
}

impl From<ProviderRecord> for ProviderView {
    fn from(p: ProviderRecord) -> Self {
        Self {
            id: p.id,
            service_types: p
                .service_types
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            name: p.name,
            capacity: p.capacity,
            coverage: p.coverage,
            updated_at: p.updated_at,
        }
    }
}

/// Every provider with the areas it covers.
#[utoipa::path(
    get, path = "/api/v1/providers", tag = "registry",
    responses(
        (status = 200, body = Vec<ProviderView>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_providers(
    State(s): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    caller.require(STAFF)?;
    let rows = s.db.providers_list().await?;
    Ok(Json(rows.into_iter().map(ProviderView::from).collect()))
}

/// A new provider and the districts and streets it is contracted for.
#[utoipa::path(
    post, path = "/api/v1/providers", tag = "registry",
    request_body = ProviderBody,
    responses(
        (status = 201, body = ProviderView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_provider(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<ProviderBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    caller.require(REGISTRARS)?;
    let Json(body) = body?;
    let name = fields::required("name", &body.name, fields::NAME_MAX).map_err(bad)?;
    if body.service_types.is_empty() || body.service_types.len() > 2 {
        return Err(bad(
            "service_types: 1 or 2 of home_visit, emergency_response".into(),
        ));
    }
    let mut types: Vec<&str> = Vec::new();
    for t in &body.service_types {
        if !types.contains(&t.as_str()) {
            types.push(t.as_str());
        }
    }
    let capacity = fields::within("capacity", body.capacity, (0, 100_000)).map_err(bad)?;
    let rank = fields::within("rank", body.rank.unwrap_or(0), (0, 1000)).map_err(bad)?;
    if body.coverage.is_empty() || body.coverage.len() > 200 {
        return Err(bad("coverage: 1 to 200 areas".into()));
    }
    let mut coverage = Vec::with_capacity(body.coverage.len());
    for (i, a) in body.coverage.iter().enumerate() {
        let district = fields::required(
            &format!("coverage[{i}].district"),
            &a.district,
            fields::AREA_MAX,
        )
        .map_err(bad)?;
        let street = a
            .street
            .as_deref()
            .map(|s| fields::required(&format!("coverage[{i}].street"), s, fields::AREA_MAX))
            .transpose()
            .map_err(bad)?;
        coverage.push((district, street));
    }
    let id =
        s.db.create_provider(
            &NewProvider {
                name,
                service_types: types.join(","),
                capacity,
                coverage,
                rank,
            },
            &caller.actor(),
        )
        .await
        .map_err(edit_error)?;
    let created = s.db.provider_record(id).await?.ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CarerQuery {
    /// Only this provider's carers.
    provider_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CarerView {
    pub id: i64,
    pub provider_id: i64,
    pub name: String,
    pub phone: String,
    /// Where they start from (their base or home).
    pub location: Location,
    pub on_duty: bool,
    /// Their own "busy": a break, a job the service does not know of.
    pub busy: bool,
    pub updated_at: i64,
}

impl From<CarerListRow> for CarerView {
    fn from(c: CarerListRow) -> Self {
        Self {
            id: c.id,
            provider_id: c.provider_id,
            name: c.name,
            phone: c.phone,
            location: Location {
                lat: c.lat,
                lon: c.lon,
            },
            on_duty: c.on_duty,
            busy: c.busy,
            updated_at: c.updated_at,
        }
    }
}

/// Carers, of one provider when asked.
#[utoipa::path(
    get, path = "/api/v1/carers", tag = "registry",
    params(CarerQuery),
    responses(
        (status = 200, body = Vec<CarerView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_carers(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<CarerQuery>, QueryRejection>,
) -> Result<Json<Vec<CarerView>>, ApiError> {
    caller.require(STAFF)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let rows = s.db.carers_list(q.provider_id).await?;
    Ok(Json(rows.into_iter().map(CarerView::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CarerBody {
    #[serde(deserialize_with = "super::whole")]
    #[schema(minimum = 1)]
    pub provider_id: i64,
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    #[serde(default)]
    #[schema(min_length = 3, max_length = 32, pattern = "^\\+?[0-9]+([ -][0-9]+)*$")]
    pub phone: Option<String>,
    /// Where they start from (their base or home).
    pub location: Location,
    /// Default false.
    #[serde(default)]
    pub on_duty: bool,
}

/// A new carer of a provider.
#[utoipa::path(
    post, path = "/api/v1/carers", tag = "registry",
    request_body = CarerBody,
    responses(
        (status = 201, body = CarerView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no such provider"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_carer(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<CarerBody>, JsonRejection>,
) -> Result<(StatusCode, Json<CarerView>), ApiError> {
    caller.require(REGISTRARS)?;
    let Json(body) = body?;
    if body.provider_id < 1 {
        return Err(bad("provider_id: 1 or more".into()));
    }
    let name = fields::required("name", &body.name, fields::NAME_MAX).map_err(bad)?;
    let phone = body
        .phone
        .as_deref()
        .map(|p| fields::phone("phone", p))
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    let (lat, lon) = fields::location(body.location.lat, body.location.lon).map_err(bad)?;
    let id =
        s.db.create_carer(
            &NewCarer {
                provider_id: body.provider_id,
                name,
                phone,
                lat,
                lon,
                on_duty: body.on_duty,
            },
            &caller.actor(),
        )
        .await
        .map_err(edit_error)?;
    let carer = s.db.carer_listing(id).await?.ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(carer.into())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DutyBody {
    pub on_duty: bool,
    /// Offered nothing while busy.
    pub busy: bool,
}

/// Put a carer on or off duty, busy or free.
#[utoipa::path(
    put, path = "/api/v1/carers/{id}/duty", tag = "registry",
    params(("id" = i64, Path)),
    request_body = DutyBody,
    responses(
        (status = 200, body = CarerView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn duty(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<DutyBody>, JsonRejection>,
) -> Result<Json<CarerView>, ApiError> {
    caller.require(REGISTRARS)?;
    let Path(id) = id.map_err(|e| bad(e.body_text()))?;
    let Json(body) = body?;
    s.db.set_carer_duty_audited(id, body.on_duty, body.busy, &caller.actor())
        .await
        .map_err(edit_error)?;
    let carer = s.db.carer_listing(id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(carer.into()))
}
