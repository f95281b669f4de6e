//! Devices: list, provision (or provision a retired one again), change, retire.
//! Secrets go in and are never read back out of here.
//!
//! The statements are [`DeviceSql`]'s, written once for both backends (see
//! [`crate::tx`]).

use crate::audit::AuditSql;
use serde::Serialize;
use sqlx::SqlSafeStr;

use super::clients::ClientSql;
use super::{EditError, unique_or};
use crate::{AuditEntry, Db, StoreError, now_ms};

/// Who a device belongs to, as a request names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRef {
    /// In stock: nobody's yet.
    Nobody,
    Id(i64),
    /// The client's `external_ref`.
    External(String),
}

/// A device to provision.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub id: String,
    pub protocol: String,
    pub secret: Vec<u8>,
    pub client: ClientRef,
    pub heartbeat_secs: Option<i64>,
}

/// A change to a provisioned device.
#[derive(Debug, Clone)]
pub struct DeviceUpdate {
    /// Must be the device's own protocol.
    pub protocol: String,
    pub client_id: Option<i64>,
    pub heartbeat_secs: Option<i64>,
    /// A new secret; `None` keeps the one it has.
    pub secret: Option<Vec<u8>>,
}

/// A device as the registry lists it: whether it has a key, never the key.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct DeviceListRow {
    pub id: String,
    pub protocol: String,
    pub client_id: Option<i64>,
    pub retired: bool,
    /// Its own expected interval between reports; `null`: the protocol's.
    pub heartbeat_secs: Option<i64>,
    /// A secret (HMAC or AES key) is set.
    pub has_key: bool,
    /// First report ever (from then on supervision watches it).
    pub heard_at: Option<i64>,
    /// Last press, cancel or periodic test.
    pub used_at: Option<i64>,
    pub updated_at: i64,
}

/// Which devices to list, in id order after `after`.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery<'a> {
    pub client_id: Option<i64>,
    pub protocol: Option<&'a str>,
    pub include_retired: bool,
    pub after: &'a str,
    pub limit: i64,
}

const DEVICE_COLUMNS: &str = "id, protocol, client_id, retired, heartbeat_secs, \
     LENGTH(secret) > 0 AS has_key, heard_at, used_at, updated_at";

/// The devices' statements and transactions, written once for both
/// backends (see [`crate::tx`]): called on a connection of the backend's
/// pool, or (a device within a larger change) on a transaction's.
pub(crate) trait DeviceSql {
    /// Devices in id order after `q.after`, filtered; no secrets.
    async fn devices_page(
        &mut self,
        q: &DeviceQuery<'_>,
    ) -> Result<Vec<DeviceListRow>, sqlx::Error>;
    /// One device as the registry lists it (retired ones too).
    async fn device_listing(&mut self, id: &str) -> Result<Option<DeviceListRow>, sqlx::Error>;
    /// Inside a transaction: the client a request names, which must exist.
    async fn resolve_client(&mut self, client: &ClientRef) -> Result<Option<i64>, EditError>;
    /// Inside a transaction: provision a device, or provision a retired one
    /// again (new secret, new client, not yet heard from), with the audit
    /// entry (`extra` added to its detail).
    async fn add_device(
        &mut self,
        d: &DeviceEntry,
        actor: &str,
        extra: &str,
        now: i64,
    ) -> Result<(), EditError>;
    /// [`Db::provision_device`]'s transaction, begun by `begin`.
    async fn provision_device(
        &mut self,
        begin: &'static str,
        d: &DeviceEntry,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError>;
    /// [`Db::update_device`]'s transaction, begun by `begin`.
    async fn update_device(
        &mut self,
        begin: &'static str,
        id: &str,
        u: &DeviceUpdate,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError>;
    /// [`Db::retire_device`]'s transaction, begun by `begin`.
    async fn retire_device(
        &mut self,
        begin: &'static str,
        id: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool, EditError>;
}

impl<C> DeviceSql for C
where
    C: sqlx::Connection + ClientSql + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn devices_page(
        &mut self,
        q: &DeviceQuery<'_>,
    ) -> Result<Vec<DeviceListRow>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices \
             WHERE ($1 IS NULL OR client_id = $1) AND ($2 IS NULL OR protocol = $2) \
             AND ($3 OR retired = FALSE) AND id > $4 ORDER BY id LIMIT $5"
        )))
        .bind(q.client_id)
        .bind(q.protocol)
        .bind(q.include_retired)
        .bind(q.after)
        .bind(q.limit.clamp(1, 1000))
        .fetch_all(self)
        .await
    }

    async fn device_listing(&mut self, id: &str) -> Result<Option<DeviceListRow>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self)
        .await
    }

    async fn resolve_client(&mut self, client: &ClientRef) -> Result<Option<i64>, EditError> {
        Ok(match client {
            ClientRef::Nobody => None,
            ClientRef::Id(id) => {
                let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM clients WHERE id = $1")
                    .bind(*id)
                    .fetch_optional(&mut *self)
                    .await?;
                match row {
                    Some(_) => Some(*id),
                    None => {
                        return Err(EditError::Conflict(format!(
                            "client_id: there is no client {id}"
                        )));
                    }
                }
            }
            ClientRef::External(r) => match self.client_by_ref(r).await? {
                Some(id) => Some(id),
                None => {
                    return Err(EditError::Conflict(format!(
                        "client_ref: no client has the reference {r:?}"
                    )));
                }
            },
        })
    }

    async fn add_device(
        &mut self,
        d: &DeviceEntry,
        actor: &str,
        extra: &str,
        now: i64,
    ) -> Result<(), EditError> {
        let client_id = self.resolve_client(&d.client).await?;
        let existing: Option<(bool,)> = sqlx::query_as("SELECT retired FROM devices WHERE id = $1")
            .bind(&d.id)
            .fetch_optional(&mut *self)
            .await?;
        let again = match existing {
            Some((false,)) => {
                return Err(EditError::Conflict(format!(
                    "id: device {} is already provisioned (retire it first, or change it with PUT)",
                    d.id
                )));
            }
            Some((true,)) => {
                sqlx::query(
                    "UPDATE devices SET protocol = $1, secret = $2, client_id = $3, \
                     heartbeat_secs = $4, retired = FALSE, heard_at = NULL, used_at = NULL, \
                     updated_at = $5 WHERE id = $6",
                )
                .bind(&d.protocol)
                .bind(&d.secret)
                .bind(client_id)
                .bind(d.heartbeat_secs)
                .bind(now)
                .bind(&d.id)
                .execute(&mut *self)
                .await?;
                true
            }
            None => {
                sqlx::query(
                    "INSERT INTO devices (id, protocol, secret, client_id, retired, \
                     heartbeat_secs, updated_at) VALUES ($1, $2, $3, $4, FALSE, $5, $6)",
                )
                .bind(&d.id)
                .bind(&d.protocol)
                .bind(&d.secret)
                .bind(client_id)
                .bind(d.heartbeat_secs)
                .bind(now)
                .execute(&mut *self)
                .await
                .map_err(|e| {
                    unique_or(e, || format!("id: device {} is already provisioned", d.id))
                })?;
                false
            }
        };
        let subject = format!("device:{}", d.id);
        let mut detail = format!(
            "{}{}, {}",
            d.protocol,
            if again { ", provisioned again" } else { "" },
            match client_id {
                Some(c) => format!("client {c}"),
                None => "no client".to_owned(),
            }
        );
        if !extra.is_empty() {
            detail.push_str(", ");
            detail.push_str(extra);
        }
        self.append_audit(
            &AuditEntry {
                actor,
                action: "device_provisioned",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        Ok(())
    }

    async fn provision_device(
        &mut self,
        begin: &'static str,
        d: &DeviceEntry,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError> {
        // Made an owned `SqlStr` first: a `&'static str` passed to
        // `begin_with` leaves the callers' futures not `Send`.
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        tx.add_device(d, actor, "", now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_device(
        &mut self,
        begin: &'static str,
        id: &str,
        u: &DeviceUpdate,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT protocol, retired FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((protocol, retired)) = row else {
            return Err(EditError::NotFound("device"));
        };
        if retired {
            return Err(EditError::Conflict(format!(
                "device {id} is retired: provision it again with POST /api/v1/devices"
            )));
        }
        if protocol != u.protocol {
            return Err(EditError::Conflict(format!(
                "protocol: device {id} speaks {protocol}, not {}",
                u.protocol
            )));
        }
        let client = u.client_id.map_or(ClientRef::Nobody, ClientRef::Id);
        let client_id = tx.resolve_client(&client).await?;
        sqlx::query(
            "UPDATE devices SET client_id = $1, heartbeat_secs = $2, \
             secret = COALESCE($3, secret), updated_at = $4 WHERE id = $5",
        )
        .bind(client_id)
        .bind(u.heartbeat_secs)
        .bind(u.secret.as_deref())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let subject = format!("device:{id}");
        let detail = format!(
            "{}, heartbeat {}{}",
            match client_id {
                Some(c) => format!("client {c}"),
                None => "no client".to_owned(),
            },
            match u.heartbeat_secs {
                Some(s) => format!("{s} s"),
                None => "of the protocol".to_owned(),
            },
            if u.secret.is_some() {
                ", new secret"
            } else {
                ""
            }
        );
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "device_updated",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retire_device(
        &mut self,
        begin: &'static str,
        id: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool, EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let row: Option<(bool,)> = sqlx::query_as("SELECT retired FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        match row {
            None => return Err(EditError::NotFound("device")),
            Some((true,)) => return Ok(false),
            Some((false,)) => {}
        }
        sqlx::query("UPDATE devices SET retired = TRUE, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let subject = format!("device:{id}");
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "device_retired",
                subject: &subject,
                detail: "",
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Devices in id order after `q.after`, filtered; no secrets.
    pub async fn devices_page(
        &self,
        q: &DeviceQuery<'_>,
    ) -> Result<Vec<DeviceListRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.devices_page(q).await,
            Db::Postgres(p, _) => p.acquire().await?.devices_page(q).await,
        }?)
    }

    /// One device as the registry lists it (retired ones too).
    pub async fn device_listing(&self, id: &str) -> Result<Option<DeviceListRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.device_listing(id).await,
            Db::Postgres(p, _) => p.acquire().await?.device_listing(id).await,
        }?)
    }

    /// Provision a device, or provision a retired one again; audited.
    pub async fn provision_device(&self, d: &DeviceEntry, actor: &str) -> Result<(), EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .provision_device(begin, d, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .provision_device(begin, d, actor, now)
                    .await
            }
        }
    }

    /// Change a device's client, heartbeat interval and (optionally) secret; audited.
    pub async fn update_device(
        &self,
        id: &str,
        u: &DeviceUpdate,
        actor: &str,
    ) -> Result<(), EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .update_device(begin, id, u, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .update_device(begin, id, u, actor, now)
                    .await
            }
        }
    }

    /// Retire a device: from the directory's next sweep its frames are
    /// stored as from an unknown device. Returns whether it was in service
    /// (retiring twice changes nothing and writes nothing).
    pub async fn retire_device(&self, id: &str, actor: &str) -> Result<bool, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .retire_device(begin, id, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .retire_device(begin, id, actor, now)
                    .await
            }
        }
    }
}
