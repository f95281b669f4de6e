//! The incident stage's writes, many alarms to a transaction.
//!
//! Whatever has queued for the stage is applied in one transaction: one
//! commit — one fsync, one turn of SQLite's single writer, which the devices'
//! ACK commits wait for — for the lot. Inside it the work is done set-wise:
//! the alarms are claimed, their people's open incidents looked up, the
//! further presses folded, the timeline lines, deadlines and alarm links
//! written, each with one statement for the whole batch. Only what needs an id
//! back (a new incident, a new offer) or reads an address (the carers near
//! it) costs a statement of its own. Statements, not SQL, are what an alarm
//! costs here: each is a round trip to the database (for SQLite, to its
//! worker thread and back).
//!
//! An incident that is opened is routed in the same transaction, so its offer
//! is written with it. Each item is idempotent (the alarm is claimed first),
//! so a batch that fails can be applied again item by item.

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;

use super::incidents::{CANDIDATES_IN_DISTRICTS, NO_CARER, OPEN};
use super::notifications::{NOTIFY_FROM_VALUES, NOTIFY_WHERE};
use super::withdrawals::withdraw_in_tx;
use super::{
    CarerCandidate, Cascade, ClientProfile, Db, DispatchOffer, IncidentOutcome, NewDispatch,
    NewIncident, StoreError, now_ms, on_write_pool,
};

/// Picks the carer from the candidates of the client's address (the routing
/// policy lives outside the store).
pub type Chooser = fn(Option<(f64, f64)>, &[CarerCandidate]) -> Option<NewDispatch>;

/// Route an incident as it is opened.
#[derive(Clone, Copy)]
pub struct RouteRequest<'a> {
    pub client: &'a ClientProfile,
    /// Where the alarm says the person is (a wanderer's watch, a fall
    /// outdoors): carers are ranked from here rather than from the home.
    pub at: Option<(f64, f64)>,
    pub offer_due_at: i64,
    pub choose: Chooser,
}

/// One alarm's work for the stage.
#[derive(Clone, Copy)]
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

/// An incident of the batch: one already in the database, or the `n`th one
/// the batch opens (its id known once the batch's new incidents are written).
#[derive(Debug, Clone, Copy)]
enum Target {
    Id(i64),
    New(usize),
}

/// A timeline line, written with the batch's others.
struct Line {
    incident: Target,
    actor: &'static str,
    action: &'static str,
    to_state: Option<&'static str>,
    detail: String,
}

/// An incident the batch opens.
struct Slot<'w, 'a> {
    n: &'w NewIncident<'a>,
    route: Option<RouteRequest<'a>>,
    /// The opening press and the batch's further presses folded into it.
    presses: i64,
    id: Option<i64>,
    /// Where its routing line goes among the timeline lines.
    route_line: Option<usize>,
    done: Option<RouteDone>,
}

/// One item's result, some of it known only after the new incidents are written.
enum Draft {
    Done(StageDone),
    Opened(usize),
    Folded(Target),
}

/// What the batch writes set-wise, each kind in one statement.
#[derive(Default)]
struct Pending {
    /// `None`: a routing line that turned out not to be needed.
    lines: Vec<Option<Line>>,
    /// (incident, dispatch, kind, due)
    timers: Vec<(Target, Option<i64>, &'static str, i64)>,
    /// alarm → incident
    links: Vec<(i64, Target)>,
    /// incident already in the database → further presses
    presses: HashMap<i64, i64>,
}

/// A candidate with the district of its coverage, for many addresses at once.
#[derive(sqlx::FromRow)]
struct DistrictCandidate {
    district: String,
    #[sqlx(flatten)]
    candidate: CarerCandidate,
}

fn id_list(ids: impl Iterator<Item = i64>) -> String {
    ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

fn resolve(t: Target, slots: &[Slot<'_, '_>]) -> Result<i64, sqlx::Error> {
    match t {
        Target::Id(id) => Ok(id),
        Target::New(k) => slots
            .get(k)
            .and_then(|s| s.id)
            .ok_or(sqlx::Error::RowNotFound),
    }
}

impl Db {
    /// Apply the work of several alarms in one transaction, in order: a
    /// second press in the same batch folds into the incident the first one
    /// opened. `published`: offers handed to the broker since, marked in the
    /// same transaction. On error nothing is applied.
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
        let alarm_of = |w: &StageWork<'_>| match *w {
            StageWork::Incident { ref incident, .. } => incident.alarm_id,
            StageWork::Cancel { alarm_id, .. }
            | StageWork::Clear { alarm_id, .. }
            | StageWork::Processed { alarm_id } => alarm_id,
        };
        // Ids are integers the stage read from the database: listed inline,
        // they keep the statements' parameters few.
        let alarms = id_list(work.iter().map(alarm_of));
        let keys: Vec<&str> = work
            .iter()
            .filter_map(|w| match *w {
                StageWork::Incident { ref incident, .. } => Some(incident.fold_key),
                StageWork::Cancel { fold_key, .. } | StageWork::Clear { fold_key, .. } => {
                    Some(fold_key)
                }
                StageWork::Processed { .. } => None,
            })
            .collect();
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
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
            let mut open: HashMap<&str, (Target, String)> = HashMap::new();
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
            for (key, id, state) in found {
                if let Some(k) = keys.iter().find(|k| **k == key) {
                    open.insert(*k, (Target::Id(id), state));
                }
            }
            let mut pending = Pending::default();
            let mut slots: Vec<Slot<'_, '_>> = Vec::new();
            let mut drafts: Vec<Draft> = Vec::with_capacity(work.len());
            let mut i = 0;
            while i < work.len() {
                // A run of presses and reports: decided in memory, the
                // incidents they open written together after it.
                let first_new = slots.len();
                while let Some(w) = work.get(i) {
                    let StageWork::Incident {
                        incident: ref n,
                        route,
                    } = *w
                    else {
                        if let StageWork::Processed { .. } = *w {
                            drafts.push(Draft::Done(StageDone::Processed));
                            i += 1;
                            continue;
                        }
                        break;
                    };
                    i += 1;
                    if !claimed.contains(&n.alarm_id) {
                        drafts.push(Draft::Done(StageDone::Incident {
                            outcome: IncidentOutcome::AlreadyProcessed,
                            route: None,
                        }));
                        continue;
                    }
                    let detail = if n.verified {
                        format!("alarm {}", n.alarm_id)
                    } else {
                        format!("alarm {} from an unverified device", n.alarm_id)
                    };
                    if let Some(&(target, _)) = open.get(n.fold_key) {
                        match target {
                            Target::Id(id) => *pending.presses.entry(id).or_default() += 1,
                            Target::New(k) => slots[k].presses += 1,
                        }
                        pending.lines.push(Some(Line {
                            incident: target,
                            actor: "system",
                            action: "press_folded",
                            to_state: None,
                            detail,
                        }));
                        pending.links.push((n.alarm_id, target));
                        drafts.push(Draft::Folded(target));
                        continue;
                    }
                    let target = Target::New(slots.len());
                    open.insert(n.fold_key, (target, "queued".to_owned()));
                    if let Some(service) = n.advise {
                        pending.lines.push(Some(Line {
                            incident: target,
                            actor: "rules",
                            action: "handoff_advised",
                            to_state: None,
                            detail: format!("the rule for {} advises a {service} hand-off", n.kind),
                        }));
                    }
                    pending.lines.push(Some(Line {
                        incident: target,
                        actor: "system",
                        action: "opened",
                        to_state: Some("queued"),
                        detail,
                    }));
                    // Every incident, verified or not, must be taken by an
                    // operator in time.
                    pending.timers.push((target, None, "claim", n.claim_due_at));
                    pending.links.push((n.alarm_id, target));
                    let route_line = route.map(|_| {
                        pending.lines.push(None);
                        pending.lines.len() - 1
                    });
                    drafts.push(Draft::Opened(slots.len()));
                    slots.push(Slot {
                        n,
                        route,
                        presses: 1,
                        id: None,
                        route_line,
                        done: None,
                    });
                }
                let new = first_new..slots.len();
                if !new.is_empty() {
                    // The carers near every address to route, in one read:
                    // offers made in this batch change no one's availability.
                    let districts: Vec<&str> = slots[new.clone()]
                        .iter()
                        .filter_map(|s| s.route.map(|r| r.client.district.as_str()))
                        .collect();
                    let mut near: Vec<DistrictCandidate> = Vec::new();
                    if !districts.is_empty() {
                        let mut q = QueryBuilder::new(CANDIDATES_IN_DISTRICTS);
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
                    let mut choices: Vec<Option<NewDispatch>> = Vec::with_capacity(new.len());
                    for s in &slots[new.clone()] {
                        choices.push(s.route.and_then(|r| {
                            let c = r.client;
                            let here: Vec<CarerCandidate> = near
                                .iter()
                                .filter(|d| {
                                    d.district == c.district
                                        && d.candidate
                                            .street
                                            .as_ref()
                                            .is_none_or(|s| *s == c.street)
                                })
                                .map(|d| d.candidate.clone())
                                .collect();
                            (r.choose)(r.at.or(c.lat.zip(c.lon)), &here)
                        }));
                    }
                    let mut q = QueryBuilder::new(
                        "INSERT INTO incidents (opened_at, opening_alarm_id, fold_key, client_id, \
                         device_id, kind, lane, state, verified, press_count, last_press_at, \
                         routed_at, updated_at, advised_service) ",
                    );
                    q.push_values(&slots[new.clone()], |mut b, s| {
                        let n = s.n;
                        // Unverified senders are never routed to a carer: an
                        // operator decides. Routing owed but not done here is
                        // left to the sweep (routed_at stays empty).
                        let routed =
                            s.route.is_some() || !n.offer || !n.verified || n.client_id.is_none();
                        b.push_bind(now)
                            .push_bind(n.alarm_id)
                            .push_bind(n.fold_key)
                            .push_bind(n.client_id)
                            .push_bind(n.device_id)
                            .push_bind(n.kind)
                            .push_bind(n.lane)
                            .push("'queued'")
                            .push_bind(n.verified)
                            .push_bind(s.presses)
                            .push_bind(now)
                            .push_bind(routed.then_some(now))
                            .push_bind(now)
                            .push_bind(n.advise);
                    });
                    q.push(" RETURNING id, fold_key");
                    let ids: Vec<(i64, String)> = q
                        .build_query_as()
                        .persistent(false)
                        .fetch_all(&mut *tx)
                        .await?;
                    let ids: HashMap<String, i64> =
                        ids.into_iter().map(|(id, k)| (k, id)).collect();
                    for s in &mut slots[new.clone()] {
                        s.id = Some(*ids.get(s.n.fold_key).ok_or(sqlx::Error::RowNotFound)?);
                        open.insert(
                            s.n.fold_key,
                            (Target::Id(s.id.unwrap_or_default()), "queued".to_owned()),
                        );
                    }
                    // In the same transaction as the incidents: a crash cannot
                    // leave an alarm whose family was never going to hear of it.
                    let notify: Vec<(i64, i64, bool, i64)> = slots[new.clone()]
                        .iter()
                        .filter_map(|s| match (s.n.notify, s.n.client_id, s.n.verified, s.id) {
                            (Some(cascade), Some(client), true, Some(id)) => {
                                Some((id, client, cascade == Cascade::Everyone, s.n.notify_at))
                            }
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
                    let offers: Vec<(i64, &NewDispatch)> = slots[new.clone()]
                        .iter()
                        .zip(&choices)
                        .filter_map(|(s, c)| Some((s.id?, c.as_ref()?)))
                        .collect();
                    let mut dispatch_of: HashMap<i64, i64> = HashMap::new();
                    if !offers.is_empty() {
                        let mut q = QueryBuilder::new(
                            "INSERT INTO dispatches (incident_id, carer_id, provider_id, \
                             distance_m, fallback, state, offered_at, updated_at) ",
                        );
                        q.push_values(&offers, |mut b, &(incident, d)| {
                            b.push_bind(incident)
                                .push_bind(d.carer_id)
                                .push_bind(d.provider_id)
                                .push_bind(d.distance_m)
                                .push_bind(d.fallback)
                                .push("'offered'")
                                .push_bind(now)
                                .push_bind(now);
                        });
                        q.push(" RETURNING id, incident_id");
                        let rows: Vec<(i64, i64)> = q
                            .build_query_as()
                            .persistent(false)
                            .fetch_all(&mut *tx)
                            .await?;
                        dispatch_of = rows.into_iter().map(|(d, i)| (i, d)).collect();
                    }
                    for (s, choice) in slots[new.clone()].iter_mut().zip(choices) {
                        let (Some(r), Some(id), Some(at)) = (s.route, s.id, s.route_line) else {
                            continue;
                        };
                        let c = r.client;
                        let (line, done) = match (choice, dispatch_of.get(&id)) {
                            (Some(d), Some(&dispatch_id)) => {
                                pending.timers.push((
                                    Target::Id(id),
                                    Some(dispatch_id),
                                    "offer",
                                    r.offer_due_at,
                                ));
                                (
                                    ("carer_offered", d.offer_detail(dispatch_id)),
                                    RouteDone::Offered(Box::new(DispatchOffer {
                                        dispatch_id,
                                        incident_id: id,
                                        carer_id: d.carer_id,
                                        kind: s.n.kind.to_owned(),
                                        offered_at: now,
                                        distance_m: d.distance_m,
                                        client_name: c.name.clone(),
                                        address: c.address.clone(),
                                        lat: c.lat,
                                        lon: c.lon,
                                        medical_notes: c.medical_notes.clone(),
                                        medications: c.medications.clone(),
                                        allergies: c.allergies.clone(),
                                        key_safe: c.key_safe.clone(),
                                        reported_lat: r.at.map(|p| p.0),
                                        reported_lon: r.at.map(|p| p.1),
                                    })),
                                )
                            }
                            _ => (
                                ("no_carer_available", NO_CARER.to_owned()),
                                RouteDone::NoCarer,
                            ),
                        };
                        pending.lines[at] = Some(Line {
                            incident: Target::Id(id),
                            actor: "system",
                            action: line.0,
                            to_state: None,
                            detail: line.1,
                        });
                        s.done = Some(done);
                    }
                }
                // A cancel or a clear: after the incidents before it exist.
                let Some(w) = work.get(i) else { break };
                i += 1;
                if !claimed.contains(&alarm_of(w)) {
                    drafts.push(Draft::Done(match *w {
                        StageWork::Cancel { .. } => {
                            StageDone::Cancel(IncidentOutcome::AlreadyProcessed)
                        }
                        _ => StageDone::Cleared(None),
                    }));
                    continue;
                }
                let draft = match *w {
                    StageWork::Cancel { alarm_id, fold_key } => {
                        StageDone::Cancel(match open.get(fold_key) {
                            Some(&(target, _)) => {
                                let id = resolve(target, &slots)?;
                                sqlx::query(
                                    "UPDATE incidents SET cancel_requested_at = $1, \
                                     updated_at = $1 WHERE id = $2",
                                )
                                .bind(now)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                                pending.lines.push(Some(Line {
                                    incident: target,
                                    actor: "resident",
                                    action: "cancel_requested",
                                    to_state: None,
                                    detail: format!("alarm {alarm_id}"),
                                }));
                                pending.links.push((alarm_id, target));
                                IncidentOutcome::CancelRecorded(id)
                            }
                            None => IncidentOutcome::NothingToCancel,
                        })
                    }
                    StageWork::Clear {
                        alarm_id,
                        fold_key,
                        detail,
                    } => match open.get(fold_key).cloned() {
                        None => StageDone::Cleared(None),
                        Some((target, state)) => {
                            let id = resolve(target, &slots)?;
                            let next = pingantong_domain::State::parse(&state)
                                .and_then(|s| s.apply(pingantong_domain::Action::Cancel).ok());
                            if let Some(next) = next {
                                sqlx::query(
                                    "UPDATE incidents SET state = $1, outcome = 'cleared', \
                                     updated_at = $2 WHERE id = $3",
                                )
                                .bind(next.as_str())
                                .bind(now)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                                if next.is_open() {
                                    open.insert(fold_key, (target, next.as_str().to_owned()));
                                } else {
                                    open.remove(fold_key);
                                }
                                // A job offered to a carer ends with it.
                                withdraw_in_tx!(tx, id, next, now);
                            }
                            pending.lines.push(Some(Line {
                                incident: target,
                                actor: "device",
                                action: if next.is_some() {
                                    "cleared"
                                } else {
                                    "condition_cleared"
                                },
                                to_state: next.map(|n| n.as_str()),
                                detail: detail.to_owned(),
                            }));
                            pending.links.push((alarm_id, target));
                            StageDone::Cleared(Some(id))
                        }
                    },
                    StageWork::Incident { .. } | StageWork::Processed { .. } => {
                        unreachable!("the run above takes these")
                    }
                };
                drafts.push(Draft::Done(draft));
            }
            let Pending {
                lines,
                timers,
                links,
                presses,
            } = pending;
            if !presses.is_empty() {
                let mut q =
                    QueryBuilder::new("UPDATE incidents SET press_count = press_count + CASE id");
                for (id, n) in &presses {
                    q.push(" WHEN ").push_bind(*id).push(" THEN ").push_bind(*n);
                }
                q.push(" END, last_press_at = ")
                    .push_bind(now)
                    .push(", updated_at = ")
                    .push_bind(now)
                    .push(format!(
                        " WHERE id IN ({})",
                        id_list(presses.keys().copied())
                    ));
                q.build().persistent(false).execute(&mut *tx).await?;
            }
            if !timers.is_empty() {
                let timers = timers
                    .into_iter()
                    .map(|(t, d, k, due)| Ok((resolve(t, &slots)?, d, k, due)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let mut q = QueryBuilder::new(
                    "INSERT INTO timers (incident_id, dispatch_id, kind, round, due_at) ",
                );
                q.push_values(&timers, |mut b, &(incident, dispatch, kind, due)| {
                    b.push_bind(incident)
                        .push_bind(dispatch)
                        .push_bind(kind)
                        .push_bind(0i64)
                        .push_bind(due);
                });
                q.build().persistent(false).execute(&mut *tx).await?;
            }
            // In the order pushed: an incident's lines keep the order of events.
            let lines = lines
                .into_iter()
                .flatten()
                .map(|l| Ok((resolve(l.incident, &slots)?, l)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            if !lines.is_empty() {
                let mut q = QueryBuilder::new(
                    "INSERT INTO incident_events (incident_id, at, actor, action, to_state, detail) ",
                );
                q.push_values(&lines, |mut b, (id, l)| {
                    b.push_bind(*id)
                        .push_bind(now)
                        .push_bind(l.actor)
                        .push_bind(l.action)
                        .push_bind(l.to_state)
                        .push_bind(l.detail.as_str());
                });
                q.build().persistent(false).execute(&mut *tx).await?;
            }
            if !links.is_empty() {
                let links = links
                    .into_iter()
                    .map(|(a, t)| Ok((a, resolve(t, &slots)?)))
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
            let mut done = Vec::with_capacity(drafts.len());
            for d in drafts {
                done.push(match d {
                    Draft::Done(d) => d,
                    Draft::Folded(t) => StageDone::Incident {
                        outcome: IncidentOutcome::Folded(resolve(t, &slots)?),
                        route: None,
                    },
                    Draft::Opened(k) => StageDone::Incident {
                        outcome: IncidentOutcome::Opened(resolve(Target::New(k), &slots)?),
                        route: slots[k].done.take(),
                    },
                });
            }
            Ok(done)
        })
    }

    /// Offers handed to the broker: the recovery sweep need not send them again.
    pub async fn mark_dispatches_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        on_write_pool!(self, |p| sqlx::query(sqlx::AssertSqlSafe(
            mark_published_sql(ids)
        ))
        .persistent(false)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
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
