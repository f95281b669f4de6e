//! What a fleet measured, shared by all its pendants: latency histograms for the whole run, per
//! second (a timeline) and per phase, the initial connect, and the storm's reconnect.
//!
//! Memory stays bounded at any fleet size: one histogram per phase, and only the second being
//! filled holds a histogram — it is reduced to a few numbers when the second closes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::scenario::Plan;

/// Press → ACK (and frame → ACK) in microseconds, up to ten minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    pub t: u64,
    pub connected: u64,
    pub frames_acked: u64,
    pub alarms_acked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_max_ms: Option<f64>,
}

/// Where a press belongs: the protocol line it was sent on, the phase it was made in, and whether
/// the pendant was cut off by a mass disconnect then (it is sent on reconnecting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Press {
    pub line: usize,
    pub phase: usize,
    pub offline: bool,
}

/// A protocol line's presses.
struct LineTally {
    name: String,
    sent: u64,
    acked: u64,
    latency: Histogram<u64>,
}

struct PhaseTally {
    sent: u64,
    acked: u64,
    latency: Histogram<u64>,
    /// Presses made while the pendant was cut off by a mass disconnect, or
    /// whose connection the disconnect took before their answer (both sent
    /// again on reconnecting: their wait is the device's, not the server's).
    sent_offline: u64,
    /// Press → ACK of the presses made while connected (or free to connect).
    latency_online: Histogram<u64>,
}

struct Inner {
    alarms: Histogram<u64>,
    frames: Histogram<u64>,
    /// Seconds not closed yet (the running one, rarely one more) and their alarms' press → ACK.
    open: Vec<(u64, Histogram<u64>)>,
    timeline: Vec<Second>,
    frames_at_last_close: u64,
    phases: Vec<PhaseTally>,
    /// Empty unless the fleet named its lines ([`Recorder::with_lines`]).
    lines: Vec<LineTally>,
}

/// Shared by every pendant of a run.
pub struct Recorder {
    start: Instant,
    phase_names: Vec<(String, Duration, Duration)>,
    storm_at: Option<Duration>,
    inner: Mutex<Inner>,
    /// Persistent pendants that have connected (and had their login answered) once.
    ready: AtomicU64,
    ready_target: u64,
    all_ready_us: AtomicU64,
    pub storm_disconnected: AtomicU64,
    pub storm_reconnected: AtomicU64,
    pub storm_reports_sent: AtomicU64,
    pub storm_reports_acked: AtomicU64,
    last_reconnect_us: AtomicU64,
    last_report_ack_us: AtomicU64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn quantiles(h: &Histogram<u64>) -> Value {
    let q = |p: f64| ms(h.value_at_quantile(p));
    json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": ms(h.max())})
}

impl Recorder {
    /// `start` is the run's time zero; `ready_target` the pendants that hold connections.
    pub fn new(plan: &Plan, start: Instant) -> Self {
        Self {
            start,
            phase_names: plan
                .phases
                .iter()
                .map(|p| (p.name.clone(), p.start, p.secs))
                .collect(),
            storm_at: plan.storm().map(|(i, _)| plan.phases[i].start),
            inner: Mutex::new(Inner {
                alarms: histogram(),
                frames: histogram(),
                open: Vec::new(),
                timeline: Vec::new(),
                frames_at_last_close: 0,
                phases: plan
                    .phases
                    .iter()
                    .map(|_| PhaseTally {
                        sent: 0,
                        acked: 0,
                        latency: histogram(),
                        sent_offline: 0,
                        latency_online: histogram(),
                    })
                    .collect(),
                lines: Vec::new(),
            }),
            ready: AtomicU64::new(0),
            ready_target: plan.persistent as u64,
            all_ready_us: AtomicU64::new(0),
            storm_disconnected: AtomicU64::new(0),
            storm_reconnected: AtomicU64::new(0),
            storm_reports_sent: AtomicU64::new(0),
            storm_reports_acked: AtomicU64::new(0),
            last_reconnect_us: AtomicU64::new(0),
            last_report_ack_us: AtomicU64::new(0),
        }
    }

    /// Tally presses per protocol line too (the summary's `by_protocol`), lines named in order.
    pub fn with_lines(self, names: impl IntoIterator<Item = String>) -> Self {
        self.lock().lines = names
            .into_iter()
            .map(|name| LineTally {
                name,
                sent: 0,
                acked: 0,
                latency: histogram(),
            })
            .collect();
        self
    }

    /// Pendants expected to connect and hold their connection (the connect time waits for all).
    /// (A mixed fleet's MQTT pendants hold theirs beside the plan's persistent TCP ones.)
    pub fn expecting_ready(mut self, pendants: u64) -> Self {
        self.ready_target = pendants;
        self
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A press made.
    pub fn alarm_sent(&self, press: Press) {
        let mut g = self.lock();
        if let Some(p) = g.phases.get_mut(press.phase) {
            p.sent += 1;
            p.sent_offline += u64::from(press.offline);
        }
        if let Some(l) = g.lines.get_mut(press.line) {
            l.sent += 1;
        }
    }

    /// A press made while connected whose connection a mass disconnect took
    /// before its answer: from now on it counts as cut off (`press.offline`
    /// is still false here; its ACK is reported with it set).
    pub fn alarm_cut_off(&self, press: Press) {
        if let Some(p) = self.lock().phases.get_mut(press.phase) {
            p.sent_offline += 1;
        }
    }

    /// An ACK for a press, `us` after the press.
    pub fn alarm_acked(&self, press: Press, us: u64) {
        let mut g = self.lock();
        // The second is read under the lock, so no ACK lands in a second already closed.
        let t = self.now().as_secs();
        Self::alarm_acked_in(&mut g, t, press, us);
    }

    fn alarm_acked_in(g: &mut Inner, t: u64, press: Press, us: u64) {
        g.alarms.saturating_record(us);
        if let Some(p) = g.phases.get_mut(press.phase) {
            p.acked += 1;
            p.latency.saturating_record(us);
            if !press.offline {
                p.latency_online.saturating_record(us);
            }
        }
        if let Some(l) = g.lines.get_mut(press.line) {
            l.acked += 1;
            l.latency.saturating_record(us);
        }
        match g.open.iter_mut().find(|(s, _)| *s == t) {
            Some((_, h)) => h.saturating_record(us),
            None => {
                let mut h = histogram();
                h.saturating_record(us);
                g.open.push((t, h));
            }
        }
    }

    /// Any other frame ACKed, `us` after it was first sent.
    pub fn frame_acked(&self, us: u64) {
        self.lock().frames.saturating_record(us);
    }

    /// Close every whole second before now; called about once a second.
    pub fn tick(&self, connected: u64, frames_acked_total: u64) {
        let mut g = self.lock();
        let now = self.now().as_secs();
        Self::close_seconds(&mut g, now, connected, frames_acked_total);
    }

    /// Close everything, the running second included.
    pub fn finish(&self, connected: u64, frames_acked_total: u64) {
        let mut g = self.lock();
        let now = self.now().as_secs() + 1;
        Self::close_seconds(&mut g, now, connected, frames_acked_total);
    }

    /// Append seconds up to (not including) `until`, reducing their histograms to a few numbers;
    /// frames ACKed since the last close go to the last second appended.
    fn close_seconds(g: &mut Inner, until: u64, connected: u64, frames_total: u64) {
        let from = g.timeline.len() as u64;
        let (closing, open): (Vec<_>, Vec<_>) = std::mem::take(&mut g.open)
            .into_iter()
            .partition(|(s, _)| *s < until);
        g.open = open;
        for (s, h) in &closing {
            // A late ACK for a second already written (cannot happen while ACKs read the clock
            // under the lock, but cheap to keep right): fold it in.
            if let Some(e) = g.timeline.get_mut(*s as usize) {
                e.alarms_acked += h.len();
                e.ack_max_ms = Some(e.ack_max_ms.unwrap_or(0.0).max(ms(h.max())));
            }
        }
        if until <= from {
            return;
        }
        for t in from..until {
            let mut e = Second {
                t,
                connected,
                frames_acked: 0,
                alarms_acked: 0,
                ack_p50_ms: None,
                ack_p99_ms: None,
                ack_max_ms: None,
            };
            if let Some((_, h)) = closing.iter().find(|(s, _)| *s == t) {
                e.alarms_acked = h.len();
                e.ack_p50_ms = Some(ms(h.value_at_quantile(0.5)));
                e.ack_p99_ms = Some(ms(h.value_at_quantile(0.99)));
                e.ack_max_ms = Some(ms(h.max()));
            }
            if t + 1 == until {
                e.frames_acked = frames_total.saturating_sub(g.frames_at_last_close);
            }
            g.timeline.push(e);
        }
        g.frames_at_last_close = frames_total;
    }

    /// The last whole second, for a progress display.
    pub fn last_second(&self) -> Option<Second> {
        self.lock().timeline.last().cloned()
    }

    /// A persistent pendant connected for the first time (login answered, if any).
    pub fn pendant_ready(&self) {
        if self.ready.fetch_add(1, Ordering::Relaxed) + 1 == self.ready_target {
            let us = self.now().as_micros().max(1) as u64;
            self.all_ready_us.store(us, Ordering::Relaxed);
        }
    }

    pub fn storm_reconnect(&self) {
        self.storm_reconnected.fetch_add(1, Ordering::Relaxed);
        let us = self.now().as_micros() as u64;
        self.last_reconnect_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn storm_report_acked(&self) {
        self.storm_reports_acked.fetch_add(1, Ordering::Relaxed);
        let us = self.now().as_micros() as u64;
        self.last_report_ack_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Press → ACK and frame → ACK over the whole run.
    pub fn histograms(&self) -> (Histogram<u64>, Histogram<u64>) {
        let g = self.lock();
        (g.alarms.clone(), g.frames.clone())
    }

    /// The result file's additions: connect, frames_acked_per_sec, timeline, phases, storm.
    pub fn summary(&self, frames_acked: u64, sending: Duration) -> Value {
        let g = self.lock();
        let ready = self.ready.load(Ordering::Relaxed);
        let all_us = self.all_ready_us.load(Ordering::Relaxed);
        let secs = (all_us > 0).then(|| all_us as f64 / 1e6);
        let connect = json!({
            "pendants": ready,
            "of": self.ready_target,
            "secs": secs,
            "per_sec": secs.map(|s| ready as f64 / s),
        });
        let phases: Vec<Value> = self
            .phase_names
            .iter()
            .zip(&g.phases)
            .map(|((name, start, secs), p)| {
                json!({
                    "name": name,
                    "start_s": start.as_secs_f64(),
                    "secs": secs.as_secs_f64(),
                    "alarms_sent": p.sent,
                    "alarms_acked": p.acked,
                    "ack_ms": quantiles(&p.latency),
                    "alarms_pressed_offline": p.sent_offline,
                    "ack_ms_pressed_online": quantiles(&p.latency_online),
                })
            })
            .collect();
        let mut out = json!({
            "connect": connect,
            "frames_acked_per_sec": frames_acked as f64 / sending.as_secs_f64().max(1e-3),
            "timeline": g.timeline,
            "phases": phases,
        });
        if !g.lines.is_empty() {
            let by: serde_json::Map<String, Value> = g
                .lines
                .iter()
                .map(|l| {
                    let v = json!({
                        "alarms_sent": l.sent,
                        "alarms_acked": l.acked,
                        "ack_ms": quantiles(&l.latency),
                    });
                    (l.name.clone(), v)
                })
                .collect();
            out["by_protocol"] = Value::Object(by);
        }
        if let Some(at) = self.storm_at {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let since = |us: u64| (us as f64 / 1e6 - at.as_secs_f64()).max(0.0);
            let (down, up) = (get(&self.storm_disconnected), get(&self.storm_reconnected));
            let (sent, acked) = (
                get(&self.storm_reports_sent),
                get(&self.storm_reports_acked),
            );
            out["storm"] = json!({
                "at_s": at.as_secs_f64(),
                "disconnected": down,
                "reconnected": up,
                "secs_to_reconnect_all": (down > 0 && up == down).then(|| since(get(&self.last_reconnect_us))),
                "reports_sent": sent,
                "reports_acked": acked,
                "secs_to_all_reports_acked":
                    (sent > 0 && acked == sent && up == down).then(|| since(get(&self.last_report_ack_us))),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offline: bool) -> Press {
        Press {
            line: 0,
            phase: 0,
            offline,
        }
    }

    fn recorder() -> Recorder {
        let plan = Plan::single(Duration::from_secs(10), 1.0, 0.0, 3);
        Recorder::new(&plan, Instant::now())
    }

    #[test]
    fn acks_land_in_the_second_they_arrive_and_seconds_close_in_order() {
        let r = recorder();
        {
            let mut g = r.lock();
            Recorder::alarm_acked_in(&mut g, 0, at(false), 1_000);
            Recorder::alarm_acked_in(&mut g, 0, at(false), 2_000);
            Recorder::alarm_acked_in(&mut g, 2, at(true), 1_500);
            assert_eq!(g.open.len(), 2, "seconds close on the tick, not on an ACK");
            Recorder::close_seconds(&mut g, 3, 7, 120);
            Recorder::close_seconds(&mut g, 4, 7, 150);
        }
        let g = r.lock();
        let t: Vec<_> = g
            .timeline
            .iter()
            .map(|s| (s.t, s.alarms_acked, s.frames_acked))
            .collect();
        assert_eq!(t, vec![(0, 2, 0), (1, 0, 0), (2, 1, 120), (3, 0, 30)]);
        assert!(g.open.is_empty());
        // (exact below 2,048 µs at three significant digits)
        assert_eq!(g.timeline[0].ack_max_ms, Some(2.0));
        assert_eq!(g.timeline[1].ack_p50_ms, None);
        assert_eq!(g.timeline[2].ack_p99_ms, Some(1.5));
        assert_eq!(g.phases[0].acked, 3);
        assert_eq!(g.alarms.len(), 3);
        assert_eq!(g.phases[0].latency_online.len(), 2);
    }

    #[test]
    fn a_press_cut_off_before_its_answer_is_not_an_online_press() {
        let r = recorder();
        r.alarm_sent(at(false));
        r.alarm_sent(at(false));
        r.alarm_acked(at(false), 2_000);
        // The second one's connection is dropped by the storm; answered after the reconnect.
        r.alarm_cut_off(at(false));
        r.alarm_acked(at(true), 1_600_000);
        r.finish(1, 10);
        let s = r.summary(10, Duration::from_secs(10));
        assert_eq!(s["phases"][0]["alarms_acked"], 2);
        assert_eq!(s["phases"][0]["alarms_pressed_offline"], 1);
        assert_eq!(s["phases"][0]["ack_ms_pressed_online"]["max"], 2.0);
        let max = s["phases"][0]["ack_ms"]["max"].as_f64().unwrap();
        assert!((1_600.0..1_602.0).contains(&max), "all presses' max: {max}");
    }

    #[test]
    fn the_summary_attributes_to_phases_and_tells_the_connect_time() {
        let r = recorder();
        r.alarm_sent(at(false));
        r.alarm_sent(at(true));
        r.alarm_acked(at(false), 2_000);
        for _ in 0..3 {
            r.pendant_ready();
        }
        r.finish(3, 10);
        let s = r.summary(10, Duration::from_secs(10));
        assert_eq!(s["phases"][0]["alarms_sent"], 2);
        assert_eq!(s["phases"][0]["alarms_acked"], 1);
        assert_eq!(s["phases"][0]["ack_ms"]["max"], 2.0);
        assert_eq!(s["phases"][0]["alarms_pressed_offline"], 1);
        assert_eq!(s["phases"][0]["ack_ms_pressed_online"]["p50"], 2.0);
        assert_eq!(s["connect"]["pendants"], 3);
        assert!(s["connect"]["secs"].as_f64().is_some());
        assert_eq!(s["frames_acked_per_sec"], 1.0);
        assert_eq!(s["timeline"][0]["alarms_acked"], 1);
        assert!(s.get("storm").is_none());
        assert!(s.get("by_protocol").is_none(), "no lines named");
    }

    #[test]
    fn presses_are_told_per_protocol_line() {
        let r = recorder().with_lines(["native".to_string(), "gt06".to_string()]);
        let on = |line| Press {
            line,
            phase: 0,
            offline: false,
        };
        r.alarm_sent(on(0));
        r.alarm_sent(on(1));
        r.alarm_sent(on(1));
        r.alarm_acked(on(1), 1_500);
        r.finish(0, 0);
        let s = r.summary(0, Duration::from_secs(1));
        assert_eq!(s["by_protocol"]["native"]["alarms_sent"], 1);
        assert_eq!(s["by_protocol"]["native"]["alarms_acked"], 0);
        assert_eq!(s["by_protocol"]["gt06"]["alarms_sent"], 2);
        assert_eq!(s["by_protocol"]["gt06"]["alarms_acked"], 1);
        assert_eq!(s["by_protocol"]["gt06"]["ack_ms"]["max"], 1.5);
        assert_eq!(s["phases"][0]["alarms_sent"], 3);
    }
}
