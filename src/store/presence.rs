//! Each device's latest report: when it was heard, its battery, its position.
//!
//! Heartbeats are most of what a fleet sends (100,000 pendants beating every
//! 30 s is 3,300 a second) and each says only "still here". As rows of their
//! own they would hold the database's one writer for most of its time, and an
//! SOS would wait behind them. So a verified device's heartbeat is answered
//! once it is noted here, and the writer stores every device's latest report
//! once a second (sooner when 2,000 devices are waiting), one row per device,
//! a slice of [`ROWS_PER_WRITE`] devices per transaction: an SOS arriving
//! meanwhile waits for one slice, not for the city. Every other event still
//! gets a row of its own, committed before its answer: a heartbeat lost in a
//! crash is replaced by the next one, an alarm is not.

use std::collections::HashMap;
use std::sync::Mutex;

use pingantong_protocol::Location;
use sqlx::QueryBuilder;

use super::{AlarmRecord, AuthStatus, Db, StoreError};

/// What a device's reports said last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heard {
    pub protocol: &'static str,
    pub at: i64,
    pub battery: Option<i64>,
    pub location: Option<Location>,
}

impl Heard {
    fn of(r: &AlarmRecord) -> Self {
        Self {
            protocol: r.protocol,
            at: r.received_at,
            battery: r.battery,
            location: r.location,
        }
    }

    /// `later` over `self`: a report that leaves out the battery or the
    /// position leaves the last known one in place.
    fn merge(&mut self, later: Heard) {
        if later.at < self.at {
            return;
        }
        self.protocol = later.protocol;
        self.at = later.at;
        self.battery = later.battery.or(self.battery);
        self.location = later.location.or(self.location);
    }
}

/// Reports noted since the last write, newest per device.
#[derive(Debug, Default)]
pub struct Presence {
    unwritten: Mutex<HashMap<String, Heard>>,
    /// Told when `unwritten` holds a batch's worth: a city reconnecting at
    /// once is written a batch at a time, not held in memory for a second.
    full: tokio::sync::Notify,
}

/// Devices noted before a write is due without waiting for the second.
pub const WRITE_AT: usize = 2_000;

/// Devices per transaction. SQLite has one writer: while a slice is written
/// an SOS's commit waits (~13 µs a device here, so ~3 ms for a slice).
pub const ROWS_PER_WRITE: usize = 200;

/// Devices per statement: 7 parameters each stays under every backend's limit.
const ROWS_PER_STATEMENT: usize = 1000;

impl Presence {
    fn unwritten(&self) -> std::sync::MutexGuard<'_, HashMap<String, Heard>> {
        // Every method leaves the map whole: a panic elsewhere cannot break it.
        self.unwritten.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Only a device that proved who it is, reporting for itself: a forged
    /// or unknown sender must not move a resident's last known position, and
    /// the server's own verdicts (offline, …) are not reports.
    fn counts(r: &AlarmRecord) -> bool {
        r.auth == AuthStatus::Verified && !r.kind.is_server_verdict()
    }

    pub fn note<'a>(&self, reports: impl Iterator<Item = &'a AlarmRecord>) {
        let mut map = None;
        for r in reports.filter(|r| Self::counts(r)) {
            let map = map.get_or_insert_with(|| self.unwritten());
            match map.get_mut(r.device_id.as_str()) {
                Some(h) => h.merge(Heard::of(r)),
                None => {
                    map.insert(r.device_id.clone(), Heard::of(r));
                }
            }
        }
        if map.is_some_and(|m| m.len() >= WRITE_AT) {
            self.full.notify_one();
        }
    }

    /// Wait until a batch's worth is noted.
    pub async fn filled(&self) {
        self.full.notified().await
    }

    /// Whether a report is one this table stands for (and so needs no row).
    pub fn stands_for(r: &AlarmRecord) -> bool {
        Self::counts(r) && r.kind == pingantong_protocol::EventKind::Heartbeat
    }

    pub fn pending(&self) -> usize {
        self.unwritten().len()
    }

    /// Write up to `most` of the devices noted since the last write; the
    /// rest wait for the next call ([`Presence::pending`]). On failure the
    /// reports are kept for the next call (newer ones noted meanwhile win).
    pub async fn write(&self, db: &Db, most: usize) -> Result<usize, StoreError> {
        let taken: Vec<(String, Heard)> = {
            let mut map = self.unwritten();
            if map.len() <= most {
                std::mem::take(&mut *map).into_iter().collect()
            } else {
                let ids: Vec<String> = map.keys().take(most).cloned().collect();
                ids.into_iter()
                    .filter_map(|id| map.remove_entry(&id))
                    .collect()
            }
        };
        if taken.is_empty() {
            return Ok(0);
        }
        match db.write_presence(&taken).await {
            Ok(()) => Ok(taken.len()),
            Err(e) => {
                let mut map = self.unwritten();
                for (id, older) in taken {
                    let entry = map.entry(id).or_insert(older);
                    let newer = *entry;
                    *entry = older;
                    entry.merge(newer);
                }
                Err(e)
            }
        }
    }
}

/// A device's latest report as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceRow {
    pub device_id: String,
    pub protocol: String,
    pub heard_at: i64,
    pub battery: Option<i64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// A device's latest report as read: the sealed position, and the plain
/// columns of a row written before encryption.
type StoredPresence = (
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<f64>,
    Option<f64>,
);

/// The device presence table's statements, written once for both backends
/// (see [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait PresenceSql {
    /// Upsert devices' latest reports (id, report, sealed position) in one
    /// transaction.
    async fn upsert_presence(
        &mut self,
        sealed: &[(&String, &Heard, Option<String>)],
    ) -> Result<(), sqlx::Error>;
    /// A device's latest report as stored.
    async fn presence_row(
        &mut self,
        device_id: &str,
    ) -> Result<Option<StoredPresence>, sqlx::Error>;
}

impl<C> PresenceSql for C
where
    C: sqlx::Connection,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Decode<'q, C::Database>,
    Option<f64>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn upsert_presence(
        &mut self,
        sealed: &[(&String, &Heard, Option<String>)],
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        for chunk in sealed.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::new(
                "INSERT INTO device_presence \
                 (device_id, protocol, heard_at, battery, position) ",
            );
            qb.push_values(chunk, |mut b, (id, h, position)| {
                b.push_bind((*id).clone())
                    .push_bind(h.protocol)
                    .push_bind(h.at)
                    .push_bind(h.battery)
                    .push_bind(position.clone());
            });
            qb.push(
                " ON CONFLICT (device_id) DO UPDATE SET protocol = excluded.protocol, \
                 heard_at = excluded.heard_at, \
                 battery = COALESCE(excluded.battery, device_presence.battery), \
                 position = CASE WHEN excluded.position IS NULL \
                       THEN device_presence.position ELSE excluded.position END, \
                 lat = CASE WHEN excluded.position IS NULL THEN device_presence.lat END, \
                 lon = CASE WHEN excluded.position IS NULL THEN device_presence.lon END, \
                 accuracy_m = CASE WHEN excluded.position IS NULL \
                       THEN device_presence.accuracy_m END \
                 WHERE excluded.heard_at >= device_presence.heard_at",
            );
            qb.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn presence_row(
        &mut self,
        device_id: &str,
    ) -> Result<Option<StoredPresence>, sqlx::Error> {
        sqlx::query_as(
            "SELECT device_id, protocol, heard_at, battery, position, lat, lon \
             FROM device_presence WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(self)
        .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Upsert devices' latest reports, in one transaction (one fsync); a row
    /// already newer is left alone.
    pub async fn write_presence(&self, heard: &[(String, Heard)]) -> Result<(), StoreError> {
        let vault = self.vault();
        // One row per device, its latest report: PostgreSQL refuses an
        // upsert that touches a row twice (SQLite would keep the last).
        let mut latest: std::collections::HashMap<&str, &Heard> =
            std::collections::HashMap::with_capacity(heard.len());
        for (id, h) in heard {
            let kept = latest.entry(id.as_str()).or_insert(h);
            if h.at > kept.at {
                *kept = h;
            }
        }
        let heard: Vec<(&String, &Heard)> = heard
            .iter()
            .filter(|(id, h)| latest.get(id.as_str()).is_some_and(|k| std::ptr::eq(*k, h)))
            .map(|(id, h)| (id, h))
            .collect();
        let sealed = heard
            .into_iter()
            .map(|(id, h)| {
                let at = h
                    .location
                    .map(|l| (l.lat, l.lon, l.accuracy_m.map(i64::from)));
                Ok((id, h, vault.seal_position(at)?))
            })
            .collect::<Result<Vec<_>, crate::vault::VaultError>>()?;
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.upsert_presence(&sealed).await,
            Db::Postgres(p, _) => p.acquire().await?.upsert_presence(&sealed).await,
        }?)
    }

    /// A device's latest report as stored, if it was ever heard.
    pub async fn presence_of(&self, device_id: &str) -> Result<Option<PresenceRow>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.presence_row(device_id).await,
            Db::Postgres(p, _) => p.acquire().await?.presence_row(device_id).await,
        }?;
        row.map(
            |(device_id, protocol, heard_at, battery, position, lat, lon)| {
                let at = self.position(position.as_deref(), lat, lon)?;
                Ok(PresenceRow {
                    device_id,
                    protocol,
                    heard_at,
                    battery,
                    lat: at.map(|a| a.0),
                    lon: at.map(|a| a.1),
                })
            },
        )
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use pingantong_protocol::EventKind;

    use super::*;

    fn report(device: &str, at: i64, kind: EventKind, battery: Option<i64>) -> AlarmRecord {
        AlarmRecord {
            received_at: at,
            protocol: "native",
            peer: "127.0.0.1:1".into(),
            device_id: device.into(),
            seq: at,
            kind,
            device_time: None,
            battery,
            location: None,
            auth: AuthStatus::Verified,
            raw: vec![],
            decoded: "{}".into(),
            dedup_key: format!("{device}:{at}"),
            retry_window_ms: None,
        }
    }

    #[tokio::test]
    async fn the_latest_report_wins_and_gaps_keep_what_was_known() {
        let (db, _dir) = crate::scratch_sqlite().await;
        let presence = Presence::default();
        let mut sos = report("PA1", 20, EventKind::Sos, None);
        sos.location = Some(Location {
            lat: 23.1,
            lon: 113.3,
            accuracy_m: Some(12),
        });
        let mut forged = report("PA1", 40, EventKind::Heartbeat, Some(1));
        forged.auth = AuthStatus::BadTag;
        let verdict = report("PA2", 50, EventKind::Offline, None);
        let reports = [
            report("PA1", 10, EventKind::Heartbeat, Some(80)),
            sos,
            forged,
            verdict,
        ];
        presence.note(reports.iter());
        assert_eq!(presence.pending(), 1, "only PA1 reported for itself");
        assert_eq!(presence.write(&db, ROWS_PER_WRITE).await.unwrap(), 1);
        assert_eq!(presence.pending(), 0);
        let row = db.presence_of("PA1").await.unwrap().unwrap();
        // Heard at the SOS, with the heartbeat's battery (the SOS had none)
        // and the SOS's position; the forged frame changed nothing.
        assert_eq!(
            (row.heard_at, row.battery, row.lat, row.lon),
            (20, Some(80), Some(23.1), Some(113.3))
        );
        assert!(db.presence_of("PA2").await.unwrap().is_none());

        // A later heartbeat without a position keeps the position; an older
        // report written late does not go back in time.
        presence.note([report("PA1", 30, EventKind::Heartbeat, Some(79))].iter());
        presence.write(&db, ROWS_PER_WRITE).await.unwrap();
        presence.note([report("PA1", 25, EventKind::Heartbeat, Some(99))].iter());
        presence.write(&db, ROWS_PER_WRITE).await.unwrap();
        let row = db.presence_of("PA1").await.unwrap().unwrap();
        assert_eq!(
            (row.heard_at, row.battery, row.lat),
            (30, Some(79), Some(23.1))
        );
    }

    #[tokio::test]
    async fn a_city_of_reports_is_written_a_slice_at_a_time() {
        let (db, _dir) = crate::scratch_sqlite().await;
        let presence = Presence::default();
        let reports: Vec<_> = (0..2_500)
            .map(|n| report(&format!("PA{n:06}"), 5, EventKind::Heartbeat, Some(50)))
            .collect();
        presence.note(reports.iter());
        let mut writes = Vec::new();
        while presence.pending() > 0 {
            writes.push(presence.write(&db, ROWS_PER_WRITE).await.unwrap());
        }
        assert_eq!(writes.len(), 2_500usize.div_ceil(ROWS_PER_WRITE));
        assert!(writes.iter().all(|&n| n <= ROWS_PER_WRITE));
        assert_eq!(writes.iter().sum::<usize>(), 2_500);
        for id in ["PA000000", "PA001000", "PA002499"] {
            assert_eq!(db.presence_of(id).await.unwrap().unwrap().battery, Some(50));
        }
        // More devices than one statement takes, in one transaction.
        let later: Vec<_> = (0..2_500)
            .map(|n| report(&format!("PA{n:06}"), 6, EventKind::Heartbeat, Some(49)))
            .collect();
        presence.note(later.iter());
        assert_eq!(presence.write(&db, usize::MAX).await.unwrap(), 2_500);
        assert_eq!(presence.pending(), 0);
        for id in ["PA000000", "PA001000", "PA002499"] {
            assert_eq!(db.presence_of(id).await.unwrap().unwrap().battery, Some(49));
        }
    }

    #[test]
    fn a_batchs_worth_of_devices_asks_for_a_write_before_the_second_is_up() {
        let presence = Presence::default();
        let mut filled = std::pin::pin!(presence.filled());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let reports: Vec<_> = (0..WRITE_AT)
            .map(|n| report(&format!("PA{n:06}"), 5, EventKind::Heartbeat, None))
            .collect();
        presence.note(reports[..WRITE_AT - 1].iter());
        assert!(filled.as_mut().poll(&mut cx).is_pending());
        // The same device again is no new entry.
        presence.note(reports[..1].iter());
        assert!(filled.as_mut().poll(&mut cx).is_pending());
        presence.note(reports[WRITE_AT - 1..].iter());
        assert!(filled.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn only_a_verified_devices_heartbeat_is_kept_here_alone() {
        assert!(Presence::stands_for(&report(
            "PA1",
            1,
            EventKind::Heartbeat,
            None
        )));
        assert!(!Presence::stands_for(&report(
            "PA1",
            1,
            EventKind::Sos,
            None
        )));
        assert!(!Presence::stands_for(&report(
            "PA1",
            1,
            EventKind::PeriodicTest,
            None
        )));
        let mut unknown = report("PA9", 1, EventKind::Heartbeat, None);
        unknown.auth = AuthStatus::UnknownDevice;
        assert!(
            !Presence::stands_for(&unknown),
            "an unknown device's heartbeat is a row"
        );
    }
}
