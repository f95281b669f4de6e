//! Which devices owe a report by when, for any number of devices.
//!
//! A report is an O(1) update of the device's deadline. Deadlines sit in a
//! wheel of one-second buckets, at most one entry per device: a report does
//! not move the entry, the entry is looked at when its bucket comes due and
//! then either raises "offline" or moves to the device's new deadline. So each
//! device costs one re-check per interval, not one per report, and a tick
//! touches only the buckets that have passed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const NOT_SCHEDULED: i64 = i64::MIN;

struct Watch {
    id: Arc<str>,
    protocol: Arc<str>,
    deadline_ms: i64,
    /// When the latest report known of was heard (the record's own time, as
    /// the database keeps it: the deadline may run on another clock).
    report_ms: i64,
    /// The wheel bucket holding this device's entry, or [`NOT_SCHEDULED`].
    bucket: i64,
    offline: bool,
}

/// A device's allowance of silence: what `interval` it reports at.
pub trait Allowance: Send + Sync {
    /// Milliseconds of silence after which `device` is offline.
    fn silence_ms(&self, device: &str, protocol: &str) -> i64;
}

#[derive(Default)]
pub struct Watchlist {
    index: HashMap<Arc<str>, u32>,
    devices: Vec<Watch>,
    wheel: BTreeMap<i64, Vec<u32>>,
    /// Offline devices heard from again, with when, for the supervisor to announce.
    back: Vec<(u32, i64)>,
    /// Devices heard for the first time, for the supervisor to record.
    new: Vec<u32>,
}

/// Where a report was heard.
#[derive(Clone, Copy)]
enum Heard {
    /// By this server.
    Here,
    /// By another server.
    Elsewhere,
    /// Before this process started.
    Restored,
}

fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

impl Watchlist {
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device reported to this server at `now` (its report heard at
    /// `report_ms`).
    pub fn seen(
        &mut self,
        device: &str,
        protocol: &str,
        now: i64,
        report_ms: i64,
        allowance: &dyn Allowance,
    ) {
        let deadline = now.saturating_add(allowance.silence_ms(device, protocol));
        self.heard(device, protocol, deadline, report_ms, Heard::Here);
    }

    /// Watch a device heard from before this process started, as if heard
    /// now (`now`, `report_ms`): it had no chance to report while the
    /// server was down.
    pub fn restore(
        &mut self,
        device: &str,
        protocol: &str,
        now: i64,
        report_ms: i64,
        offline: bool,
        allowance: &dyn Allowance,
    ) {
        let deadline = now.saturating_add(allowance.silence_ms(device, protocol));
        self.heard(device, protocol, deadline, report_ms, Heard::Restored);
        if offline && let Some(&i) = self.index.get(device) {
            self.devices[i as usize].offline = true;
        }
    }

    /// The device reported to another server at `at` (as the database says).
    /// Only a report later than the latest known moves its deadline, by as
    /// much as it is later; an offline device so heard is back.
    pub fn heard_elsewhere(
        &mut self,
        device: &str,
        protocol: &str,
        at: i64,
        allowance: &dyn Allowance,
    ) {
        let deadline = match self.index.get(device) {
            Some(&i) => {
                let w = &self.devices[i as usize];
                if at <= w.report_ms {
                    return;
                }
                // The deadline runs on the supervisor's clock, the report's
                // time on the record's: moved by the gap between them.
                w.deadline_ms.saturating_add(at - w.report_ms)
            }
            None => at.saturating_add(allowance.silence_ms(device, protocol)),
        };
        self.heard(device, protocol, deadline, at, Heard::Elsewhere);
    }

    fn heard(&mut self, device: &str, protocol: &str, deadline: i64, report_ms: i64, how: Heard) {
        let i = match self.index.get(device) {
            Some(&i) => i,
            None => {
                let i = self.devices.len() as u32;
                let id: Arc<str> = Arc::from(device);
                self.index.insert(Arc::clone(&id), i);
                self.devices.push(Watch {
                    id,
                    protocol: Arc::from(protocol),
                    deadline_ms: deadline,
                    report_ms,
                    bucket: NOT_SCHEDULED,
                    offline: false,
                });
                if let Heard::Here = how {
                    self.new.push(i);
                }
                i
            }
        };
        let w = &mut self.devices[i as usize];
        w.deadline_ms = deadline;
        w.report_ms = w.report_ms.max(report_ms);
        if w.offline && !matches!(how, Heard::Restored) {
            w.offline = false;
            self.back.push((i, report_ms));
        }
        let b = bucket_of(deadline);
        // An entry already waiting in an earlier bucket will move itself when
        // it comes due; only a deadline that got earlier (a shorter interval)
        // needs a new one, the old one then being stale.
        if w.bucket == NOT_SCHEDULED || b < w.bucket {
            w.bucket = b;
            self.wheel.entry(b).or_default().push(i);
        }
    }

    /// A later report of the device is known of (heard at `report_ms`).
    pub fn note_report(&mut self, device: &str, report_ms: i64) {
        if let Some(&i) = self.index.get(device) {
            let w = &mut self.devices[i as usize];
            w.report_ms = w.report_ms.max(report_ms);
        }
    }

    /// When the latest report known of the device was heard.
    pub fn last_report(&self, device: &str) -> Option<i64> {
        self.index
            .get(device)
            .map(|&i| self.devices[i as usize].report_ms)
    }

    /// The device was found silent, its latest report (as the database
    /// has it) heard at `report_ms`: only a later report brings it back.
    pub fn silent_since(&mut self, device: &str, report_ms: i64) {
        if let Some(&i) = self.index.get(device) {
            let w = &mut self.devices[i as usize];
            w.offline = true;
            w.report_ms = w.report_ms.max(report_ms);
        }
    }

    /// The database says the device is offline (another server found it
    /// silent): its next report, here or elsewhere, brings it back.
    pub fn mark_offline(&mut self, device: &str) {
        if let Some(&i) = self.index.get(device) {
            self.devices[i as usize].offline = true;
        }
    }

    /// Devices whose deadline passed by `now`, each reported once until heard
    /// from again. Returns (device, protocol, deadline).
    pub fn overdue(&mut self, now: i64) -> Vec<(Arc<str>, Arc<str>, i64)> {
        let mut out = Vec::new();
        // Only whole seconds gone by: an entry re-filed into the current
        // second waits for the next tick instead of being looked at again.
        let current = bucket_of(now);
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() >= current {
                break;
            }
            let (b, devices) = entry.remove_entry();
            for i in devices {
                let w = &mut self.devices[i as usize];
                if w.bucket != b {
                    continue; // stale: the device was re-filed earlier
                }
                if w.deadline_ms <= now {
                    w.bucket = NOT_SCHEDULED;
                    if !w.offline {
                        w.offline = true;
                        out.push((Arc::clone(&w.id), Arc::clone(&w.protocol), w.deadline_ms));
                    }
                } else {
                    w.bucket = bucket_of(w.deadline_ms);
                    self.wheel.entry(w.bucket).or_default().push(i);
                }
            }
        }
        out
    }

    /// Give a device more time without a report (its client is away): it is
    /// looked at again at `until`.
    pub fn defer(&mut self, device: &str, until: i64) {
        if let Some(&i) = self.index.get(device) {
            let w = &mut self.devices[i as usize];
            w.offline = false;
            w.deadline_ms = until;
            w.bucket = bucket_of(until);
            self.wheel.entry(w.bucket).or_default().push(i);
        }
    }

    /// Offline devices heard from again since the last call: (device,
    /// protocol, when the report that brought it back was heard).
    pub fn take_back_online(&mut self) -> Vec<(Arc<str>, Arc<str>, i64)> {
        let back = std::mem::take(&mut self.back);
        back.into_iter()
            .map(|(i, at)| {
                let w = &self.devices[i as usize];
                (Arc::clone(&w.id), Arc::clone(&w.protocol), at)
            })
            .collect()
    }

    /// Devices heard for the first time since the last call.
    pub fn take_new(&mut self) -> Vec<String> {
        let new = std::mem::take(&mut self.new);
        new.into_iter()
            .map(|i| self.devices[i as usize].id.to_string())
            .collect()
    }

    pub fn is_offline(&self, device: &str) -> bool {
        self.index
            .get(device)
            .is_some_and(|&i| self.devices[i as usize].offline)
    }

    /// Entries in the wheel (at most one live entry per device, plus stale ones).
    pub fn wheel_entries(&self) -> usize {
        self.wheel.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Every(i64);
    impl Allowance for Every {
        fn silence_ms(&self, device: &str, _: &str) -> i64 {
            if device.starts_with("slow") {
                self.0 * 10
            } else {
                self.0
            }
        }
    }

    #[test]
    fn silence_past_the_allowance_is_reported_once_until_heard_again() {
        let a = Every(60_000);
        let mut w = Watchlist::default();
        w.seen("d1", "native", 0, 0, &a);
        w.seen("d2", "gt06", 0, 0, &a);
        assert_eq!(w.take_new(), vec!["d1", "d2"]);
        // d1 keeps reporting; d2 falls silent.
        for t in (10_000..=120_000).step_by(10_000) {
            w.seen("d1", "native", t, t, &a);
            let over = w.overdue(t);
            if t < 61_000 {
                assert!(over.is_empty(), "at {t}: {over:?}");
            }
        }
        assert!(w.is_offline("d2"));
        assert!(!w.is_offline("d1"));
        assert!(
            w.overdue(500_000).iter().any(|o| &*o.0 == "d1"),
            "d1 silent too now"
        );
        assert!(w.overdue(900_000).is_empty(), "each reported once");
        w.seen("d2", "gt06", 900_000, 900_000, &a);
        let back: Vec<String> = w
            .take_back_online()
            .iter()
            .map(|b| b.0.to_string())
            .collect();
        assert_eq!(back, vec!["d2"]);
        assert!(w.take_new().is_empty(), "not new, only back");
    }

    #[test]
    fn the_deadline_is_the_last_report_plus_the_allowance() {
        let a = Every(60_000);
        let mut w = Watchlist::default();
        w.seen("d", "native", 0, 0, &a);
        w.seen("d", "native", 50_000, 50_000, &a);
        assert!(w.overdue(109_000).is_empty());
        assert!(
            w.overdue(110_999).is_empty(),
            "reported within the second after"
        );
        let over = w.overdue(111_001);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].2, 110_000);
        // A device with its own, longer interval.
        w.seen("slow-1", "native", 0, 0, &a);
        assert!(w.overdue(599_000).is_empty());
        assert_eq!(w.overdue(601_000).len(), 1);
    }

    #[test]
    fn each_device_has_one_live_entry_however_often_it_reports() {
        let a = Every(30_000);
        let mut w = Watchlist::default();
        for t in (0..300_000).step_by(1_000) {
            for d in 0..100 {
                w.seen(&format!("d{d}"), "native", t, t, &a);
            }
            assert!(w.overdue(t).is_empty());
            assert!(w.wheel_entries() <= 100, "{} entries", w.wheel_entries());
        }
        assert_eq!(w.len(), 100);
    }

    #[test]
    fn restored_devices_get_a_full_allowance_and_keep_their_offline_state() {
        let a = Every(60_000);
        let mut w = Watchlist::default();
        w.restore("up", "native", 1_000_000, 1_000_000, false, &a);
        w.restore("down", "native", 1_000_000, 1_000_000, true, &a);
        assert!(w.take_new().is_empty(), "known already");
        assert!(w.overdue(1_059_000).is_empty());
        // Already offline: no second alarm; back online when heard.
        let over = w.overdue(1_062_000);
        assert_eq!(over.len(), 1);
        assert_eq!(&*over[0].0, "up");
        w.seen("down", "native", 1_070_000, 1_070_000, &a);
        assert_eq!(w.take_back_online().len(), 1);
    }

    #[test]
    fn reports_another_server_heard_move_the_deadline_only_forward() {
        let a = Every(60_000);
        let mut w = Watchlist::default();
        w.seen("d", "native", 0, 0, &a);
        w.take_new();
        // Heard by another server later: not overdue at the first deadline.
        w.heard_elsewhere("d", "native", 50_000, &a);
        assert!(w.overdue(61_000).is_empty());
        // An older report read again changes nothing.
        w.heard_elsewhere("d", "native", 10_000, &a);
        assert!(w.overdue(109_000).is_empty());
        assert_eq!(w.overdue(111_000).len(), 1);
        w.silent_since("d", 50_000);
        // The report that set that deadline, read again: still offline.
        w.heard_elsewhere("d", "native", 50_000, &a);
        assert!(w.is_offline("d") && w.take_back_online().is_empty());
        // A later one brings it back, with the time it was heard.
        w.heard_elsewhere("d", "native", 200_000, &a);
        let back = w.take_back_online();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].2, 200_000);
        // A device only ever heard elsewhere is watched, and is not new here.
        w.heard_elsewhere("e", "gt06", 0, &a);
        assert!(w.take_new().is_empty());
        assert!(w.overdue(59_000).is_empty());
        assert_eq!(&*w.overdue(61_000)[0].0, "e");
        // Marked offline by the database: its next report here brings it back.
        w.seen("f", "native", 0, 0, &a);
        w.mark_offline("f");
        w.seen("f", "native", 1_000, 1_000, &a);
        assert_eq!(&*w.take_back_online()[0].0, "f");
    }

    #[test]
    fn a_deferred_device_is_not_reported_until_then() {
        let a = Every(60_000);
        let mut w = Watchlist::default();
        w.seen("d", "native", 0, 0, &a);
        assert_eq!(w.overdue(61_000).len(), 1);
        w.defer("d", 200_000);
        assert!(!w.is_offline("d"));
        assert!(w.overdue(199_000).is_empty());
        assert_eq!(w.overdue(201_000).len(), 1);
    }
}
