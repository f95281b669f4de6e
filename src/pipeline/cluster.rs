//! This server among the others on one database: its lease, the live
//! servers, and which of them looks after what.
//!
//! A server joins by taking a lease on its instance id (refused while
//! another running server holds it) and renews it every quarter of the
//! lease. Every renewal also reads which servers are live. Work that must be
//! done once across the cluster but is not claimed row by row in the
//! database — raising a silent device's "offline" — is shared out by
//! rendezvous hashing over the live servers: each key goes to the live server
//! whose hash with it is highest, so a server's death moves only its own keys,
//! and the others take them up within one lease.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use pingantong_store::{Db, ServerRow, StoreError, now_ms};
use pingantong_telemetry::events;

/// How long a stopping server tries to give its lease up.
const LEAVE_WITHIN: Duration = Duration::from_secs(2);

/// This server's place in the cluster.
pub struct Membership {
    instance: String,
    /// This run of the server: a restart is a new boot.
    boot: String,
    lease: Duration,
    /// The live servers' instance ids, sorted, as last read (this one
    /// always among them: it does its share until it stops).
    live: RwLock<Arc<[String]>>,
    /// The lease held at the last renewal (and not run out since).
    held: AtomicBool,
    /// When the lease was last renewed (ms).
    renewed_at: AtomicI64,
}

impl Membership {
    /// Join as `instance`, or say why not: another running server holds the
    /// id (two processes answering as one would split devices' reports).
    ///
    /// A holder whose lease has not run out may be a server that just died
    /// (a restart after a crash comes within seconds): on this host, one
    /// whose process is gone is taken over at once; elsewhere, one that does
    /// not renew within half a lease (it renews every quarter) is.
    pub async fn join(db: &Db, instance: &str, lease: Duration) -> Result<Arc<Self>, JoinError> {
        let boot = format!("{:032x}", rand::random::<u128>());
        let lease_ms = lease.as_millis() as i64;
        let me = || this_server(instance, &boot, lease_ms);
        if let Some(holder) = db.join_cluster(&me()).await? {
            let gone_here = holder.host == host_name() && !process_runs(holder.pid);
            if !gone_here {
                tokio::time::sleep(lease / 2 + Duration::from_millis(250)).await;
            }
            if !db.take_over(&me(), &holder).await? {
                // It renewed (it runs), or it stopped or ran out meanwhile.
                if let Some(holder) = db.join_cluster(&me()).await? {
                    return Err(JoinError::Taken {
                        instance: instance.to_owned(),
                        host: holder.host,
                        pid: holder.pid,
                    });
                }
            }
        }
        let this = Arc::new(Self {
            instance: instance.to_owned(),
            boot,
            lease,
            live: RwLock::new(Arc::from([instance.to_owned()])),
            held: AtomicBool::new(true),
            renewed_at: AtomicI64::new(now_ms()),
        });
        events::ClusterJoined { instance }.emit();
        if let Ok(servers) = db.servers().await {
            this.saw(&servers);
        }
        Ok(this)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How long a server's lease runs: a dead server's work is taken up within it.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether this server's lease holds: the others count on it.
    pub fn holds_lease(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// The live servers' instance ids, sorted.
    pub fn live(&self) -> Arc<[String]> {
        Arc::clone(&self.live.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether this server is the one among the live ones to look after `key`.
    pub fn owns(&self, key: &str) -> bool {
        owner(&self.live(), key) == Some(self.instance.as_str())
    }

    /// Renew the lease every quarter of it and read who is live, until
    /// `shutdown`; then leave, so the others take over at once. While the
    /// store writer finds the database away (`database_up`) nothing is
    /// tried: a statement would only wait for it, holding SQLite's one
    /// write connection from the writer's own retries.
    pub fn spawn(
        self: Arc<Self>,
        db: Db,
        database_up: tokio::sync::watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(self.lease / 4);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => {}
                }
                if !*database_up.borrow() {
                    let since = now_ms() - self.renewed_at.load(Ordering::Relaxed);
                    if since >= self.lease.as_millis() as i64 {
                        self.held.store(false, Ordering::Relaxed);
                    }
                    continue;
                }
                // Bounded, and given up at the stop: with the database away a
                // renewal waits for it, and the lease runs out by itself.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::timeout(self.lease / 2, self.renew(&db)) => {}
                }
            }
            self.held.store(false, Ordering::Relaxed);
            if !*database_up.borrow() {
                // The others see the lease run out.
                return;
            }
            let leave = db.leave_cluster(&self.instance, &self.boot);
            match tokio::time::timeout(LEAVE_WITHIN, leave).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => events::StageFailed {
                    stage: "cluster_leave",
                    error: &e,
                }
                .emit(),
                // The database is away: the others see the lease run out.
                Err(_) => {}
            }
        })
    }

    async fn renew(&self, db: &Db) {
        let lease_ms = self.lease.as_millis() as i64;
        match db.renew_lease(&self.instance, &self.boot, lease_ms).await {
            Ok(true) => {
                self.renewed_at.store(now_ms(), Ordering::Relaxed);
                self.held.store(true, Ordering::Relaxed);
            }
            Ok(false) => {
                // The lease ran out (the database was away longer than it)
                // and another process took the id: two servers answer as one.
                // Taken back once that process is gone.
                let me = this_server(&self.instance, &self.boot, lease_ms);
                let back = matches!(db.join_cluster(&me).await, Ok(None));
                if back {
                    self.renewed_at.store(now_ms(), Ordering::Relaxed);
                    self.held.store(true, Ordering::Relaxed);
                } else if self.held.swap(false, Ordering::Relaxed) {
                    events::LeaseLost {
                        instance: &self.instance,
                    }
                    .emit();
                }
            }
            Err(e) => {
                events::StageFailed {
                    stage: "cluster_lease",
                    error: &e,
                }
                .emit();
                let since = now_ms() - self.renewed_at.load(Ordering::Relaxed);
                if since >= lease_ms {
                    self.held.store(false, Ordering::Relaxed);
                }
            }
        }
        if let Ok(servers) = db.servers().await {
            self.saw(&servers);
        }
    }

    fn saw(&self, servers: &[ServerRow]) {
        let now = now_ms();
        let mut live: Vec<String> = servers
            .iter()
            .filter(|s| s.is_up(now) && s.instance_id != self.instance)
            .map(|s| s.instance_id.clone())
            .collect();
        live.push(self.instance.clone());
        live.sort();
        metrics::gauge!("pat_cluster_servers_live").set(live.len() as f64);
        metrics::gauge!("pat_cluster_lease_held").set(f64::from(u8::from(self.holds_lease())));
        let mut held = self.live.write().unwrap_or_else(|e| e.into_inner());
        if **held != *live {
            events::ClusterChanged {
                live: &live.join(","),
            }
            .emit();
            *held = Arc::from(live);
        }
    }
}

/// Why a server could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "instance id {instance:?} is held by a running server (process {pid} on {host}): \
         give each server its own instance_id"
    )]
    Taken {
        instance: String,
        host: String,
        pid: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This server's row as it (re)joins now, with a lease of `lease_ms`.
fn this_server(instance: &str, boot: &str, lease_ms: i64) -> ServerRow {
    let now = now_ms();
    ServerRow {
        instance_id: instance.to_owned(),
        boot_id: boot.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host: host_name(),
        pid: i64::from(std::process::id()),
        started_at: now,
        renewed_at: now,
        lease_until: now + lease_ms,
        stopped_at: None,
    }
}

/// This machine's name, as the kernel has it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Whether a process with this id runs on this host. This process's own id
/// counts as running: a predecessor with it (pid 1 in a restarted
/// container) is told from a live twin by whether it renews.
fn process_runs(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The server among `live` that looks after `key`: the one whose hash with
/// it is highest (rendezvous hashing).
pub fn owner<'a>(live: &'a [String], key: &str) -> Option<&'a str> {
    live.iter()
        .max_by_key(|server| {
            let mut h = Sha256::new();
            h.update(server.as_bytes());
            h.update([0]);
            h.update(key.as_bytes());
            let d = h.finalize();
            u64::from_be_bytes(d[..8].try_into().expect("eight bytes"))
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_key_has_one_owner_and_a_death_moves_only_its_keys() {
        let three = servers(&["a", "b", "c"]);
        let two = servers(&["a", "c"]);
        let keys: Vec<String> = (0..3_000).map(|i| format!("PA{i:06}")).collect();
        let mut share = std::collections::HashMap::new();
        for k in &keys {
            let before = owner(&three, k).unwrap();
            *share.entry(before).or_insert(0) += 1;
            let after = owner(&two, k).unwrap();
            if before != "b" {
                assert_eq!(before, after, "{k} moved though its server lives");
            } else {
                assert_ne!(after, "b");
            }
        }
        // Shared out roughly evenly (each a third, give or take).
        for (server, n) in share {
            assert!((800..1_200).contains(&n), "{server} owns {n} of 3000");
        }
        assert_eq!(owner(&[], "PA1"), None);
        assert_eq!(owner(&servers(&["solo"]), "PA1"), Some("solo"));
    }
}
