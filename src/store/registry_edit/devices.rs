//! Devices: list, provision (or provision a retired one again), change, retire.
//! Secrets go in and are never read back out of here.

use crate::audit::AuditSql;
use serde::Serialize;

use super::clients::ClientSql;
use super::{EditError, unique_or};
use crate::{AuditEntry, Db, StoreError, now_ms, on_pool, on_write_pool};

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

/// Inside a transaction `$tx`: the client a request names, which must exist;
/// evaluates to `Result<Option<i64>, EditError>`.
macro_rules! resolve_client_in {
    ($tx:expr, $client:expr) => {
        async {
            let client: &$crate::ClientRef = $client;
            Ok::<Option<i64>, EditError>(match client {
                ClientRef::Nobody => None,
                ClientRef::Id(id) => {
                    let row: Option<(i64,)> =
                        sqlx::query_as("SELECT id FROM clients WHERE id = $1")
                            .bind(*id)
                            .fetch_optional(&mut *$tx)
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
                ClientRef::External(r) => match $tx.client_by_ref(r).await? {
                    Some(id) => Some(id),
                    None => {
                        return Err(EditError::Conflict(format!(
                            "client_ref: no client has the reference {r:?}"
                        )));
                    }
                },
            })
        }
        .await
    };
}

/// Inside a transaction `$tx` on `$db`: provision a device (`&DeviceEntry`),
/// or provision a retired one again (new secret, new client, not yet heard
/// from), with the audit entry; evaluates to `Result<(), EditError>`.
macro_rules! provision_device_in {
    ($db:expr, $tx:expr, $entry:expr, $actor:expr, $detail:expr, $now:expr) => {
        async {
            let d: &$crate::DeviceEntry = $entry;
            let client_id = resolve_client_in!($tx, &d.client)?;
            let existing: Option<(bool,)> =
                sqlx::query_as("SELECT retired FROM devices WHERE id = $1")
                    .bind(&d.id)
                    .fetch_optional(&mut *$tx)
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
                    .bind($now)
                    .bind(&d.id)
                    .execute(&mut *$tx)
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
                    .bind($now)
                    .execute(&mut *$tx)
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
            let extra: &str = $detail;
            if !extra.is_empty() {
                detail.push_str(", ");
                detail.push_str(extra);
            }
            $tx.append_audit(&AuditEntry {
                    actor: $actor,
                    action: "device_provisioned",
                    subject: &subject,
                    detail: &detail,
                }, $now).await?;
            Ok::<(), EditError>(())
        }
        .await
    };
}
pub(super) use {provision_device_in, resolve_client_in};

impl Db {
    /// Devices in id order after `q.after`, filtered; no secrets.
    pub async fn devices_page(
        &self,
        q: &DeviceQuery<'_>,
    ) -> Result<Vec<DeviceListRow>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(
            format!(
                "SELECT {DEVICE_COLUMNS} FROM devices \
             WHERE ($1 IS NULL OR client_id = $1) AND ($2 IS NULL OR protocol = $2) \
             AND ($3 OR retired = FALSE) AND id > $4 ORDER BY id LIMIT $5"
            )
        ))
        .bind(q.client_id)
        .bind(q.protocol)
        .bind(q.include_retired)
        .bind(q.after)
        .bind(q.limit.clamp(1, 1000))
        .fetch_all(p)
        .await)?)
    }

    /// One device as the registry lists it (retired ones too).
    pub async fn device_listing(&self, id: &str) -> Result<Option<DeviceListRow>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1")
        ))
        .bind(id)
        .fetch_optional(p)
        .await)?)
    }

    /// Provision a device, or provision a retired one again; audited.
    pub async fn provision_device(&self, d: &DeviceEntry, actor: &str) -> Result<(), EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        on_write_pool!(self, |p| {
            let mut tx = p.begin_with(begin).await?;
            provision_device_in!(self, tx, d, actor, "", now)?;
            tx.commit().await?;
            Ok(())
        })
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
        on_write_pool!(self, |p| {
            let mut tx = p.begin_with(begin).await?;
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
            let client_id = resolve_client_in!(tx, &client)?;
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
        })
    }

    /// Retire a device: from the directory's next sweep its frames are
    /// stored as from an unknown device. Returns whether it was in service
    /// (retiring twice changes nothing and writes nothing).
    pub async fn retire_device(&self, id: &str, actor: &str) -> Result<bool, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        on_write_pool!(self, |p| {
            let mut tx = p.begin_with(begin).await?;
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
        })
    }
}
