//! The registry over HTTP: clients and their contacts, devices, providers,
//! carers, and the alarms devices sent. Staff read it; supervisors and admins
//! change it; operators may also change a client's contacts and away dates
//! (families tell them on the phone). Every change and every read of a
//! client's profile is on the audit chain.

pub mod alarms;
pub mod clients;
pub mod devices;
pub mod fields;
pub mod providers;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use super::ApiError;
use pingantong_domain::Role;
use pingantong_store::EditError;

/// Who creates and changes the registry.
pub(super) const REGISTRARS: &[Role] = &[Role::Admin, Role::Supervisor];
/// Who may change a client's contacts and away dates: what families tell
/// the call centre (a new number, a stay in hospital) is entered by whoever
/// takes the call, at any hour.
pub(super) const CONTACT_EDITORS: &[Role] = &[Role::Operator, Role::Supervisor, Role::Admin];

/// A position on the map (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
}

impl Location {
    pub(super) fn of(lat: Option<f64>, lon: Option<f64>) -> Option<Self> {
        Some(Self {
            lat: lat?,
            lon: lon?,
        })
    }
}

pub(super) fn edit_error(e: EditError) -> ApiError {
    match e {
        EditError::NotFound(_) => ApiError::NotFound,
        EditError::Conflict(m) => ApiError::Conflict(m),
        EditError::Store(e) => e.into(),
    }
}

/// A field check's message as a 400.
pub(super) fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// A query parameter as a filter: NUL (which PostgreSQL text cannot hold)
/// becomes U+FFFD, which matches nothing stored.
pub(super) fn filter_text(v: Option<String>) -> Option<String> {
    v.map(|s| s.replace('\0', "\u{fffd}"))
}

/// An integer, written as JSON allows it (`7` or `7.0`).
pub(super) fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number within range"
        ))),
    }
}

/// As [`whole`], or `null`.
pub(super) fn whole_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole")] i64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

/// Query parameters that limit a list.
pub(super) fn limit(v: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if !(1..=max).contains(&v) {
        return Err(bad(format!("limit must be between 1 and {max}")));
    }
    Ok(v)
}

/// The schema of a body tagged by `tag` (serde's internally tagged enum whose
/// variants are structs with `deny_unknown_fields`): one object per variant,
/// its own fields plus the tag, closed to any other field. (Derived, the tag
/// would sit beside a closed object in an `allOf`, which nothing satisfies.)
pub(super) fn tagged(tag: &str, variants: Vec<(&str, &str, RefOr<Schema>)>) -> RefOr<Schema> {
    let mut one_of = OneOfBuilder::new();
    for (value, doc, schema) in variants {
        let RefOr::T(Schema::Object(mut object)) = schema else {
            unreachable!("a variant of a tagged body is an inline object")
        };
        object.properties.insert(
            tag.to_owned(),
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([value]))
                .into(),
        );
        object.required.insert(0, tag.to_owned());
        object.description = Some(doc.to_owned());
        one_of = one_of.item(Schema::Object(object));
    }
    one_of.into()
}
