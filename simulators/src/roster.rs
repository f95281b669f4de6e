//! What a fleet is made of and what it reports, apart from how it runs
//! (`fleet` for TCP protocols, `mqtt_fleet` for MQTT), so that every part
//! of the simulator can name them without leaning on another part.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::record::histogram;

#[derive(Debug, Clone)]
pub struct Pendant {
    pub id: String,
    pub secret: Vec<u8>,
    /// Which of the fleet's [`Line`]s it speaks and connects to.
    pub line: usize,
}

impl Pendant {
    /// A pendant on the fleet's first line.
    pub fn new(id: String, secret: Vec<u8>) -> Self {
        Self {
            id,
            secret,
            line: 0,
        }
    }
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

    /// Whether [`FleetStats::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Resolves at the next [`FleetStats::stop`].
    pub fn stop_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.stop_now.notified()
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

/// One pendant's alarms, by (device, seq), at the end.
pub struct PendantResult {
    pub acked: Vec<(String, u32)>,
    pub unanswered: Vec<(String, u32)>,
}
