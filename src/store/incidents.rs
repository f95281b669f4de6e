//! Incidents and dispatches: the writes of the incident stage, each in one transaction.

/// The columns and joins of a carer candidate ([`CarerCandidate`]), after
/// whatever a query selects before them.
const CANDIDATES_FROM: &str = "pc.provider_id, c.id AS carer_id, c.lat, c.lon, pc.street, pc.rank, p.capacity, \
     (SELECT COUNT(*) FROM dispatches d WHERE d.provider_id = pc.provider_id \
     AND d.state IN ('accepted', 'arrived')) AS active_jobs \
     FROM provider_coverage pc JOIN providers p ON p.id = pc.provider_id \
     LEFT JOIN carers c ON c.provider_id = pc.provider_id \
     AND c.on_duty = TRUE AND c.busy = FALSE";

/// Providers contracted for an address (`$1` district, `$2` street), each
/// with its available carers: one row per carer, or one row with no carer
/// when nobody is available.
fn candidates_sql() -> String {
    format!(
        "SELECT {CANDIDATES_FROM} WHERE pc.district = $1 AND (pc.street IS NULL OR pc.street = $2)"
    )
}

/// The same for every street of some districts, each row with its district;
/// the list of districts and its closing parenthesis follow.
pub(super) fn candidates_in_districts_sql() -> String {
    format!("SELECT pc.district, {CANDIDATES_FROM} WHERE pc.district IN (")
}

use super::backend::Affected;
use super::tx::{NewLine, TxSql};
use super::{ClientProfile, Db, StoreError, now_ms};

/// The routing decision's transaction, written once for both backends (see
/// [`super::tx`]).
pub(crate) trait RouteSql {
    /// Record the routing decision for an incident not yet routed — the
    /// offer with its deadline, or that nobody is available — on its
    /// timeline, in a transaction of its own. `None` when the incident was
    /// routed already, else the new dispatch's id, if any.
    async fn record_route(
        &mut self,
        incident_id: i64,
        choice: Option<&NewDispatch>,
        due: i64,
        now: i64,
    ) -> Result<Option<Option<i64>>, sqlx::Error>;
}

impl<C> RouteSql for C
where
    C: sqlx::Connection + TxSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn record_route(
        &mut self,
        incident_id: i64,
        choice: Option<&NewDispatch>,
        due: i64,
        now: i64,
    ) -> Result<Option<Option<i64>>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let routed = sqlx::query(
            "UPDATE incidents SET routed_at = $1, updated_at = $1 \
             WHERE id = $2 AND routed_at IS NULL",
        )
        .bind(now)
        .bind(incident_id)
        .execute(&mut *tx)
        .await?
        .affected();
        if routed == 0 {
            tx.commit().await?;
            return Ok(None);
        }
        // An operator may have offered the job to this very carer while
        // the routing was owed: they hold it, and no second offer is made.
        let held: Option<(i64,)> = match choice {
            Some(d) => {
                sqlx::query_as(
                    "SELECT id FROM dispatches WHERE incident_id = $1 AND carer_id = $2 \
                     AND state IN ('offered', 'accepted', 'arrived')",
                )
                .bind(incident_id)
                .bind(d.carer_id)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        let offered = match choice {
            Some(d) if held.is_some() => {
                let detail = format!("carer {} holds the operator's offer already", d.carer_id);
                tx.line(NewLine::system(
                    incident_id,
                    now,
                    "carer_already_offered",
                    &detail,
                ))
                .await?;
                None
            }
            Some(d) => {
                let id = tx.offer(incident_id, d, due, now).await?;
                let detail = d.offer_detail(id);
                tx.line(NewLine::system(incident_id, now, "carer_offered", &detail))
                    .await?;
                Some(id)
            }
            None => {
                tx.line(NewLine::system(
                    incident_id,
                    now,
                    "no_carer_available",
                    NO_CARER,
                ))
                .await?;
                None
            }
        };
        tx.commit().await?;
        Ok(Some(offered))
    }
}
use crate::vault::Field;
use pingantong_domain::Cascade;

pub(super) const NO_CARER: &str = "no on-duty carer of any provider covering this address";

impl NewDispatch {
    /// The timeline's words for this offer, made as dispatch `dispatch_id`.
    pub(super) fn offer_detail(&self, dispatch_id: i64) -> String {
        let d = self;
        format!(
            "dispatch {dispatch_id}: carer {} of provider {}{}, {} away",
            d.carer_id,
            d.provider_id,
            if d.fallback {
                " (fallback provider)"
            } else {
                ""
            },
            d.distance_m
                .map_or("unknown distance".to_owned(), |m| format!("{m:.0} m"))
        )
    }
}

/// States in which an incident still needs someone; the partial unique index
/// `incidents_one_open` uses the same list.
pub(super) const OPEN: &str = "state NOT IN ('resolved', 'closed', 'cancelled', 'merged')";
/// What the incident stage did with one alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentOutcome {
    Opened(i64),
    /// A further press while an incident for the same person was open.
    Folded(i64),
    /// A cancel from the resident, attached to their open incident.
    CancelRecorded(i64),
    /// A cancel with no open incident to attach to.
    NothingToCancel,
    /// Another pass handled this alarm already (recovery after a restart).
    AlreadyProcessed,
}

/// An alarm that opens an incident or folds into one.
#[derive(Debug, Clone, Copy)]
pub struct NewIncident<'a> {
    pub alarm_id: i64,
    /// One open incident per key: `client:<id>`, `device:<id>`, `unverified:<id>`.
    pub fold_key: &'a str,
    pub client_id: Option<i64>,
    pub device_id: &'a str,
    pub kind: &'a str,
    /// `life_safety` or `technical`: the operator queue's lane.
    pub lane: &'a str,
    pub verified: bool,
    /// Whether a carer is to be offered the incident (routing owed).
    pub offer: bool,
    /// The emergency service the rules advise (`120`, `110`).
    pub advise: Option<&'a str>,
    /// Start the family notification cascade (verified residents only)…
    pub notify: Option<Cascade>,
    /// …with its first notices due at this time (the stage's clock).
    pub notify_at: i64,
    /// When an operator must have claimed it.
    pub claim_due_at: i64,
}

/// An incident's header, as the console lists it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct IncidentSummary {
    pub id: i64,
    pub opened_at: i64,
    pub kind: String,
    pub lane: pingantong_protocol::Lane,
    pub state: pingantong_domain::State,
    pub verified: bool,
    pub client_id: Option<i64>,
    pub device_id: String,
    pub press_count: i64,
    pub claimed_by: Option<String>,
    /// The emergency service the rules advise for this kind (`120`, `110`).
    pub advised_service: Option<String>,
    pub outcome: Option<String>,
}

/// Where a client lives, for choosing a carer.
#[derive(Debug, Clone)]
pub struct RouteContext {
    pub incident_id: i64,
    /// The incident's kind, which names its rule.
    pub kind: String,
    pub client: ClientProfile,
}

/// A carer who could be asked, with the coverage that makes their provider eligible.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CarerCandidate {
    pub provider_id: i64,
    /// `None`: the provider is contracted here but has nobody available.
    pub carer_id: Option<i64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// The coverage row's street: `Some` is a contract for this very street.
    pub street: Option<String>,
    pub rank: i64,
    /// Jobs the provider may run at once (0: no limit) and runs now.
    pub capacity: i64,
    pub active_jobs: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewDispatch {
    pub carer_id: i64,
    pub provider_id: i64,
    /// Great-circle distance; unknown when the client's address has no coordinates.
    pub distance_m: Option<f64>,
    /// The contracted provider had nobody available; this is another one.
    pub fallback: bool,
}

/// Everything a carer's phone needs to decide on an offer and go, and (not
/// serialised with it) what only the carer who accepted is told.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DispatchOffer {
    pub dispatch_id: i64,
    pub incident_id: i64,
    pub carer_id: i64,
    pub kind: String,
    pub offered_at: i64,
    pub distance_m: Option<f64>,
    pub client_name: String,
    pub address: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// The resident's health: never in the offer every carer asked gets,
    /// only in the `details` sent to the one who accepted (protocol/MQTT.md).
    #[serde(skip)]
    pub medical_notes: String,
    #[serde(skip)]
    pub medications: String,
    #[serde(skip)]
    pub allergies: String,
    #[serde(skip)]
    pub key_safe: String,
    /// Where the alarm said the person was (a watch's position, a fall
    /// outdoors), when it said so: the carer goes there, not to the address.
    pub reported_lat: Option<f64>,
    pub reported_lon: Option<f64>,
}

/// A dispatch offer as read, before its sealed fields are opened.
#[derive(sqlx::FromRow)]
pub(crate) struct OfferRow {
    dispatch_id: i64,
    incident_id: i64,
    carer_id: i64,
    kind: String,
    offered_at: i64,
    distance_m: Option<f64>,
    client_name: String,
    address: String,
    lat: Option<f64>,
    lon: Option<f64>,
    medical_notes: String,
    medications: String,
    allergies: String,
    key_safe: String,
    reported: Option<String>,
    reported_lat: Option<f64>,
    reported_lon: Option<f64>,
}

/// The incidents' reads, written once for both backends (see [`super::tx`]).
pub(crate) trait IncidentSql {
    /// See [`Db::carer_candidates`].
    async fn carer_candidates(
        &mut self,
        district: &str,
        street: &str,
    ) -> Result<Vec<CarerCandidate>, sqlx::Error>;
    /// (id, kind, client id) of the open incidents of known clients whose
    /// routing is still owed.
    async fn unrouted_incidents(&mut self) -> Result<Vec<(i64, String, i64)>, sqlx::Error>;
    /// An offer with its client and the newest reported position, still sealed.
    async fn dispatch_offer(&mut self, dispatch_id: i64) -> Result<Option<OfferRow>, sqlx::Error>;
    /// The newest position among an incident's alarms: (sealed, lat, lon).
    async fn incident_position(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<(Option<String>, Option<f64>, Option<f64>)>, sqlx::Error>;
    /// See [`Db::unpublished_dispatches`].
    async fn unpublished_dispatches(&mut self) -> Result<Vec<(i64,)>, sqlx::Error>;
    /// See [`Db::claim_unpublished_dispatches`].
    async fn claim_unpublished_dispatches(
        &mut self,
        ids: &str,
        now: i64,
        until: i64,
    ) -> Result<Vec<(i64,)>, sqlx::Error>;
    /// (incidents, of which unverified, dispatches).
    async fn incident_counts(&mut self) -> Result<(i64, i64, i64), sqlx::Error>;
    async fn incident_summary(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<IncidentSummary>, sqlx::Error>;
    async fn incidents_overview(&mut self) -> Result<Vec<(i64, String, i64, bool)>, sqlx::Error>;
    /// (dispatch id, incident id, carer id, fallback, published_at) ordered by id.
    async fn dispatches_overview(
        &mut self,
    ) -> Result<Vec<(i64, i64, i64, bool, Option<i64>)>, sqlx::Error>;
    async fn incident_actions(&mut self, incident_id: i64) -> Result<Vec<(String,)>, sqlx::Error>;
}

impl<C> IncidentSql for C
where
    C: sqlx::Connection,
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
    for<'q> bool: sqlx::Decode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'r> CarerCandidate: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> OfferRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> IncidentSummary: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn carer_candidates(
        &mut self,
        district: &str,
        street: &str,
    ) -> Result<Vec<CarerCandidate>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(candidates_sql()))
            .bind(district)
            .bind(street)
            .fetch_all(self)
            .await
    }

    async fn unrouted_incidents(&mut self) -> Result<Vec<(i64, String, i64)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, kind, client_id FROM incidents WHERE routed_at IS NULL \
             AND client_id IS NOT NULL AND {OPEN} ORDER BY id"
        )))
        .fetch_all(self)
        .await
    }

    async fn dispatch_offer(&mut self, dispatch_id: i64) -> Result<Option<OfferRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT d.id AS dispatch_id, d.incident_id, d.carer_id, i.kind, d.offered_at, \
             d.distance_m, c.name AS client_name, c.address, c.lat, c.lon, c.medical_notes, \
             c.medications, c.allergies, c.key_safe, p.position AS reported, \
             p.lat AS reported_lat, p.lon AS reported_lon \
             FROM dispatches d JOIN incidents i ON i.id = d.incident_id \
             JOIN clients c ON c.id = i.client_id \
             LEFT JOIN alarms p ON p.id = (SELECT MAX(a.id) FROM alarms a \
                 WHERE a.incident_id = d.incident_id \
                 AND (a.position IS NOT NULL OR a.lat IS NOT NULL)) \
             WHERE d.id = $1",
        )
        .bind(dispatch_id)
        .fetch_optional(self)
        .await
    }

    async fn incident_position(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<(Option<String>, Option<f64>, Option<f64>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT position, lat, lon FROM alarms WHERE incident_id = $1 \
             AND (position IS NOT NULL OR lat IS NOT NULL) ORDER BY id DESC LIMIT 1",
        )
        .bind(incident_id)
        .fetch_optional(self)
        .await
    }

    async fn claim_unpublished_dispatches(
        &mut self,
        ids: &str,
        now: i64,
        until: i64,
    ) -> Result<Vec<(i64,)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE dispatches SET offer_lease_until = $1 \
             WHERE id IN ({ids}) AND published_at IS NULL AND state = 'offered' \
             AND (offer_lease_until IS NULL OR offer_lease_until <= $2) RETURNING id"
        )))
        .persistent(false)
        .bind(until)
        .bind(now)
        .fetch_all(self)
        .await
    }

    async fn unpublished_dispatches(&mut self) -> Result<Vec<(i64,)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id FROM dispatches WHERE published_at IS NULL AND state = 'offered' ORDER BY id"
        )
        .fetch_all(self)
        .await
    }

    async fn incident_counts(&mut self) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM incidents), \
             (SELECT COUNT(*) FROM incidents WHERE verified = FALSE), \
             (SELECT COUNT(*) FROM dispatches)",
        )
        .fetch_one(self)
        .await
    }

    async fn incident_summary(
        &mut self,
        incident_id: i64,
    ) -> Result<Option<IncidentSummary>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, opened_at, kind, lane, state, verified, client_id, device_id, \
             press_count, claimed_by, advised_service, outcome FROM incidents WHERE id = $1",
        )
        .bind(incident_id)
        .fetch_optional(self)
        .await
    }

    async fn incidents_overview(&mut self) -> Result<Vec<(i64, String, i64, bool)>, sqlx::Error> {
        sqlx::query_as("SELECT id, fold_key, press_count, verified FROM incidents ORDER BY id")
            .fetch_all(self)
            .await
    }

    async fn dispatches_overview(
        &mut self,
    ) -> Result<Vec<(i64, i64, i64, bool, Option<i64>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, incident_id, carer_id, fallback, published_at FROM dispatches ORDER BY id",
        )
        .fetch_all(self)
        .await
    }

    async fn incident_actions(&mut self, incident_id: i64) -> Result<Vec<(String,)>, sqlx::Error> {
        sqlx::query_as("SELECT action FROM incident_events WHERE incident_id = $1 ORDER BY id")
            .bind(incident_id)
            .fetch_all(self)
            .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, the routing decision to the write pool.
impl Db {
    /// Providers contracted for this address, each with its available carers
    /// (one row per carer, or one row with no carer when nobody is available).
    pub async fn carer_candidates(
        &self,
        district: &str,
        street: &str,
    ) -> Result<Vec<CarerCandidate>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => {
                let mut c = read.acquire().await?;
                c.carer_candidates(district, street).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.carer_candidates(district, street).await
            }
        }?)
    }

    /// Record the routing decision: the offer (if any) and the timeline entry.
    /// Returns the new dispatch's id.
    pub async fn record_route(
        &self,
        incident_id: i64,
        choice: Option<&NewDispatch>,
        offer_due_at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.record_route(incident_id, choice, offer_due_at, now).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.record_route(incident_id, choice, offer_due_at, now).await
            }
        }?
        .flatten())
    }

    /// Incidents of known, verified clients whose routing is still owed.
    pub async fn unrouted_incidents(&self) -> Result<Vec<RouteContext>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.unrouted_incidents().await,
            Db::Postgres(p, _) => p.acquire().await?.unrouted_incidents().await,
        }?;
        let mut out = Vec::with_capacity(rows.len());
        for (incident_id, kind, client_id) in rows {
            if let Some(client) = self.client_profile(client_id).await? {
                out.push(RouteContext {
                    incident_id,
                    kind,
                    client,
                });
            }
        }
        Ok(out)
    }

    pub async fn dispatch_offer(
        &self,
        dispatch_id: i64,
    ) -> Result<Option<DispatchOffer>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.dispatch_offer(dispatch_id).await,
            Db::Postgres(p, _) => p.acquire().await?.dispatch_offer(dispatch_id).await,
        }?;
        let Some(r) = row else {
            return Ok(None);
        };
        let v = self.vault();
        let reported = self.position(r.reported.as_deref(), r.reported_lat, r.reported_lon)?;
        Ok(Some(DispatchOffer {
            dispatch_id: r.dispatch_id,
            incident_id: r.incident_id,
            carer_id: r.carer_id,
            kind: r.kind,
            offered_at: r.offered_at,
            distance_m: r.distance_m,
            client_name: r.client_name,
            address: r.address,
            lat: r.lat,
            lon: r.lon,
            medical_notes: v.open_text(Field::MedicalNotes, &r.medical_notes)?,
            medications: v.open_text(Field::Medications, &r.medications)?,
            allergies: v.open_text(Field::Allergies, &r.allergies)?,
            key_safe: v.open_text(Field::KeySafe, &r.key_safe)?,
            reported_lat: reported.map(|a| a.0),
            reported_lon: reported.map(|a| a.1),
        }))
    }

    /// Where the incident's person was last reported: the newest position
    /// among its alarms (a wanderer's watch, a fall outdoors), if any.
    pub async fn incident_position(
        &self,
        incident_id: i64,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.incident_position(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.incident_position(incident_id).await,
        }?;
        match row {
            Some((sealed, lat, lon)) => self.position(sealed.as_deref(), lat, lon),
            None => Ok(None),
        }
    }

    /// Offers not yet handed to the broker that are still offers (one
    /// answered, expired or withdrawn meanwhile is not sent).
    pub async fn unpublished_dispatches(&self) -> Result<Vec<i64>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.unpublished_dispatches().await,
            Db::Postgres(p, _) => p.acquire().await?.unpublished_dispatches().await,
        }?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Take the offers still owed to the broker (not handed over, still
    /// offers, not held by a server publishing them) for this server to
    /// publish, each held for [`crate::PUBLISH_LEASE_MS`]: two servers'
    /// sweeps never both send one. Oldest first.
    pub async fn claim_unpublished_dispatches(&self) -> Result<Vec<i64>, StoreError> {
        // Read first: a sweep finds none owed almost always, and a write on
        // every sweep would queue behind an outage on SQLite's one writer.
        let owed = self.unpublished_dispatches().await?;
        if owed.is_empty() {
            return Ok(owed);
        }
        let now = now_ms();
        let until = now + crate::PUBLISH_LEASE_MS;
        // Integers the database just returned: listed inline.
        let ids = owed
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut rows = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .claim_unpublished_dispatches(&ids, now, until)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .claim_unpublished_dispatches(&ids, now, until)
                    .await
            }
        }?;
        rows.sort_unstable();
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// (incidents, of which unverified, dispatches) — for summaries and tests.
    pub async fn incident_counts(&self) -> Result<(i64, i64, i64), StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.incident_counts().await,
            Db::Postgres(p, _) => p.acquire().await?.incident_counts().await,
        }?)
    }

    /// Incidents per fold key with their press counts, ordered by id (tests, summaries).
    /// One incident's header (kind, lane, state, who has it, what is advised).
    pub async fn incident_summary(
        &self,
        incident_id: i64,
    ) -> Result<Option<IncidentSummary>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.incident_summary(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.incident_summary(incident_id).await,
        }?)
    }

    pub async fn incidents_overview(&self) -> Result<Vec<(i64, String, i64, bool)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.incidents_overview().await,
            Db::Postgres(p, _) => p.acquire().await?.incidents_overview().await,
        }?)
    }

    /// (dispatch id, incident id, carer id, fallback, published) ordered by id.
    pub async fn dispatches_overview(
        &self,
    ) -> Result<Vec<(i64, i64, i64, bool, bool)>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.dispatches_overview().await,
            Db::Postgres(p, _) => p.acquire().await?.dispatches_overview().await,
        }?;
        Ok(rows
            .into_iter()
            .map(|(d, i, c, f, p)| (d, i, c, f, p.is_some()))
            .collect())
    }

    /// The timeline actions of one incident, in order.
    pub async fn incident_actions(&self, incident_id: i64) -> Result<Vec<String>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.incident_actions(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.incident_actions(incident_id).await,
        }?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use pingantong_domain::State;

    #[test]
    fn the_sql_notion_of_open_matches_the_state_machine() {
        for s in State::ALL {
            let listed = super::OPEN.contains(&format!("'{}'", s.as_str()));
            assert_eq!(listed, !s.is_open(), "{s}");
        }
    }

    #[test]
    fn an_offer_as_published_carries_no_health_details() {
        let offer = super::DispatchOffer {
            dispatch_id: 1,
            incident_id: 2,
            carer_id: 3,
            kind: "sos".into(),
            offered_at: 0,
            distance_m: None,
            client_name: "陈秀英".into(),
            address: "北京街 12号".into(),
            lat: None,
            lon: None,
            medical_notes: "高血压；房颤".into(),
            medications: "华法林 3mg".into(),
            allergies: "青霉素".into(),
            key_safe: "4711".into(),
            reported_lat: None,
            reported_lon: None,
        };
        let text = serde_json::to_string(&offer).unwrap();
        assert!(text.contains("北京街"), "what a carer needs to go: {text}");
        for secret in [
            "medical_notes",
            "medications",
            "allergies",
            "key_safe",
            "高血压",
            "华法林",
            "青霉素",
            "4711",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
