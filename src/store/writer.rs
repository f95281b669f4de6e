//! Group commit: one task writes every received event, many per transaction.
//!
//! Batches form by themselves: while one commit waits for its fsync, new
//! events queue up and go together in the next one. A lone alarm is written at
//! once — there is no timer to wait for. Life-safety events have their own
//! queue and go first into every batch, so a flood of heartbeats delays an SOS
//! by one commit at most.

use std::time::Instant;

use pingantong_protocol::Lane;
use tokio::sync::{mpsc, oneshot};

use super::{AlarmRecord, CommitOutcome, Db, StoreError};
use crate::telemetry::events;

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
}

/// A commit in flight; await it to learn the outcome.
pub struct PendingCommit(oneshot::Receiver<Result<CommitOutcome, StoreError>>);

impl PendingCommit {
    pub async fn wait(self) -> Result<CommitOutcome, StoreError> {
        self.0.await.unwrap_or(Err(StoreError::WriterGone))
    }
}

impl WriterHandle {
    /// Queue a record for the next commit.
    pub async fn submit(&self, record: AlarmRecord) -> Result<PendingCommit, StoreError> {
        let (tx, rx) = oneshot::channel();
        let queue = if record.kind.lane() == Lane::LifeSafety {
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
}

/// Start the writer. Alarms that need the incident stage are sent on
/// `committed` after their commit; if that queue is full they stay marked
/// unprocessed in the database and the recovery sweep hands them over.
pub fn spawn(
    db: Db,
    max_batch: usize,
    committed: mpsc::Sender<CommittedAlarm>,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (urgent_tx, urgent_rx) = mpsc::channel(4096);
    let (normal_tx, normal_rx) = mpsc::channel(65536);
    let task = tokio::spawn(run(db, max_batch.max(1), urgent_rx, normal_rx, committed));
    (
        WriterHandle {
            urgent: urgent_tx,
            normal: normal_tx,
        },
        task,
    )
}

async fn run(
    db: Db,
    max_batch: usize,
    mut urgent: mpsc::Receiver<Job>,
    mut normal: mpsc::Receiver<Job>,
    committed: mpsc::Sender<CommittedAlarm>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            biased;
            Some(job) = urgent.recv() => job,
            Some(job) = normal.recv() => job,
            else => break,
        };
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
        let (records, replies): (Vec<AlarmRecord>, Vec<_>) =
            batch.drain(..).map(|j| (j.record, j.reply)).unzip();
        let started = Instant::now();
        match db.insert_alarms(&records).await {
            Ok(outcomes) => {
                events::BatchCommitted {
                    size: records.len(),
                    elapsed: started.elapsed(),
                }
                .emit();
                for ((record, reply), outcome) in records.into_iter().zip(replies).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                    if let CommitOutcome::Stored(id) = outcome
                        && record.needs_processing()
                        && committed.try_send(CommittedAlarm { id, record }).is_err()
                    {
                        events::HandOverDeferred { alarm_id: id }.emit();
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
    }
}
