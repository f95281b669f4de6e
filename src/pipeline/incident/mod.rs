//! The incident stage: every committed life-safety alarm opens an incident or
//! folds into the person's open one; verified alarms are then routed to a carer.
//!
//! It consumes the writer's queue and, every `sweep` interval (and once at
//! start), re-reads from the database what is still owed: alarms not handled,
//! incidents not routed, offers not published. Every step is idempotent, so a
//! crash at any point is repaired by the next sweep.

mod commands;
mod replies;

pub use commands::{Command, CommandError, StageHandle};
pub use replies::ReplyProblem;

use std::sync::Arc;
use std::time::Duration;

use pingantong_protocol::EventKind;
use rumqttc::Publish;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::directory::Directory;
use crate::dispatch::Dispatcher;
use crate::routing;
use pingantong_domain::rules::{Action, Rules};
use pingantong_store::writer::{CommittedAlarm, WriterStats};
use pingantong_store::{
    AuthStatus, Cascade, ClaimCheck, ClientProfile, Db, IncidentOutcome, NewIncident, OfferCheck,
    RouteDone, RouteRequest, StageDone, StageWork, StoreError,
};
use pingantong_telemetry::events;

/// The part of an alarm this stage needs.
#[derive(Debug, Clone)]
struct Owed {
    id: i64,
    device_id: String,
    kind: EventKind,
    auth: AuthStatus,
    /// Where the device says it is, if it says: carers are ranked from here.
    at: Option<(f64, f64)>,
}

impl From<CommittedAlarm> for Owed {
    fn from(a: CommittedAlarm) -> Self {
        Owed {
            id: a.id,
            device_id: a.record.device_id,
            kind: a.record.kind,
            auth: a.record.auth,
            at: a.record.location.map(|l| (l.lat, l.lon)),
        }
    }
}

fn owed_of(a: pingantong_store::UnprocessedAlarm) -> Option<Owed> {
    Some(Owed {
        kind: EventKind::from_name(&a.kind)?,
        id: a.id,
        device_id: a.device_id,
        auth: AuthStatus::parse(&a.auth),
        at: a.at,
    })
}

pub use pingantong_domain::{Clock, Escalation};

/// What the stage is told at start: its rules and who to wake.
pub struct StageConfig {
    pub rules: Arc<Rules>,
    /// Server-wide time limits, for rules that set none.
    pub escalation: Escalation,
    pub cascade: Cascade,
    /// Woken when an incident starts a family notification cascade.
    pub notices: Arc<tokio::sync::Notify>,
    /// Woken after anything goes on a timeline (the live feed reads it).
    pub timeline: Arc<tokio::sync::Notify>,
    /// The devices' commits, which the stage's transactions let go first.
    pub acks: Arc<WriterStats>,
}

pub struct IncidentStage {
    db: Db,
    directory: Arc<Directory>,
    dispatcher: Dispatcher,
    config: StageConfig,
    clock: Clock,
    /// Technical alarms the sweep found owed, handled one at a time at the
    /// lowest priority of the loop (never inside the sweep itself).
    deferred: mpsc::Sender<Owed>,
    deferred_rx: std::sync::Mutex<Option<mpsc::Receiver<Owed>>>,
    life_safety_kinds: Vec<String>,
    /// Offers handed to the broker whose "published" mark rides in the next
    /// batch's transaction rather than a write of its own (flushed when the
    /// stage idles, before a sweep, and at shutdown).
    unmarked: std::sync::Mutex<Vec<i64>>,
}

/// With offers waiting for their mark and nothing else to do for this long,
/// the stage writes the marks on their own.
const MARK_IDLE: Duration = Duration::from_millis(20);

/// How many owed technical alarms one sweep hands to the loop: the rest wait
/// for a sweep after these are done.
const TECHNICAL_PER_SWEEP: usize = 256;

/// At most this many queued alarms go into one of the stage's transactions:
/// enough to share a commit among a burst, few enough that an SOS arriving
/// meanwhile waits for one modest transaction, not a backlog.
const STAGE_BATCH: usize = 64;

/// How long the stage lets the devices' commits go first before a
/// transaction of its own: a short wait on a busy writer, during which more
/// alarms gather for the same transaction.
const ACK_PRIORITY: Duration = Duration::from_millis(2);

/// After shutdown, how long the stage goes on with queued life-safety alarms.
/// What is left is committed and marked owed: the sweep at the next start
/// takes it up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Take `first` and whatever else is queued behind it, up to a batch.
fn gather<T: Into<Owed>>(first: T, queue: &mut mpsc::Receiver<T>) -> Vec<Owed> {
    let mut batch = vec![first.into()];
    while batch.len() < STAGE_BATCH {
        match queue.try_recv() {
            Ok(next) => batch.push(next.into()),
            Err(_) => break,
        }
    }
    batch
}

/// One alarm's work, decided from the rules and the directory before the
/// transaction.
struct Plan {
    owed: Owed,
    kind: String,
    /// The incident's (or the job's) fold key.
    fold_key: String,
    what: PlanKind,
}

enum PlanKind {
    Processed,
    Cancel,
    Clear {
        detail: String,
    },
    Incident {
        verified: bool,
        client_id: Option<i64>,
        lane: &'static str,
        offer: bool,
        advise: Option<String>,
        notify: Option<Cascade>,
        now: i64,
        claim_due_at: i64,
        /// The client and the offer's deadline, when the incident is to be
        /// offered to a carer as it opens.
        route: Option<(Arc<ClientProfile>, i64)>,
    },
}

impl Plan {
    fn work(&self) -> StageWork<'_> {
        let alarm_id = self.owed.id;
        match &self.what {
            PlanKind::Processed => StageWork::Processed { alarm_id },
            PlanKind::Cancel => StageWork::Cancel {
                alarm_id,
                fold_key: &self.fold_key,
            },
            PlanKind::Clear { detail } => StageWork::Clear {
                alarm_id,
                fold_key: &self.fold_key,
                detail,
            },
            PlanKind::Incident {
                verified,
                client_id,
                lane,
                offer,
                advise,
                notify,
                now,
                claim_due_at,
                route,
            } => StageWork::Incident {
                incident: NewIncident {
                    alarm_id,
                    fold_key: &self.fold_key,
                    client_id: *client_id,
                    device_id: &self.owed.device_id,
                    kind: &self.kind,
                    lane,
                    verified: *verified,
                    offer: *offer,
                    advise: advise.as_deref(),
                    notify: *notify,
                    notify_at: *now,
                    claim_due_at: *claim_due_at,
                },
                route: route.as_ref().map(|(client, due)| RouteRequest {
                    client,
                    at: self.owed.at,
                    offer_due_at: *due,
                    choose: routing::choose,
                }),
            },
        }
    }
}

impl IncidentStage {
    pub fn new(
        db: Db,
        directory: Arc<Directory>,
        dispatcher: Dispatcher,
        config: StageConfig,
        clock: Clock,
    ) -> Self {
        let (deferred, deferred_rx) = mpsc::channel(TECHNICAL_PER_SWEEP);
        let life_safety_kinds = config.rules.life_safety_kinds();
        Self {
            db,
            directory,
            dispatcher,
            config,
            clock,
            deferred,
            deferred_rx: std::sync::Mutex::new(Some(deferred_rx)),
            life_safety_kinds,
            unmarked: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The time limits of an incident of this kind.
    fn escalation(&self, kind: &str) -> Escalation {
        self.config
            .rules
            .for_name(kind)
            .escalation(self.config.escalation)
    }

    async fn escalation_of(&self, incident: i64) -> Result<Escalation, StoreError> {
        Ok(match self.db.incident_kind(incident).await? {
            Some(kind) => self.escalation(&kind),
            None => self.config.escalation,
        })
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Run until `shutdown`, then finish what is already queued.
    ///
    /// Life-safety alarms come first, then carers' replies (someone is on
    /// the way), then the sweep, and technical jobs only when nothing else
    /// waits: a flood of them queues behind an SOS, never in front of it.
    pub fn spawn(
        self,
        mut urgent: mpsc::Receiver<CommittedAlarm>,
        mut other: mpsc::Receiver<CommittedAlarm>,
        mut replies: mpsc::Receiver<Publish>,
        mut commands: mpsc::Receiver<Command>,
        sweep: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let mut deferred = self
            .deferred_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("spawned once");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    Some(alarm) = urgent.recv() => {
                        self.config.acks.yield_to_acks(ACK_PRIORITY).await;
                        self.handle_batch(gather(alarm, &mut urgent)).await
                    }
                    Some(reply) = replies.recv() => self.carer_reply_logged(reply).await,
                    Some(command) = commands.recv() => self.command(command).await,
                    _ = tick.tick() => {
                        if let Err(e) = self.sweep(&shutdown).await {
                            events::StageFailed { stage: "incident_sweep", error: &e }.emit();
                        }
                    }
                    _ = shutdown.cancelled() => break,
                    Some(alarm) = other.recv() => {
                        self.config.acks.yield_to_acks(ACK_PRIORITY).await;
                        self.handle_batch(gather(alarm, &mut other)).await
                    }
                    Some(owed) = deferred.recv() => {
                        self.config.acks.yield_to_acks(ACK_PRIORITY).await;
                        self.handle_batch(gather(owed, &mut deferred)).await
                    }
                    _ = tokio::time::sleep(MARK_IDLE), if self.has_unmarked() => {
                        self.flush_marks().await;
                        continue;
                    }
                }
                // Whatever the step was, the live feed looks now rather than
                // at its next poll.
                self.config.timeline.notify_one();
            }
            let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            while tokio::time::Instant::now() < deadline
                && let Ok(alarm) = urgent.try_recv()
            {
                self.handle_batch(gather(alarm, &mut urgent)).await;
            }
            self.flush_marks().await;
        })
    }

    fn unmarked(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.unmarked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_unmarked(&self) -> bool {
        !self.unmarked().is_empty()
    }

    /// Write the "published" marks still waiting; on failure they wait on
    /// (the worst case is the sweep sending an offer twice, same dispatch id).
    async fn flush_marks(&self) {
        let marks = std::mem::take(&mut *self.unmarked());
        if let Err(e) = self.db.mark_dispatches_published(&marks).await {
            self.unmarked().extend(marks);
            events::StageFailed {
                stage: "dispatch_publish",
                error: &e,
            }
            .emit();
        }
    }

    /// Hand over whatever the database says is still owed. A backlog of
    /// owed alarms is worked through in batches until `shutdown`; what is left
    /// then stays owed for the next start.
    pub async fn sweep(&self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        // Offers already with the broker are not "unpublished".
        self.flush_marks().await;
        // Every life-safety alarm owed, found by kind in however large a
        // backlog of technical events, and handled here and now.
        let mut after = 0;
        loop {
            let batch = self
                .db
                .unprocessed_alarms(after, 256, Some(&self.life_safety_kinds))
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            let owed: Vec<Owed> = batch.into_iter().filter_map(owed_of).collect();
            for chunk in owed.chunks(STAGE_BATCH) {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                self.handle_batch(chunk.to_vec()).await;
            }
        }
        // The oldest technical ones go to the loop's lowest-priority queue,
        // once the previous handful is done.
        if self.deferred.capacity() == self.deferred.max_capacity() {
            for a in self
                .db
                .unprocessed_alarms(0, TECHNICAL_PER_SWEEP as i64, None)
                .await?
            {
                if let Some(owed) = owed_of(a)
                    && self.config.rules.priority(owed.kind)
                        != pingantong_protocol::Lane::LifeSafety
                    && self.deferred.try_send(owed).is_err()
                {
                    break;
                }
            }
        }
        for ctx in self.db.unrouted_incidents().await? {
            self.route(ctx.incident_id, &ctx.kind, &ctx.client).await?;
        }
        for dispatch in self.db.claim_unpublished_dispatches().await? {
            if self.dispatcher.publish(dispatch).await.is_err() {
                // Broker still down: the next sweep tries again.
                break;
            }
        }
        self.send_withdrawals().await?;
        self.fire_due_timers().await
    }

    /// Tell carers of the offers their incidents' end took back. Owed in the
    /// database until handed to the broker, so a withdrawal made while the
    /// broker was down (or by another server's console) is sent by a sweep.
    pub(crate) async fn send_withdrawals(&self) -> Result<(), StoreError> {
        let owed = self.db.claim_owed_withdrawals(256).await?;
        let mut sent = Vec::with_capacity(owed.len());
        for w in &owed {
            match self.dispatcher.publish_withdrawal(w).await {
                Ok(()) => sent.push(w.dispatch_id),
                // The broker is down: the rest wait for the next sweep.
                Err(e) => {
                    events::StageFailed {
                        stage: "withdrawal_publish",
                        error: &e,
                    }
                    .emit();
                    break;
                }
            }
        }
        self.db.mark_withdrawals_sent(&sent).await
    }

    /// Deadlines that passed: unclaimed incidents alert the supervisors (and
    /// keep doing so), unanswered offers go to the next carer.
    async fn fire_due_timers(&self) -> Result<(), StoreError> {
        for t in self.db.due_timers(self.now(), 256).await? {
            match t.kind.as_str() {
                "claim" => {
                    let remind_at =
                        self.now() + self.escalation_of(t.incident_id).await?.remind_every_ms;
                    if let ClaimCheck::Overdue { round } =
                        self.db.fire_claim_timer(&t, remind_at).await?
                    {
                        let why = format!("not claimed by an operator in time (alert {round})");
                        self.alert(t.incident_id, "unclaimed", &why).await?;
                    }
                }
                "offer" if self.db.fire_offer_timer(&t).await? == OfferCheck::Expired => {
                    self.offer_next(t.incident_id, "after an offer expired")
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Tell the supervisors (MQTT) and write it on the incident's timeline.
    async fn alert(&self, incident: i64, kind: &str, why: &str) -> Result<(), StoreError> {
        events::SupervisorAlert {
            incident,
            kind,
            why,
        }
        .emit();
        self.db.note_supervisor_alert(incident, why).await?;
        if let Err(e) = self.dispatcher.alert_supervisors(incident, kind, why).await {
            events::StageFailed {
                stage: "supervisor_alert",
                error: &e,
            }
            .emit();
        }
        Ok(())
    }

    /// Decide what an alarm needs, from the rules and the directory.
    async fn plan(&self, owed: Owed) -> Result<Plan, StoreError> {
        let verified = owed.auth == AuthStatus::Verified;
        let device = if verified {
            self.directory.device(&owed.device_id).await?
        } else {
            None
        };
        let client_id = device.as_ref().and_then(|d| d.client_id);
        let kind = owed.kind.name();
        let rule = self.config.rules.for_kind(owed.kind);
        let life_safety = owed.kind == EventKind::Cancel
            || rule.priority == pingantong_protocol::Lane::LifeSafety;
        let plan = |fold_key: String, what| Plan {
            kind: kind.to_string(),
            fold_key,
            what,
            owed: owed.clone(),
        };
        // Unverified senders get their own key: a forged press must never fold
        // into, and so hide behind, a resident's real incident. Technical jobs
        // are one per device and kind: a pendant reporting its low battery
        // every minute is one job, not sixty.
        let fold_key = match (life_safety, verified, client_id) {
            (true, true, Some(c)) => format!("client:{c}"),
            (true, true, None) => format!("device:{}", owed.device_id),
            (true, false, _) => format!("unverified:{}", owed.device_id),
            (false, true, _) => format!("technical:{}:{kind}", owed.device_id),
            // A technical report from a sender we cannot verify is stored
            // (for forensics and the rejected-device list), nobody's job.
            (false, false, _) => return Ok(plan(String::new(), PlanKind::Processed)),
        };
        if let Some(trouble) = pingantong_domain::rules::clears(owed.kind) {
            let job = format!("technical:{}:{}", owed.device_id, trouble.name());
            let detail = format!("{kind} reported by the device (alarm {})", owed.id);
            return Ok(plan(job, PlanKind::Clear { detail }));
        }
        if owed.kind == EventKind::Cancel {
            return Ok(plan(fold_key, PlanKind::Cancel));
        }
        if !rule.has(Action::Operator) {
            // Rules changed since this alarm was stored: it has no work now.
            return Ok(plan(fold_key, PlanKind::Processed));
        }
        let escalation = rule.escalation(self.config.escalation);
        let offer = rule.has(Action::OfferCarer);
        let now = self.now();
        let route = match (offer, verified, client_id) {
            (true, true, Some(c)) => self
                .directory
                .client(c)
                .await?
                .map(|client| (client, now + escalation.offer_after_ms)),
            _ => None,
        };
        Ok(plan(
            fold_key,
            PlanKind::Incident {
                verified,
                client_id,
                lane: rule.priority.as_str(),
                offer,
                advise: rule.advised_handoff().map(str::to_owned),
                notify: rule
                    .has(Action::NotifyFamily)
                    .then_some(self.config.cascade),
                now,
                claim_due_at: now + escalation.claim_after_ms,
                route,
            },
        ))
    }

    /// Handle queued alarms in one transaction, then tell who must know:
    /// the log, the live feed, the family's notifier, the carers.
    async fn handle_batch(&self, batch: Vec<Owed>) {
        let began = std::time::Instant::now();
        if batch.len() > 1
            && let Err(e) = self
                .directory
                .prefetch_clients_of(
                    batch
                        .iter()
                        .filter(|o| o.auth == AuthStatus::Verified)
                        .map(|o| o.device_id.as_str()),
                )
                .await
        {
            // Each plan reads what it misses on its own.
            events::StageFailed {
                stage: "directory_prefetch",
                error: &e,
            }
            .emit();
        }
        let mut plans = Vec::with_capacity(batch.len());
        for owed in batch {
            match self.plan(owed).await {
                Ok(p) => plans.push(p),
                // Still owed in the database: the sweep tries it again.
                Err(e) => events::StageFailed {
                    stage: "incident",
                    error: &e,
                }
                .emit(),
            }
        }
        if plans.is_empty() {
            return;
        }
        let work: Vec<StageWork<'_>> = plans.iter().map(Plan::work).collect();
        let prepare = began.elapsed();
        let started = std::time::Instant::now();
        let mut applied = None;
        let marks = std::mem::take(&mut *self.unmarked());
        let done: Vec<Option<StageDone>> = match self.db.apply_stage_work(&work, &marks).await {
            Ok(done) => {
                applied = Some(started.elapsed());
                done.into_iter().map(Some).collect()
            }
            Err(e) => {
                self.unmarked().extend(&marks);
                events::StageFailed {
                    stage: "incident",
                    error: &e,
                }
                .emit();
                // One alarm's trouble must not hold the others back.
                let mut done = Vec::with_capacity(work.len());
                for w in &work {
                    if work.len() == 1 {
                        done.push(None);
                        continue;
                    }
                    match self.db.apply_stage_work(std::slice::from_ref(w), &[]).await {
                        Ok(mut d) => done.push(d.pop()),
                        Err(e) => {
                            events::StageFailed {
                                stage: "incident",
                                error: &e,
                            }
                            .emit();
                            done.push(None);
                        }
                    }
                }
                done
            }
        };
        let mut published = Vec::new();
        let mut cleared = false;
        for (plan, done) in plans.iter().zip(done) {
            match done {
                Some(StageDone::Incident {
                    outcome: IncidentOutcome::Opened(incident),
                    route,
                }) => {
                    let PlanKind::Incident {
                        verified, notify, ..
                    } = &plan.what
                    else {
                        continue;
                    };
                    events::IncidentOpened {
                        incident,
                        device: &plan.owed.device_id,
                        kind: &plan.kind,
                        verified: *verified,
                    }
                    .emit();
                    // The operators see it before the carer's phone rings.
                    self.config.timeline.notify_one();
                    if notify.is_some() {
                        self.config.notices.notify_one();
                    }
                    match route {
                        Some(RouteDone::Offered(offer)) => {
                            match self.dispatcher.publish_offer(&offer).await {
                                Ok(()) => published.push(offer.dispatch_id),
                                // Unpublished in the database: the sweep sends it.
                                Err(e) => events::StageFailed {
                                    stage: "dispatch_publish",
                                    error: &e,
                                }
                                .emit(),
                            }
                        }
                        Some(RouteDone::NoCarer) => events::NoCarerAvailable { incident }.emit(),
                        None => {}
                    }
                }
                Some(StageDone::Incident {
                    outcome: IncidentOutcome::Folded(incident),
                    ..
                }) => events::IncidentFolded { incident }.emit(),
                Some(StageDone::Cleared(Some(incident))) => {
                    events::JobCleared {
                        incident,
                        kind: &plan.kind,
                    }
                    .emit();
                    cleared = true;
                }
                _ => {}
            }
        }
        self.unmarked().extend(published);
        // A cleared job may have had an offer out (rare: only where the rules
        // offer a technical kind to a carer).
        if cleared && let Err(e) = self.send_withdrawals().await {
            events::StageFailed {
                stage: "withdrawal_publish",
                error: &e,
            }
            .emit();
        }
        if let Some(transaction) = applied {
            events::StageBatch {
                size: work.len(),
                prepare,
                transaction,
                after: started.elapsed() - transaction,
            }
            .emit();
        }
    }

    async fn route(
        &self,
        incident: i64,
        kind: &str,
        client: &ClientProfile,
    ) -> Result<(), StoreError> {
        let candidates = self
            .db
            .carer_candidates(&client.district, &client.street)
            .await?;
        // Ranked from where the alarm says the person is, else from home.
        let from = self
            .db
            .incident_position(incident)
            .await?
            .or(client.lat.zip(client.lon));
        let choice = routing::choose(from, &candidates);
        let due = self.now() + self.escalation(kind).offer_after_ms;
        match self.db.record_route(incident, choice.as_ref(), due).await? {
            Some(dispatch) => {
                if let Err(e) = self.dispatcher.publish(dispatch).await {
                    events::StageFailed {
                        stage: "dispatch_publish",
                        error: &e,
                    }
                    .emit();
                }
            }
            None if choice.is_none() => events::NoCarerAvailable { incident }.emit(),
            None => {}
        }
        Ok(())
    }
}
