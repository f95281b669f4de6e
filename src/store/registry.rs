//! Who is who: clients, contacts, devices, providers and carers.
//!
//! The statements are [`RegistrySql`]'s, written once for both backends
//! (see [`super::tx`]).

use super::{Db, StoreError, now_ms};
use crate::vault::{Field, Vault};

/// Rows per transaction when marking many devices at once.
pub(crate) const MARK_CHUNK: usize = 128;

#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    pub address: String,
    pub district: String,
    pub street: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub language: String,
    pub medical_notes: String,
    pub medications: String,
    pub allergies: String,
    /// The code of the key safe at the door, for a carer who accepted.
    pub key_safe: String,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewContact {
    pub client_id: i64,
    pub position: i64,
    pub name: String,
    pub relation: String,
    pub phone: String,
    /// `mqtt`, `webhook` or `email` with its address; `None`: the operator phones them.
    pub notify: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: String,
    pub protocol: String,
    pub secret: Vec<u8>,
    pub client_id: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewProvider {
    pub name: String,
    pub service_types: String,
    pub capacity: i64,
    /// (district, street): street `None` covers the whole district.
    pub coverage: Vec<(String, Option<String>)>,
    /// Contract order where several providers cover one address: lower first
    /// (a fallback provider has a higher rank).
    pub rank: i64,
}

#[derive(Debug, Clone)]
pub struct NewCarer {
    pub provider_id: i64,
    pub name: String,
    pub phone: String,
    pub lat: f64,
    pub lon: f64,
    pub on_duty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: String,
    pub protocol: String,
    pub secret: Vec<u8>,
    pub client_id: Option<i64>,
    pub retired: bool,
    pub updated_at: i64,
    /// Its own expected interval between reports; `None`: the protocol's.
    pub heartbeat_secs: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ContactRow {
    pub position: i64,
    pub name: String,
    pub relation: String,
    pub phone: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClientProfile {
    pub id: i64,
    pub name: String,
    pub address: String,
    pub district: String,
    pub street: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub language: String,
    pub medical_notes: String,
    pub medications: String,
    pub allergies: String,
    pub key_safe: String,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<String>,
    /// Away from home (hospital, travel) until then: supervision does not chase their devices.
    pub away_until: Option<i64>,
    #[sqlx(skip)]
    pub contacts: Vec<ContactRow>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CarerRow {
    pub id: i64,
    pub provider_id: i64,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub on_duty: bool,
    pub busy: bool,
}

impl ClientProfile {
    /// With its sealed fields opened.
    pub(crate) fn opened(mut self, v: &Vault) -> Result<Self, StoreError> {
        open_health(
            v,
            [
                &mut self.medical_notes,
                &mut self.medications,
                &mut self.allergies,
                &mut self.key_safe,
            ],
        )?;
        Ok(self)
    }
}

/// A client's medical notes, medications, allergies and key-safe code, in
/// that order, opened in place.
pub(crate) fn open_health(v: &Vault, fields: [&mut String; 4]) -> Result<(), StoreError> {
    let names = [
        Field::MedicalNotes,
        Field::Medications,
        Field::Allergies,
        Field::KeySafe,
    ];
    for (field, value) in names.into_iter().zip(fields) {
        *value = v.open_text(field, value)?;
    }
    Ok(())
}

/// A client's sensitive fields, sealed for the database.
pub(crate) struct SealedHealth {
    pub medical_notes: String,
    pub medications: String,
    pub allergies: String,
    pub key_safe: String,
}

impl SealedHealth {
    pub(crate) fn of(
        v: &Vault,
        medical_notes: &str,
        medications: &str,
        allergies: &str,
        key_safe: &str,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            medical_notes: v.seal_text(Field::MedicalNotes, medical_notes)?,
            medications: v.seal_text(Field::Medications, medications)?,
            allergies: v.seal_text(Field::Allergies, allergies)?,
            key_safe: v.seal_text(Field::KeySafe, key_safe)?,
        })
    }
}

/// The registry's own statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool, or (a
/// provider's rows) on a transaction's.
pub(crate) trait RegistrySql {
    /// A new client, their health fields sealed; the id.
    async fn insert_client(
        &mut self,
        c: &NewClient,
        h: &SealedHealth,
        now: i64,
    ) -> Result<i64, sqlx::Error>;
    async fn insert_contact(&mut self, c: &NewContact, now: i64) -> Result<(), sqlx::Error>;
    /// Provision a device, or re-provision it (new secret, new client).
    async fn upsert_device(&mut self, d: &NewDevice, now: i64) -> Result<(), sqlx::Error>;
    /// Inside a transaction: a provider and its coverage; the provider's id.
    async fn insert_provider_rows(
        &mut self,
        pr: &NewProvider,
        now: i64,
    ) -> Result<i64, sqlx::Error>;
    /// A provider and its coverage, in a transaction of its own; its id.
    async fn insert_provider(&mut self, pr: &NewProvider, now: i64) -> Result<i64, sqlx::Error>;
    async fn insert_carer(&mut self, c: &NewCarer, now: i64) -> Result<i64, sqlx::Error>;
    /// One of a carer's flags, by `sql` (binding the value, the time, the carer).
    async fn set_carer_flag(
        &mut self,
        sql: &'static str,
        carer_id: i64,
        value: bool,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    async fn device(&mut self, id: &str) -> Result<Option<DeviceRow>, sqlx::Error>;
    async fn all_devices(&mut self) -> Result<Vec<DeviceRow>, sqlx::Error>;
    async fn devices_changed_since(&mut self, since: i64) -> Result<Vec<DeviceRow>, sqlx::Error>;
    async fn clients_changed_since(&mut self, since: i64) -> Result<Vec<i64>, sqlx::Error>;
    /// A client's profile with their contacts, its sealed fields still sealed.
    async fn client_profile(&mut self, id: i64) -> Result<Option<ClientProfile>, sqlx::Error>;
    /// Several clients' profiles with their contacts, sealed fields still sealed.
    async fn client_profiles(&mut self, ids: &[i64]) -> Result<Vec<ClientProfile>, sqlx::Error>;
    async fn set_client_away(
        &mut self,
        client_id: i64,
        until: Option<i64>,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    async fn set_device_heartbeat(
        &mut self,
        id: &str,
        secs: Option<i64>,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    async fn watched_devices(&mut self) -> Result<Vec<(String, String)>, sqlx::Error>;
    /// Record the first report of these devices, in one statement.
    async fn mark_heard(&mut self, ids: &[String], at: i64) -> Result<(), sqlx::Error>;
    async fn devices_offline(&mut self) -> Result<Vec<String>, sqlx::Error>;
}

impl<C> RegistrySql for C
where
    C: sqlx::Connection,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Encode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> f64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    f64: sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Vec<u8>: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn insert_client(
        &mut self,
        c: &NewClient,
        h: &SealedHealth,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO clients (name, address, district, street, lat, lon, language, \
             medical_notes, medications, allergies, key_safe, birth_year, subsidy_category, \
             updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
        )
        .bind(&c.name)
        .bind(&c.address)
        .bind(&c.district)
        .bind(&c.street)
        .bind(c.lat)
        .bind(c.lon)
        .bind(&c.language)
        .bind(&h.medical_notes)
        .bind(&h.medications)
        .bind(&h.allergies)
        .bind(&h.key_safe)
        .bind(c.birth_year)
        .bind(&c.subsidy_category)
        .bind(now)
        .fetch_one(self)
        .await?;
        Ok(id)
    }

    async fn insert_contact(&mut self, c: &NewContact, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO contacts (client_id, position, name, relation, phone, notify_channel, \
             notify_address, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.client_id)
        .bind(c.position)
        .bind(&c.name)
        .bind(&c.relation)
        .bind(&c.phone)
        .bind(c.notify.as_ref().map(|n| n.0.as_str()))
        .bind(c.notify.as_ref().map_or("", |n| n.1.as_str()))
        .bind(now)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn upsert_device(&mut self, d: &NewDevice, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO devices (id, protocol, secret, client_id, retired, updated_at) \
             VALUES ($1, $2, $3, $4, FALSE, $5) \
             ON CONFLICT (id) DO UPDATE SET protocol = excluded.protocol, \
             secret = excluded.secret, client_id = excluded.client_id, retired = FALSE, \
             updated_at = excluded.updated_at",
        )
        .bind(&d.id)
        .bind(&d.protocol)
        .bind(&d.secret)
        .bind(d.client_id)
        .bind(now)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn insert_provider_rows(
        &mut self,
        pr: &NewProvider,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO providers (name, service_types, capacity, updated_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&pr.name)
        .bind(&pr.service_types)
        .bind(pr.capacity)
        .bind(now)
        .fetch_one(&mut *self)
        .await?;
        for (district, street) in &pr.coverage {
            sqlx::query(
                "INSERT INTO provider_coverage (provider_id, district, street, rank) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(district)
            .bind(street)
            .bind(pr.rank)
            .execute(&mut *self)
            .await?;
        }
        Ok(id)
    }

    async fn insert_provider(&mut self, pr: &NewProvider, now: i64) -> Result<i64, sqlx::Error> {
        let mut tx = self.begin().await?;
        let id = tx.insert_provider_rows(pr, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn insert_carer(&mut self, c: &NewCarer, now: i64) -> Result<i64, sqlx::Error> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO carers (provider_id, name, phone, lat, lon, on_duty, busy, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7) RETURNING id",
        )
        .bind(c.provider_id)
        .bind(&c.name)
        .bind(&c.phone)
        .bind(c.lat)
        .bind(c.lon)
        .bind(c.on_duty)
        .bind(now)
        .fetch_one(self)
        .await?;
        Ok(id)
    }

    async fn set_carer_flag(
        &mut self,
        sql: &'static str,
        carer_id: i64,
        value: bool,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(value)
            .bind(now)
            .bind(carer_id)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn device(&mut self, id: &str) -> Result<Option<DeviceRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, protocol, secret, client_id, retired, updated_at, heartbeat_secs FROM devices WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(self)
        .await
    }

    async fn all_devices(&mut self) -> Result<Vec<DeviceRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, protocol, secret, client_id, retired, updated_at, heartbeat_secs FROM devices"
        )
        .fetch_all(self)
        .await
    }

    async fn devices_changed_since(&mut self, since: i64) -> Result<Vec<DeviceRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, protocol, secret, client_id, retired, updated_at, heartbeat_secs FROM devices \
             WHERE updated_at >= $1"
        )
        .bind(since)
        .fetch_all(self)
        .await
    }

    async fn clients_changed_since(&mut self, since: i64) -> Result<Vec<i64>, sqlx::Error> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM clients WHERE updated_at >= $1 \
             UNION SELECT client_id FROM contacts WHERE updated_at >= $1",
        )
        .bind(since)
        .fetch_all(self)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn client_profile(&mut self, id: i64) -> Result<Option<ClientProfile>, sqlx::Error> {
        let client: Option<ClientProfile> = sqlx::query_as(
            "SELECT id, name, address, district, street, lat, lon, language, medical_notes, \
             medications, allergies, key_safe, birth_year, subsidy_category, away_until \
             FROM clients WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self)
        .await?;
        let Some(mut client) = client else {
            return Ok(None);
        };
        client.contacts = sqlx::query_as(
            "SELECT position, name, relation, phone FROM contacts WHERE client_id = $1 \
             AND removed_at IS NULL ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *self)
        .await?;
        Ok(Some(client))
    }

    async fn client_profiles(&mut self, ids: &[i64]) -> Result<Vec<ClientProfile>, sqlx::Error> {
        // Integers only: listed inline.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let mut clients: Vec<ClientProfile> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, name, address, district, street, lat, lon, language, medical_notes, \
             medications, allergies, key_safe, birth_year, subsidy_category, away_until \
             FROM clients WHERE id IN ({list})"
        )))
        .persistent(false)
        .fetch_all(&mut *self)
        .await?;
        let contacts: Vec<(i64, i64, String, String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT client_id, position, name, relation, phone FROM contacts \
                 WHERE client_id IN ({list}) AND removed_at IS NULL ORDER BY client_id, position"
            )))
            .persistent(false)
            .fetch_all(&mut *self)
            .await?;
        let mut of: std::collections::HashMap<i64, Vec<ContactRow>> =
            std::collections::HashMap::new();
        for (client, position, name, relation, phone) in contacts {
            of.entry(client).or_default().push(ContactRow {
                position,
                name,
                relation,
                phone,
            });
        }
        for c in &mut clients {
            c.contacts = of.remove(&c.id).unwrap_or_default();
        }
        Ok(clients)
    }

    async fn set_client_away(
        &mut self,
        client_id: i64,
        until: Option<i64>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE clients SET away_until = $1, updated_at = $2 WHERE id = $3")
            .bind(until)
            .bind(now)
            .bind(client_id)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn set_device_heartbeat(
        &mut self,
        id: &str,
        secs: Option<i64>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE devices SET heartbeat_secs = $1, updated_at = $2 WHERE id = $3")
            .bind(secs)
            .bind(now)
            .bind(id)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn watched_devices(&mut self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, protocol FROM devices WHERE heard_at IS NOT NULL AND retired = FALSE",
        )
        .fetch_all(self)
        .await
    }

    async fn mark_heard(&mut self, ids: &[String], at: i64) -> Result<(), sqlx::Error> {
        let mut q = sqlx::QueryBuilder::new("UPDATE devices SET heard_at = ");
        q.push_bind(at).push(" WHERE heard_at IS NULL AND id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.as_str());
        }
        q.push(")");
        q.build().persistent(false).execute(self).await?;
        Ok(())
    }

    async fn devices_offline(&mut self) -> Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT device_id FROM incidents WHERE kind = 'offline' \
             AND state NOT IN ('resolved', 'closed', 'cancelled', 'merged')",
        )
        .fetch_all(self)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    pub async fn insert_client(&self, c: &NewClient) -> Result<i64, StoreError> {
        let h = SealedHealth::of(
            self.vault(),
            &c.medical_notes,
            &c.medications,
            &c.allergies,
            &c.key_safe,
        )?;
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.insert_client(c, &h, now).await,
            Db::Postgres(p, _) => p.acquire().await?.insert_client(c, &h, now).await,
        }?)
    }

    pub async fn insert_contact(&self, c: &NewContact) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.insert_contact(c, now).await,
            Db::Postgres(p, _) => p.acquire().await?.insert_contact(c, now).await,
        }?)
    }

    /// Provision a device, or re-provision it (new secret, new client).
    pub async fn upsert_device(&self, d: &NewDevice) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.upsert_device(d, now).await,
            Db::Postgres(p, _) => p.acquire().await?.upsert_device(d, now).await,
        }?)
    }

    pub async fn insert_provider(&self, pr: &NewProvider) -> Result<i64, StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.insert_provider(pr, now).await,
            Db::Postgres(p, _) => p.acquire().await?.insert_provider(pr, now).await,
        }?)
    }

    pub async fn insert_carer(&self, c: &NewCarer) -> Result<i64, StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.insert_carer(c, now).await,
            Db::Postgres(p, _) => p.acquire().await?.insert_carer(c, now).await,
        }?)
    }

    pub async fn set_carer_duty(&self, carer_id: i64, on_duty: bool) -> Result<(), StoreError> {
        self.set_carer_flag(
            "UPDATE carers SET on_duty = $1, updated_at = $2 WHERE id = $3",
            carer_id,
            on_duty,
        )
        .await
    }

    /// A carer's own "busy" (on a job the service does not know of, a break):
    /// nobody offers them anything until they are free.
    pub async fn set_carer_busy(&self, carer_id: i64, busy: bool) -> Result<(), StoreError> {
        self.set_carer_flag(
            "UPDATE carers SET busy = $1, updated_at = $2 WHERE id = $3",
            carer_id,
            busy,
        )
        .await
    }

    async fn set_carer_flag(
        &self,
        sql: &'static str,
        carer_id: i64,
        value: bool,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_carer_flag(sql, carer_id, value, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .set_carer_flag(sql, carer_id, value, now)
                    .await
            }
        }?)
    }

    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.device(id).await,
            Db::Postgres(p, _) => p.acquire().await?.device(id).await,
        }?)
    }

    pub async fn all_devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.all_devices().await,
            Db::Postgres(p, _) => p.acquire().await?.all_devices().await,
        }?)
    }

    /// Devices provisioned, re-provisioned or retired at or after `since`.
    pub async fn devices_changed_since(&self, since: i64) -> Result<Vec<DeviceRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.devices_changed_since(since).await,
            Db::Postgres(p, _) => p.acquire().await?.devices_changed_since(since).await,
        }?)
    }

    /// Clients whose profile or contacts changed at or after `since`.
    pub async fn clients_changed_since(&self, since: i64) -> Result<Vec<i64>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.clients_changed_since(since).await,
            Db::Postgres(p, _) => p.acquire().await?.clients_changed_since(since).await,
        }?)
    }

    pub async fn client_profile(&self, id: i64) -> Result<Option<ClientProfile>, StoreError> {
        let client = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.client_profile(id).await,
            Db::Postgres(p, _) => p.acquire().await?.client_profile(id).await,
        }?;
        client.map(|c| c.opened(self.vault())).transpose()
    }

    /// Several clients' profiles at once (for a batch of alarms), in no
    /// particular order; ids with no client are left out.
    pub async fn client_profiles(&self, ids: &[i64]) -> Result<Vec<ClientProfile>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let clients = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.client_profiles(ids).await,
            Db::Postgres(p, _) => p.acquire().await?.client_profiles(ids).await,
        }?;
        clients
            .into_iter()
            .map(|c| c.opened(self.vault()))
            .collect()
    }

    /// Mark a client away (or back, with `None`): their devices' silence raises nothing meanwhile.
    pub async fn set_client_away(
        &self,
        client_id: i64,
        until: Option<i64>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_client_away(client_id, until, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .set_client_away(client_id, until, now)
                    .await
            }
        }?)
    }

    /// Set a device's own heartbeat interval (`None`: its protocol's).
    pub async fn set_device_heartbeat(
        &self,
        id: &str,
        secs: Option<i64>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_device_heartbeat(id, secs, now)
                    .await
            }
            Db::Postgres(p, _) => p.acquire().await?.set_device_heartbeat(id, secs, now).await,
        }?)
    }

    /// Devices heard from at least once (and not retired), with their protocol:
    /// the ones supervision watches.
    pub async fn watched_devices(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.watched_devices().await,
            Db::Postgres(p, _) => p.acquire().await?.watched_devices().await,
        }?)
    }

    /// Record the first report of these devices (the rest keep theirs), a
    /// chunk per statement: a whole city's first reports must not hold the one
    /// SQLite writer away from the alarms' commits for seconds.
    pub async fn mark_heard(&self, ids: &[String], at: i64) -> Result<(), StoreError> {
        for chunk in ids.chunks(MARK_CHUNK) {
            // The connection goes back to the pool between chunks.
            match self {
                Db::Sqlite { write, .. } => write.acquire().await?.mark_heard(chunk, at).await,
                Db::Postgres(p, _) => p.acquire().await?.mark_heard(chunk, at).await,
            }?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Devices with an open offline job: still offline after a restart.
    pub async fn devices_offline(&self) -> Result<Vec<String>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.devices_offline().await,
            Db::Postgres(p, _) => p.acquire().await?.devices_offline().await,
        }?)
    }
}
