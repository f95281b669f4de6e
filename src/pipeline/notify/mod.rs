//! Family and keyholder notices: the cascade the incident stage starts, sent
//! through one [`Channel`] per way of reaching people (an app on MQTT, a
//! webhook, e-mail), retried with backoff, and surfaced to the operator and
//! the supervisors when a contact cannot be reached.
//!
//! The database holds the cascade (see `store::notifications`); this task
//! only delivers what is due, so a restart resumes where it stopped and an
//! attempt cut short by a crash is simply made again.

mod channels;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use channels::{EmailChannel, MqttChannel, WebhookChannel, notice_topic, sign};

use crate::dispatch::Dispatcher;
use crate::incident::Clock;
use pingantong_store::{Db, GaveUp, NotificationJob, StoreError};
use pingantong_telemetry::events;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Worth another attempt: the far end is down, slow or busy.
    #[error("{0}")]
    Transient(String),
    /// No attempt will do better: no such channel configured, an address
    /// that cannot be one, a receiver that refuses the notice.
    #[error("{0}")]
    Permanent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a contact is told. Serialised as the JSON body of MQTT and webhook
/// notices; e-mail carries the same text.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub v: u8,
    pub incident_id: i64,
    pub kind: String,
    pub opened_at: i64,
    pub resident: String,
    pub address: String,
    pub contact: String,
    pub relation: String,
    /// Where the alarm came from: the device's last position if it has GPS,
    /// else the home address.
    pub location: Option<NoticeLocation>,
    pub message_zh: String,
    pub message_en: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct NoticeLocation {
    pub lat: f64,
    pub lon: f64,
    /// `device` (reported by the pendant or watch) or `home`.
    pub source: &'static str,
}

impl NoticeLocation {
    pub fn map_link(&self) -> String {
        format!(
            "https://www.openstreetmap.org/?mlat={:.5}&mlon={:.5}#map=17/{:.5}/{:.5}",
            self.lat, self.lon, self.lat, self.lon
        )
    }
}

fn kind_zh(kind: &str) -> &'static str {
    match kind {
        "sos" => "紧急呼叫",
        "fall" => "跌倒报警",
        "medical" => "医疗求助",
        "low_battery" => "设备电量低",
        "power_cut" => "停电",
        "removed_from_wrist" => "设备已摘下",
        "tamper" => "设备被拆动",
        _ => "报警",
    }
}

impl Notice {
    fn new(job: &NotificationJob) -> Self {
        let location = match job.device_lat.zip(job.device_lon) {
            Some((lat, lon)) => Some(NoticeLocation {
                lat,
                lon,
                source: "device",
            }),
            None => job
                .home_lat
                .zip(job.home_lon)
                .map(|(lat, lon)| NoticeLocation {
                    lat,
                    lon,
                    source: "home",
                }),
        };
        let link = location.map(|l| l.map_link()).unwrap_or_default();
        let message_zh = format!(
            "平安通：{}（{}）触发了{}，接警中心已在处理。位置：{} {}",
            job.client_name,
            job.client_address,
            kind_zh(&job.kind),
            job.client_address,
            link
        );
        let message_en = format!(
            "Ping An Tong: {} raised an alarm ({}) at {}. The call centre is handling it. {}",
            job.client_name, job.kind, job.client_address, link
        );
        Self {
            v: 1,
            incident_id: job.incident_id,
            kind: job.kind.clone(),
            opened_at: job.opened_at,
            resident: job.client_name.clone(),
            address: job.client_address.clone(),
            contact: job.contact_name.clone(),
            relation: job.relation.clone(),
            location,
            message_zh,
            message_en,
        }
    }
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>>;

/// One way of reaching a contact.
pub trait Channel: Send + Sync {
    /// As stored in `contacts.notify_channel`.
    fn name(&self) -> &'static str;
    /// Deliver to `address` (the channel's own kind of address); `Ok` means
    /// the next hop (broker, web server, mail server) accepted it.
    fn send<'a>(&'a self, contact_id: i64, address: &'a str, notice: &'a Notice) -> SendFuture<'a>;
}

/// How hard to try one contact.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: i64,
    /// Wait before the second attempt; doubles each time up to `max_delay_ms`.
    pub first_delay_ms: i64,
    pub max_delay_ms: i64,
    /// Longest one attempt may take; also the lease that covers a crash mid-send.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_delay_ms: 5_000,
            max_delay_ms: 300_000,
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt.
    pub fn delay_after(&self, attempts: i64) -> i64 {
        let doublings = (attempts - 1).clamp(0, 20) as u32;
        self.first_delay_ms
            .saturating_mul(1 << doublings)
            .min(self.max_delay_ms)
    }
}

/// How many notices go out at once (from one server).
pub const IN_FLIGHT: usize = 16;

/// The sends under way: each ends with its job when delivered, `None` when
/// its failure is recorded.
type Flight = JoinSet<Result<Option<NotificationJob>, StoreError>>;

pub struct Notifier {
    db: Db,
    channels: HashMap<&'static str, Arc<dyn Channel>>,
    policy: RetryPolicy,
    dispatcher: Dispatcher,
    clock: Clock,
}

impl Notifier {
    pub fn new(
        db: Db,
        channels: Vec<Arc<dyn Channel>>,
        policy: RetryPolicy,
        dispatcher: Dispatcher,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            channels: channels.into_iter().map(|c| (c.name(), c)).collect(),
            policy,
            dispatcher,
            clock,
        })
    }

    /// Deliver notices as they fall due, at most [`IN_FLIGHT`] at a time:
    /// a slot that frees takes the next due notice at once, so one slow
    /// contact holds one slot, never the other families' notices. Woken by
    /// the incident stage, and every `tick` for retries.
    pub fn spawn(
        self: Arc<Self>,
        wake: Arc<Notify>,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.pump(wake, tick, shutdown))
    }

    async fn pump(self: Arc<Self>, wake: Arc<Notify>, tick: Duration, shutdown: CancellationToken) {
        let mut flight = Flight::new();
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether notices may be due that no lease has looked for yet: after
        // a wake or a tick, or when the last lease filled every free slot.
        let mut look = true;
        loop {
            if look && flight.len() < IN_FLIGHT {
                look = match self.start_due(&mut flight).await {
                    Ok(filled) => filled,
                    Err(e) => {
                        events::StageFailed {
                            stage: "notify",
                            error: &e,
                        }
                        .emit();
                        false
                    }
                };
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = flight.join_next(), if !flight.is_empty() => {
                    self.settle(done, &mut flight).await;
                }
                _ = wake.notified() => look = true,
                _ = ticks.tick() => look = true,
            }
        }
        // Sends under way finish (each within its timeout) and are written,
        // so a restart does not send them again.
        while let Some(done) = flight.join_next().await {
            self.settle(done, &mut flight).await;
        }
    }

    /// Lease as many due notices as there are free slots and start them.
    /// Each is leased only as it starts: a notice waiting for a slot stays
    /// due, free for another server to take. True when every free slot was
    /// filled (more may be due).
    async fn start_due(self: &Arc<Self>, flight: &mut Flight) -> Result<bool, StoreError> {
        let free = IN_FLIGHT - flight.len();
        let now = (self.clock)();
        // The lease outlives the attempt's own timeout: only a crash lets it lapse.
        let lease = now + 2 * self.policy.attempt_timeout.as_millis() as i64;
        let jobs = self
            .db
            .begin_notification_attempts(now, lease, free as i64)
            .await?;
        let filled = jobs.len() == free;
        for job in jobs {
            let me = Arc::clone(self);
            flight.spawn(async move { me.attempt(job, now).await });
        }
        Ok(filled)
    }

    /// Write the deliveries of `first` and of every other send finished by
    /// now, together: a notice costs its send, not a transaction of its own
    /// on the database's one writer. A write that fails leaves them leased;
    /// they are sent again when the lease runs out (at least once, never
    /// lost).
    async fn settle(
        &self,
        first: Result<Result<Option<NotificationJob>, StoreError>, tokio::task::JoinError>,
        flight: &mut Flight,
    ) {
        let mut done = vec![first];
        while let Some(more) = flight.try_join_next() {
            done.push(more);
        }
        let mut delivered = Vec::new();
        for d in done {
            match d {
                Ok(Ok(Some(job))) => delivered.push(job),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => events::StageFailed {
                    stage: "notify",
                    error: &e,
                }
                .emit(),
                // A panicked send: its lease runs out and it is tried again.
                Err(_) => {}
            }
        }
        if let Err(e) = self.db.notifications_delivered(&delivered).await {
            events::StageFailed {
                stage: "notify",
                error: &e,
            }
            .emit();
        }
    }

    /// One attempt: the job back when it was delivered (its mark is written
    /// with the others'), `None` when the failure is recorded.
    async fn attempt(
        &self,
        job: NotificationJob,
        now: i64,
    ) -> Result<Option<NotificationJob>, StoreError> {
        let notice = Notice::new(&job);
        let sent = match self.channels.get(job.channel.as_str()) {
            Some(channel) => {
                match tokio::time::timeout(
                    self.policy.attempt_timeout,
                    channel.send(job.contact_id, &job.address, &notice),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(NotifyError::Transient(format!(
                        "no answer within {:?}",
                        self.policy.attempt_timeout
                    ))),
                }
            }
            None => Err(NotifyError::Permanent(format!(
                "no {} channel is configured on this server",
                job.channel
            ))),
        };
        match sent {
            Ok(()) => {
                events::FamilyNotified {
                    incident: job.incident_id,
                    channel: &job.channel,
                    attempts: job.attempts,
                }
                .emit();
                Ok(Some(job))
            }
            Err(e) => self.failed(&job, &e, now).await.map(|()| None),
        }
    }

    /// `started`: when this attempt began; the backoff counts from there, so
    /// a slow failure does not stretch the wait.
    async fn failed(
        &self,
        job: &NotificationJob,
        error: &NotifyError,
        started: i64,
    ) -> Result<(), StoreError> {
        let why = error.to_string();
        let permanent = matches!(error, NotifyError::Permanent(_));
        events::FamilyNoticeFailed {
            incident: job.incident_id,
            channel: &job.channel,
            attempts: job.attempts,
            error: &why,
        }
        .emit();
        if !permanent && job.attempts < self.policy.max_attempts {
            let retry_at = started + self.policy.delay_after(job.attempts);
            return self.db.notification_retry(job.id, retry_at, &why).await;
        }
        let outcome = self
            .db
            .notification_gave_up(job, &why, (self.clock)())
            .await?;
        let alert = format!(
            "{} ({}) not reached by {}: {why}",
            job.contact_name, job.relation, job.channel
        );
        self.surface(job.incident_id, "family_notice_failed", &alert)
            .await;
        if outcome == GaveUp::NobodyReached {
            self.surface(
                job.incident_id,
                "family_not_reached",
                "nobody on the contact list could be reached",
            )
            .await;
        }
        Ok(())
    }

    /// The timeline has it already; the supervisors hear of it now.
    async fn surface(&self, incident: i64, kind: &str, why: &str) {
        if let Err(e) = self.dispatcher.alert_supervisors(incident, kind, why).await {
            events::StageFailed {
                stage: "supervisor_alert",
                error: &e,
            }
            .emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            first_delay_ms: 1_000,
            max_delay_ms: 10_000,
            attempt_timeout: Duration::from_secs(1),
        };
        let delays: Vec<i64> = (1..=6).map(|a| p.delay_after(a)).collect();
        assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        assert_eq!(p.delay_after(1_000), 10_000, "no overflow on a long run");
    }
}
