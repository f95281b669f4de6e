//! What the console reads: the queue, an incident with its timeline, the
//! people and devices around it, and a carer's own dispatches.
//!
//! The statements are [`ConsoleSql`]'s, written once for both backends.

use super::audit::AuditSql;
use pingantong_domain::DispatchState;
use serde::Serialize;

use super::{Db, StoreError, now_ms};
use crate::AuditEntry;
use crate::tx::{NewLine, TxSql};

/// One line of the operator queue.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct QueueRow {
    pub id: i64,
    pub opened_at: i64,
    pub last_press_at: i64,
    pub kind: String,
    pub lane: pingantong_protocol::Lane,
    pub state: pingantong_domain::State,
    pub verified: bool,
    pub press_count: i64,
    pub device_id: String,
    pub claimed_by: Option<String>,
    pub advised_service: Option<String>,
    pub client_id: Option<i64>,
    pub client_name: Option<String>,
    pub district: Option<String>,
    pub street: Option<String>,
}

/// Which incidents to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueFilter<'a> {
    /// Only those still needing someone.
    pub open_only: bool,
    pub lane: Option<&'a str>,
    /// Only incidents in exactly this state (`resolved`: waiting to be
    /// closed); overrides `open_only`.
    pub state: Option<&'a str>,
    pub limit: i64,
}

/// One step on an incident's timeline.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub id: i64,
    pub incident_id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub detail: String,
    /// The incident's kind, lane and device: a feed reader knows whose alarm
    /// it is without asking.
    pub kind: String,
    pub lane: String,
    pub device_id: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct DispatchRow {
    pub id: i64,
    pub incident_id: i64,
    pub carer_id: i64,
    pub carer_name: String,
    pub provider_id: i64,
    pub provider_name: String,
    pub state: DispatchState,
    pub distance_m: Option<f64>,
    pub fallback: bool,
    pub offered_at: i64,
    pub updated_at: i64,
}

/// A device of a client, as the screen-pop shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct DeviceStatus {
    pub id: String,
    pub protocol: String,
    pub last_seen_at: Option<i64>,
    pub battery: Option<i64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// How long a withdrawn offer stays in the carer's job list.
pub const WITHDRAWN_SHOWN_MS: i64 = 60 * 60 * 1000;

/// A carer's own offer or job, with what they need at the door.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct CarerJob {
    pub dispatch_id: i64,
    pub incident_id: i64,
    /// `offered`, `accepted`, `arrived`, or `withdrawn`: the incident ended
    /// and the job was taken back (the carer's phone was told on MQTT too);
    /// answers to it are refused.
    pub state: DispatchState,
    pub kind: String,
    pub offered_at: i64,
    pub distance_m: Option<f64>,
    pub client_id: i64,
    pub client_name: String,
    pub address: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub medical_notes: String,
    pub medications: String,
    pub allergies: String,
    /// The code of the key safe at the door.
    pub key_safe: String,
}

/// A client's device as read, before its positions are opened: id,
/// protocol, last seen, battery, then the newer alarm's position (sealed,
/// lat, lon) and the presence's.
type DeviceReport = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<f64>,
    Option<f64>,
);

/// The console's statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait ConsoleSql {
    /// The queue (see [`Db::queue`]).
    async fn queue(&mut self, f: &QueueFilter<'_>) -> Result<Vec<QueueRow>, sqlx::Error>;
    /// An incident's timeline, in order.
    async fn timeline(&mut self, incident_id: i64) -> Result<Vec<TimelineEntry>, sqlx::Error>;
    /// The timeline rows with these ids that are there (`ids` not empty).
    async fn timeline_rows(&mut self, ids: &[i64]) -> Result<Vec<TimelineEntry>, sqlx::Error>;
    /// Timeline entries of every incident after `after_id`, oldest first.
    async fn timeline_since(
        &mut self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<TimelineEntry>, sqlx::Error>;
    /// The newest timeline id, if there is one.
    async fn last_timeline_id(&mut self) -> Result<Option<i64>, sqlx::Error>;
    /// An incident's dispatches, in order.
    async fn dispatches_of(&mut self, incident_id: i64) -> Result<Vec<DispatchRow>, sqlx::Error>;
    /// A client's devices with their last reports, positions still sealed.
    async fn client_devices(&mut self, client_id: i64) -> Result<Vec<DeviceReport>, sqlx::Error>;
    /// A carer's unfinished jobs and those withdrawn after `withdrawn_after`,
    /// health details still sealed (see [`Db::carer_jobs`]).
    async fn carer_jobs(
        &mut self,
        carer_id: i64,
        withdrawn_after: i64,
    ) -> Result<Vec<CarerJob>, sqlx::Error>;
    /// An operator's note with its audit entry, in a transaction of its own
    /// begun with `begin`; `false` when there is no such incident.
    async fn add_note(
        &mut self,
        begin: &'static str,
        incident_id: i64,
        actor: &str,
        text: &str,
        audit: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
}

impl<C> ConsoleSql for C
where
    C: sqlx::Connection + TxSql + AuditSql,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Decode<'q, C::Database>,
    Option<f64>: sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'r> QueueRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> TimelineEntry: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> DispatchRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> CarerJob: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn queue(&mut self, f: &QueueFilter<'_>) -> Result<Vec<QueueRow>, sqlx::Error> {
        let open = if f.open_only && f.state.is_none() {
            "AND i.state NOT IN ('resolved', 'closed', 'cancelled', 'merged')"
        } else {
            ""
        };
        let sql = format!(
            "SELECT i.id, i.opened_at, i.last_press_at, i.kind, i.lane, i.state, i.verified, \
             i.press_count, i.device_id, i.claimed_by, i.advised_service, i.client_id, \
             c.name AS client_name, c.district, c.street \
             FROM incidents i LEFT JOIN clients c ON c.id = i.client_id \
             WHERE ($1 IS NULL OR i.lane = $1) AND ($3 IS NULL OR i.state = $3) {open} \
             ORDER BY CASE i.lane WHEN 'life_safety' THEN 0 WHEN 'technical' THEN 1 ELSE 2 END, \
             i.opened_at, i.id LIMIT $2"
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(f.lane)
            .bind(f.limit.clamp(1, 1000))
            .bind(f.state)
            .fetch_all(self)
            .await
    }

    async fn timeline(&mut self, incident_id: i64) -> Result<Vec<TimelineEntry>, sqlx::Error> {
        sqlx::query_as(
            "SELECT e.id, e.incident_id, e.at, e.actor, e.action, e.from_state, e.to_state, \
             e.detail, i.kind, i.lane, i.device_id \
             FROM incident_events e JOIN incidents i ON i.id = e.incident_id \
             WHERE e.incident_id = $1 ORDER BY e.id",
        )
        .bind(incident_id)
        .fetch_all(self)
        .await
    }

    async fn timeline_rows(&mut self, ids: &[i64]) -> Result<Vec<TimelineEntry>, sqlx::Error> {
        // Integers the feed computed: listed inline.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT e.id, e.incident_id, e.at, e.actor, e.action, e.from_state, e.to_state, \
             e.detail, i.kind, i.lane, i.device_id \
             FROM incident_events e JOIN incidents i ON i.id = e.incident_id \
             WHERE e.id IN ({list}) ORDER BY e.id"
        )))
        .persistent(false)
        .fetch_all(self)
        .await
    }

    async fn timeline_since(
        &mut self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<TimelineEntry>, sqlx::Error> {
        sqlx::query_as(
            "SELECT e.id, e.incident_id, e.at, e.actor, e.action, e.from_state, e.to_state, \
             e.detail, i.kind, i.lane, i.device_id \
             FROM incident_events e JOIN incidents i ON i.id = e.incident_id \
             WHERE e.id > $1 ORDER BY e.id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn last_timeline_id(&mut self) -> Result<Option<i64>, sqlx::Error> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM incident_events")
            .fetch_one(self)
            .await?;
        Ok(row.0)
    }

    async fn dispatches_of(&mut self, incident_id: i64) -> Result<Vec<DispatchRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT d.id, d.incident_id, d.carer_id, c.name AS carer_name, d.provider_id, \
             p.name AS provider_name, d.state, d.distance_m, d.fallback, d.offered_at, \
             d.updated_at FROM dispatches d JOIN carers c ON c.id = d.carer_id \
             JOIN providers p ON p.id = d.provider_id WHERE d.incident_id = $1 ORDER BY d.id",
        )
        .bind(incident_id)
        .fetch_all(self)
        .await
    }

    async fn client_devices(&mut self, client_id: i64) -> Result<Vec<DeviceReport>, sqlx::Error> {
        sqlx::query_as(
            "SELECT d.id, d.protocol, \
             CASE WHEN a.received_at > COALESCE(r.heard_at, 0) THEN a.received_at \
                  ELSE r.heard_at END AS last_seen_at, \
             CASE WHEN a.received_at > COALESCE(r.heard_at, 0) AND a.battery IS NOT NULL \
                  THEN a.battery ELSE r.battery END AS battery, \
             CASE WHEN a.received_at > COALESCE(r.heard_at, 0) THEN a.position END, \
             CASE WHEN a.received_at > COALESCE(r.heard_at, 0) THEN a.lat END, \
             CASE WHEN a.received_at > COALESCE(r.heard_at, 0) THEN a.lon END, \
             r.position, r.lat, r.lon \
             FROM devices d LEFT JOIN device_presence r ON r.device_id = d.id \
             LEFT JOIN alarms a ON a.id = (SELECT MAX(x.id) FROM alarms x \
                 WHERE x.device_id = d.id AND x.auth = 'verified' \
                 AND x.kind NOT IN ('offline', 'back_online', 'missed_test')) \
             WHERE d.client_id = $1 AND d.retired = FALSE ORDER BY d.id",
        )
        .bind(client_id)
        .fetch_all(self)
        .await
    }

    async fn carer_jobs(
        &mut self,
        carer_id: i64,
        withdrawn_after: i64,
    ) -> Result<Vec<CarerJob>, sqlx::Error> {
        sqlx::query_as(
            "SELECT d.id AS dispatch_id, d.incident_id, d.state, i.kind, d.offered_at, \
             d.distance_m, c.id AS client_id, c.name AS client_name, c.address, c.lat, c.lon, \
             CASE WHEN d.state IN ('accepted', 'arrived') THEN c.medical_notes ELSE '' END \
             AS medical_notes, \
             CASE WHEN d.state IN ('accepted', 'arrived') THEN c.medications ELSE '' END \
             AS medications, \
             CASE WHEN d.state IN ('accepted', 'arrived') THEN c.allergies ELSE '' END \
             AS allergies, \
             CASE WHEN d.state IN ('accepted', 'arrived') THEN c.key_safe ELSE '' END \
             AS key_safe \
             FROM dispatches d JOIN incidents i ON i.id = d.incident_id \
             JOIN clients c ON c.id = i.client_id \
             WHERE d.carer_id = $1 AND (d.state IN ('offered', 'accepted', 'arrived') \
             OR (d.state = 'withdrawn' AND d.withdrawn_at > $2)) \
             ORDER BY d.id DESC",
        )
        .bind(carer_id)
        .bind(withdrawn_after)
        .fetch_all(self)
        .await
    }

    async fn add_note(
        &mut self,
        begin: &'static str,
        incident_id: i64,
        actor: &str,
        text: &str,
        audit: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(sqlx::SqlStr::from_static(begin)).await?;
        let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM incidents WHERE id = $1")
            .bind(incident_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(false);
        }
        tx.line(NewLine {
            incident_id,
            at: now,
            actor,
            action: "note",
            to_state: None,
            detail: text,
        })
        .await?;
        tx.append_audit(audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// The queue: life-safety before technical, then oldest first.
    pub async fn queue(&self, f: &QueueFilter<'_>) -> Result<Vec<QueueRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.queue(f).await,
            Db::Postgres(p, _) => p.acquire().await?.queue(f).await,
        }?)
    }

    pub async fn timeline(&self, incident_id: i64) -> Result<Vec<TimelineEntry>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.timeline(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.timeline(incident_id).await,
        }?)
    }

    /// Timeline entries of every incident after `after_id`, oldest first: the live feed.
    /// The timeline rows with these ids that are there now.
    pub async fn timeline_rows(&self, ids: &[i64]) -> Result<Vec<TimelineEntry>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.timeline_rows(ids).await,
            Db::Postgres(p, _) => p.acquire().await?.timeline_rows(ids).await,
        }?)
    }

    pub async fn timeline_since(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<TimelineEntry>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.timeline_since(after_id, limit).await,
            Db::Postgres(p, _) => p.acquire().await?.timeline_since(after_id, limit).await,
        }?)
    }

    /// The newest timeline id (0 when there is none).
    pub async fn last_timeline_id(&self) -> Result<i64, StoreError> {
        let last = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.last_timeline_id().await,
            Db::Postgres(p, _) => p.acquire().await?.last_timeline_id().await,
        }?;
        Ok(last.unwrap_or(0))
    }

    pub async fn dispatches_of(&self, incident_id: i64) -> Result<Vec<DispatchRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.dispatches_of(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.dispatches_of(incident_id).await,
        }?)
    }

    /// A client's devices, each with its last report (time, battery, position):
    /// the stored presence, unless an alarm committed since (not yet in the
    /// presence, which is written once a second) is newer — a screen-pop shows
    /// the press's own battery and position.
    pub async fn client_devices(&self, client_id: i64) -> Result<Vec<DeviceStatus>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.client_devices(client_id).await,
            Db::Postgres(p, _) => p.acquire().await?.client_devices(client_id).await,
        }?;
        rows.into_iter()
            .map(
                |(id, protocol, last_seen_at, battery, pressed, plat, plon, kept, lat, lon)| {
                    // The newer alarm's position if it had one, else the presence's.
                    let at = match self.position(pressed.as_deref(), plat, plon)? {
                        Some(at) => Some(at),
                        None => self.position(kept.as_deref(), lat, lon)?,
                    };
                    Ok(DeviceStatus {
                        id,
                        protocol,
                        last_seen_at,
                        battery,
                        lat: at.map(|a| a.0),
                        lon: at.map(|a| a.1),
                    })
                },
            )
            .collect()
    }

    /// A carer's dispatches that are not finished, newest first, and those
    /// withdrawn in the last [`WITHDRAWN_SHOWN_MS`] (state `withdrawn`): a
    /// phone that missed the MQTT message learns the job was taken back
    /// rather than seeing it vanish. The resident's medical details are in a
    /// job only once this carer accepted it: an offer alone does not show them.
    pub async fn carer_jobs(&self, carer_id: i64) -> Result<Vec<CarerJob>, StoreError> {
        let since = now_ms() - WITHDRAWN_SHOWN_MS;
        match self {
            Db::Sqlite { read, .. } => read.acquire().await?.carer_jobs(carer_id, since).await,
            Db::Postgres(p, _) => p.acquire().await?.carer_jobs(carer_id, since).await,
        }?
        .into_iter()
        .map(|mut j: CarerJob| {
            super::registry::open_health(
                self.vault(),
                [
                    &mut j.medical_notes,
                    &mut j.medications,
                    &mut j.allergies,
                    &mut j.key_safe,
                ],
            )?;
            Ok(j)
        })
        .collect::<Result<_, StoreError>>()
    }

    /// An operator's note on the timeline, with its audit entry, in one transaction.
    pub async fn add_note(
        &self,
        incident_id: i64,
        actor: &str,
        text: &str,
        audit: &AuditEntry<'_>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .add_note(begin, incident_id, actor, text, audit, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .add_note(begin, incident_id, actor, text, audit, now)
                    .await
            }
        }?)
    }
}
