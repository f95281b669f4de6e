//! MQTT credentials in the registry: which usernames may connect, at which
//! generation. The password itself is derived (`mqtt::credential`), never kept.
//! Every issue and revocation is audited in the same transaction.

use super::audit::AuditSql;
use super::backend::Affected;
use super::{AuditEntry, Db, StoreError, now_ms};
use pingantong_domain::acl::Principal;
use sqlx::SqlStr;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0} is not in the registry")]
    NotRegistered(String),
    #[error("{0} has no MQTT credential")]
    NotFound(String),
    #[error("servers' credentials are issued from the command line only")]
    ServerFromApi,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CredentialError {
    fn from(e: sqlx::Error) -> Self {
        CredentialError::Store(e.into())
    }
}

/// One username's standing, as a broker sync needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialRow {
    pub username: String,
    pub generation: i64,
    pub revoked: bool,
}

/// The credentials' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
/// A transaction begins with `begin` ([`Db::begin_write`]), handed to sqlx
/// as a [`SqlStr`]: as a `&'static str` the compiler fails to prove the
/// callers' futures `Send`.
pub(crate) trait CredentialSql {
    /// Issue or rotate `username`'s credential for `principal`, audited, in a
    /// transaction begun with `begin`; the new generation.
    async fn issue_credential(
        &mut self,
        begin: &'static str,
        principal: &Principal,
        username: &str,
        actor: &str,
        now: i64,
    ) -> Result<i64, CredentialError>;
    /// Issue or rotate many devices' credentials under one audit entry.
    async fn issue_device_credentials(
        &mut self,
        begin: &'static str,
        devices: &[String],
        actor: &str,
        now: i64,
    ) -> Result<Vec<(String, i64)>, CredentialError>;
    /// Revoke `username`'s credential, audited: whether it had a live one.
    async fn revoke_credential(
        &mut self,
        begin: &'static str,
        username: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
    /// The live generation of `username`, who speaks for `principal`.
    async fn live_generation(
        &mut self,
        principal: &Principal,
        username: &str,
    ) -> Result<Option<i64>, sqlx::Error>;
    async fn credentials_changed_since(
        &mut self,
        since: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error>;
    async fn unsynced_credentials(&mut self) -> Result<Vec<CredentialRow>, sqlx::Error>;
    async fn mark_credential_synced(&mut self, row: &CredentialRow) -> Result<(), sqlx::Error>;
    async fn forget_credential_sync(&mut self) -> Result<u64, sqlx::Error>;
    async fn credential_rows(&mut self) -> Result<Vec<CredentialRow>, sqlx::Error>;
}

impl<C> CredentialSql for C
where
    C: sqlx::Connection + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'r> CredentialRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn issue_credential(
        &mut self,
        begin: &'static str,
        principal: &Principal,
        username: &str,
        actor: &str,
        now: i64,
    ) -> Result<i64, CredentialError> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let known = match principal {
            Principal::Device(d) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM devices WHERE id = $1 AND NOT retired",
                )
                .bind(d.as_str())
                .fetch_one(&mut *tx)
                .await?
                    == 1
            }
            Principal::Carer(c) => {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM carers WHERE id = $1")
                    .bind(*c)
                    .fetch_one(&mut *tx)
                    .await?
                    == 1
            }
            Principal::Server(_) | Principal::Bridge(_) => true,
            Principal::Quarantine(_) => false,
        };
        if !known {
            return Err(CredentialError::NotRegistered(username.to_owned()));
        }
        let (generation,): (i64,) = sqlx::query_as(
            "INSERT INTO mqtt_credentials (username, generation, revoked, updated_at) \
             VALUES ($1, 1, FALSE, $2) \
             ON CONFLICT (username) DO UPDATE SET \
             generation = mqtt_credentials.generation + 1, revoked = FALSE, updated_at = $2 \
             RETURNING generation",
        )
        .bind(username)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let detail = format!("generation {generation}");
        let entry = AuditEntry {
            actor,
            action: "mqtt_credential_issued",
            subject: &format!("mqtt:{username}"),
            detail: &detail,
        };
        tx.append_audit(&entry, now).await?;
        tx.commit().await?;
        Ok(generation)
    }

    async fn issue_device_credentials(
        &mut self,
        begin: &'static str,
        devices: &[String],
        actor: &str,
        now: i64,
    ) -> Result<Vec<(String, i64)>, CredentialError> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let mut issued = Vec::with_capacity(devices.len());
        for id in devices {
            let (generation,): (i64,) = sqlx::query_as(
                "INSERT INTO mqtt_credentials (username, generation, revoked, updated_at) \
                 SELECT $1, 1, FALSE, $2 WHERE EXISTS \
                 (SELECT 1 FROM devices WHERE id = $3 AND NOT retired) \
                 ON CONFLICT (username) DO UPDATE SET \
                 generation = mqtt_credentials.generation + 1, revoked = FALSE, updated_at = $2 \
                 RETURNING generation",
            )
            .bind(format!("devices/{id}"))
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| CredentialError::NotRegistered(format!("devices/{id}")))?;
            issued.push((id.clone(), generation));
        }
        if !issued.is_empty() {
            let detail = format!("{} devices", issued.len());
            let entry = AuditEntry {
                actor,
                action: "mqtt_credentials_issued",
                subject: "mqtt:devices",
                detail: &detail,
            };
            tx.append_audit(&entry, now).await?;
        }
        tx.commit().await?;
        Ok(issued)
    }

    async fn revoke_credential(
        &mut self,
        begin: &'static str,
        username: &str,
        actor: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let changed = sqlx::query(
            "UPDATE mqtt_credentials SET revoked = TRUE, updated_at = $1 \
             WHERE username = $2 AND NOT revoked",
        )
        .bind(now)
        .bind(username)
        .execute(&mut *tx)
        .await?
        .affected()
            == 1;
        if changed {
            let entry = AuditEntry {
                actor,
                action: "mqtt_credential_revoked",
                subject: &format!("mqtt:{username}"),
                detail: "",
            };
            tx.append_audit(&entry, now).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn live_generation(
        &mut self,
        principal: &Principal,
        username: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        // A retired device or a removed carer is out with its credential.
        match principal {
            Principal::Device(d) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT generation FROM mqtt_credentials WHERE username = $1 AND NOT revoked \
                 AND EXISTS (SELECT 1 FROM devices WHERE id = $2 AND NOT retired)",
                )
                .bind(username)
                .bind(d.as_str())
                .fetch_optional(self)
                .await
            }
            Principal::Carer(c) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT generation FROM mqtt_credentials WHERE username = $1 AND NOT revoked \
                 AND EXISTS (SELECT 1 FROM carers WHERE id = $2)",
                )
                .bind(username)
                .bind(*c)
                .fetch_optional(self)
                .await
            }
            _ => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT generation FROM mqtt_credentials WHERE username = $1 AND NOT revoked",
                )
                .bind(username)
                .fetch_optional(self)
                .await
            }
        }
    }

    async fn credentials_changed_since(
        &mut self,
        since: i64,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT username, updated_at FROM mqtt_credentials WHERE updated_at > $1")
            .bind(since)
            .fetch_all(self)
            .await
    }

    async fn unsynced_credentials(&mut self) -> Result<Vec<CredentialRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT username, generation, revoked FROM mqtt_credentials \
             WHERE synced_generation IS NULL OR synced_generation <> generation \
             OR synced_revoked IS NULL OR synced_revoked <> revoked ORDER BY username",
        )
        .fetch_all(self)
        .await
    }

    async fn mark_credential_synced(&mut self, row: &CredentialRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE mqtt_credentials SET synced_generation = $1, synced_revoked = $2 \
             WHERE username = $3",
        )
        .bind(row.generation)
        .bind(row.revoked)
        .bind(&row.username)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn forget_credential_sync(&mut self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE mqtt_credentials SET synced_generation = NULL, synced_revoked = NULL",
        )
        .execute(self)
        .await?
        .affected())
    }

    async fn credential_rows(&mut self) -> Result<Vec<CredentialRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT username, generation, revoked FROM mqtt_credentials ORDER BY username",
        )
        .fetch_all(self)
        .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Issue a credential for `principal`, or rotate the one it has: returns
    /// the new generation (the old password stops working). A device or
    /// carer must be in the registry (a retired device is not).
    pub async fn issue_mqtt_credential(
        &self,
        principal: &Principal,
        actor: &str,
    ) -> Result<i64, CredentialError> {
        let username = principal
            .username()
            .ok_or_else(|| CredentialError::NotRegistered("a quarantined client".into()))?;
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .issue_credential(begin, principal, &username, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .issue_credential(begin, principal, &username, actor, now)
                    .await
            }
        }
    }

    /// Issue (or rotate) the credentials of many registered devices in one
    /// transaction with one audit entry — a city provisioned at once. Returns
    /// each device's generation.
    pub async fn issue_device_credentials(
        &self,
        devices: &[String],
        actor: &str,
    ) -> Result<Vec<(String, i64)>, CredentialError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .issue_device_credentials(begin, devices, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .issue_device_credentials(begin, devices, actor, now)
                    .await
            }
        }
    }

    /// Revoke `username`'s credential: it can no longer connect.
    pub async fn revoke_mqtt_credential(
        &self,
        username: &str,
        actor: &str,
    ) -> Result<(), CredentialError> {
        let now = now_ms();
        let begin = self.begin_write();
        let found = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .revoke_credential(begin, username, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .revoke_credential(begin, username, actor, now)
                    .await
            }
        }?;
        if found {
            Ok(())
        } else {
            Err(CredentialError::NotFound(username.to_owned()))
        }
    }

    /// The live generation of `username`'s credential; `None` when it has
    /// none, it was revoked, or what it speaks for left the registry.
    pub async fn mqtt_credential(&self, principal: &Principal) -> Result<Option<i64>, StoreError> {
        let Some(username) = principal.username() else {
            return Ok(None);
        };
        Ok(match self {
            Db::Sqlite { read, .. } => {
                read.acquire()
                    .await?
                    .live_generation(principal, &username)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .live_generation(principal, &username)
                    .await
            }
        }?)
    }

    /// Usernames whose credential was issued, rotated or revoked after
    /// `since` (ms), with the latest such time: the gate ends their live
    /// sessions, whoever made the change (another server, the command line).
    pub async fn mqtt_credentials_changed_since(
        &self,
        since: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.credentials_changed_since(since).await,
            Db::Postgres(p, _) => p.acquire().await?.credentials_changed_since(since).await,
        }?)
    }

    /// Credentials whose state an external broker has not been told yet.
    pub async fn mqtt_credentials_unsynced(&self) -> Result<Vec<CredentialRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.unsynced_credentials().await,
            Db::Postgres(p, _) => p.acquire().await?.unsynced_credentials().await,
        }?)
    }

    /// The broker was told of `row` (as it was then).
    pub async fn mark_mqtt_credential_synced(&self, row: &CredentialRow) -> Result<(), StoreError> {
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.mark_credential_synced(row).await,
            Db::Postgres(p, _) => p.acquire().await?.mark_credential_synced(row).await,
        }?)
    }

    /// Forget what the broker was told: every credential is pushed again (a
    /// broker whose store was lost or replaced).
    pub async fn forget_mqtt_credential_sync(&self) -> Result<u64, StoreError> {
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.forget_credential_sync().await,
            Db::Postgres(p, _) => p.acquire().await?.forget_credential_sync().await,
        }?)
    }

    /// Every credential ever issued, revoked ones too (a broker sync removes those).
    pub async fn mqtt_credentials(&self) -> Result<Vec<CredentialRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.credential_rows().await,
            Db::Postgres(p, _) => p.acquire().await?.credential_rows().await,
        }?)
    }
}
