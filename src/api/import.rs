//! CSV import of clients and devices: a spreadsheet in, a report per row
//! out. Each row stands on its own: a bad one is reported and the others are
//! imported. Rows are checked by the same rules as the JSON endpoints.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::registry::REGISTRARS;
use super::registry::fields::{self, ClientInput, ContactInput};
use super::{ApiError, ApiState, Caller, ErrorBody};
use pingantong_store::{
    AuditEntry, ClientImportRow, ClientRef, DeviceEntry, EditError, RowOutcome,
};

/// Largest file taken, bytes.
pub const MAX_BYTES: usize = 5 * 1024 * 1024;
/// Most data rows taken in one file.
pub const MAX_ROWS: usize = 20_000;
/// Contacts a client row may carry (`contact1_…` to `contact3_…`).
const CSV_CONTACTS: usize = 3;

const CLIENT_COLUMNS: [&str; 14] = [
    "external_ref",
    "name",
    "address",
    "district",
    "street",
    "lat",
    "lon",
    "language",
    "medical_notes",
    "medications",
    "allergies",
    "key_safe",
    "birth_year",
    "subsidy_category",
];
const CONTACT_COLUMNS: [&str; 5] = ["name", "relation", "phone", "channel", "address"];
const DEVICE_COLUMNS: [&str; 6] = [
    "id",
    "protocol",
    "secret",
    "client_id",
    "client_ref",
    "heartbeat_secs",
];

/// What became of each row of a clients file.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientImportReport {
    pub imported: u64,
    pub failed: u64,
    pub rows: Vec<ClientRowReport>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientRowReport {
    /// The line the row starts on (the header is line 1).
    pub row: u64,
    pub ok: bool,
    /// The new client's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Why the row was not imported, starting with the column's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of each row of a devices file.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceImportReport {
    pub imported: u64,
    pub failed: u64,
    pub rows: Vec<DeviceRowReport>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceRowReport {
    /// The line the row starts on (the header is line 1).
    pub row: u64,
    pub ok: bool,
    /// The device's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why the row was not imported, starting with the column's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Fold the store's outcomes (one per row that passed the checks, in order)
/// into the reports of those rows.
fn settle<'a, Id: 'a>(
    rows: impl Iterator<Item = (&'a mut bool, &'a mut Option<Id>, &'a mut Option<String>)>,
    outcomes: Vec<RowOutcome<Id>>,
) {
    let mut outcomes = outcomes.into_iter();
    for (ok, id, error) in rows.filter(|r| *r.0) {
        match outcomes.next() {
            Some(Ok(v)) => *id = Some(v),
            Some(Err(e)) => {
                *ok = false;
                *error = Some(e);
            }
            None => {
                *ok = false;
                *error = Some("not imported".into());
            }
        }
    }
}

/// Count a file's rows and write the file's audit entry: (imported, failed).
async fn audit_import(
    s: &ApiState,
    actor: &str,
    what: &str,
    oks: impl Iterator<Item = bool>,
) -> Result<(u64, u64), ApiError> {
    let (mut imported, mut failed) = (0u64, 0u64);
    for ok in oks {
        if ok {
            imported += 1;
        } else {
            failed += 1;
        }
    }
    s.db.audit(AuditEntry {
        actor,
        action: &format!("{what}_imported"),
        subject: &format!("import:{what}"),
        detail: &format!("{imported} imported, {failed} failed"),
    })
    .await?;
    Ok((imported, failed))
}

fn too_large(message: String) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message,
    }
}

/// `text/csv`, UTF-8 (a charset, when named, must be UTF-8).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = || ApiError::Rejected {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        message: "send the file as Content-Type: text/csv (UTF-8)".into(),
    };
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unsupported)?;
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("text/csv"))
    {
        return Err(unsupported());
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
            && !matches!(
                v.trim().trim_matches('"').to_ascii_lowercase().as_str(),
                "utf-8" | "utf8"
            )
        {
            return Err(unsupported());
        }
    }
    Ok(())
}

/// The whole body, refused (413) past [`MAX_BYTES`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = || {
        too_large(format!(
            "the file is larger than {MAX_BYTES} bytes; split it"
        ))
    };
    if headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BYTES as u64)
    {
        return Err(limit());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > MAX_BYTES {
            return Err(limit());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A CSV file read against the columns it may have.
struct Table {
    /// Column name → position.
    columns: HashMap<String, usize>,
    /// (line, cells or why the row cannot be read), blank rows left out.
    rows: Vec<(u64, Result<Vec<String>, String>)>,
}

impl Table {
    /// The cell of `column` in `cells`, trimmed; `None` when the file has no
    /// such column or the cell is empty.
    fn cell<'a>(&self, cells: &'a [String], column: &str) -> Option<&'a str> {
        let i = *self.columns.get(column)?;
        cells
            .get(i)
            .map(|c| c.trim_matches(|ch: char| ch == ' ' || ch == '\t'))
            .filter(|c| !c.is_empty())
    }
}

fn read_table(body: &[u8], known: &[String], required: &[&str]) -> Result<Table, ApiError> {
    // Excel writes a byte order mark before "CSV UTF-8" files.
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(body);
    let header = reader
        .byte_headers()
        .map_err(|e| ApiError::BadRequest(format!("not a CSV file: {e}")))?
        .clone();
    if header.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "a header row naming the columns is required ({})",
            required.join(", ")
        )));
    }
    let mut columns = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        let name = std::str::from_utf8(name)
            .map_err(|_| {
                ApiError::BadRequest(
                    "the header row is not UTF-8: save the file as CSV UTF-8".into(),
                )
            })?
            .trim()
            .to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        if !known.contains(&name) {
            return Err(ApiError::BadRequest(format!(
                "unknown column {name:?}; the columns are {}",
                known.join(", ")
            )));
        }
        if columns.insert(name.clone(), i).is_some() {
            return Err(ApiError::BadRequest(format!(
                "column {name:?} appears twice"
            )));
        }
    }
    if let Some(missing) = required.iter().find(|r| !columns.contains_key(**r)) {
        return Err(ApiError::BadRequest(format!(
            "the header row has no {missing:?} column (required: {})",
            required.join(", ")
        )));
    }
    let width = header.len();
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let (line, cells) = match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line());
                let cells: Result<Vec<String>, String> = r
                    .iter()
                    .map(|c| {
                        std::str::from_utf8(c).map(str::to_owned).map_err(|_| {
                            "this row is not UTF-8 text: save the file as CSV UTF-8".to_owned()
                        })
                    })
                    .collect();
                (line, cells)
            }
            Err(e) => (
                e.position().map_or(0, |p| p.line()),
                Err(format!("not readable as CSV: {e}")),
            ),
        };
        let cells = match cells {
            Ok(c) if c.iter().all(|c| c.trim().is_empty()) => continue,
            Ok(c) if c.len() > width && c[width..].iter().any(|c| !c.trim().is_empty()) => Err(
                format!("this row has {} cells, the header names {width}", c.len()),
            ),
            other => other,
        };
        rows.push((line, cells));
        if rows.len() > MAX_ROWS {
            return Err(too_large(format!(
                "more than {MAX_ROWS} rows; split the file"
            )));
        }
    }
    Ok(Table { columns, rows })
}

fn number<T: std::str::FromStr>(
    column: &str,
    v: Option<&str>,
    what: &str,
) -> Result<Option<T>, String> {
    v.map(|s| {
        s.parse::<T>().map_err(|_| {
            // Say what was there, but not a whole misplaced paragraph.
            let shown: String = s.chars().take(24).collect();
            let more = if shown.len() < s.len() { "…" } else { "" };
            format!("{column}: {what}, not {shown:?}{more}")
        })
    })
    .transpose()
}

fn client_row(
    t: &Table,
    cells: &[String],
) -> Result<
    (
        pingantong_store::ClientEntry,
        Vec<pingantong_store::ContactEntry>,
    ),
    String,
> {
    let cell = |c: &str| t.cell(cells, c);
    let lat = number::<f64>("lat", cell("lat"), "a latitude such as 23.1291")?;
    let lon = number::<f64>("lon", cell("lon"), "a longitude such as 113.2644")?;
    let location = match (lat, lon) {
        (Some(lat), Some(lon)) => Some((lat, lon)),
        (None, None) => None,
        _ => return Err("lat, lon: give both or neither".into()),
    };
    let category = cell("subsidy_category").map(str::to_ascii_lowercase);
    let entry = fields::client_entry(&ClientInput {
        external_ref: cell("external_ref"),
        name: cell("name").unwrap_or(""),
        address: cell("address").unwrap_or(""),
        district: cell("district").unwrap_or(""),
        street: cell("street").unwrap_or(""),
        location,
        language: cell("language"),
        medical_notes: cell("medical_notes").unwrap_or(""),
        medications: cell("medications").unwrap_or(""),
        allergies: cell("allergies").unwrap_or(""),
        key_safe: cell("key_safe").unwrap_or(""),
        birth_year: number("birth_year", cell("birth_year"), "a year such as 1938")?,
        subsidy_category: category.as_deref(),
    })?;
    let mut contacts = Vec::new();
    for n in 1..=CSV_CONTACTS {
        let col = |c: &str| cell(&format!("contact{n}_{c}"));
        if CONTACT_COLUMNS.iter().all(|c| col(c).is_none()) {
            continue;
        }
        let channel = col("channel").map(str::to_ascii_lowercase);
        contacts.push(fields::contact_entry(
            &format!("contact{n}_"),
            &ContactInput {
                id: None,
                name: col("name").unwrap_or(""),
                relation: col("relation").unwrap_or(""),
                phone: col("phone").unwrap_or(""),
                channel: channel.as_deref(),
                address: col("address"),
            },
        )?);
    }
    Ok((entry, contacts))
}

fn device_row(t: &Table, cells: &[String]) -> Result<DeviceEntry, String> {
    let cell = |c: &str| t.cell(cells, c);
    let client_id = number::<i64>("client_id", cell("client_id"), "a client's id")?;
    let client = match (client_id, cell("client_ref")) {
        (Some(_), Some(_)) => return Err("client_id, client_ref: give one or the other".into()),
        (Some(id), None) if id >= 1 => ClientRef::Id(id),
        (Some(_), None) => return Err("client_id: 1 or more".into()),
        (None, Some(r)) => ClientRef::External(fields::external_ref("client_ref", r)?),
        (None, None) => ClientRef::Nobody,
    };
    let protocol = cell("protocol").unwrap_or("").to_ascii_lowercase();
    fields::device_entry(
        cell("id").unwrap_or(""),
        &protocol,
        cell("secret"),
        client,
        number("heartbeat_secs", cell("heartbeat_secs"), "whole seconds")?,
    )
}

fn client_columns() -> Vec<String> {
    let mut all: Vec<String> = CLIENT_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    for n in 1..=CSV_CONTACTS {
        all.extend(CONTACT_COLUMNS.iter().map(|c| format!("contact{n}_{c}")));
    }
    all
}

/// A store failure that cut an import short: logged; the rows say so.
fn log_failure(failure: Option<EditError>) {
    if let Some(e) = failure {
        pingantong_telemetry::events::RequestFailed {
            error: &format_args!("import: {e:#}"),
        }
        .emit();
    }
}

/// After a bulk load the planner must know the tables' new contents before
/// the next alarm is planned (see store::statistics). The import stands
/// either way.
async fn refresh_statistics(db: &pingantong_store::Db) {
    if let Err(e) = db.refresh_statistics().await {
        pingantong_telemetry::events::RequestFailed {
            error: &format_args!("import: planner statistics: {e:#}"),
        }
        .emit();
    }
}

/// Import clients from a CSV file (UTF-8, a header row, an optional byte
/// order mark; at most 5 MB and 20,000 rows).
///
/// Columns (any order; names as here; unknown names are refused):
/// `name`, `address`, `district`, `street` (required); `external_ref` (the
/// client's number in the city's register, unique; devices files can name
/// the client by it); `lat`, `lon` (both or neither); `language` (default
/// `zh-CN`); `medical_notes`, `medications`, `allergies`, `key_safe`; `birth_year`;
/// `subsidy_category` (`destitute`, `advanced_age`, `living_alone`,
/// `special_contribution`); and up to three contacts, in the order they are
/// tried: `contact1_name`, `contact1_relation`, `contact1_phone`,
/// `contact1_channel` (`mqtt`, `webhook`, `email` or empty: telephoned),
/// `contact1_address` (the webhook's URL or the e-mail address), then
/// `contact2_…`, `contact3_…`. Empty rows are skipped.
///
/// Each row is checked and created on its own: the report says, per row,
/// the new client's id or why not (`"phone: …"`), and a bad row does not
/// stop the others.
#[utoipa::path(
    post, path = "/api/v1/import/clients", tag = "registry",
    request_body(content = String, content_type = "text/csv",
        description = "A CSV file with a header row; see the operation's description for the columns."),
    responses(
        (status = 200, body = ClientImportReport, description = "What became of each row"),
        (status = 400, body = ErrorBody, description = "no header row, or an unknown or missing column"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "more than 5 MB or 20,000 rows"),
        (status = 415, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn clients(
    State(s): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ClientImportReport>, ApiError> {
    caller.require(REGISTRARS)?;
    check_content_type(&headers)?;
    let bytes = read_body(&headers, body).await?;
    let table = read_table(
        &bytes,
        &client_columns(),
        &["name", "address", "district", "street"],
    )?;
    let mut good: Vec<ClientImportRow> = Vec::new();
    let mut reports: Vec<ClientRowReport> = Vec::with_capacity(table.rows.len());
    for (line, cells) in &table.rows {
        match cells
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|c| client_row(&table, c))
        {
            Ok((entry, contacts)) => {
                good.push((*line, entry, contacts));
                reports.push(ClientRowReport {
                    row: *line,
                    ok: true,
                    id: None,
                    error: None,
                });
            }
            Err(e) => reports.push(ClientRowReport {
                row: *line,
                ok: false,
                id: None,
                error: Some(e),
            }),
        }
    }
    let actor = caller.actor();
    let (outcomes, failure) = s.db.import_clients(&good, &actor).await;
    log_failure(failure);
    refresh_statistics(&s.db).await;
    settle(
        reports
            .iter_mut()
            .map(|r| (&mut r.ok, &mut r.id, &mut r.error)),
        outcomes,
    );
    let (imported, failed) =
        audit_import(&s, &actor, "clients", reports.iter().map(|r| r.ok)).await?;
    Ok(Json(ClientImportReport {
        imported,
        failed,
        rows: reports,
    }))
}

/// Import devices from a CSV file (UTF-8, a header row, an optional byte
/// order mark; at most 5 MB and 20,000 rows).
///
/// Columns (any order; unknown names are refused): `id` and `protocol`
/// (`native`, `gt06`, `watch`, `h02`, `eview`, `sia_dc09`, `mqtt`) required;
/// `secret` as hex (a native pendant's HMAC key of 16 to 64 bytes, required
/// for `native`; a DC-09 account's AES key of 16, 24 or 32 bytes, or empty;
/// empty for the others — format the column as text in a spreadsheet);
/// the client by `client_id` or by `client_ref` (their `external_ref`), or
/// neither for a device in stock; `heartbeat_secs` (10 to 604800; empty:
/// the protocol's). An id already in service is refused; a retired one is
/// provisioned again. Empty rows are skipped.
///
/// Each row is checked and provisioned on its own: the report says, per
/// row, the device's id or why not. Secrets never appear in the report.
#[utoipa::path(
    post, path = "/api/v1/import/devices", tag = "registry",
    request_body(content = String, content_type = "text/csv",
        description = "A CSV file with a header row; see the operation's description for the columns."),
    responses(
        (status = 200, body = DeviceImportReport, description = "What became of each row"),
        (status = 400, body = ErrorBody, description = "no header row, or an unknown or missing column"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "more than 5 MB or 20,000 rows"),
        (status = 415, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn devices(
    State(s): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DeviceImportReport>, ApiError> {
    caller.require(REGISTRARS)?;
    check_content_type(&headers)?;
    let bytes = read_body(&headers, body).await?;
    let known: Vec<String> = DEVICE_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    let table = read_table(&bytes, &known, &["id", "protocol"])?;
    let mut good: Vec<(u64, DeviceEntry)> = Vec::new();
    let mut reports: Vec<DeviceRowReport> = Vec::with_capacity(table.rows.len());
    for (line, cells) in &table.rows {
        match cells
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|c| device_row(&table, c))
        {
            Ok(entry) => {
                good.push((*line, entry));
                reports.push(DeviceRowReport {
                    row: *line,
                    ok: true,
                    id: None,
                    error: None,
                });
            }
            Err(e) => reports.push(DeviceRowReport {
                row: *line,
                ok: false,
                id: None,
                error: Some(e),
            }),
        }
    }
    let actor = caller.actor();
    let (outcomes, failure) = s.db.import_devices(&good, &actor).await;
    log_failure(failure);
    refresh_statistics(&s.db).await;
    settle(
        reports
            .iter_mut()
            .map(|r| (&mut r.ok, &mut r.id, &mut r.error)),
        outcomes,
    );
    let (imported, failed) =
        audit_import(&s, &actor, "devices", reports.iter().map(|r| r.ok)).await?;
    Ok(Json(DeviceImportReport {
        imported,
        failed,
        rows: reports,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(csv: &str) -> Result<Table, ApiError> {
        read_table(
            csv.as_bytes(),
            &client_columns(),
            &["name", "address", "district", "street"],
        )
    }

    #[test]
    fn header_rules() {
        let t = table("\u{feff}Name,address,district,street\n陈,x,越秀区,北京街\n").unwrap();
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].0, 2);
        assert!(table("").is_err());
        assert!(table("name,adress,district,street\n").is_err());
        assert!(table("name,address,district\n").is_err());
        assert!(table("name,name,address,district,street\n").is_err());
    }

    #[test]
    fn rows_keep_their_lines_and_blank_rows_are_skipped() {
        let t =
            table("name,address,district,street\n,,,\na,b,c,d\n\"x\ny\",b,c,d\na,b,c,d,e\na,b\n")
                .unwrap();
        let lines: Vec<u64> = t.rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [3, 4, 6, 7]);
        assert!(t.rows[2].1.is_err(), "a cell past the header");
        let short = t.rows[3].1.as_ref().unwrap();
        assert_eq!(t.cell(short, "district"), None);
    }

    #[test]
    fn content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            check_content_type(&h)
        };
        assert!(with("text/csv").is_ok());
        assert!(with("Text/CSV; charset=UTF-8").is_ok());
        assert!(with("text/csv; charset=gbk").is_err());
        assert!(with("application/json").is_err());
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }
}
