//! A fleet of native pendants: heartbeats, presses, retries until ACKed.

mod pendant;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};

use crate::record::{Recorder, histogram};
use crate::scenario::Plan;
use crate::speaker::Speaker;

#[derive(Debug, Clone)]
pub struct Pendant {
    pub id: String,
    pub secret: Vec<u8>,
}

#[derive(Clone)]
pub struct FleetConfig {
    pub addr: SocketAddr,
    /// The protocol the pendants speak.
    pub speaker: Arc<dyn Speaker>,
    pub pendants: Vec<Pendant>,
    pub heartbeat: Duration,
    /// Presses per second across the whole fleet (Poisson).
    pub alarm_rate: f64,
    /// Technical events (low battery) per second across the fleet: a flood to
    /// time the presses through. Counted with the heartbeats.
    pub technical_rate: f64,
    /// How long pendants keep pressing and beating (`run`; `run_plan` takes the plan's phases).
    pub duration: Duration,
    /// A frame unanswered this long is sent again (same bytes: a retry).
    pub retry_after: Duration,
    /// After `duration`, how long to wait for the last answers.
    pub grace: Duration,
}

/// Live counters, readable while the fleet runs (progress display).
#[derive(Debug, Default)]
pub struct FleetStats {
    pub connected: AtomicU64,
    pub alarms_sent: AtomicU64,
    pub alarms_acked: AtomicU64,
    pub alarms_refused: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_acked: AtomicU64,
    pub retries: AtomicU64,
    pub reconnects: AtomicU64,
    stop: AtomicBool,
    stop_now: Notify,
}

impl FleetStats {
    /// Stop pressing and beating now (Ctrl-C); answers still owed are awaited
    /// for the grace period as at the normal end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stop_now.notify_waiters();
    }

    /// Every frame ACKed so far, alarms and the rest.
    pub fn frames_acked(&self) -> u64 {
        self.alarms_acked.load(Ordering::Relaxed) + self.heartbeats_acked.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct FleetReport {
    pub alarms_sent: u64,
    pub alarms_acked: u64,
    /// Answered with a NAK the device must not retry (bad tag, unknown device).
    pub alarms_refused: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    pub retries: u64,
    pub reconnects: u64,
    /// (device, seq) of every alarm ACKed.
    pub acked: Vec<(String, u32)>,
    /// (device, seq) of every alarm still unanswered at the end.
    pub unanswered: Vec<(String, u32)>,
    /// Press → ACK, microseconds (retries included).
    pub alarm_latency_us: Histogram<u64>,
    pub heartbeat_latency_us: Histogram<u64>,
}

impl FleetReport {
    /// A report with no counts yet (filled from [`FleetStats`] at the end).
    pub fn empty() -> Self {
        Self {
            alarms_sent: 0,
            alarms_acked: 0,
            alarms_refused: 0,
            heartbeats_sent: 0,
            heartbeats_acked: 0,
            retries: 0,
            reconnects: 0,
            acked: Vec::new(),
            unanswered: Vec::new(),
            alarm_latency_us: histogram(),
            heartbeat_latency_us: histogram(),
        }
    }

    /// Copy the live counters into the report.
    pub fn fill_counts(&mut self, stats: &FleetStats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.alarms_sent = get(&stats.alarms_sent);
        self.alarms_acked = get(&stats.alarms_acked);
        self.alarms_refused = get(&stats.alarms_refused);
        self.heartbeats_sent = get(&stats.heartbeats_sent);
        self.heartbeats_acked = get(&stats.heartbeats_acked);
        self.retries = get(&stats.retries);
        self.reconnects = get(&stats.reconnects);
    }

    pub fn alarms_lost(&self) -> u64 {
        self.alarms_sent - self.alarms_acked - self.alarms_refused
    }
}

/// Run the fleet to the end and report: one phase at `cfg`'s rates, every pendant holding a
/// connection. `stats` may be read meanwhile.
pub async fn run(cfg: FleetConfig, stats: Arc<FleetStats>) -> FleetReport {
    let plan = Plan::single(
        cfg.duration,
        cfg.alarm_rate,
        cfg.technical_rate,
        cfg.pendants.len(),
    );
    let recorder = Arc::new(Recorder::new(&plan, Instant::now()));
    run_plan(cfg, plan, stats, recorder).await
}

/// Run the fleet through `plan`'s phases (which replace `cfg`'s rates and duration) and report;
/// `recorder` holds the timeline, the phases and the storm afterwards. The run's clock starts at
/// `recorder.start()`.
pub async fn run_plan(
    cfg: FleetConfig,
    plan: Plan,
    stats: Arc<FleetStats>,
    recorder: Arc<Recorder>,
) -> FleetReport {
    let n = cfg.pendants.len();
    let shared = Arc::new(pendant::Shared {
        sockets: Arc::new(Semaphore::new(plan.per_report_sockets.max(1))),
        cfg,
        plan,
        stats: Arc::clone(&stats),
        recorder: Arc::clone(&recorder),
    });
    let sampler = {
        let (stats, recorder) = (Arc::clone(&stats), Arc::clone(&recorder));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                recorder.start() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                recorder.tick(
                    stats.connected.load(Ordering::Relaxed),
                    stats.frames_acked(),
                );
            }
        })
    };
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(pendant::run(shared, i)));
    }
    let mut report = FleetReport::empty();
    for t in tasks {
        if let Ok(r) = t.await {
            report.acked.extend(r.acked);
            report.unanswered.extend(r.unanswered);
        }
    }
    sampler.abort();
    recorder.finish(
        stats.connected.load(Ordering::Relaxed),
        stats.frames_acked(),
    );
    report.fill_counts(&stats);
    (report.alarm_latency_us, report.heartbeat_latency_us) = recorder.histograms();
    report
}
