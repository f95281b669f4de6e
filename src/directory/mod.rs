//! Device and client profiles cached in memory, refreshed when the database changes.
//!
//! Ingest asks it for a device's secret before the commit, the incident stage
//! for the person behind the device after it. A miss reads the database, so a
//! device provisioned a moment ago works on its first frame; a periodic sweep
//! of rows changed since the last sweep keeps cached entries current when
//! another process (the console, an import, a second server) edits them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::store::{ClientProfile, Db, DeviceRow, StoreError, now_ms};
use crate::telemetry::events;

/// Rows are re-read from a little before the last sweep, so a transaction that
/// committed with an older timestamp while the sweep ran is not missed.
const SWEEP_OVERLAP_MS: i64 = 5_000;

pub struct Directory {
    db: Db,
    devices: DashMap<String, Arc<DeviceRow>>,
    /// Protocols whose devices are all kept in memory, for codecs that must
    /// look a device up without waiting (a DC-09 account's AES key).
    preloaded: DashMap<String, ()>,
    clients: DashMap<i64, Arc<ClientProfile>>,
    watermark: AtomicI64,
}

impl Directory {
    pub fn new(db: Db) -> Arc<Self> {
        Arc::new(Self {
            db,
            devices: DashMap::new(),
            preloaded: DashMap::new(),
            clients: DashMap::new(),
            watermark: AtomicI64::new(now_ms()),
        })
    }

    /// The provisioned, not retired device with this id.
    pub async fn device(&self, id: &str) -> Result<Option<Arc<DeviceRow>>, StoreError> {
        if let Some(hit) = self.devices.get(id).map(|r| Arc::clone(r.value())) {
            return Ok((!hit.retired).then_some(hit));
        }
        let Some(row) = self.db.device(id).await? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        self.devices.insert(row.id.clone(), Arc::clone(&row));
        Ok((!row.retired).then_some(row))
    }

    /// Load every device of `protocol` now and keep new ones as they appear.
    pub async fn preload(&self, protocol: &str) -> Result<usize, StoreError> {
        self.preloaded.insert(protocol.to_owned(), ());
        let rows = self.db.devices_of_protocol(protocol).await?;
        let n = rows.len();
        for row in rows {
            self.devices.insert(row.id.clone(), Arc::new(row));
        }
        Ok(n)
    }

    /// A device from memory only (for codecs that cannot wait): preloaded
    /// protocols are complete here, others hold what was asked for before.
    pub fn cached_device(&self, id: &str) -> Option<Arc<DeviceRow>> {
        self.devices
            .get(id)
            .map(|r| Arc::clone(r.value()))
            .filter(|d| !d.retired)
    }

    pub async fn client(&self, id: i64) -> Result<Option<Arc<ClientProfile>>, StoreError> {
        if let Some(hit) = self.clients.get(&id).map(|r| Arc::clone(r.value())) {
            return Ok(Some(hit));
        }
        let Some(profile) = self.db.client_profile(id).await? else {
            return Ok(None);
        };
        let profile = Arc::new(profile);
        self.clients.insert(id, Arc::clone(&profile));
        Ok(Some(profile))
    }

    /// Load, in one read, the clients behind these devices that are not in
    /// memory yet: a batch of alarms from a city's worth of people would
    /// otherwise miss one at a time.
    pub async fn prefetch_clients_of<'a>(
        &self,
        devices: impl Iterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<i64> = devices
            .filter_map(|id| self.devices.get(id).and_then(|d| d.client_id))
            .filter(|c| !self.clients.contains_key(c))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for profile in self.db.client_profiles(&missing).await? {
            self.clients.insert(profile.id, Arc::new(profile));
        }
        Ok(())
    }

    /// Re-read what changed since the last sweep. Returns how many entries changed.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let started = now_ms();
        let since = self.watermark.load(Ordering::Relaxed) - SWEEP_OVERLAP_MS;
        let mut changed = 0;
        for row in self.db.devices_changed_since(since).await? {
            // Only entries someone asked for (or of a preloaded protocol) are
            // kept; others load on first use.
            if self.devices.contains_key(&row.id) || self.preloaded.contains_key(&row.protocol) {
                self.devices.insert(row.id.clone(), Arc::new(row));
                changed += 1;
            }
        }
        for id in self.db.clients_changed_since(since).await? {
            if self.clients.contains_key(&id) {
                match self.db.client_profile(id).await? {
                    Some(p) => self.clients.insert(id, Arc::new(p)),
                    None => self.clients.remove(&id).map(|(_, v)| v),
                };
                changed += 1;
            }
        }
        self.watermark.store(started, Ordering::Relaxed);
        Ok(changed)
    }

    /// Sweep for changes every `every` until `shutdown`.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let dir = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = dir.refresh().await {
                            events::StageFailed { stage: "directory_refresh", error: &e }.emit();
                        }
                    }
                }
            }
        })
    }
}
