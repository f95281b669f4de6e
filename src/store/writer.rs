//! Group commit: one task writes every received event, many per transaction.
//!
//! Batches form by themselves: while one commit waits for its fsync, new
//! events queue up and go together in the next one. A lone alarm is written at
//! once — there is no timer to wait for. Life-safety events have their own
//! queue and go first into every batch, so a flood of heartbeats delays an SOS
//! by one commit at most.
//!
//! A verified device's heartbeat is the exception: it is noted in memory and
//! answered at once, and the writer stores each device's latest report once a
//! second or per 2,000 devices (`store::presence`), between batches.
//!
//! While the database is away, nothing read is dropped: a batch whose commit
//! fails because the database cannot be reached is held and tried again, with
//! backoff, until it commits, and nobody is answered before it does. What is
//! held is bounded by the writer's queues (then submitters wait, and device
//! connections stop reading: backpressure, never loss) and counted; the
//! database's state is kept here, where the commits are, for readiness and the
//! `pat_database_up` gauge.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingantong_protocol::Lane;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::presence::{Presence, ROWS_PER_WRITE};
use super::{AlarmRecord, CommitOutcome, Db, StoreError};
use pingantong_domain::rules::Rules;
use pingantong_telemetry::events;

/// An alarm whose row is committed and which the incident stage must handle.
#[derive(Debug, Clone)]
pub struct CommittedAlarm {
    pub id: i64,
    pub record: AlarmRecord,
}

struct Job {
    record: AlarmRecord,
    reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

/// Cheap to clone; the writer stops when every handle is dropped, after
/// committing what was queued.
#[derive(Clone)]
pub struct WriterHandle {
    urgent: mpsc::Sender<Job>,
    normal: mpsc::Sender<Job>,
    rules: Arc<Rules>,
    stats: Arc<WriterStats>,
    presence: Arc<Presence>,
    supervision: Option<Arc<dyn Heard>>,
}

/// Told of every committed report, so it knows the device is alive (device
/// supervision). The writer knows what watches devices only by this: the
/// store never imports it.
pub trait Heard: Send + Sync {
    fn heard(&self, reports: &mut dyn Iterator<Item = &AlarmRecord>);
}

/// How often devices' latest reports are written.
pub const PRESENCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where committed alarms go for the incident stage: life-safety ones on
/// their own queue, so that a backlog of technical jobs never sits in front
/// of an SOS.
pub struct HandOver {
    pub urgent: mpsc::Sender<CommittedAlarm>,
    pub other: mpsc::Sender<CommittedAlarm>,
    /// Told of every committed report: the device is alive.
    pub supervision: Option<Arc<dyn Heard>>,
}

/// A commit still waiting after this long means the database is away (a
/// commit takes milliseconds, ten at most on a busy disk): the state says so
/// at once, rather than after the pool's or the lock's own time-out.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// The first retry of a held batch, doubled up to `RETRY_AT_MOST`: short, so
/// the held alarms commit within moments of the database's return.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_AT_MOST: Duration = Duration::from_secs(2);

/// How many commits carried how many events: their ratio is the batching.
/// Also the database's state as the commits find it.
#[derive(Debug)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    /// Whether devices' events are queued or being committed.
    busy: AtomicBool,
    idle: tokio::sync::Notify,
    /// Whether the last commit (or the one under way) reached the database.
    up: watch::Sender<bool>,
    /// When it went away, for the log line of its return.
    down_since: std::sync::Mutex<Option<Instant>>,
    /// Records read and not yet committed while the database is away.
    held: AtomicUsize,
    /// The server is stopping: a commit the database refuses is no longer
    /// held, so the stop ends (nothing was answered; the senders send again).
    give_up: CancellationToken,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::default(),
            events: AtomicU64::default(),
            busy: AtomicBool::default(),
            idle: tokio::sync::Notify::default(),
            up: watch::Sender::new(true),
            down_since: std::sync::Mutex::new(None),
            held: AtomicUsize::default(),
            give_up: CancellationToken::new(),
        }
    }
}

impl WriterStats {
    /// Whether the database takes commits (as far as the last one knows).
    pub fn database_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Follow the database's state: for an answer that is due while it is away.
    pub fn database_state(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Records read and waiting for the database to return.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Stop holding what the database refuses (the server is stopping).
    pub fn stop_holding(&self) {
        self.give_up.cancel();
    }

    /// Whether the server has stopped holding (it is stopping).
    pub fn stopping(&self) -> bool {
        self.give_up.is_cancelled()
    }

    fn went_down(&self, reason: &dyn std::fmt::Display) {
        if self.database_up() && self.up.send_replace(false) {
            *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            events::DatabaseDown { reason }.emit();
        }
    }

    fn came_back(&self) {
        // Every commit passes here: the common case reads, never writes.
        if !self.database_up() && !self.up.send_replace(true) {
            let since = self
                .down_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            events::DatabaseUp {
                down_for: Some(since.map(|t| t.elapsed()).unwrap_or_default()),
            }
            .emit();
        }
    }

    fn hold(&self, records: usize) {
        if self.held.swap(records, Ordering::Relaxed) != records {
            events::RecordsHeld { records }.emit();
        }
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
        if !busy {
            self.idle.notify_waiters();
        }
    }

    /// Wait, at most `max`, until no device's event is waiting for its
    /// commit. The database has one writer (SQLite) or a few cores: work that
    /// no device is waiting on goes after the ACKs, and gathers into fewer,
    /// larger transactions meanwhile.
    pub async fn yield_to_acks(&self, max: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !self.busy.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// A commit in flight; await it to learn the outcome. It is also a future in
/// its own right, so a connection can poll the oldest of its commits in place
/// alongside its socket instead of handing it to a task of its own.
pub struct PendingCommit(oneshot::Receiver<Result<CommitOutcome, StoreError>>);

impl PendingCommit {
    fn settled(outcome: Result<CommitOutcome, StoreError>) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(outcome);
        Self(rx)
    }

    pub async fn wait(self) -> Result<CommitOutcome, StoreError> {
        self.await
    }
}

impl Future for PendingCommit {
    type Output = Result<CommitOutcome, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::WriterGone)))
    }
}

impl WriterHandle {
    /// Queue a record for the next commit.
    pub async fn submit(&self, record: AlarmRecord) -> Result<PendingCommit, StoreError> {
        if Presence::stands_for(&record) {
            // The writer is gone: nothing would write the note either.
            if self.normal.is_closed() {
                return Err(StoreError::WriterGone);
            }
            let once = std::iter::once(&record);
            self.presence.note(once.clone());
            if let Some(s) = &self.supervision {
                s.heard(&mut once.clone());
            }
            events::HeartbeatNoted.emit();
            return Ok(PendingCommit::settled(Ok(CommitOutcome::Noted)));
        }
        let (tx, rx) = oneshot::channel();
        let queue = if self.rules.priority(record.kind) == Lane::LifeSafety {
            &self.urgent
        } else {
            &self.normal
        };
        queue
            .send(Job { record, reply: tx })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(PendingCommit(rx))
    }

    pub async fn commit(&self, record: AlarmRecord) -> Result<CommitOutcome, StoreError> {
        self.submit(record).await?.wait().await
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The writer's load, for work that should wait for the devices' commits.
    pub fn load(&self) -> Arc<WriterStats> {
        Arc::clone(&self.stats)
    }
}

/// Start the writer. Alarms that need the incident stage are handed over
/// after their commit; if that queue is full they stay marked unprocessed in
/// the database and the recovery sweep hands them over.
pub fn spawn(
    db: Db,
    max_batch: usize,
    rules: Arc<Rules>,
    committed: HandOver,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (urgent_tx, urgent_rx) = mpsc::channel(4096);
    let (normal_tx, normal_rx) = mpsc::channel(65536);
    let stats = Arc::new(WriterStats::default());
    let presence = Arc::new(Presence::default());
    let supervision = committed.supervision.clone();
    let task = tokio::spawn(run(
        db,
        max_batch.max(1),
        (urgent_rx, normal_rx),
        Arc::clone(&rules),
        committed,
        Arc::clone(&stats),
        Arc::clone(&presence),
    ));
    (
        WriterHandle {
            urgent: urgent_tx,
            normal: normal_tx,
            rules,
            stats,
            presence,
            supervision,
        },
        task,
    )
}

async fn run(
    db: Db,
    max_batch: usize,
    (mut urgent, mut normal): (mpsc::Receiver<Job>, mpsc::Receiver<Job>),
    rules: Arc<Rules>,
    committed: HandOver,
    stats: Arc<WriterStats>,
    presence: Arc<Presence>,
) {
    events::DatabaseUp { down_for: None }.emit();
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut presence_due = tokio::time::interval(PRESENCE_EVERY);
    presence_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut urgent_open, mut normal_open) = (true, true);
    let mut presence_owed = false;
    // Presence and routine events take turns when both wait: neither a city
    // of heartbeats nor a flood of routine events holds the other off.
    let mut presence_turn = true;
    loop {
        let presence_may = presence_turn || normal.is_empty();
        let first = tokio::select! {
            biased;
            job = urgent.recv(), if urgent_open => match job {
                Some(job) => job,
                None => {
                    urgent_open = false;
                    continue;
                }
            },
            // Each second, or per 2,000 devices; a slice per transaction, so
            // an SOS waits for one slice at most, and a routine batch goes
            // between two slices.
            _ = std::future::ready(()), if presence_owed && presence_may => {
                presence_owed = write_presence(&db, &presence, &stats).await;
                presence_turn = false;
                continue;
            }
            _ = presence_due.tick(), if (urgent_open || normal_open) && presence_may => {
                presence_owed = write_presence(&db, &presence, &stats).await;
                presence_turn = false;
                if !stats.database_up() && !stats.stopping() {
                    probe(&db, &stats).await;
                }
                continue;
            }
            _ = presence.filled(), if (urgent_open || normal_open) && presence_may => {
                presence_owed = write_presence(&db, &presence, &stats).await;
                presence_turn = false;
                continue;
            }
            job = normal.recv(), if normal_open => match job {
                Some(job) => job,
                None => {
                    normal_open = false;
                    continue;
                }
            },
            else => break,
        };
        stats.set_busy(true);
        presence_turn = true;
        batch.push(first);
        while batch.len() < max_batch {
            match urgent.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => match normal.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                },
            }
        }
        let (mut records, mut replies): (Vec<AlarmRecord>, Vec<_>) =
            batch.drain(..).map(|j| (j.record, j.reply)).unzip();
        let started = Instant::now();
        let held = Held {
            records: &mut records,
            replies: &mut replies,
            urgent: &mut urgent,
            normal: &mut normal,
            max_batch,
        };
        match commit_holding(&db, &rules, &stats, held).await {
            Ok(outcomes) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .events
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                events::BatchCommitted {
                    size: records.len(),
                    elapsed: started.elapsed(),
                }
                .emit();
                if let Some(s) = &committed.supervision {
                    s.heard(&mut records.iter());
                }
                presence.note(records.iter());
                for ((record, reply), outcome) in records.into_iter().zip(replies).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                    if let CommitOutcome::Stored(id) = outcome
                        && rules.needs_incident_stage(record.kind)
                    {
                        let queue = if rules.priority(record.kind) == Lane::LifeSafety {
                            &committed.urgent
                        } else {
                            &committed.other
                        };
                        if queue.try_send(CommittedAlarm { id, record }).is_err() {
                            events::HandOverDeferred { alarm_id: id }.emit();
                        }
                    }
                }
            }
            Err(e) => {
                events::CommitFailed {
                    size: records.len(),
                    error: &e,
                }
                .emit();
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::CommitFailed(msg.clone())));
                }
            }
        }
        if urgent.is_empty() && normal.is_empty() {
            stats.set_busy(false);
        }
    }
    stats.set_busy(false);
    // Every handle is gone: what was noted since the last write goes now.
    while write_presence(&db, &presence, &stats).await {}
}

type Reply = oneshot::Sender<Result<CommitOutcome, StoreError>>;

/// A batch being committed, and the queues it may take more from while it is held.
struct Held<'a> {
    records: &'a mut Vec<AlarmRecord>,
    replies: &'a mut Vec<Reply>,
    urgent: &'a mut mpsc::Receiver<Job>,
    normal: &'a mut mpsc::Receiver<Job>,
    max_batch: usize,
}

/// Commit the batch. While the database is away the batch is held and tried
/// again, with backoff, until it commits; it takes in what arrives meanwhile
/// (life-safety first), up to a batch, so the backlog goes in full batches
/// when the database returns. Nobody is answered before the commit holds, so
/// "an answer means stored" stays true however long that takes. Only an
/// error that is not the database's absence ends the attempts (the batch is
/// failed, as before), or the server stopping while the database is away.
async fn commit_holding(
    db: &Db,
    rules: &Rules,
    stats: &WriterStats,
    held: Held<'_>,
) -> Result<Vec<CommitOutcome>, StoreError> {
    let Held {
        records,
        replies,
        urgent,
        normal,
        max_batch,
    } = held;
    let mut backoff = RETRY_FIRST;
    loop {
        if stats.give_up.is_cancelled() && !stats.database_up() {
            return Err(StoreError::CommitFailed(
                "the database is away and the server is stopping".into(),
            ));
        }
        let waiting = records.len() + urgent.len() + normal.len();
        let attempt = watched(db.insert_alarms(records, rules), stats, Some(waiting));
        let result = tokio::select! {
            r = attempt => r,
            // Stopping with the database away: the attempt under way (a
            // busy time-out, a pool wait) is not waited out either.
            _ = stopped_while_down(stats) => continue,
        };
        let error = match result {
            Ok(outcomes) => {
                stats.came_back();
                stats.hold(0);
                return Ok(outcomes);
            }
            Err(e) if !e.is_unavailable() => return Err(e),
            Err(e) => e,
        };
        stats.went_down(&error);
        stats.hold(records.len() + urgent.len() + normal.len());
        events::CommitHeld {
            records: records.len(),
            retry_in: backoff,
            error: &error,
        }
        .emit();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stats.give_up.cancelled() => {}
        }
        backoff = (backoff * 2).min(RETRY_AT_MOST);
        while records.len() < max_batch {
            let Ok(job) = urgent.try_recv().or_else(|_| normal.try_recv()) else {
                break;
            };
            records.push(job.record);
            replies.push(job.reply);
        }
    }
}

/// While the database is away and nothing waits to be committed, ask it each
/// tick whether it takes writes again: readiness and the gauge say it is
/// back without waiting for the next event.
async fn probe(db: &Db, stats: &WriterStats) {
    if watched(db.probe_writable(), stats, None).await.is_ok() {
        stats.came_back();
    }
}

/// Resolves once the server stops holding while the database is away.
async fn stopped_while_down(stats: &WriterStats) {
    stats.give_up.cancelled().await;
    let mut state = stats.database_state();
    let _ = state.wait_for(|up| !*up).await;
}

/// A commit, watched: one still waiting after `STALLED_AFTER` marks the
/// database away at once (a lock held elsewhere, a connection that neither
/// answers nor fails), with `waiting` records held, and is waited for still.
async fn watched<T>(
    commit: impl Future<Output = Result<T, StoreError>>,
    stats: &WriterStats,
    waiting: Option<usize>,
) -> Result<T, StoreError> {
    tokio::pin!(commit);
    tokio::select! {
        biased;
        r = &mut commit => return r,
        _ = tokio::time::sleep(STALLED_AFTER) => {}
    }
    stats.went_down(&format_args!(
        "a commit has waited over {} ms",
        STALLED_AFTER.as_millis()
    ));
    if let Some(n) = waiting {
        stats.hold(n);
    }
    commit.await
}

/// Write one slice of the devices heard; whether more are owed now.
async fn write_presence(db: &Db, presence: &Presence, stats: &WriterStats) -> bool {
    let started = Instant::now();
    match watched(presence.write(db, ROWS_PER_WRITE), stats, None).await {
        // Nothing was written: nothing learned of the database.
        Ok(0) => false,
        Ok(devices) => {
            stats.came_back();
            events::PresenceWritten {
                devices,
                elapsed: started.elapsed(),
            }
            .emit();
            presence.pending() > 0
        }
        // Kept for the next tick: no retry at once against a failing store.
        Err(e) => {
            if e.is_unavailable() {
                stats.went_down(&e);
            }
            events::StageFailed {
                stage: "presence_write",
                error: &e,
            }
            .emit();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use pingantong_protocol::EventKind;

    use super::*;
    use crate::AuthStatus;

    /// A writer on `db`, its task, and the receivers of what it hands to the
    /// incident stage (`capacity` each; kept, or its hand-overs fail).
    fn writer_on(
        db: Db,
        capacity: usize,
    ) -> (
        WriterHandle,
        tokio::task::JoinHandle<()>,
        mpsc::Receiver<CommittedAlarm>,
        mpsc::Receiver<CommittedAlarm>,
    ) {
        let (urgent, urgent_rx) = mpsc::channel(capacity);
        let (other, other_rx) = mpsc::channel(capacity);
        let (w, task) = spawn(
            db,
            512,
            Arc::new(Rules::default()),
            HandOver {
                urgent,
                other,
                supervision: None,
            },
        );
        (w, task, urgent_rx, other_rx)
    }

    fn record(n: u32, kind: EventKind) -> AlarmRecord {
        AlarmRecord {
            received_at: 1,
            protocol: "native",
            peer: "127.0.0.1:1".into(),
            device_id: "PA000001".into(),
            seq: i64::from(n),
            kind,
            device_time: None,
            battery: None,
            location: None,
            auth: AuthStatus::Verified,
            raw: vec![n as u8],
            decoded: "{}".into(),
            dedup_key: format!("k{n}"),
            retry_window_ms: None,
        }
    }

    #[tokio::test]
    async fn concurrent_events_share_commits_and_duplicates_are_recognised() {
        let (db, _dir) = crate::scratch_sqlite().await;
        let (w, task, mut urgent_rx, mut other_rx) = writer_on(db.clone(), 1000);
        let mut pending = Vec::new();
        for n in 0..200 {
            let kind = if n % 50 == 0 {
                EventKind::Sos
            } else if n % 50 == 1 {
                EventKind::LowBattery
            } else {
                EventKind::Position
            };
            pending.push(w.submit(record(n, kind)).await.unwrap());
        }
        // A retry of event 7 while the original may still be in the same batch.
        pending.push(w.submit(record(7, EventKind::Position)).await.unwrap());
        let mut outcomes = Vec::new();
        for p in pending {
            outcomes.push(p.wait().await.unwrap());
        }
        let stored = outcomes
            .iter()
            .filter(|o| matches!(o, CommitOutcome::Stored(_)))
            .count();
        assert_eq!(stored, 200);
        assert_eq!(outcomes[200], CommitOutcome::Duplicate);
        let commits = w.stats().commits.load(Ordering::Relaxed);
        assert!(
            commits < 50,
            "201 events took {commits} commits: not batched"
        );
        assert_eq!(w.stats().events.load(Ordering::Relaxed), 201);
        assert_eq!(db.count_alarms(None).await.unwrap(), 200);
        // SOS events go on to the incident stage first, low batteries on the
        // other queue; positions are complete once stored.
        let mut urgent_kinds = Vec::new();
        while let Ok(a) = urgent_rx.try_recv() {
            urgent_kinds.push(a.record.kind);
        }
        assert_eq!(urgent_kinds, vec![EventKind::Sos; 4]);
        let mut other_kinds = Vec::new();
        while let Ok(a) = other_rx.try_recv() {
            other_kinds.push(a.record.kind);
        }
        assert_eq!(other_kinds, vec![EventKind::LowBattery; 4]);
        drop(w);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_lone_event_is_committed_without_waiting_for_company() {
        let (db, _dir) = crate::scratch_sqlite().await;
        let (w, _task, _urgent_rx, _other_rx) = writer_on(db, 10);
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            w.commit(record(1, EventKind::Sos)),
        )
        .await
        .expect("no batching timer holds a lone event")
        .unwrap();
        assert!(matches!(outcome, CommitOutcome::Stored(_)));
        assert_eq!(w.stats().commits.load(Ordering::Relaxed), 1);
    }

    /// A second connection holds SQLite's write lock (a backup, the CLI):
    /// the SOS is held, not failed; within a second the state says the
    /// database is away; when the lock goes, it commits and the state says so.
    #[tokio::test]
    async fn an_event_is_held_while_the_database_is_locked_and_committed_after() {
        use sqlx::Connection;
        let (db, dir) = crate::scratch_sqlite().await;
        let (w, _task, _urgent_rx, _other_rx) = writer_on(db.clone(), 10);
        let url = format!("sqlite://{}/test.db", dir.path().display());
        let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut lock)
            .await
            .unwrap();
        assert!(w.stats().database_up());
        let mut pending = w.submit(record(1, EventKind::Sos)).await.unwrap();
        let mut state = w.stats().database_state();
        let went = std::time::Instant::now();
        tokio::time::timeout(STALLED_AFTER * 3, state.wait_for(|up| !*up))
            .await
            .expect("the state says down within a stall's time")
            .unwrap();
        assert!(went.elapsed() >= STALLED_AFTER / 2, "{:?}", went.elapsed());
        // Not answered while it cannot be stored.
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), &mut pending).await;
        assert!(early.is_err(), "answered while locked: {early:?}");
        // Another writer meets the lock at once: an unavailable database,
        // not a wrong statement.
        let mut impatient = sqlx::SqliteConnection::connect(&format!("{url}?mode=rw"))
            .await
            .unwrap();
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut impatient)
            .await
            .unwrap();
        let busy = sqlx::query("DELETE FROM alarms")
            .execute(&mut impatient)
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(busy.is_unavailable(), "{busy}");
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), pending)
            .await
            .expect("committed once the lock goes")
            .unwrap();
        assert!(matches!(outcome, CommitOutcome::Stored(_)));
        assert!(w.stats().database_up());
        assert_eq!(w.stats().held(), 0);
        assert_eq!(db.count_alarms(None).await.unwrap(), 1);
        // A wrong statement is not the database being away: never held.
        let wrong = sqlx::query("INSERT INTO no_such_table VALUES (1)")
            .execute(&mut impatient)
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(!wrong.is_unavailable(), "{wrong}");
    }

    /// Devices in the presence write the tests below commit into.
    const CITY: usize = 20 * ROWS_PER_WRITE;

    /// Note `CITY` devices' heartbeats (heard at 7), wait until the writer has
    /// begun writing them, commit one event of `kind`, stop the writer; say
    /// how many devices' presence went before that event.
    async fn presence_written_before(kind: EventKind) -> (usize, Db, tempfile::TempDir) {
        let (db, dir) = crate::scratch_sqlite().await;
        let (w, task, _urgent_rx, _other_rx) = writer_on(db.clone(), 10);
        let beats: Vec<_> = (0..CITY)
            .map(|n| {
                let mut beat = record(n as u32, EventKind::Heartbeat);
                beat.device_id = format!("PA{n:06}");
                beat.received_at = 7;
                beat
            })
            .collect();
        // More than a batch's worth: the writer starts on them at once.
        w.presence.note(beats.iter());
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while w.presence.pending() == CITY {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the writer starts writing presence");
        let outcome = w.commit(record(1, kind)).await.unwrap();
        assert!(matches!(outcome, CommitOutcome::Stored(_)));
        let before = CITY - w.presence.pending();
        drop(w);
        task.await.unwrap();
        (before, db, dir)
    }

    /// A city's heartbeats are written a slice per transaction: an SOS
    /// that comes while they are being written is committed after the slice
    /// in progress, not after all of them.
    #[tokio::test]
    async fn an_sos_waits_for_one_slice_of_presence_not_for_the_city() {
        let (before, db, _dir) = presence_written_before(EventKind::Sos).await;
        assert!(
            before <= 3 * ROWS_PER_WRITE,
            "the SOS waited for {before} devices' presence"
        );
        // Every device written by the time the writer stops.
        for n in [0, CITY / 2, CITY - 1] {
            let id = format!("PA{n:06}");
            assert_eq!(db.presence_of(&id).await.unwrap().unwrap().heard_at, 7);
        }
    }

    /// Nor does a routine event wait for the whole city: presence and
    /// routine batches take turns.
    #[tokio::test]
    async fn routine_events_take_turns_with_presence() {
        let (before, _db, _dir) = presence_written_before(EventKind::LowBattery).await;
        assert!(
            before <= 3 * ROWS_PER_WRITE,
            "the routine event waited for {before} devices' presence"
        );
    }

    #[tokio::test]
    async fn a_verified_heartbeat_is_answered_at_once_and_kept_as_presence() {
        let (db, _dir) = crate::scratch_sqlite().await;
        let (w, task, _urgent_rx, _other_rx) = writer_on(db.clone(), 10);
        let mut beat = record(1, EventKind::Heartbeat);
        beat.battery = Some(64);
        assert_eq!(w.commit(beat).await.unwrap(), CommitOutcome::Noted);
        // A stranger's heartbeat is a row: someone must see who is talking.
        let mut stranger = record(2, EventKind::Heartbeat);
        stranger.device_id = "PA999999".into();
        stranger.auth = AuthStatus::UnknownDevice;
        assert!(matches!(
            w.commit(stranger).await.unwrap(),
            CommitOutcome::Stored(_)
        ));
        assert_eq!(
            db.count_alarms(Some(EventKind::Heartbeat)).await.unwrap(),
            1
        );
        // Written at the latest when the writer stops.
        drop(w);
        task.await.unwrap();
        let heard = db.presence_of("PA000001").await.unwrap().unwrap();
        assert_eq!((heard.heard_at, heard.battery), (1, Some(64)));
        assert!(db.presence_of("PA999999").await.unwrap().is_none());
    }
}
