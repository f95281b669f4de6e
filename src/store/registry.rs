//! Who is who: clients, contacts, devices, providers and carers.

use super::{Db, StoreError, now_ms, on_pool, on_write_pool};
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

/// Inside a transaction `$tx`: a provider (`NewProvider`) and its coverage;
/// evaluates to the provider's id.
macro_rules! insert_provider_rows {
    ($tx:expr, $pr:expr, $now:expr) => {{
        let pr: &$crate::NewProvider = $pr;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO providers (name, service_types, capacity, updated_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&pr.name)
        .bind(&pr.service_types)
        .bind(pr.capacity)
        .bind($now)
        .fetch_one(&mut *$tx)
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
            .execute(&mut *$tx)
            .await?;
        }
        id
    }};
}
pub(crate) use insert_provider_rows;

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

impl Db {
    pub async fn insert_client(&self, c: &NewClient) -> Result<i64, StoreError> {
        let h = SealedHealth::of(
            self.vault(),
            &c.medical_notes,
            &c.medications,
            &c.allergies,
            &c.key_safe,
        )?;
        let (id,): (i64,) = on_write_pool!(self, |p| sqlx::query_as(
            "INSERT INTO clients (name, address, district, street, lat, lon, language, \
             medical_notes, medications, allergies, key_safe, birth_year, subsidy_category, \
             updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id"
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
        .bind(now_ms())
        .fetch_one(p)
        .await)?;
        Ok(id)
    }

    pub async fn insert_contact(&self, c: &NewContact) -> Result<(), StoreError> {
        on_write_pool!(self, |p| sqlx::query(
            "INSERT INTO contacts (client_id, position, name, relation, phone, notify_channel, \
             notify_address, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(c.client_id)
        .bind(c.position)
        .bind(&c.name)
        .bind(&c.relation)
        .bind(&c.phone)
        .bind(c.notify.as_ref().map(|n| n.0.as_str()))
        .bind(c.notify.as_ref().map_or("", |n| n.1.as_str()))
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Provision a device, or re-provision it (new secret, new client).
    pub async fn upsert_device(&self, d: &NewDevice) -> Result<(), StoreError> {
        on_write_pool!(self, |p| sqlx::query(
            "INSERT INTO devices (id, protocol, secret, client_id, retired, updated_at) \
             VALUES ($1, $2, $3, $4, FALSE, $5) \
             ON CONFLICT (id) DO UPDATE SET protocol = excluded.protocol, \
             secret = excluded.secret, client_id = excluded.client_id, retired = FALSE, \
             updated_at = excluded.updated_at"
        )
        .bind(&d.id)
        .bind(&d.protocol)
        .bind(&d.secret)
        .bind(d.client_id)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn insert_provider(&self, pr: &NewProvider) -> Result<i64, StoreError> {
        let now = now_ms();
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let id = insert_provider_rows!(tx, pr, now);
            tx.commit().await?;
            Ok(id)
        })
    }

    pub async fn insert_carer(&self, c: &NewCarer) -> Result<i64, StoreError> {
        let (id,): (i64,) = on_write_pool!(self, |p| {
            sqlx::query_as(
            "INSERT INTO carers (provider_id, name, phone, lat, lon, on_duty, busy, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7) RETURNING id"
        )
        .bind(c.provider_id)
        .bind(&c.name)
        .bind(&c.phone)
        .bind(c.lat)
        .bind(c.lon)
        .bind(c.on_duty)
        .bind(now_ms())
        .fetch_one(p)
        .await
        })?;
        Ok(id)
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
        on_write_pool!(self, |p| sqlx::query(sql)
            .bind(value)
            .bind(now_ms())
            .bind(carer_id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>, StoreError> {
        Ok(on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT id, protocol, secret, client_id, retired, updated_at, heartbeat_secs FROM devices WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await
        })?)
    }

    pub async fn all_devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        Ok(on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT id, protocol, secret, client_id, retired, updated_at, heartbeat_secs FROM devices"
        )
        .fetch_all(p)
        .await
        })?)
    }

    /// Devices provisioned, re-provisioned or retired at or after `since`.
    pub async fn devices_changed_since(&self, since: i64) -> Result<Vec<DeviceRow>, StoreError> {
        Ok(on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT id, protocol, secret, client_id, retired, updated_at, heartbeat_secs FROM devices \
             WHERE updated_at >= $1"
        )
        .bind(since)
        .fetch_all(p)
        .await
        })?)
    }

    /// Clients whose profile or contacts changed at or after `since`.
    pub async fn clients_changed_since(&self, since: i64) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id FROM clients WHERE updated_at >= $1 \
             UNION SELECT client_id FROM contacts WHERE updated_at >= $1"
        )
        .bind(since)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn client_profile(&self, id: i64) -> Result<Option<ClientProfile>, StoreError> {
        let client: Option<ClientProfile> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id, name, address, district, street, lat, lon, language, medical_notes, \
             medications, allergies, key_safe, birth_year, subsidy_category, away_until \
             FROM clients WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await)?;
        let Some(client) = client else {
            return Ok(None);
        };
        let mut client = client.opened(self.vault())?;
        client.contacts = on_pool!(self, |p| sqlx::query_as(
            "SELECT position, name, relation, phone FROM contacts WHERE client_id = $1 \
             AND removed_at IS NULL ORDER BY position"
        )
        .bind(id)
        .fetch_all(p)
        .await)?;
        Ok(Some(client))
    }

    /// Several clients' profiles at once (for a batch of alarms), in no
    /// particular order; ids with no client are left out.
    pub async fn client_profiles(&self, ids: &[i64]) -> Result<Vec<ClientProfile>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Integers only: listed inline.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let clients: Vec<ClientProfile> =
            on_pool!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, name, address, district, street, lat, lon, language, medical_notes, \
                 medications, allergies, key_safe, birth_year, subsidy_category, away_until \
                 FROM clients WHERE id IN ({list})"
            )))
            .persistent(false)
            .fetch_all(p)
            .await)?;
        let mut clients = clients
            .into_iter()
            .map(|c| c.opened(self.vault()))
            .collect::<Result<Vec<_>, _>>()?;
        let contacts: Vec<(i64, i64, String, String, String)> =
            on_pool!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT client_id, position, name, relation, phone FROM contacts \
                 WHERE client_id IN ({list}) AND removed_at IS NULL ORDER BY client_id, position"
            )))
            .persistent(false)
            .fetch_all(p)
            .await)?;
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

    /// Mark a client away (or back, with `None`): their devices' silence raises nothing meanwhile.
    pub async fn set_client_away(
        &self,
        client_id: i64,
        until: Option<i64>,
    ) -> Result<(), StoreError> {
        on_write_pool!(self, |p| sqlx::query(
            "UPDATE clients SET away_until = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(until)
        .bind(now_ms())
        .bind(client_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Set a device's own heartbeat interval (`None`: its protocol's).
    pub async fn set_device_heartbeat(
        &self,
        id: &str,
        secs: Option<i64>,
    ) -> Result<(), StoreError> {
        on_write_pool!(self, |p| sqlx::query(
            "UPDATE devices SET heartbeat_secs = $1, updated_at = $2 WHERE id = $3"
        )
        .bind(secs)
        .bind(now_ms())
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Devices heard from at least once (and not retired), with their protocol:
    /// the ones supervision watches.
    pub async fn watched_devices(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT id, protocol FROM devices WHERE heard_at IS NOT NULL AND retired = FALSE"
        )
        .fetch_all(p)
        .await)?)
    }

    /// Record the first report of these devices (the rest keep theirs), a
    /// chunk per statement: a whole city's first reports must not hold the one
    /// SQLite writer away from the alarms' commits for seconds.
    pub async fn mark_heard(&self, ids: &[String], at: i64) -> Result<(), StoreError> {
        for chunk in ids.chunks(MARK_CHUNK) {
            on_write_pool!(self, |p| {
                let mut q = sqlx::QueryBuilder::new("UPDATE devices SET heard_at = ");
                q.push_bind(at).push(" WHERE heard_at IS NULL AND id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_str());
                }
                q.push(")");
                q.build()
                    .persistent(false)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            })?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Devices with an open offline job: still offline after a restart.
    pub async fn devices_offline(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_pool!(self, |p| sqlx::query_as(
            "SELECT device_id FROM incidents WHERE kind = 'offline' \
             AND state NOT IN ('resolved', 'closed', 'cancelled', 'merged')"
        )
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
