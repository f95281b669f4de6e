//! Device and client profiles cached in memory, refreshed when the database changes.
//!
//! Ingest asks it for a device's secret before the commit, the incident stage
//! for the person behind the device after it. Every device is loaded at
//! start: after a restart or a power cut a whole city reconnects at once, and
//! each first frame missing the cache would be a database read in front of
//! the alarms. A miss still reads the database, so a device provisioned a
//! moment ago works on its first frame; a periodic sweep of rows changed since
//! the last sweep keeps entries current when another process (the console, an
//! import, a second server) edits them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use pingantong_store::{ClientProfile, Db, DeviceRow, StoreError, now_ms};
use pingantong_telemetry::events;

/// Rows are re-read from a little before the last sweep, so a transaction that
/// committed with an older timestamp while the sweep ran is not missed.
const SWEEP_OVERLAP_MS: i64 = 5_000;

pub struct Directory {
    db: Db,
    devices: DashMap<String, Arc<DeviceRow>>,
    /// Every device is kept in memory (and new ones as they appear): codecs
    /// that cannot wait find theirs (a DC-09 account's AES key).
    preloaded: AtomicBool,
    clients: DashMap<i64, Arc<ClientProfile>>,
    watermark: AtomicI64,
}

impl Directory {
    pub fn new(db: Db) -> Arc<Self> {
        Arc::new(Self {
            db,
            devices: DashMap::new(),
            preloaded: AtomicBool::new(false),
            clients: DashMap::new(),
            watermark: AtomicI64::new(now_ms()),
        })
    }

    /// The provisioned, not retired device with this id.
    pub async fn device(&self, id: &str) -> Result<Option<Arc<DeviceRow>>, StoreError> {
        if let Some(held) = self.held(id) {
            return Ok(held);
        }
        let Some(row) = self.db.device(id).await? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        self.devices.insert(row.id.clone(), Arc::clone(&row));
        Ok((!row.retired).then_some(row))
    }

    /// What memory says of this device without asking the database: `None`
    /// if it is not held, `Some(None)` if it is retired.
    pub fn held(&self, id: &str) -> Option<Option<Arc<DeviceRow>>> {
        let hit = self.devices.get(id).map(|r| Arc::clone(r.value()))?;
        Some((!hit.retired).then_some(hit))
    }

    /// Load every device now and keep new ones as they appear.
    pub async fn preload(&self) -> Result<usize, StoreError> {
        // First, so that a device changed while the rows are read is taken
        // by the next sweep.
        self.preloaded.store(true, Ordering::Relaxed);
        let rows = self.db.all_devices().await?;
        let n = rows.len();
        for row in rows {
            self.devices.insert(row.id.clone(), Arc::new(row));
        }
        Ok(n)
    }

    /// A device from memory only (for codecs that cannot wait): complete once
    /// preloaded, else what was asked for before.
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
            // Rows are re-read for a few seconds after they change (the
            // overlap): the same row again is not a change.
            if self.devices.get(&row.id).is_some_and(|d| **d == row) {
                continue;
            }
            // Before the preload, only entries someone asked for are kept;
            // others load on first use.
            if self.preloaded.load(Ordering::Relaxed) || self.devices.contains_key(&row.id) {
                self.devices.insert(row.id.clone(), Arc::new(row));
                changed += 1;
            }
        }
        // Only the clients held are re-read, all in one read: a bulk import
        // changes thousands at once.
        let held: Vec<i64> = self
            .db
            .clients_changed_since(since)
            .await?
            .into_iter()
            .filter(|id| self.clients.contains_key(id))
            .collect();
        if !held.is_empty() {
            let mut gone: std::collections::HashSet<i64> = held.iter().copied().collect();
            for profile in self.db.client_profiles(&held).await? {
                gone.remove(&profile.id);
                if self
                    .clients
                    .get(&profile.id)
                    .is_some_and(|c| **c == profile)
                {
                    continue;
                }
                self.clients.insert(profile.id, Arc::new(profile));
                changed += 1;
            }
            for id in gone {
                self.clients.remove(&id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingantong_store::NewDevice;

    fn device(id: &str, protocol: &str) -> NewDevice {
        NewDevice {
            id: id.into(),
            protocol: protocol.into(),
            secret: vec![7; 16],
            client_id: None,
        }
    }

    #[tokio::test]
    async fn preloaded_every_device_is_in_memory_and_new_ones_join_at_the_sweep() {
        let (db, _dir) = pingantong_store::scratch_sqlite().await;
        for (id, protocol) in [("PA000001", "native"), ("868120300000001", "gt06")] {
            db.upsert_device(&device(id, protocol)).await.unwrap();
        }
        let directory = Directory::new(db.clone());
        assert!(directory.cached_device("PA000001").is_none());
        assert_eq!(directory.preload().await.unwrap(), 2);
        // Never asked for, yet in memory: no database read on a first frame.
        assert_eq!(
            directory.cached_device("868120300000001").unwrap().protocol,
            "gt06"
        );
        db.upsert_device(&device("PA000002", "native"))
            .await
            .unwrap();
        assert!(directory.cached_device("PA000002").is_none());
        assert!(directory.refresh().await.unwrap() >= 1);
        assert!(directory.cached_device("PA000002").is_some());
        // Read again within the sweeps' overlap, unchanged: no change.
        assert_eq!(directory.refresh().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_sweep_rereads_the_clients_held_that_changed_and_only_those() {
        let (db, _dir) = pingantong_store::scratch_sqlite().await;
        let client = |name: &str| pingantong_store::NewClient {
            name: name.into(),
            address: "北京街 1号".into(),
            district: "越秀区".into(),
            street: "北京街".into(),
            lat: None,
            lon: None,
            language: "yue".into(),
            medical_notes: String::new(),
            medications: String::new(),
            allergies: String::new(),
            key_safe: String::new(),
            birth_year: None,
            subsidy_category: None,
        };
        let mut ids = Vec::new();
        for name in ["甲", "乙", "丙", "丁"] {
            ids.push(db.insert_client(&client(name)).await.unwrap());
        }
        let directory = Directory::new(db.clone());
        for id in &ids[..3] {
            assert!(directory.client(*id).await.unwrap().is_some());
        }
        // Within the overlap every client reads as changed; none differs.
        assert_eq!(directory.refresh().await.unwrap(), 0);
        db.set_client_away(ids[0], Some(123)).await.unwrap();
        db.set_client_away(ids[2], Some(456)).await.unwrap();
        // Not held: left for its first use.
        db.set_client_away(ids[3], Some(789)).await.unwrap();
        assert_eq!(directory.refresh().await.unwrap(), 2);
        let away = |id: i64| directory.clients.get(&id).map(|c| c.away_until);
        assert_eq!(away(ids[0]), Some(Some(123)));
        assert_eq!(away(ids[1]), Some(None));
        assert_eq!(away(ids[2]), Some(Some(456)));
        assert_eq!(
            away(ids[3]),
            None,
            "a client nobody asked for is not loaded"
        );
    }
}
