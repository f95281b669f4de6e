//! What the service-level figures are computed from: a period's incidents with
//! their milestone times, their offers, and device supervision; read-only,
//! and never a client's name or medical notes. Also the import of incident
//! history from another system.
//!
//! The statements are [`SlaSql`]'s, written once for both backends.

use super::{Db, StoreError};
use pingantong_domain::State;

/// An incident opened in the period, with the times of its milestones.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SlaIncidentRow {
    pub id: i64,
    pub opened_at: i64,
    pub kind: String,
    pub lane: String,
    pub state: String,
    pub outcome: Option<String>,
    pub client_id: Option<i64>,
    pub district: Option<String>,
    pub street: Option<String>,
    pub subsidy_category: Option<String>,
    /// When the opening alarm reached the server.
    pub received_at: i64,
    /// When it was pressed, by the device's clock (devices without a clock: `None`).
    pub device_time: Option<i64>,
    /// First claim by an operator.
    pub claimed_at: Option<i64>,
    /// First step to *dispatched* (an operator sent help, or a 120/110 hand-off).
    pub dispatched_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

/// One offer to a carer.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SlaDispatchRow {
    pub incident_id: i64,
    pub provider_id: i64,
    pub offered_at: i64,
    pub accepted_at: Option<i64>,
    pub arrived_at: Option<i64>,
}

/// A provider's contract for a district (street `None`) or one street.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CoverageRow {
    pub provider_id: i64,
    pub district: String,
    pub street: Option<String>,
    pub rank: i64,
}

/// A watched device (heard from before the period ended, not retired) and where its client lives.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SlaDeviceRow {
    pub id: String,
    pub heard_at: i64,
    pub district: Option<String>,
    pub street: Option<String>,
    pub subsidy_category: Option<String>,
}

/// A device's offline job that overlaps the period: offline from `opened_at`
/// until the job ended (`None`: still open).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OfflineSpell {
    pub device_id: String,
    pub opened_at: i64,
    pub ended_at: Option<i64>,
}

/// A wellbeing call made in the period, and where its client lives.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SlaWellbeingRow {
    pub district: String,
    pub street: String,
    pub subsidy_category: Option<String>,
}

/// Everything one report needs, read in a few queries.
#[derive(Debug, Clone, Default)]
pub struct SlaData {
    /// Wellbeing calls made in the period.
    pub wellbeing: Vec<SlaWellbeingRow>,
    pub incidents: Vec<SlaIncidentRow>,
    pub dispatches: Vec<SlaDispatchRow>,
    /// (id, name) of every provider.
    pub providers: Vec<(i64, String)>,
    pub coverage: Vec<CoverageRow>,
    pub devices: Vec<SlaDeviceRow>,
    pub offline: Vec<OfflineSpell>,
}

/// Terminal states: an incident's job is over once it enters one of them.
const ENDED: &str = "('resolved', 'closed', 'cancelled', 'merged')";

// Each backend's pool, chosen by a match: the statements ([`SlaSql`], below)
// are the same for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// The rows behind the figures for incidents opened in `[from_ms, to_ms)`
    /// and devices watched before `to_ms`.
    pub async fn sla_data(&self, from_ms: i64, to_ms: i64) -> Result<SlaData, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.sla_data(from_ms, to_ms).await,
            Db::Postgres(p, _) => p.acquire().await?.sla_data(from_ms, to_ms).await,
        }?)
    }
}

/// An incident as another system recorded it, for [`Db::import_incident_history`].
#[derive(Debug, Clone)]
pub struct ImportedIncident {
    /// The other system's id: the import of the same id twice keeps the first.
    pub source_ref: String,
    pub client_id: Option<i64>,
    pub device_id: String,
    pub kind: String,
    /// `life_safety` or `technical`.
    pub lane: String,
    pub state: State,
    pub outcome: Option<String>,
    pub claimed_by: Option<String>,
    /// When the device says it was pressed (devices with a clock).
    pub device_time: Option<i64>,
    pub received_at: i64,
    pub opened_at: i64,
    pub closed_at: Option<i64>,
    /// The timeline, in order.
    pub events: Vec<ImportedEvent>,
    pub dispatches: Vec<ImportedDispatch>,
}

/// One timeline entry: as [`crate::Transition`] writes them (`claim`,
/// `dispatch`, … with from/to states) or as carers' answers do (`carer_accepted`, …).
#[derive(Debug, Clone)]
pub struct ImportedEvent {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub detail: String,
}

/// One offer to a carer and what became of it.
#[derive(Debug, Clone)]
pub struct ImportedDispatch {
    pub carer_id: i64,
    pub provider_id: i64,
    /// offered, accepted, declined, expired, arrived, completed or withdrawn.
    pub state: String,
    pub fallback: bool,
    pub offered_at: i64,
    pub accepted_at: Option<i64>,
    pub arrived_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("incident {source_ref}: {why}")]
    Invalid { source_ref: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ImportError {
    fn from(e: sqlx::Error) -> Self {
        ImportError::Store(e.into())
    }
}

fn check(i: &ImportedIncident) -> Result<(), ImportError> {
    let invalid = |why: String| {
        Err(ImportError::Invalid {
            source_ref: i.source_ref.clone(),
            why,
        })
    };
    if i.source_ref.is_empty() {
        return invalid("an empty source_ref".into());
    }
    if !matches!(i.lane.as_str(), "life_safety" | "technical") {
        return invalid(format!("lane {:?} is not life_safety or technical", i.lane));
    }
    if i.opened_at < i.received_at {
        return invalid("opened before its alarm was received".into());
    }
    for e in &i.events {
        for s in [&e.from_state, &e.to_state].into_iter().flatten() {
            if State::parse(s).is_none() {
                return invalid(format!("event {:?}: unknown state {s:?}", e.action));
            }
        }
    }
    for d in &i.dispatches {
        if pingantong_domain::DispatchState::parse(&d.state).is_none() {
            return invalid(format!("dispatch state {:?}", d.state));
        }
    }
    Ok(())
}

/// The report's reads and the history import, written once for both
/// backends (see [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait SlaSql {
    /// The rows behind the figures (see [`Db::sla_data`]).
    async fn sla_data(&mut self, from_ms: i64, to_ms: i64) -> Result<SlaData, sqlx::Error>;
    /// Write checked incidents from elsewhere in one transaction (see
    /// [`Db::import_incident_history`]); their ids in order.
    async fn import_incident_history(
        &mut self,
        incidents: &[ImportedIncident],
    ) -> Result<Vec<i64>, sqlx::Error>;
}

impl<C> SlaSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Encode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, C::Database>,
    Vec<u8>: sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'r> SlaIncidentRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> SlaDispatchRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> CoverageRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> SlaDeviceRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> OfflineSpell: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> SlaWellbeingRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn sla_data(&mut self, from_ms: i64, to_ms: i64) -> Result<SlaData, sqlx::Error> {
        // Milestones come from the timeline, which has every step with its
        // time; a claim of an incident already dispatched keeps its state, so
        // it is found by its action, not by a to_state.
        let incidents: Vec<SlaIncidentRow> = sqlx::query_as(
            "SELECT i.id, i.opened_at, i.kind, i.lane, i.state, i.outcome, i.client_id, \
             c.district, c.street, c.subsidy_category, a.received_at, a.device_time, \
             e.claimed_at, e.dispatched_at, e.resolved_at, e.cancelled_at \
             FROM incidents i \
             JOIN alarms a ON a.id = i.opening_alarm_id \
             LEFT JOIN clients c ON c.id = i.client_id \
             LEFT JOIN (SELECT ev.incident_id, \
                 MIN(CASE WHEN ev.action = 'claim' THEN ev.at END) AS claimed_at, \
                 MIN(CASE WHEN ev.to_state = 'dispatched' THEN ev.at END) AS dispatched_at, \
                 MIN(CASE WHEN ev.to_state = 'resolved' THEN ev.at END) AS resolved_at, \
                 MIN(CASE WHEN ev.to_state = 'cancelled' THEN ev.at END) AS cancelled_at \
                 FROM incident_events ev JOIN incidents i2 ON i2.id = ev.incident_id \
                 WHERE i2.opened_at >= $1 AND i2.opened_at < $2 \
                 GROUP BY ev.incident_id) e ON e.incident_id = i.id \
             WHERE i.opened_at >= $1 AND i.opened_at < $2 ORDER BY i.id",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&mut *self)
        .await?;
        let dispatches: Vec<SlaDispatchRow> = sqlx::query_as(
            "SELECT d.incident_id, d.provider_id, d.offered_at, d.accepted_at, d.arrived_at \
             FROM dispatches d JOIN incidents i ON i.id = d.incident_id \
             WHERE i.opened_at >= $1 AND i.opened_at < $2 ORDER BY d.id",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&mut *self)
        .await?;
        let providers: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM providers ORDER BY id")
                .fetch_all(&mut *self)
                .await?;
        let coverage: Vec<CoverageRow> =
            sqlx::query_as("SELECT provider_id, district, street, rank FROM provider_coverage")
                .fetch_all(&mut *self)
                .await?;
        let devices: Vec<SlaDeviceRow> = sqlx::query_as(
            "SELECT d.id, d.heard_at, c.district, c.street, c.subsidy_category \
             FROM devices d LEFT JOIN clients c ON c.id = d.client_id \
             WHERE d.retired = FALSE AND d.heard_at IS NOT NULL AND d.heard_at < $1 \
             ORDER BY d.id",
        )
        .bind(to_ms)
        .fetch_all(&mut *self)
        .await?;
        // A job ends at its first step into a terminal state (closed_at for
        // rows that somehow lack that step).
        let offline: Vec<OfflineSpell> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT x.device_id, x.opened_at, x.ended_at FROM (\
             SELECT i.device_id, i.opened_at, COALESCE((SELECT MIN(e.at) \
             FROM incident_events e WHERE e.incident_id = i.id AND e.to_state IN {ENDED}), \
             i.closed_at) AS ended_at \
             FROM incidents i WHERE i.kind = 'offline' AND i.opened_at < $2) x \
             WHERE x.ended_at IS NULL OR x.ended_at > $1 ORDER BY x.device_id, x.opened_at"
        )))
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&mut *self)
        .await?;
        let wellbeing: Vec<SlaWellbeingRow> = sqlx::query_as(
            "SELECT c.district, c.street, c.subsidy_category FROM wellbeing_checks w \
             JOIN clients c ON c.id = w.client_id WHERE w.at >= $1 AND w.at < $2",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&mut *self)
        .await?;
        Ok(SlaData {
            wellbeing,
            incidents,
            dispatches,
            providers,
            coverage,
            devices,
            offline,
        })
    }

    async fn import_incident_history(
        &mut self,
        incidents: &[ImportedIncident],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let mut ids = Vec::with_capacity(incidents.len());
        for i in incidents {
            let dedup = format!("import:{}", i.source_ref);
            let alarm: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO alarms (received_at, protocol, peer, device_id, seq, kind, \
                 device_time, auth, raw, decoded, dedup_key, processed_at) \
                 VALUES ($1, 'import', 'import', $2, 0, $3, $4, 'verified', $5, $6, $7, $8) \
                 ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
            )
            .bind(i.received_at)
            .bind(&i.device_id)
            .bind(&i.kind)
            .bind(i.device_time)
            .bind(Vec::<u8>::new())
            .bind(serde_json::json!({ "imported": i.source_ref }).to_string())
            .bind(&dedup)
            .bind(i.opened_at)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((alarm_id,)) = alarm else {
                let (existing,): (Option<i64>,) =
                    sqlx::query_as("SELECT incident_id FROM alarms WHERE dedup_key = $1")
                        .bind(&dedup)
                        .fetch_one(&mut *tx)
                        .await?;
                ids.extend(existing);
                continue;
            };
            let last = i
                .events
                .iter()
                .map(|e| e.at)
                .chain(i.closed_at)
                .fold(i.opened_at, i64::max);
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO incidents (opened_at, opening_alarm_id, fold_key, client_id, \
                 device_id, kind, lane, state, verified, press_count, last_press_at, \
                 routed_at, closed_at, updated_at, claimed_by, outcome) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, 1, $1, $1, $9, $10, $11, $12) \
                 RETURNING id",
            )
            .bind(i.opened_at)
            .bind(alarm_id)
            .bind(&dedup)
            .bind(i.client_id)
            .bind(&i.device_id)
            .bind(&i.kind)
            .bind(&i.lane)
            .bind(i.state.as_str())
            .bind(i.closed_at)
            .bind(last)
            .bind(&i.claimed_by)
            .bind(&i.outcome)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("UPDATE alarms SET incident_id = $1 WHERE id = $2")
                .bind(id)
                .bind(alarm_id)
                .execute(&mut *tx)
                .await?;
            for e in &i.events {
                sqlx::query(
                    "INSERT INTO incident_events (incident_id, at, actor, action, \
                     from_state, to_state, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.from_state)
                .bind(&e.to_state)
                .bind(&e.detail)
                .execute(&mut *tx)
                .await?;
            }
            for d in &i.dispatches {
                let updated = [d.accepted_at, d.arrived_at]
                    .into_iter()
                    .flatten()
                    .fold(d.offered_at, i64::max);
                // Published: the dispatcher must not send a past offer.
                sqlx::query(
                    "INSERT INTO dispatches (incident_id, carer_id, provider_id, fallback, \
                     state, offered_at, published_at, updated_at, accepted_at, arrived_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)",
                )
                .bind(id)
                .bind(d.carer_id)
                .bind(d.provider_id)
                .bind(d.fallback)
                .bind(&d.state)
                .bind(d.offered_at)
                .bind(updated)
                .bind(d.accepted_at)
                .bind(d.arrived_at)
                .execute(&mut *tx)
                .await?;
            }
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }
}

impl Db {
    /// Write incidents that happened elsewhere — a migration from another
    /// system, or a test's generated history — with the times they carry, in
    /// one transaction. They are history, not work: no deadline is armed, no
    /// carer is offered them, nothing is published, and each has its own fold
    /// key (`import:<source_ref>`), so a live press never folds into one.
    /// Clients, devices, providers and carers must exist. Returns the
    /// incidents' ids in order (a `source_ref` imported before keeps its incident).
    pub async fn import_incident_history(
        &self,
        incidents: &[ImportedIncident],
    ) -> Result<Vec<i64>, ImportError> {
        for i in incidents {
            check(i)?;
        }
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .import_incident_history(incidents)
                    .await
            }
            Db::Postgres(p, _) => p.acquire().await?.import_incident_history(incidents).await,
        }?)
    }
}
