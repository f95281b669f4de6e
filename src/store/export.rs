//! Everything the service holds about one resident, for their right of
//! access (PIPL art. 45): the events of their devices, their incidents with
//! every step, the wellbeing calls, and who read or changed their record.
//! The registry record itself (profile, contacts, devices) is read as the API
//! shows it.

use super::{AuditRecord, Db, StoreError};

/// One event of one of the resident's devices, as received.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ExportedAlarm {
    pub id: i64,
    pub received_at: i64,
    pub device_id: String,
    pub protocol: String,
    pub kind: String,
    pub device_time: Option<i64>,
    pub battery: Option<i64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub auth: String,
    pub incident_id: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct AlarmRow {
    id: i64,
    received_at: i64,
    device_id: String,
    protocol: String,
    kind: String,
    device_time: Option<i64>,
    battery: Option<i64>,
    position: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    auth: String,
    incident_id: Option<i64>,
}

/// One of the resident's incidents.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ExportedIncident {
    pub id: i64,
    pub opened_at: i64,
    pub kind: String,
    pub lane: String,
    pub state: String,
    pub outcome: Option<String>,
    pub closed_at: Option<i64>,
}

/// One step of an incident's timeline.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ExportedStep {
    pub incident_id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// One wellbeing call.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ExportedCheck {
    pub at: i64,
    pub operator: String,
    pub outcome: String,
    pub note: String,
}

/// What [`Db::resident_export`] finds.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ResidentRecords {
    pub alarms: Vec<ExportedAlarm>,
    pub incidents: Vec<ExportedIncident>,
    pub timeline: Vec<ExportedStep>,
    pub wellbeing_checks: Vec<ExportedCheck>,
    /// Reads and changes of the record, from the audit log.
    #[schema(value_type = Vec<Object>)]
    pub access_log: Vec<AuditRecord>,
}

/// A resident's rows as read: alarms (positions still sealed), incidents,
/// their steps, wellbeing calls, the audit entries about their record.
type ResidentRows = (
    Vec<AlarmRow>,
    Vec<ExportedIncident>,
    Vec<ExportedStep>,
    Vec<ExportedCheck>,
    Vec<AuditRecord>,
);

/// The export's statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait ExportSql {
    /// Everything kept about resident `client_id`; `subject` names their
    /// record in the audit log.
    async fn resident_rows(
        &mut self,
        client_id: i64,
        subject: &str,
    ) -> Result<ResidentRows, sqlx::Error>;
}

impl<C> ExportSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'r> AlarmRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> ExportedIncident: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> ExportedStep: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> ExportedCheck: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> AuditRecord: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn resident_rows(
        &mut self,
        client_id: i64,
        subject: &str,
    ) -> Result<ResidentRows, sqlx::Error> {
        let alarms: Vec<AlarmRow> = sqlx::query_as(
            "SELECT a.id, a.received_at, a.device_id, a.protocol, a.kind, a.device_time, \
             a.battery, a.position, a.lat, a.lon, a.auth, a.incident_id FROM alarms a \
             WHERE a.client_id = $1 \
             OR a.incident_id IN (SELECT id FROM incidents WHERE client_id = $1) \
             ORDER BY a.id",
        )
        .bind(client_id)
        .fetch_all(&mut *self)
        .await?;
        let incidents = sqlx::query_as(
            "SELECT id, opened_at, kind, lane, state, outcome, closed_at FROM incidents \
             WHERE client_id = $1 ORDER BY id",
        )
        .bind(client_id)
        .fetch_all(&mut *self)
        .await?;
        let timeline = sqlx::query_as(
            "SELECT e.incident_id, e.at, e.actor, e.action, e.detail FROM incident_events e \
             JOIN incidents i ON i.id = e.incident_id WHERE i.client_id = $1 \
             ORDER BY e.incident_id, e.id",
        )
        .bind(client_id)
        .fetch_all(&mut *self)
        .await?;
        let wellbeing_checks = sqlx::query_as(
            "SELECT at, operator, outcome, note FROM wellbeing_checks WHERE client_id = $1 \
             ORDER BY id",
        )
        .bind(client_id)
        .fetch_all(&mut *self)
        .await?;
        let access_log = sqlx::query_as(
            "SELECT id, at, actor, action, subject, detail FROM audit_log WHERE subject = $1 \
             ORDER BY id",
        )
        .bind(subject)
        .fetch_all(&mut *self)
        .await?;
        Ok((alarms, incidents, timeline, wellbeing_checks, access_log))
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both.
impl Db {
    /// Everything kept about resident `client_id` beyond the registry record.
    pub async fn resident_export(&self, client_id: i64) -> Result<ResidentRecords, StoreError> {
        let subject = format!("client:{client_id}");
        let records = match self {
            Db::Sqlite { read, .. } => {
                read.acquire()
                    .await?
                    .resident_rows(client_id, &subject)
                    .await
            }
            Db::Postgres(p, _) => p.acquire().await?.resident_rows(client_id, &subject).await,
        }?;
        let (rows, incidents, timeline, wellbeing_checks, access_log) = records;
        let alarms = rows
            .into_iter()
            .map(|a| {
                let at = self.position(a.position.as_deref(), a.lat, a.lon)?;
                Ok(ExportedAlarm {
                    id: a.id,
                    received_at: a.received_at,
                    device_id: a.device_id,
                    protocol: a.protocol,
                    kind: a.kind,
                    device_time: a.device_time,
                    battery: a.battery,
                    lat: at.map(|x| x.0),
                    lon: at.map(|x| x.1),
                    auth: a.auth,
                    incident_id: a.incident_id,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(ResidentRecords {
            alarms,
            incidents,
            timeline,
            wellbeing_checks,
            access_log,
        })
    }
}
