//! The incident stage's writes, many alarms to a transaction.
//!
//! Whatever has queued for the stage is applied in one transaction: one
//! commit — one fsync, one turn of SQLite's single writer, which the devices'
//! ACK commits wait for — for the lot. Inside it, decide then apply: the
//! alarms are claimed and their people's open incidents read; [`StagePlan`]
//! (`plan.rs`, no I/O) decides what every item does, in batch order — fold,
//! open, cancel, clear, which carer is offered the job, the timeline lines,
//! deadlines and alarm links; then each kind of row is written with one
//! statement for the whole batch. Statements, not SQL, are what an alarm
//! costs here: each is a round trip to the database (for SQLite, to its
//! worker thread and back).
//!
//! An incident that is opened is routed in the same transaction, so its offer
//! is written with it. Each item is idempotent (the alarm is claimed first),
//! so a batch that fails can be applied again item by item.

mod plan;

use std::collections::{HashMap, HashSet};

use pingantong_domain::State;
use sqlx::QueryBuilder;

use super::incidents::{OPEN, candidates_in_districts_sql};
use super::notifications::{NOTIFY_FROM_VALUES, NOTIFY_WHERE};
use super::tx::TxSql;
use super::{
    CarerCandidate, Cascade, ClientProfile, Db, DispatchOffer, IncidentOutcome, NewDispatch,
    NewIncident, StoreError, now_ms,
};
use plan::{Answer, Detail, StagePlan, Target};

/// Picks the carer from the candidates of the client's address (the routing
/// policy lives outside the store).
pub type Chooser = fn(Option<(f64, f64)>, &[CarerCandidate]) -> Option<NewDispatch>;

/// Route an incident as it is opened.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub client: &'a ClientProfile,
    /// Where the alarm says the person is (a wanderer's watch, a fall
    /// outdoors): carers are ranked from here rather than from the home.
    pub at: Option<(f64, f64)>,
    pub offer_due_at: i64,
    pub choose: Chooser,
}

/// One alarm's work for the stage.
#[derive(Debug, Clone, Copy)]
pub enum StageWork<'a> {
    /// Open an incident or fold the alarm into the open one; when opened and
    /// `route` is given, offer it to a carer too.
    Incident {
        incident: NewIncident<'a>,
        route: Option<RouteRequest<'a>>,
    },
    /// A resident's cancel, attached to their open incident (which stays
    /// open: an operator confirms a cancel, a device never closes an alarm).
    Cancel { alarm_id: i64, fold_key: &'a str },
    /// The device reports its trouble is over: the open job for it is
    /// cleared, or the news goes on the timeline of an incident already being
    /// handled.
    Clear {
        alarm_id: i64,
        fold_key: &'a str,
        detail: &'a str,
    },
    /// Nothing to do but remember it was handled.
    Processed { alarm_id: i64 },
}

/// What the routing of a just-opened incident did.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteDone {
    /// The offer to send, as the carer's phone will read it (boxed: it is
    /// large beside the other answers, and rare among a batch's items).
    Offered(Box<DispatchOffer>),
    NoCarer,
}

impl StageWork<'_> {
    fn alarm_id(&self) -> i64 {
        match *self {
            StageWork::Incident { ref incident, .. } => incident.alarm_id,
            StageWork::Cancel { alarm_id, .. }
            | StageWork::Clear { alarm_id, .. }
            | StageWork::Processed { alarm_id } => alarm_id,
        }
    }

    fn fold_key(&self) -> Option<&str> {
        match *self {
            StageWork::Incident { ref incident, .. } => Some(incident.fold_key),
            StageWork::Cancel { fold_key, .. } | StageWork::Clear { fold_key, .. } => {
                Some(fold_key)
            }
            StageWork::Processed { .. } => None,
        }
    }
}

/// What became of one [`StageWork`].
#[derive(Debug, Clone, PartialEq)]
pub enum StageDone {
    Incident {
        outcome: IncidentOutcome,
        route: Option<RouteDone>,
    },
    Cancel(IncidentOutcome),
    /// The incident the clear went to, if one was open.
    Cleared(Option<i64>),
    Processed,
}

/// A candidate with the district of its coverage, for many addresses at once.
#[derive(sqlx::FromRow)]
pub(crate) struct DistrictCandidate {
    district: String,
    #[sqlx(flatten)]
    candidate: CarerCandidate,
}

fn id_list(ids: impl Iterator<Item = i64>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Incident ids of the batch: those in the database and, once written, the
/// ones the plan opens.
struct Ids(Vec<i64>);

impl Ids {
    fn of(&self, t: Target) -> Result<i64, sqlx::Error> {
        match t {
            Target::Id(id) => Ok(id),
            Target::New(k) => self.0.get(k).copied().ok_or(sqlx::Error::RowNotFound),
        }
    }
}

/// The stage's transaction, written once for both backends (see
/// [`super::tx`]).
pub(crate) trait StageSql {
    /// Apply the work of several alarms in one transaction of its own (see
    /// [`Db::apply_stage_work`]); `work` is not empty.
    async fn apply_stage_work(
        &mut self,
        work: &[StageWork<'_>],
        published: &[i64],
        now: i64,
    ) -> Result<Vec<StageDone>, sqlx::Error>;
    /// Mark offers published at `now`.
    async fn mark_published(&mut self, ids: &[i64], now: i64) -> Result<(), sqlx::Error>;
}

impl<C> StageSql for C
where
    C: sqlx::Connection + TxSql,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'r> DistrictCandidate: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn apply_stage_work(
        &mut self,
        work: &[StageWork<'_>],
        published: &[i64],
        now: i64,
    ) -> Result<Vec<StageDone>, sqlx::Error> {
        // Ids are integers the stage read from the database: listed inline,
        // they keep the statements' parameters few.
        let alarms = id_list(work.iter().map(StageWork::alarm_id));
        let keys: Vec<&str> = work.iter().filter_map(StageWork::fold_key).collect();
        let mut tx = self.begin().await?;
        // Claimed now by this pass; any other was handled already.
        let claimed: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE alarms SET processed_at = $1 \
             WHERE id IN ({alarms}) AND processed_at IS NULL RETURNING id"
        )))
        .persistent(false)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let claimed: HashSet<i64> = claimed.into_iter().map(|(id,)| id).collect();
        if !published.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(mark_published_sql(published)))
                .persistent(false)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        // The open incident (and its state) of every key in the batch.
        let mut found: Vec<(String, i64, String)> = Vec::new();
        if !keys.is_empty() {
            let mut q = QueryBuilder::new("SELECT fold_key, id, state FROM incidents WHERE ");
            q.push(OPEN).push(" AND fold_key IN (");
            let mut list = q.separated(", ");
            for k in &keys {
                list.push_bind(*k);
            }
            q.push(")");
            found = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
        }
        let open = found
            .into_iter()
            .map(|(key, id, state)| (key, (id, State::parse(&state))))
            .collect();
        let mut plan = StagePlan::decide(work, &claimed, open);
        // The carers near every address to route, in one read.
        let districts = plan.districts();
        let mut near: Vec<DistrictCandidate> = Vec::new();
        if !districts.is_empty() {
            let mut q = QueryBuilder::new(candidates_in_districts_sql());
            let mut list = q.separated(", ");
            for d in &districts {
                list.push_bind(*d);
            }
            q.push(")");
            near = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
        }
        let near: Vec<(String, CarerCandidate)> = near
            .into_iter()
            .map(|d| (d.district, d.candidate))
            .collect();
        plan.route(&near);

        // Incidents in the database first: a clear that ends one frees
        // its key for an incident the batch opens after it.
        if !plan.cancels.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE incidents SET cancel_requested_at = $1, updated_at = $1 \
                 WHERE id IN ({})",
                id_list(plan.cancels.iter().copied())
            )))
            .persistent(false)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for &(id, next) in &plan.clears {
            // Ended by the device, it is closed as one an operator ends:
            // retention counts its period from `closed_at`.
            sqlx::query(
                "UPDATE incidents SET state = $1, outcome = 'cleared', \
                 updated_at = $2, closed_at = CASE WHEN $4 THEN $2 ELSE closed_at END \
                 WHERE id = $3",
            )
            .bind(next.as_str())
            .bind(now)
            .bind(id)
            .bind(next.closes())
            .execute(&mut *tx)
            .await?;
            // A job offered to a carer ends with it.
            tx.withdraw(id, next, now).await?;
        }

        let mut ids = Ids(Vec::with_capacity(plan.openings.len()));
        if !plan.openings.is_empty() {
            let mut q = QueryBuilder::new(
                "INSERT INTO incidents (opened_at, opening_alarm_id, fold_key, client_id, \
                 device_id, kind, lane, state, outcome, verified, press_count, \
                 last_press_at, routed_at, cancel_requested_at, updated_at, \
                 advised_service, closed_at) ",
            );
            q.push_values(&plan.openings, |mut b, o| {
                let n = &o.incident;
                let ended = !o.state.is_open();
                b.push_bind(now)
                    .push_bind(n.alarm_id)
                    .push_bind(n.fold_key)
                    .push_bind(n.client_id)
                    .push_bind(n.device_id)
                    .push_bind(n.kind)
                    .push_bind(n.lane)
                    .push_bind(o.state.as_str())
                    .push_bind(ended.then_some("cleared"))
                    .push_bind(n.verified)
                    .push_bind(o.presses)
                    .push_bind(now)
                    .push_bind((o.routed || ended).then_some(now))
                    .push_bind(o.cancel_requested.then_some(now))
                    .push_bind(now)
                    .push_bind(n.advise)
                    .push_bind(o.state.closes().then_some(now));
            });
            q.push(" RETURNING id, opening_alarm_id");
            let rows: Vec<(i64, i64)> = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
            let by_alarm: HashMap<i64, i64> = rows.into_iter().map(|(id, a)| (a, id)).collect();
            for o in &plan.openings {
                ids.0.push(
                    *by_alarm
                        .get(&o.incident.alarm_id)
                        .ok_or(sqlx::Error::RowNotFound)?,
                );
            }
            // In the same transaction as the incidents: a crash cannot
            // leave an alarm whose family was never going to hear of it.
            let notify: Vec<(i64, i64, bool, i64)> = plan
                .openings
                .iter()
                .zip(&ids.0)
                .filter_map(|(o, &id)| match (o.incident.notify, o.incident.client_id) {
                    (Some(cascade), Some(client)) if o.incident.verified => Some((
                        id,
                        client,
                        cascade == Cascade::Everyone,
                        o.incident.notify_at,
                    )),
                    _ => None,
                })
                .collect();
            if !notify.is_empty() {
                let mut q = QueryBuilder::new(NOTIFY_FROM_VALUES);
                for (row, (incident, client, everyone, at)) in notify.iter().enumerate() {
                    q.push(if row == 0 { "(CAST(" } else { ", (CAST(" })
                        .push_bind(*incident)
                        .push(" AS BIGINT), CAST(")
                        .push_bind(*client)
                        .push(" AS BIGINT), CAST(")
                        .push_bind(i64::from(*everyone))
                        .push(" AS BIGINT), CAST(")
                        .push_bind(*at)
                        .push(" AS BIGINT))");
                }
                q.push(NOTIFY_WHERE);
                q.build().persistent(false).execute(&mut *tx).await?;
            }
        }
        let mut dispatch_ids: Vec<i64> = Vec::with_capacity(plan.offers.len());
        if !plan.offers.is_empty() {
            let mut q = QueryBuilder::new(
                "INSERT INTO dispatches (incident_id, carer_id, provider_id, \
                 distance_m, fallback, state, offered_at, updated_at, offer_lease_until) ",
            );
            q.push_values(&plan.offers, |mut b, o| {
                let d = &o.dispatch;
                b.push_bind(ids.0[o.opening])
                    .push_bind(d.carer_id)
                    .push_bind(d.provider_id)
                    .push_bind(d.distance_m)
                    .push_bind(d.fallback)
                    .push("'offered'")
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(now + crate::PUBLISH_LEASE_MS);
            });
            q.push(" RETURNING id, incident_id");
            let rows: Vec<(i64, i64)> = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
            // One offer per incident: the incident says which row is which.
            let by_incident: HashMap<i64, i64> = rows.into_iter().map(|(d, i)| (i, d)).collect();
            for o in &plan.offers {
                dispatch_ids.push(
                    *by_incident
                        .get(&ids.0[o.opening])
                        .ok_or(sqlx::Error::RowNotFound)?,
                );
            }
        }

        if !plan.presses.is_empty() {
            let mut q =
                QueryBuilder::new("UPDATE incidents SET press_count = press_count + CASE id");
            for (id, n) in &plan.presses {
                q.push(" WHEN ").push_bind(*id).push(" THEN ").push_bind(*n);
            }
            q.push(" END, last_press_at = ")
                .push_bind(now)
                .push(", updated_at = ")
                .push_bind(now)
                .push(format!(
                    " WHERE id IN ({})",
                    id_list(plan.presses.keys().copied())
                ));
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        if !plan.timers.is_empty() {
            let timers = plan
                .timers
                .iter()
                .map(|t| Ok((ids.of(t.incident)?, t.offer.map(|o| dispatch_ids[o]), t)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let mut q = QueryBuilder::new(
                "INSERT INTO timers (incident_id, dispatch_id, kind, round, due_at) ",
            );
            q.push_values(&timers, |mut b, &(incident, dispatch, t)| {
                b.push_bind(incident)
                    .push_bind(dispatch)
                    .push_bind(t.kind)
                    .push_bind(0i64)
                    .push_bind(t.due);
            });
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        // In the order decided: an incident's lines keep the order of events.
        let lines = plan
            .lines
            .iter()
            .flatten()
            .map(|l| {
                let detail = match &l.detail {
                    Detail::Text(t) => t.clone(),
                    Detail::Offer(o) => plan.offers[*o].dispatch.offer_detail(dispatch_ids[*o]),
                };
                Ok((ids.of(l.incident)?, l, detail))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if !lines.is_empty() {
            let mut q = QueryBuilder::new(
                "INSERT INTO incident_events (incident_id, at, actor, action, to_state, detail) ",
            );
            q.push_values(&lines, |mut b, (id, l, detail)| {
                b.push_bind(*id)
                    .push_bind(now)
                    .push_bind(l.actor)
                    .push_bind(l.action)
                    .push_bind(l.to_state.map(State::as_str))
                    .push_bind(detail.as_str());
            });
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        if !plan.links.is_empty() {
            let links = plan
                .links
                .iter()
                .map(|&(a, t)| Ok((a, ids.of(t)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let mut q = QueryBuilder::new("UPDATE alarms SET incident_id = CASE id");
            for (alarm, incident) in &links {
                q.push(" WHEN ")
                    .push_bind(*alarm)
                    .push(" THEN ")
                    .push_bind(*incident);
            }
            q.push(format!(
                " END WHERE id IN ({})",
                id_list(links.iter().map(|l| l.0))
            ));
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let mut done = Vec::with_capacity(plan.answers.len());
        for a in &plan.answers {
            done.push(match a {
                Answer::Done(d) => d.clone(),
                Answer::Folded(t) => StageDone::Incident {
                    outcome: IncidentOutcome::Folded(ids.of(*t)?),
                    route: None,
                },
                Answer::Opened(k) => StageDone::Incident {
                    outcome: IncidentOutcome::Opened(ids.0[*k]),
                    route: plan.route_done(
                        *k,
                        ids.0[*k],
                        plan.openings[*k].offer.map(|o| dispatch_ids[o]),
                        now,
                    ),
                },
                Answer::CancelRecorded(t) => {
                    StageDone::Cancel(IncidentOutcome::CancelRecorded(ids.of(*t)?))
                }
                Answer::Cleared(t) => StageDone::Cleared(Some(ids.of(*t)?)),
            });
        }
        Ok(done)
    }

    async fn mark_published(&mut self, ids: &[i64], now: i64) -> Result<(), sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(mark_published_sql(ids)))
            .persistent(false)
            .bind(now)
            .execute(self)
            .await?;
        Ok(())
    }
}

// The write pool of each backend, chosen by a match: the statements above
// are the same for both.
impl Db {
    /// Apply the work of several alarms in one transaction, as if one after
    /// another: a second press in the same batch folds into the incident the
    /// first one opened. What to write is decided by [`StagePlan`], free of
    /// I/O; this reads what it needs and writes the plan, each kind of row in
    /// one statement. `published`: offers handed to the broker since, marked
    /// in the same transaction. On error nothing is applied.
    pub async fn apply_stage_work(
        &self,
        work: &[StageWork<'_>],
        published: &[i64],
    ) -> Result<Vec<StageDone>, StoreError> {
        if work.is_empty() {
            self.mark_dispatches_published(published).await?;
            return Ok(Vec::new());
        }
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.apply_stage_work(work, published, now).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.apply_stage_work(work, published, now).await
            }
        }?)
    }

    /// Offers handed to the broker: the recovery sweep need not send them again.
    pub async fn mark_dispatches_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.mark_published(ids, now).await,
            Db::Postgres(p, _) => p.acquire().await?.mark_published(ids, now).await,
        }?)
    }
}

/// Mark offers published at `$1` (ids the stage got back from the database).
fn mark_published_sql(ids: &[i64]) -> String {
    format!(
        "UPDATE dispatches SET published_at = $1 WHERE id IN ({}) AND published_at IS NULL",
        id_list(ids.iter().copied())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    /// Statements whose text changes with every batch (ids listed inline, a
    /// row per item) are not kept in the connection's statement cache: a
    /// hundred of them would push out the ones every alarm reuses, and on
    /// PostgreSQL each one pushed out costs a round trip to close it.
    #[tokio::test]
    async fn one_off_statements_are_not_cached() {
        let (db, _dir) = crate::scratch_sqlite().await;
        let Db::Sqlite { write, .. } = &db else {
            unreachable!("a SQLite scratch database")
        };
        let cached = || async { write.acquire().await.unwrap().cached_statements_size() };
        let before = cached().await;
        for batch in 0..50i64 {
            let work: Vec<StageWork<'_>> = (0..3)
                .map(|k| StageWork::Processed {
                    alarm_id: batch * 10 + k,
                })
                .collect();
            db.apply_stage_work(&work, &[batch + 1_000]).await.unwrap();
        }
        db.mark_dispatches_published(&[5_000, 5_001]).await.unwrap();
        let after = cached().await;
        assert!(after < before + 5, "{before} → {after} statements cached");
    }
}
