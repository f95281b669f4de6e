//! Device supervision: a pendant that stops reporting is an alarm that will
//! never arrive. Every device heard from once is watched; a silence longer
//! than its allowance (missed heartbeats plus a grace) becomes an `offline`
//! event, and its next report a `back_online` one. Both go through the same
//! durable path as a device's own events, so the rules decide what they do
//! (by default: a technical job for the operator, closed by the return).

mod watchlist;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingantong_protocol::EventKind;
use tokio_util::sync::CancellationToken;

pub use watchlist::{Allowance, Watchlist};

use crate::cluster::Membership;
use crate::directory::Directory;
use pingantong_domain::Clock;
use pingantong_store::writer::WriterHandle;
use pingantong_store::{AlarmRecord, AuthStatus, Db, StoreError};
use pingantong_telemetry::events;

/// How long each device may stay silent.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    /// Expected seconds between reports, per protocol.
    pub per_protocol: BTreeMap<String, u64>,
    /// For protocols not in the table.
    pub default_secs: u64,
    /// Reports missed in a row before a device is offline…
    pub missed: u32,
    /// …plus this much, for a late network.
    pub grace_secs: u64,
    /// A device that sends periodic tests and misses one by this many hours
    /// (plus the grace) raises "missed test"; 0: not watched.
    pub periodic_test_hours: u64,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self {
            per_protocol: default_intervals(),
            default_secs: 300,
            missed: 2,
            grace_secs: 30,
            periodic_test_hours: 25,
        }
    }
}

/// What the devices of each protocol are usually set to.
pub fn default_intervals() -> BTreeMap<String, u64> {
    [
        ("native", 300),
        ("gt06", 180),
        ("watch", 300),
        ("h02", 300),
        ("eview", 300),
        // Alarm panels and communicators poll with NULL messages, often hourly.
        ("sia_dc09", 3600),
        ("mqtt", 300),
    ]
    .into_iter()
    .map(|(p, s)| (p.to_owned(), s))
    .collect()
}

struct Policy {
    heartbeats: Heartbeats,
    directory: Arc<Directory>,
}

impl Allowance for Policy {
    fn silence_ms(&self, device: &str, protocol: &str) -> i64 {
        let h = &self.heartbeats;
        let interval = self
            .directory
            .cached_device(device)
            .and_then(|d| d.heartbeat_secs)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .or_else(|| h.per_protocol.get(protocol).copied())
            .unwrap_or(h.default_secs);
        let secs = interval
            .saturating_mul(u64::from(h.missed))
            .saturating_add(h.grace_secs);
        i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// The allowance between two periodic tests: the same for every device.
struct TestAllowance(i64);

impl Allowance for TestAllowance {
    fn silence_ms(&self, _: &str, _: &str) -> i64 {
        self.0
    }
}

pub struct Supervision {
    /// Every device heard of, by this server or (as the database says) by
    /// the others: any server may have to take over any device.
    watch: Mutex<Watchlist>,
    /// Devices that send periodic tests, against their test deadline. Kept
    /// in memory only: after a restart a device is watched from its next test.
    tests: Mutex<Watchlist>,
    test_allowance: Option<TestAllowance>,
    /// Devices someone used (a press, a cancel, a test) since the last round.
    used: Mutex<Vec<(String, i64)>>,
    policy: Policy,
    clock: Clock,
    /// The servers sharing the database: a verdict is raised by the one
    /// that looks after the device.
    cluster: Arc<Membership>,
    /// How far the reports other servers heard have been read.
    followed: Mutex<Followed>,
}

/// How far [`Supervision::follow`] has read.
#[derive(Default)]
struct Followed {
    /// Device reports heard after this time (ms).
    heard_after: i64,
    /// Periodic tests stored after this alarm id.
    test_after: i64,
    /// When the database's offline devices were last read.
    offline_read_at: i64,
}

/// Reports written this long after they were heard are still followed
/// (device presence is written within a second; commits land out of id
/// order). One written later still is found by the check before raising.
const FOLLOW_OVERLAP_MS: i64 = 2_000;
const FOLLOW_OVERLAP_IDS: i64 = 1_000;

/// How often the devices the database says are offline are read again.
const OFFLINE_READ_EVERY_MS: i64 = 10_000;

impl Supervision {
    pub fn new(
        heartbeats: Heartbeats,
        directory: Arc<Directory>,
        clock: Clock,
        cluster: Arc<Membership>,
    ) -> Arc<Self> {
        let test_allowance = (heartbeats.periodic_test_hours > 0).then(|| {
            let secs = heartbeats
                .periodic_test_hours
                .saturating_mul(3600)
                .saturating_add(heartbeats.grace_secs);
            TestAllowance(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
        });
        Arc::new(Self {
            watch: Mutex::new(Watchlist::default()),
            tests: Mutex::new(Watchlist::default()),
            test_allowance,
            used: Mutex::new(Vec::new()),
            policy: Policy {
                heartbeats,
                directory,
            },
            clock,
            cluster,
            followed: Mutex::new(Followed::default()),
        })
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watchlist> {
        // A panic elsewhere while holding the lock leaves a consistent list:
        // every method leaves it whole between statements that can panic.
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch of committed reports: each device in it is alive now.
    pub fn seen<'a>(&self, reports: impl Iterator<Item = &'a AlarmRecord>) {
        let now = (self.clock)();
        let mut used = Vec::new();
        let mut tested = Vec::new();
        {
            let mut watch = self.watch();
            for r in reports {
                if r.auth == AuthStatus::Verified && !r.kind.is_server_verdict() {
                    watch.seen(&r.device_id, r.protocol, now, r.received_at, &self.policy);
                    if is_use(r.kind) {
                        used.push((r.device_id.clone(), now));
                    }
                    if r.kind == EventKind::PeriodicTest {
                        tested.push(r);
                    }
                }
            }
        }
        if let (Some(allowance), false) = (&self.test_allowance, tested.is_empty()) {
            let mut tests = self.tests();
            for r in tested {
                tests.seen(&r.device_id, r.protocol, now, r.received_at, allowance);
            }
        }
        if !used.is_empty() {
            self.used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(used);
        }
    }

    /// Watch again every device heard from before this start, each with a
    /// full allowance from now: none of them could reach a stopped server.
    pub async fn restore(&self, db: &Db) -> Result<usize, StoreError> {
        let devices = db.watched_devices().await?;
        let offline: std::collections::HashSet<String> =
            db.devices_offline().await?.into_iter().collect();
        let now = (self.clock)();
        let heard = pingantong_store::now_ms();
        {
            let mut watch = self.watch();
            for (id, protocol) in &devices {
                let off = offline.contains(id);
                watch.restore(id, protocol, now, heard, off, &self.policy);
            }
        }
        // Followed from now on: what came before is in the restored list.
        let newest = db.newest_alarm_id().await?;
        let mut followed = self.followed();
        followed.heard_after = heard - FOLLOW_OVERLAP_MS;
        followed.test_after = newest;
        followed.offline_read_at = now;
        Ok(devices.len())
    }

    fn lease_ms(&self) -> i64 {
        self.cluster.lease().as_millis() as i64
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, Followed> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tests(&self) -> std::sync::MutexGuard<'_, Watchlist> {
        self.tests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in what the other servers heard since the last look: their
    /// devices' reports and periodic tests, and which devices the database
    /// says are offline. A server that dies leaves no device unwatched.
    async fn follow(&self, db: &Db, now: i64) -> Result<(), StoreError> {
        // Alone, every device report is this server's own: not read back.
        // A server that joins is seen within a quarter lease, and the
        // reports it heard since are read then. (Periodic tests are few:
        // always followed, so the mark stays near the newest alarm.)
        let alone = self.cluster.live().len() == 1;
        let (heard_after, test_after, offline_due) = {
            let mut f = self.followed();
            if alone {
                f.heard_after = f
                    .heard_after
                    .max(pingantong_store::now_ms() - FOLLOW_OVERLAP_MS - self.lease_ms());
            }
            (
                f.heard_after,
                f.test_after,
                !alone && now - f.offline_read_at >= OFFLINE_READ_EVERY_MS,
            )
        };
        let heard = if alone {
            Vec::new()
        } else {
            db.presence_after(heard_after).await?
        };
        let latest = heard.iter().map(|r| r.heard_at).max();
        {
            let mut watch = self.watch();
            for r in &heard {
                watch.heard_elsewhere(&r.device_id, &r.protocol, r.heard_at, &self.policy);
            }
        }
        let tests = match &self.test_allowance {
            Some(allowance) => {
                let tests = db.tests_after(test_after).await?;
                let mut watch = self.tests();
                for (_, r) in &tests {
                    watch.heard_elsewhere(&r.device_id, &r.protocol, r.heard_at, allowance);
                }
                tests.last().map(|(id, _)| *id)
            }
            None => None,
        };
        let offline = if offline_due {
            Some(db.devices_offline().await?)
        } else {
            None
        };
        if let Some(offline) = &offline {
            let mut watch = self.watch();
            for d in offline {
                watch.mark_offline(d);
            }
        }
        let mut f = self.followed();
        if let Some(latest) = latest {
            f.heard_after = f.heard_after.max(latest - FOLLOW_OVERLAP_MS);
        }
        if let Some(last) = tests {
            f.test_after = f.test_after.max(last - FOLLOW_OVERLAP_IDS);
        }
        if offline.is_some() {
            f.offline_read_at = now;
        }
        Ok(())
    }

    pub fn watched(&self) -> usize {
        self.watch().len()
    }

    /// Check the deadlines every `tick` until `shutdown`.
    pub fn spawn(
        self: Arc<Self>,
        db: Db,
        writer: WriterHandle,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => {
                        // Given up at the stop (a read may be waiting for a
                        // database that is away): what a round had found is
                        // found again from the database after the restart.
                        let round = tokio::select! {
                            _ = shutdown.cancelled() => break,
                            r = self.check(&db, &writer) => r,
                        };
                        if let Err(e) = round {
                            events::StageFailed { stage: "supervision", error: &e }.emit();
                        }
                    }
                }
            }
        })
    }

    /// One round: take in what the other servers heard, record first
    /// reports, raise the overdue this server looks after, announce returns.
    ///
    /// A deadline passed here is checked against the database before
    /// anything is raised: the device may have reported to another server
    /// (a pendant's connection moves when a server dies). A verdict's time is
    /// the last report the database holds plus the allowance, so two servers
    /// raising the same silence (as the live servers change) store it once.
    pub async fn check(&self, db: &Db, writer: &WriterHandle) -> Result<(), StoreError> {
        let now = (self.clock)();
        self.follow(db, now).await?;
        let (new, overdue, back) = {
            let mut watch = self.watch();
            (
                watch.take_new(),
                watch.overdue(now),
                watch.take_back_online(),
            )
        };
        let untested = {
            let mut tests = self.tests();
            // A test after a miss closes the job through the incident stage
            // (the test itself clears it); nothing to announce here.
            tests.take_new();
            tests.take_back_online();
            tests.overdue(now)
        };
        db.mark_heard(&new, now).await?;
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        db.mark_used(&used).await?;
        let overdue = self
            .not_heard_elsewhere(db, overdue, now, Deadline::Report)
            .await?;
        let untested = self
            .not_heard_elsewhere(db, untested, now, Deadline::Test)
            .await?;
        let mut verdicts = Vec::with_capacity(overdue.len() + back.len());
        for (device, protocol, deadline) in overdue {
            // Retired (or no longer provisioned) since it was last heard:
            // its silence is expected, nobody is to be sent.
            if self.policy.directory.device(&device).await?.is_none() {
                continue;
            }
            if let Some(until) = self.away_until(&device, now).await? {
                self.watch().defer(&device, until);
                continue;
            }
            events::DeviceOffline { device: &device }.emit();
            verdicts.push(verdict(&device, &protocol, EventKind::Offline, deadline));
        }
        for (device, protocol, deadline) in untested {
            if let Some(until) = self.away_until(&device, now).await? {
                self.tests().defer(&device, until);
                continue;
            }
            events::TestMissed { device: &device }.emit();
            verdicts.push(verdict(&device, &protocol, EventKind::MissedTest, deadline));
        }
        for (device, protocol, at) in back {
            // The server that looks after the device announces it (it reads
            // the report another server heard within a round).
            if !self.cluster.owns(&device) {
                continue;
            }
            events::DeviceBackOnline { device: &device }.emit();
            verdicts.push(verdict(&device, &protocol, EventKind::BackOnline, at));
        }
        let mut pending = Vec::with_capacity(verdicts.len());
        for v in verdicts {
            pending.push(writer.submit(v).await?);
        }
        for p in pending {
            p.wait().await?;
        }
        metrics::gauge!("pat_devices_watched").set(self.watched() as f64);
        Ok(())
    }

    /// Of the devices whose deadline passed here, those this server looks
    /// after and that no server heard from since, each with its deadline by
    /// the database's last report. The others are looked at again later:
    /// another server's devices in a lease's time (it may die), a device
    /// heard elsewhere at its new deadline.
    async fn not_heard_elsewhere(
        &self,
        db: &Db,
        overdue: Vec<(Arc<str>, Arc<str>, i64)>,
        now: i64,
        which: Deadline,
    ) -> Result<Vec<(Arc<str>, Arc<str>, i64)>, StoreError> {
        let recheck = now + self.cluster.lease().as_millis() as i64;
        let (mine, theirs): (Vec<_>, Vec<_>) = overdue
            .into_iter()
            .partition(|(device, ..)| self.cluster.owns(device));
        let list = |which: Deadline| match which {
            Deadline::Report => self.watch(),
            Deadline::Test => self.tests(),
        };
        {
            let mut list = list(which);
            for (device, ..) in &theirs {
                list.defer(device, recheck);
            }
        }
        if mine.is_empty() {
            return Ok(mine);
        }
        let ids: Vec<String> = mine.iter().map(|(d, ..)| d.to_string()).collect();
        let last = match which {
            Deadline::Report => db.last_heard(&ids).await?,
            Deadline::Test => db.last_tests(&ids).await?,
        };
        let mut silent = Vec::with_capacity(mine.len());
        let mut list = list(which);
        for (device, protocol, deadline) in mine {
            let known = list.last_report(&device).unwrap_or(i64::MIN);
            match last.get(&*device) {
                // Another server heard it after the report the deadline
                // counts from: the deadline moves by as much.
                Some(&at) if at > known => {
                    list.defer(&device, deadline.saturating_add(at - known));
                    list.note_report(&device, at);
                }
                // Silent. The verdict's time is the database's last report
                // plus the allowance: every server raising it names it alike.
                Some(&at) => {
                    let allowance = match (which, &self.test_allowance) {
                        (Deadline::Test, Some(t)) => t.silence_ms(&device, &protocol),
                        _ => self.policy.silence_ms(&device, &protocol),
                    };
                    list.silent_since(&device, at);
                    silent.push((device, protocol, at.saturating_add(allowance)));
                }
                None => silent.push((device, protocol, deadline)),
            }
        }
        Ok(silent)
    }

    /// When the device's client is away from home, until when.
    async fn away_until(&self, device: &str, now: i64) -> Result<Option<i64>, StoreError> {
        let directory = &self.policy.directory;
        let Some(d) = directory.device(device).await? else {
            return Ok(None);
        };
        let Some(client) = d.client_id else {
            return Ok(None);
        };
        Ok(directory
            .client(client)
            .await?
            .and_then(|c| c.away_until)
            .filter(|&until| until > now))
    }
}

/// Which deadline a device missed.
#[derive(Clone, Copy)]
enum Deadline {
    /// Any report (offline).
    Report,
    /// A periodic test.
    Test,
}

/// Someone handled the device: what the wellbeing list looks for.
fn is_use(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Sos
            | EventKind::Fall
            | EventKind::Medical
            | EventKind::Cancel
            | EventKind::PeriodicTest
    )
}

/// The server's own event about a device, stored like any other. The key
/// makes a repeat of the same verdict (after a crash) a duplicate.
fn verdict(device: &str, protocol: &str, kind: EventKind, at: i64) -> AlarmRecord {
    let name = kind.name();
    AlarmRecord {
        received_at: pingantong_store::now_ms(),
        protocol: "supervision",
        peer: "server".into(),
        device_id: device.to_owned(),
        seq: at / 1000,
        kind,
        device_time: None,
        battery: None,
        location: None,
        auth: AuthStatus::Verified,
        raw: Vec::new(),
        decoded: serde_json::json!({ "kind": name, "protocol": protocol, "at": at }).to_string(),
        dedup_key: format!("supervision:{name}:{device}:{at}"),
        retry_window_ms: None,
    }
}

/// The writer tells supervision of every committed report through this.
impl pingantong_store::writer::Heard for Supervision {
    fn heard(&self, reports: &mut dyn Iterator<Item = &AlarmRecord>) {
        self.seen(reports);
    }
}
