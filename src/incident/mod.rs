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
use crate::rules::{Action, Rules, lane_name};
use crate::store::writer::CommittedAlarm;
use crate::store::{
    AuthStatus, Cascade, ClaimCheck, ClientProfile, Db, IncidentOutcome, NewIncident, OfferCheck,
    StoreError,
};
use crate::telemetry::events;

/// The part of an alarm this stage needs.
#[derive(Debug, Clone)]
struct Owed {
    id: i64,
    device_id: String,
    kind: EventKind,
    auth: AuthStatus,
}

impl From<CommittedAlarm> for Owed {
    fn from(a: CommittedAlarm) -> Self {
        Owed {
            id: a.id,
            device_id: a.record.device_id,
            kind: a.record.kind,
            auth: a.record.auth,
        }
    }
}

fn owed_of(a: crate::store::UnprocessedAlarm) -> Option<Owed> {
    Some(Owed {
        kind: EventKind::from_name(&a.kind)?,
        id: a.id,
        device_id: a.device_id,
        auth: AuthStatus::parse(&a.auth),
    })
}

/// Milliseconds since the Unix epoch, from whichever clock the stage runs on
/// (the system's; a test's own to move deadlines without waiting for them).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// How long people get before the stage escalates.
#[derive(Debug, Clone, Copy)]
pub struct Escalation {
    /// An incident not claimed by an operator in this time alerts the supervisors.
    pub claim_after_ms: i64,
    /// An offer not accepted in this time goes to the next carer.
    pub offer_after_ms: i64,
    /// While still unclaimed, the alert repeats this often.
    pub remind_every_ms: i64,
}

impl Default for Escalation {
    fn default() -> Self {
        Self {
            claim_after_ms: 60_000,
            offer_after_ms: 90_000,
            remind_every_ms: 60_000,
        }
    }
}

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
}

/// How many owed technical alarms one sweep hands to the loop: the rest wait
/// for a sweep after these are done.
const TECHNICAL_PER_SWEEP: usize = 256;

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
                    Some(alarm) = urgent.recv() => self.handle_logged(alarm.into()).await,
                    Some(reply) = replies.recv() => self.carer_reply_logged(reply).await,
                    Some(command) = commands.recv() => self.command(command).await,
                    _ = tick.tick() => {
                        if let Err(e) = self.sweep().await {
                            events::StageFailed { stage: "incident_sweep", error: &e }.emit();
                        }
                    }
                    _ = shutdown.cancelled() => break,
                    Some(alarm) = other.recv() => self.handle_logged(alarm.into()).await,
                    Some(owed) = deferred.recv() => self.handle_logged(owed).await,
                }
                // Whatever the step was, the live feed looks now rather than
                // at its next poll.
                self.config.timeline.notify_one();
            }
            while let Ok(alarm) = urgent.try_recv() {
                self.handle_logged(alarm.into()).await;
            }
        })
    }

    /// Hand over whatever the database says is still owed.
    pub async fn sweep(&self) -> Result<(), StoreError> {
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
            for a in batch {
                if let Some(owed) = owed_of(a) {
                    self.handle_logged(owed).await;
                }
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
        for dispatch in self.db.unpublished_dispatches().await? {
            if self.dispatcher.publish(dispatch).await.is_err() {
                // Broker still down: the next sweep tries again.
                break;
            }
        }
        self.fire_due_timers().await
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

    async fn handle_logged(&self, owed: Owed) {
        if let Err(e) = self.handle(&owed).await {
            events::StageFailed {
                stage: "incident",
                error: &e,
            }
            .emit();
        }
    }

    async fn handle(&self, owed: &Owed) -> Result<(), StoreError> {
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
            (false, false, _) => return self.db.mark_processed(owed.id).await,
        };
        if let Some(trouble) = crate::rules::clears(owed.kind) {
            let job = format!("technical:{}:{}", owed.device_id, trouble.name());
            let detail = format!("{kind} reported by the device (alarm {})", owed.id);
            if let Some(incident) = self.db.clear_job(owed.id, &job, &detail).await? {
                events::JobCleared {
                    incident,
                    kind: &kind,
                }
                .emit();
            }
            return Ok(());
        }
        if owed.kind == EventKind::Cancel {
            self.db.record_cancel(owed.id, &fold_key).await?;
            return Ok(());
        }
        if !rule.has(Action::Operator) {
            // Rules changed since this alarm was stored: it has no work now.
            return self.db.mark_processed(owed.id).await;
        }
        let escalation = rule.escalation(self.config.escalation);
        let notify = rule
            .has(Action::NotifyFamily)
            .then_some(self.config.cascade);
        let outcome = self
            .db
            .open_or_fold_incident(&NewIncident {
                alarm_id: owed.id,
                fold_key: &fold_key,
                client_id,
                device_id: &owed.device_id,
                kind: &kind,
                lane: lane_name(rule.priority),
                verified,
                offer: rule.has(Action::OfferCarer),
                advise: rule.advised_handoff(),
                notify,
                notify_at: self.now(),
                claim_due_at: self.now() + escalation.claim_after_ms,
            })
            .await?;
        match outcome {
            IncidentOutcome::Opened(incident) => {
                events::IncidentOpened {
                    incident,
                    device: &owed.device_id,
                    kind: &kind,
                    verified,
                }
                .emit();
                // The operators see it before the carer is chosen.
                self.config.timeline.notify_one();
                if notify.is_some() {
                    self.config.notices.notify_one();
                }
                if let (true, true, Some(c)) = (rule.has(Action::OfferCarer), verified, client_id)
                    && let Some(client) = self.directory.client(c).await?
                {
                    self.route(incident, &kind, &client).await?;
                }
            }
            IncidentOutcome::Folded(incident) => events::IncidentFolded { incident }.emit(),
            _ => {}
        }
        Ok(())
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
        let home = client.lat.zip(client.lon);
        let choice = routing::choose(home, &candidates);
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
