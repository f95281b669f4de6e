//! When a simulated device beats, presses and reports: heartbeats on a fixed period (first one at
//! a random point of it), presses and technical events as Poisson processes at its phase's rates.
//! Shared by TCP and MQTT pendants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingantong_protocol::EventKind;
use rand::Rng;
use tokio::time::Instant;

use crate::scenario::Plan;

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wait until the next event of a Poisson process of `rate` per second.
fn next_after(rate: f64) -> Duration {
    if rate <= 0.0 {
        return Duration::from_secs(365 * 24 * 3600);
    }
    let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() / rate)
}

/// One device's share of a plan's rates: the fleet's rates divided by its head count.
pub(crate) fn rates(plan: &Plan, phase: usize, fleet: usize) -> (f64, f64) {
    let n = fleet.max(1) as f64;
    (
        plan.phases[phase].alarm_rate / n,
        plan.phases[phase].technical_rate / n,
    )
}

pub(crate) struct Schedule {
    heartbeat: Duration,
    alarm_rate: f64,
    technical_rate: f64,
    next_heartbeat: Instant,
    next_alarm: Instant,
    next_technical: Instant,
}

impl Schedule {
    pub fn new(
        start: Instant,
        heartbeat: Duration,
        (alarm_rate, technical_rate): (f64, f64),
    ) -> Self {
        Self {
            heartbeat,
            alarm_rate,
            technical_rate,
            next_heartbeat: start + heartbeat.mul_f64(rand::rng().random_range(0.0..1.0)),
            next_alarm: start + next_after(alarm_rate),
            next_technical: start + next_after(technical_rate),
        }
    }

    /// A new phase from `at`: its rates, the Poisson processes drawn again.
    pub fn phase(&mut self, at: Instant, (alarm_rate, technical_rate): (f64, f64)) {
        (self.alarm_rate, self.technical_rate) = (alarm_rate, technical_rate);
        self.next_alarm = at + next_after(alarm_rate);
        self.next_technical = at + next_after(technical_rate);
    }

    /// When the next event falls due.
    pub fn next(&self) -> Instant {
        self.next_heartbeat
            .min(self.next_alarm)
            .min(self.next_technical)
    }

    /// The event due at `now`, if any (a press first, then a technical event, then a
    /// heartbeat), its process moved on. One press in ten is a fall.
    pub fn take(&mut self, now: Instant) -> Option<EventKind> {
        if now < self.next() {
            return None;
        }
        Some(if now >= self.next_alarm {
            self.next_alarm += next_after(self.alarm_rate);
            if rand::rng().random_range(0..10) == 0 {
                EventKind::Fall
            } else {
                EventKind::Sos
            }
        } else if now >= self.next_technical {
            self.next_technical += next_after(self.technical_rate);
            EventKind::LowBattery
        } else {
            self.next_heartbeat += self.heartbeat;
            EventKind::Heartbeat
        })
    }
}
