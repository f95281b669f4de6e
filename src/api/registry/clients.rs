//! Clients over HTTP: the list (no health data), one client's whole profile
//! (audited), create, replace, away, and the ordered contact list.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

use super::fields::{self, ClientInput, ContactInput};
use super::{CONTACT_EDITORS, Location, REGISTRARS, bad, edit_error, filter_text, limit};
use crate::{ApiError, ApiState, Caller, ErrorBody, STAFF};
use pingantong_domain::Role;
use pingantong_store::{
    AuditEntry, ClientListRow, ClientQuery, ClientRecord, ContactEntry, ContactRecord,
    DeviceStatus, ResidentRecords,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this district (exact).
    #[param(max_length = 50)]
    district: Option<String>,
    /// Only this street (exact).
    #[param(max_length = 50)]
    street: Option<String>,
    /// Part of the name, address, register reference or a contact's phone.
    #[param(max_length = 100)]
    q: Option<String>,
    /// Clients after this id (the last id of the previous page).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many (default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The city's subsidy category.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubsidyCategory {
    Destitute,
    AdvancedAge,
    LivingAlone,
    SpecialContribution,
}

impl SubsidyCategory {
    fn as_str(self) -> &'static str {
        match self {
            SubsidyCategory::Destitute => "destitute",
            SubsidyCategory::AdvancedAge => "advanced_age",
            SubsidyCategory::LivingAlone => "living_alone",
            SubsidyCategory::SpecialContribution => "special_contribution",
        }
    }
}

/// A client's profile as written by a registrar (contacts and away dates
/// have their own endpoints). `PUT` replaces every field: one left out is
/// emptied.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientBody {
    /// The client's number in the city's (or a provider's) register; unique.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[!-~]+$")]
    pub external_ref: Option<String>,
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    #[schema(min_length = 1, max_length = 300, pattern = "\\S")]
    pub address: String,
    #[schema(min_length = 1, max_length = 50, pattern = "\\S")]
    pub district: String,
    #[schema(min_length = 1, max_length = 50, pattern = "\\S")]
    pub street: String,
    /// Where the home is; carers nearest to it are asked first.
    #[serde(default)]
    pub location: Option<Location>,
    /// Language tag (default `zh-CN`; `yue` for Cantonese).
    #[serde(default)]
    #[schema(max_length = 35, pattern = "^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")]
    pub language: Option<String>,
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub medical_notes: String,
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub medications: String,
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub allergies: String,
    /// The code of the key safe at the door: given only to the carer who
    /// accepted a job (and shown to staff who may read health data).
    #[serde(default)]
    #[schema(max_length = 64)]
    pub key_safe: String,
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 1890, maximum = 2100)]
    pub birth_year: Option<i64>,
    #[serde(default)]
    pub subsidy_category: Option<SubsidyCategory>,
}

impl ClientBody {
    fn entry(&self) -> Result<pingantong_store::ClientEntry, ApiError> {
        fields::client_entry(&ClientInput {
            external_ref: self.external_ref.as_deref(),
            name: &self.name,
            address: &self.address,
            district: &self.district,
            street: &self.street,
            location: self.location.map(|l| (l.lat, l.lon)),
            language: self.language.as_deref(),
            medical_notes: &self.medical_notes,
            medications: &self.medications,
            allergies: &self.allergies,
            key_safe: &self.key_safe,
            birth_year: self.birth_year,
            subsidy_category: self.subsidy_category.map(SubsidyCategory::as_str),
        })
        .map_err(bad)
    }
}

/// One line of the client list: no health data.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientListItem {
    pub id: i64,
    pub external_ref: Option<String>,
    pub name: String,
    pub address: String,
    pub district: String,
    pub street: String,
    pub location: Option<Location>,
    pub language: String,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<String>,
    /// Away from home (hospital, travel) until then (ms since the epoch).
    pub away_until: Option<i64>,
    pub updated_at: i64,
}

impl From<ClientListRow> for ClientListItem {
    fn from(c: ClientListRow) -> Self {
        Self {
            id: c.id,
            external_ref: c.external_ref,
            location: Location::of(c.lat, c.lon),
            name: c.name,
            address: c.address,
            district: c.district,
            street: c.street,
            language: c.language,
            birth_year: c.birth_year,
            subsidy_category: c.subsidy_category,
            away_until: c.away_until,
            updated_at: c.updated_at,
        }
    }
}

/// How a contact hears of an alarm (absent: the operator telephones them).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Notify {
    Mqtt(NoAddress),
    Webhook(WebhookAddress),
    Email(EmailAddress),
}

impl utoipa::PartialSchema for Notify {
    fn schema() -> RefOr<Schema> {
        super::tagged(
            "channel",
            vec![
                (
                    "mqtt",
                    "The family app, subscribed to `<prefix>/v1/contacts/<contact id>/notices`.",
                    NoAddress::schema(),
                ),
                (
                    "webhook",
                    "A signed JSON POST to this URL (host name or IPv4 address).",
                    WebhookAddress::schema(),
                ),
                (
                    "email",
                    "An e-mail to this address.",
                    EmailAddress::schema(),
                ),
            ],
        )
    }
}

impl ToSchema for Notify {}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoAddress {}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookAddress {
    #[schema(
        max_length = 500,
        pattern = "^https?://[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?(/[!-~]*)?$"
    )]
    pub address: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailAddress {
    #[schema(
        max_length = 254,
        pattern = "^[A-Za-z0-9_%+-]+(\\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"
    )]
    pub address: String,
}

impl Notify {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Notify::Mqtt(_) => ("mqtt", ""),
            Notify::Webhook(w) => ("webhook", &w.address),
            Notify::Email(e) => ("email", &e.address),
        }
    }

    fn from_stored(channel: Option<&str>, address: String) -> Option<Self> {
        match channel? {
            "mqtt" => Some(Notify::Mqtt(NoAddress {})),
            "webhook" => Some(Notify::Webhook(WebhookAddress { address })),
            "email" => Some(Notify::Email(EmailAddress { address })),
            _ => None,
        }
    }
}

/// One contact of the new list, in the order they are to be tried.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    /// An existing contact of this client, kept (with its id, which a family
    /// app's MQTT topic names); absent for a new contact.
    #[serde(default, deserialize_with = "super::whole_or_null")]
    #[schema(minimum = 1)]
    pub id: Option<i64>,
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// Daughter, son, neighbour, keyholder…
    #[serde(default)]
    #[schema(max_length = 50)]
    pub relation: String,
    /// Digits, optionally starting with `+` and grouped by single spaces or hyphens.
    #[schema(min_length = 3, max_length = 32, pattern = "^\\+?[0-9]+([ -][0-9]+)*$")]
    pub phone: String,
    #[serde(default)]
    pub notify: Option<Notify>,
}

/// The whole contact list, replacing the one the client has.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactsBody {
    #[schema(max_items = 10)]
    pub contacts: Vec<ContactBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub id: i64,
    /// 1 is tried first.
    pub position: i64,
    pub name: String,
    pub relation: String,
    pub phone: String,
    pub notify: Option<Notify>,
}

impl From<ContactRecord> for ContactView {
    fn from(k: ContactRecord) -> Self {
        Self {
            notify: Notify::from_stored(k.notify_channel.as_deref(), k.notify_address),
            id: k.id,
            position: k.position,
            name: k.name,
            relation: k.relation,
            phone: k.phone,
        }
    }
}

/// Everything the registry holds about one client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub id: i64,
    pub external_ref: Option<String>,
    pub name: String,
    pub address: String,
    pub district: String,
    pub street: String,
    pub location: Option<Location>,
    pub language: String,
    pub medical_notes: String,
    pub medications: String,
    pub allergies: String,
    pub key_safe: String,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<String>,
    pub away_until: Option<i64>,
    pub updated_at: i64,
    pub contacts: Vec<ContactView>,
    /// Devices in service, with their last report.
    pub devices: Vec<DeviceStatus>,
}

impl ClientView {
    fn new(c: ClientRecord, devices: Vec<DeviceStatus>) -> Self {
        Self {
            id: c.id,
            external_ref: c.external_ref,
            location: Location::of(c.lat, c.lon),
            name: c.name,
            address: c.address,
            district: c.district,
            street: c.street,
            language: c.language,
            medical_notes: c.medical_notes,
            medications: c.medications,
            allergies: c.allergies,
            key_safe: c.key_safe,
            birth_year: c.birth_year,
            subsidy_category: c.subsidy_category,
            away_until: c.away_until,
            updated_at: c.updated_at,
            contacts: c.contacts.into_iter().map(ContactView::from).collect(),
            devices,
        }
    }
}

async fn view(s: &ApiState, id: i64) -> Result<ClientView, ApiError> {
    let client = s.db.client_record(id).await?.ok_or(ApiError::NotFound)?;
    let devices = s.db.client_devices(id).await?;
    Ok(ClientView::new(client, devices))
}

fn path_id(id: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// Clients in id order, filtered; no medical notes, medications or allergies.
#[utoipa::path(
    get, path = "/api/v1/clients", tag = "registry",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<ClientListItem>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<ClientListItem>>, ApiError> {
    caller.require(STAFF)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit = limit(q.limit, 200, 1000)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(bad("after must be 0 or more".into()));
    }
    for (name, v, max) in [
        ("district", &q.district, fields::AREA_MAX),
        ("street", &q.street, fields::AREA_MAX),
        ("q", &q.q, 100),
    ] {
        if v.as_ref().is_some_and(|v| v.chars().count() > max) {
            return Err(bad(format!("{name} must be at most {max} characters")));
        }
    }
    let (district, street, text) = (
        filter_text(q.district),
        filter_text(q.street),
        filter_text(q.q),
    );
    let rows =
        s.db.clients_page(&ClientQuery {
            district: district.as_deref(),
            street: street.as_deref(),
            text: text.as_deref(),
            after,
            limit,
        })
        .await?;
    Ok(Json(rows.into_iter().map(ClientListItem::from).collect()))
}

/// One client: profile, health, contacts in order, devices. Every read is audited.
#[utoipa::path(
    get, path = "/api/v1/clients/{id}", tag = "registry",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = ClientView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<ClientView>, ApiError> {
    caller.require(STAFF)?;
    let id = path_id(id)?;
    let view = view(&s, id).await?;
    // Medical data: every look is on record before it is shown.
    s.db.audit(AuditEntry {
        actor: &caller.actor(),
        action: "profile_read",
        subject: &format!("client:{id}"),
        detail: "registry",
    })
    .await?;
    Ok(Json(view))
}

/// Everything held about one resident, for their right of access.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResidentExport {
    /// When it was made (ms since the epoch).
    exported_at: i64,
    /// The registry record: profile, health, contacts, devices.
    client: ClientView,
    #[serde(flatten)]
    records: ResidentRecords,
}

/// Everything the service holds about one resident (the right of access,
/// PIPL art. 45): the registry record, every event of their devices, their
/// incidents step by step, the wellbeing calls, and who read or changed the
/// record. Admins only; the export itself is audited first.
#[utoipa::path(
    get, path = "/api/v1/clients/{id}/export", tag = "registry",
    params(("id" = i64, Path)),
    responses(
        (status = 200, body = ResidentExport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<ResidentExport>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = path_id(id)?;
    let client = view(&s, id).await?;
    s.db.audit(AuditEntry {
        actor: &caller.actor(),
        action: "client_exported",
        subject: &format!("client:{id}"),
        detail: "right of access",
    })
    .await?;
    let records = s.db.resident_export(id).await?;
    Ok(Json(ResidentExport {
        exported_at: pingantong_store::now_ms(),
        client,
        records,
    }))
}

/// A new client (contacts: `PUT /api/v1/clients/{id}/contacts`).
#[utoipa::path(
    post, path = "/api/v1/clients", tag = "registry",
    request_body = ClientBody,
    responses(
        (status = 201, body = ClientView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the register reference is taken"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<ClientBody>, JsonRejection>,
) -> Result<(StatusCode, Json<ClientView>), ApiError> {
    caller.require(REGISTRARS)?;
    let Json(body) = body?;
    let entry = body.entry()?;
    let id =
        s.db.create_client(&entry, &[], &caller.actor())
            .await
            .map_err(edit_error)?;
    Ok((StatusCode::CREATED, Json(view(&s, id).await?)))
}

/// Replace a client's profile: every field, as given (contacts and away
/// dates are kept). The audit entry names the fields that changed.
#[utoipa::path(
    put, path = "/api/v1/clients/{id}", tag = "registry",
    params(("id" = i64, Path)),
    request_body = ClientBody,
    responses(
        (status = 200, body = ClientView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the register reference is taken"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<ClientBody>, JsonRejection>,
) -> Result<Json<ClientView>, ApiError> {
    caller.require(REGISTRARS)?;
    let id = path_id(id)?;
    let Json(body) = body?;
    let entry = body.entry()?;
    s.db.update_client(id, &entry, &caller.actor())
        .await
        .map_err(edit_error)?;
    Ok(Json(view(&s, id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AwayBody {
    /// Away (hospital, travel) until then, ms since the epoch: their devices'
    /// silence raises nothing meanwhile. `null`: at home.
    #[serde(deserialize_with = "super::whole_or_null")]
    #[schema(required = true, minimum = 0, maximum = 4_102_444_800_000_i64)]
    pub until: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AwayDone {
    pub id: i64,
    pub away_until: Option<i64>,
}

/// Mark a client away until a time, or back home.
#[utoipa::path(
    put, path = "/api/v1/clients/{id}/away", tag = "registry",
    params(("id" = i64, Path)),
    request_body = AwayBody,
    responses(
        (status = 200, body = AwayDone),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn away(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<AwayBody>, JsonRejection>,
) -> Result<Json<AwayDone>, ApiError> {
    caller.require(CONTACT_EDITORS)?;
    let id = path_id(id)?;
    let Json(body) = body?;
    let until = body
        .until
        .map(|t| fields::within("until", t, (0, fields::AWAY_MAX_MS)))
        .transpose()
        .map_err(bad)?;
    s.db.set_client_away_audited(id, until, &caller.actor())
        .await
        .map_err(edit_error)?;
    Ok(Json(AwayDone {
        id,
        away_until: until,
    }))
}

/// Replace a client's contact list, in the order they are to be tried.
/// Contacts named by `id` are kept; those left out are removed (kept only as
/// history when notices were sent to them).
#[utoipa::path(
    put, path = "/api/v1/clients/{id}/contacts", tag = "registry",
    params(("id" = i64, Path)),
    request_body = ContactsBody,
    responses(
        (status = 200, body = Vec<ContactView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "an id that is not this client's contact"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn contacts(
    State(s): State<ApiState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<ContactsBody>, JsonRejection>,
) -> Result<Json<Vec<ContactView>>, ApiError> {
    caller.require(CONTACT_EDITORS)?;
    let id = path_id(id)?;
    let Json(body) = body?;
    if body.contacts.len() > fields::CONTACTS_MAX {
        return Err(bad(format!(
            "contacts: at most {} per client",
            fields::CONTACTS_MAX
        )));
    }
    let mut list: Vec<ContactEntry> = Vec::with_capacity(body.contacts.len());
    for (i, k) in body.contacts.iter().enumerate() {
        let (channel, address) = match &k.notify {
            Some(n) => {
                let (c, a) = n.parts();
                (Some(c), Some(a))
            }
            None => (None, None),
        };
        list.push(
            fields::contact_entry(
                &format!("contacts[{i}]."),
                &ContactInput {
                    id: k.id,
                    name: &k.name,
                    relation: &k.relation,
                    phone: &k.phone,
                    channel,
                    address,
                },
            )
            .map_err(bad)?,
        );
    }
    let stored =
        s.db.replace_contacts(id, &list, &caller.actor())
            .await
            .map_err(edit_error)?;
    Ok(Json(stored.into_iter().map(ContactView::from).collect()))
}
