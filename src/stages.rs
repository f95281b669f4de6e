//! The server's running parts, registered as they start, and the one order
//! in which they stop.
//!
//! Each part names its [`Phase`]; a phase says how its parts are told to stop
//! and is finished before the next begins. The order is what durability asks
//! for: nothing new is read once the listeners stop; everything read is
//! committed before the stages after the writer end; the database closes last.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// When a part stops, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Device listeners and their connections: they stop accepting at the
    /// shutdown signal, then answer every frame they read (within the drain
    /// deadline; past it, they end with the device runtime).
    Devices,
    /// The HTTP API: stops at the shutdown signal.
    Api,
    /// MQTT ingestion, aborted: events not yet acknowledged stay with the
    /// broker, which delivers them to this session when the server returns.
    MqttIngest,
    /// Supervision: stops at the shutdown signal. It holds a writer handle.
    Supervision,
    /// The writer: ends by itself once every handle is gone (the parts
    /// above), after committing what is queued.
    Writer,
    /// What watched the writer while it drained, aborted.
    WriterWatch,
    /// The stages behind the writer (incident stage, notifier, feed, anchor,
    /// housekeeping, the directory's refresher, the broker's credentials and
    /// the MQTT link): stopped together by the inner signal.
    Behind,
    /// The embedded broker's gate: closed after a pause, so the server's
    /// goodbye (routed by the broker asynchronously) passes through it first.
    Gate,
    /// SQLite's checkpointer (stopped with the inner signal): the last writes
    /// are copied into the database file before it closes.
    Checkpointer,
}

impl Phase {
    const ORDER: [Phase; 9] = [
        Phase::Devices,
        Phase::Api,
        Phase::MqttIngest,
        Phase::Supervision,
        Phase::Writer,
        Phase::WriterWatch,
        Phase::Behind,
        Phase::Gate,
        Phase::Checkpointer,
    ];
}

/// How long device connections get to finish their frames once shutdown begins.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The pause before the gate closes.
const GOODBYE_PAUSE: Duration = Duration::from_millis(500);

/// The running parts and the signals that stop them.
pub struct Stages {
    /// Stops the parts behind the writer.
    pub inner: CancellationToken,
    /// Stops the embedded broker's gate.
    pub gate: CancellationToken,
    parts: Vec<(Phase, &'static str, JoinHandle<()>)>,
}

impl Default for Stages {
    fn default() -> Self {
        Self::new()
    }
}

impl Stages {
    pub fn new() -> Self {
        Self {
            inner: CancellationToken::new(),
            gate: CancellationToken::new(),
            parts: Vec::new(),
        }
    }

    /// A part that has started.
    pub fn add(&mut self, phase: Phase, name: &'static str, task: JoinHandle<()>) {
        self.parts.push((phase, name, task));
    }

    /// The phases that have parts, in stopping order (for the log and tests).
    pub fn phases(&self) -> Vec<Phase> {
        Phase::ORDER
            .into_iter()
            .filter(|p| self.parts.iter().any(|(q, ..)| q == p))
            .collect()
    }

    /// Stop every part, phase by phase (the shutdown signal has been given).
    pub async fn stop(mut self) {
        for phase in Phase::ORDER {
            let (now, later): (Vec<_>, Vec<_>) =
                self.parts.into_iter().partition(|(p, ..)| *p == phase);
            self.parts = later;
            if now.is_empty() {
                continue;
            }
            match phase {
                Phase::MqttIngest | Phase::WriterWatch => {
                    for (_, _, task) in &now {
                        task.abort();
                    }
                }
                Phase::Behind => self.inner.cancel(),
                Phase::Gate => {
                    tokio::time::sleep(GOODBYE_PAUSE).await;
                    self.gate.cancel();
                }
                Phase::Devices
                | Phase::Api
                | Phase::Supervision
                | Phase::Writer
                | Phase::Checkpointer => {}
            }
            let all = async {
                for (_, name, task) in now {
                    if let Err(e) = task.await
                        && e.is_panic()
                    {
                        tracing::error!(part = name, "a part of the server panicked");
                    }
                }
            };
            if phase == Phase::Devices {
                if tokio::time::timeout(DRAIN_DEADLINE, all).await.is_err() {
                    tracing::warn!("connections did not finish within the drain deadline");
                }
            } else {
                all.await;
            }
        }
        // Nothing is left behind: an inner signal not given above (no part
        // behind the writer) is given now.
        self.inner.cancel();
        self.gate.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Parts registered in any order stop in the phases' order, each phase
    /// by its own signal, and a phase starts only once the one before has
    /// finished.
    #[tokio::test(start_paused = true)]
    async fn parts_stop_phase_by_phase() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stages = Stages::new();
        let note = |log: &Arc<Mutex<Vec<&'static str>>>, what| log.lock().unwrap().push(what);
        // Registered in reverse: the order must come from the phases.
        {
            let (log, gate) = (Arc::clone(&log), stages.gate.clone());
            stages.add(
                Phase::Gate,
                "gate",
                tokio::spawn(async move {
                    gate.cancelled().await;
                    note(&log, "gate");
                }),
            );
        }
        {
            let (log, inner) = (Arc::clone(&log), stages.inner.clone());
            stages.add(
                Phase::Behind,
                "stage",
                tokio::spawn(async move {
                    inner.cancelled().await;
                    note(&log, "stage");
                }),
            );
        }
        // The writer takes a while to drain: what is behind it waits.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let log = Arc::clone(&log);
            stages.add(
                Phase::Writer,
                "writer",
                tokio::spawn(async move {
                    let _ = drained_rx.await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    note(&log, "writer");
                }),
            );
        }
        let never = tokio::spawn(std::future::pending::<()>());
        stages.add(Phase::MqttIngest, "mqtt_ingest", never);
        {
            let log = Arc::clone(&log);
            stages.add(
                Phase::Api,
                "http",
                tokio::spawn(async move {
                    note(&log, "http");
                    let _ = drained_tx.send(());
                }),
            );
        }
        assert_eq!(
            stages.phases(),
            [
                Phase::Api,
                Phase::MqttIngest,
                Phase::Writer,
                Phase::Behind,
                Phase::Gate
            ]
        );
        stages.stop().await;
        assert_eq!(
            *log.lock().unwrap(),
            ["http", "writer", "stage", "gate"],
            "each phase after the one before it"
        );
    }

    /// A connection that never finishes holds the stop for the drain
    /// deadline only.
    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_bounds_the_devices() {
        let mut stages = Stages::new();
        stages.add(
            Phase::Devices,
            "native",
            tokio::spawn(std::future::pending::<()>()),
        );
        let started = tokio::time::Instant::now();
        stages.stop().await;
        assert_eq!(started.elapsed(), DRAIN_DEADLINE);
    }
}
