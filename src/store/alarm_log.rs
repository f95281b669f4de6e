//! The alarm log as staff read it: what devices sent, newest first, decoded,
//! with the bytes as received.

use super::{Db, StoreError};
use crate::vault::Field;

/// One stored event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AlarmLogRow {
    /// Sealed; opened into `lat`, `lon`, `accuracy_m` as read.
    #[sqlx(default)]
    position: Option<String>,
    pub id: i64,
    pub received_at: i64,
    pub protocol: String,
    pub peer: String,
    pub device_id: String,
    pub seq: i64,
    pub kind: String,
    pub device_time: Option<i64>,
    pub battery: Option<i64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub accuracy_m: Option<i64>,
    pub auth: String,
    pub raw: Vec<u8>,
    pub decoded: String,
    pub incident_id: Option<i64>,
    pub processed_at: Option<i64>,
}

/// Which events to list, newest first, before `before` (an id) when given.
#[derive(Debug, Clone, Default)]
pub struct AlarmLogQuery<'a> {
    pub device_id: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub before: Option<i64>,
    pub limit: i64,
}

/// The alarm log's read, written once for both backends (see [`super::tx`]).
pub(crate) trait AlarmLogSql {
    /// Stored events as [`Db::alarm_log`] lists them, still sealed.
    async fn alarm_log(&mut self, q: &AlarmLogQuery<'_>) -> Result<Vec<AlarmLogRow>, sqlx::Error>;
}

impl<C> AlarmLogSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'r> AlarmLogRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    async fn alarm_log(&mut self, q: &AlarmLogQuery<'_>) -> Result<Vec<AlarmLogRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, received_at, protocol, peer, device_id, seq, kind, device_time, battery, \
             position, lat, lon, accuracy_m, auth, raw, decoded, incident_id, processed_at \
             FROM alarms \
             WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR kind = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(q.device_id)
        .bind(q.kind)
        .bind(q.before)
        .bind(q.limit.clamp(1, 1000))
        .fetch_all(self)
        .await
    }
}

// The read pool: the statement above is the same for both backends.
impl Db {
    pub async fn alarm_log(&self, q: &AlarmLogQuery<'_>) -> Result<Vec<AlarmLogRow>, StoreError> {
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.alarm_log(q).await,
            Db::Postgres(p, _) => p.acquire().await?.alarm_log(q).await,
        }?;
        let v = self.vault();
        rows.into_iter()
            .map(|mut r| {
                if let Some((lat, lon, acc)) = v.open_position(r.position.take().as_deref())? {
                    (r.lat, r.lon, r.accuracy_m) = (Some(lat), Some(lon), acc);
                }
                r.raw = v.open_bytes(Field::Frame, &r.raw)?;
                r.decoded = v.open_text(Field::Decoded, &r.decoded)?;
                Ok(r)
            })
            .collect()
    }
}
