//! Clients and their ordered contact lists: list, read, create, change, away.
//!
//! The statements are [`ClientSql`]'s, written once for both backends (see
//! [`crate::tx`]).

use crate::audit::AuditSql;
use serde::Serialize;
use sqlx::SqlSafeStr;

use super::{EditError, unique_or};
use crate::backend::Affected;
use crate::registry::SealedHealth;
use crate::vault::Vault;
use crate::{AuditEntry, Db, NewClient, StoreError, now_ms};

/// A client as the registry keeps them: the profile and the reference in
/// the city's (or a provider's) own register.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub client: NewClient,
    pub external_ref: Option<String>,
}

/// One contact of a new list. `id`: an existing contact of the same client
/// kept (its id is the address of a family app's MQTT topic); `None`: a new one.
#[derive(Debug, Clone)]
pub struct ContactEntry {
    pub id: Option<i64>,
    pub name: String,
    pub relation: String,
    /// Checked where it entered (the API, the CSV import): a number that can be dialled.
    pub phone: pingantong_domain::Phone,
    /// How the contact hears of an alarm besides a call; `None`: telephoned only.
    pub notify: Option<pingantong_domain::NoticeRoute>,
}

/// One line of the client list: no health data.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct ClientListRow {
    pub id: i64,
    pub external_ref: Option<String>,
    pub name: String,
    pub address: String,
    pub district: String,
    pub street: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub language: String,
    pub birth_year: Option<i64>,
    pub subsidy_category: Option<String>,
    pub away_until: Option<i64>,
    pub updated_at: i64,
}

/// Which clients to list, in id order after `after`.
#[derive(Debug, Clone, Default)]
pub struct ClientQuery<'a> {
    pub district: Option<&'a str>,
    pub street: Option<&'a str>,
    /// Part of the name, address, reference or a contact's phone.
    pub text: Option<&'a str>,
    pub after: i64,
    pub limit: i64,
}

/// A contact as stored, with its id.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct ContactRecord {
    pub id: i64,
    pub position: i64,
    pub name: String,
    pub relation: String,
    pub phone: String,
    pub notify_channel: Option<String>,
    pub notify_address: String,
}

/// Everything the registry holds about one client.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClientRecord {
    pub id: i64,
    pub external_ref: Option<String>,
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
    pub away_until: Option<i64>,
    pub updated_at: i64,
    #[sqlx(skip)]
    pub contacts: Vec<ContactRecord>,
}

impl ClientRecord {
    /// With its sealed fields opened.
    fn opened(mut self, v: &crate::vault::Vault) -> Result<Self, StoreError> {
        crate::registry::open_health(
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

const CONTACT_COLUMNS: &str = "id, position, name, relation, phone, notify_channel, notify_address";

/// `LIKE` pattern for "contains `text`" (ASCII letters folded; `%`, `_` and `\` literal).
pub(super) fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The clients' statements and transactions, written once for both backends
/// (see [`crate::tx`]): called on a connection of the backend's pool, or
/// (a client or contact within a larger change) on a transaction's.
pub(crate) trait ClientSql {
    /// Clients in id order after `q.after`, filtered; without health data.
    async fn clients_page(
        &mut self,
        q: &ClientQuery<'_>,
    ) -> Result<Vec<ClientListRow>, sqlx::Error>;
    /// One client, sealed fields still sealed, without contacts.
    async fn client_record(&mut self, id: i64) -> Result<Option<ClientRecord>, sqlx::Error>;
    /// A client's contacts in order (not those taken off the list).
    async fn contacts_of(&mut self, client_id: i64) -> Result<Vec<ContactRecord>, sqlx::Error>;
    /// The client whose register reference is `reference`, if any.
    async fn client_by_ref(&mut self, reference: &str) -> Result<Option<i64>, sqlx::Error>;
    /// Inside a transaction: a new client with their contacts (in order)
    /// and the audit entry; the client's id.
    async fn add_client(
        &mut self,
        vault: &Vault,
        e: &ClientEntry,
        contacts: &[ContactEntry],
        actor: &str,
        detail: &str,
        now: i64,
    ) -> Result<i64, EditError>;
    /// Inside a transaction: one contact row at `position`.
    async fn add_contact(
        &mut self,
        client: i64,
        position: i64,
        k: &ContactEntry,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    /// [`Db::create_client`]'s transaction, begun by `begin`.
    async fn create_client(
        &mut self,
        begin: &'static str,
        vault: &Vault,
        entry: &ClientEntry,
        contacts: &[ContactEntry],
        actor: &str,
        now: i64,
    ) -> Result<i64, EditError>;
    /// [`Db::update_client`]'s transaction, begun by `begin`.
    async fn update_client(
        &mut self,
        begin: &'static str,
        vault: &Vault,
        id: i64,
        entry: &ClientEntry,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError>;
    /// [`Db::set_client_away_audited`]'s transaction, begun by `begin`.
    async fn set_away_audited(
        &mut self,
        begin: &'static str,
        id: i64,
        until: Option<i64>,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError>;
    /// [`Db::replace_contacts`]'s transaction, begun by `begin`.
    async fn replace_contacts(
        &mut self,
        begin: &'static str,
        client_id: i64,
        contacts: &[ContactEntry],
        actor: &str,
        now: i64,
    ) -> Result<Vec<ContactRecord>, EditError>;
}

impl<C> ClientSql for C
where
    C: sqlx::Connection + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
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
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn clients_page(
        &mut self,
        q: &ClientQuery<'_>,
    ) -> Result<Vec<ClientListRow>, sqlx::Error> {
        let pattern = q.text.map(contains_pattern);
        sqlx::query_as(
            "SELECT id, external_ref, name, address, district, street, lat, lon, language, \
             birth_year, subsidy_category, away_until, updated_at FROM clients c \
             WHERE ($1 IS NULL OR district = $1) AND ($2 IS NULL OR street = $2) \
             AND ($3 IS NULL OR LOWER(name) LIKE $3 ESCAPE '\\' \
                  OR LOWER(address) LIKE $3 ESCAPE '\\' \
                  OR LOWER(external_ref) LIKE $3 ESCAPE '\\' \
                  OR EXISTS (SELECT 1 FROM contacts k WHERE k.client_id = c.id \
                             AND k.removed_at IS NULL AND k.phone LIKE $3 ESCAPE '\\')) \
             AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(q.district)
        .bind(q.street)
        .bind(pattern.as_deref())
        .bind(q.after)
        .bind(q.limit.clamp(1, 1000))
        .fetch_all(self)
        .await
    }

    async fn client_record(&mut self, id: i64) -> Result<Option<ClientRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, external_ref, name, address, district, street, lat, lon, language, \
             medical_notes, medications, allergies, key_safe, birth_year, subsidy_category, \
             away_until, updated_at FROM clients WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self)
        .await
    }

    async fn contacts_of(&mut self, client_id: i64) -> Result<Vec<ContactRecord>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts \
                 WHERE client_id = $1 AND removed_at IS NULL ORDER BY position"
        )))
        .bind(client_id)
        .fetch_all(self)
        .await
    }

    async fn client_by_ref(&mut self, reference: &str) -> Result<Option<i64>, sqlx::Error> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM clients WHERE external_ref = $1")
            .bind(reference)
            .fetch_optional(self)
            .await?;
        Ok(row.map(|r| r.0))
    }

    async fn add_client(
        &mut self,
        vault: &Vault,
        e: &ClientEntry,
        contacts: &[ContactEntry],
        actor: &str,
        detail: &str,
        now: i64,
    ) -> Result<i64, EditError> {
        if let Some(r) = &e.external_ref
            && let Some(other) = self.client_by_ref(r).await?
        {
            return Err(EditError::Conflict(format!(
                "external_ref: {r:?} is already client {other}"
            )));
        }
        let c = &e.client;
        let h = SealedHealth::of(
            vault,
            &c.medical_notes,
            &c.medications,
            &c.allergies,
            &c.key_safe,
        )?;
        let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
            "INSERT INTO clients (name, address, district, street, lat, lon, language, \
             medical_notes, medications, allergies, key_safe, birth_year, subsidy_category, \
             external_ref, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             RETURNING id",
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
        .bind(&e.external_ref)
        .bind(now)
        .fetch_one(&mut *self)
        .await;
        let (id,) = inserted.map_err(|err| {
            unique_or(err, || {
                format!("external_ref: {:?} is already taken", e.external_ref)
            })
        })?;
        for (i, k) in contacts.iter().enumerate() {
            self.add_contact(id, i as i64 + 1, k, now).await?;
        }
        let subject = format!("client:{id}");
        self.append_audit(
            &AuditEntry {
                actor,
                action: "client_created",
                subject: &subject,
                detail,
            },
            now,
        )
        .await?;
        Ok(id)
    }

    async fn add_contact(
        &mut self,
        client: i64,
        position: i64,
        k: &ContactEntry,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO contacts (client_id, position, name, relation, phone, notify_channel, \
             notify_address, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(client)
        .bind(position)
        .bind(&k.name)
        .bind(&k.relation)
        .bind(k.phone.as_str())
        .bind(k.notify.as_ref().map(|n| n.channel()))
        .bind(k.notify.as_ref().map_or("", |n| n.address()))
        .bind(now)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn create_client(
        &mut self,
        begin: &'static str,
        vault: &Vault,
        entry: &ClientEntry,
        contacts: &[ContactEntry],
        actor: &str,
        now: i64,
    ) -> Result<i64, EditError> {
        // Made an owned `SqlStr` first: a `&'static str` passed to
        // `begin_with` leaves the callers' futures not `Send`.
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let id = tx
            .add_client(vault, entry, contacts, actor, "", now)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn update_client(
        &mut self,
        begin: &'static str,
        vault: &Vault,
        id: i64,
        entry: &ClientEntry,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError> {
        let c = &entry.client;
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let before: Option<ClientRecord> = sqlx::query_as(
            "SELECT id, external_ref, name, address, district, street, lat, lon, language, \
             medical_notes, medications, allergies, key_safe, birth_year, subsidy_category, \
             away_until, updated_at FROM clients WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            return Err(EditError::NotFound("client"));
        };
        let before = before.opened(vault)?;
        let h = SealedHealth::of(
            vault,
            &c.medical_notes,
            &c.medications,
            &c.allergies,
            &c.key_safe,
        )?;
        if let Some(r) = &entry.external_ref
            && let Some(other) = tx.client_by_ref(r).await?.filter(|o| *o != id)
        {
            return Err(EditError::Conflict(format!(
                "external_ref: {r:?} is already client {other}"
            )));
        }
        let changed: Vec<&str> = [
            ("external_ref", before.external_ref != entry.external_ref),
            ("name", before.name != c.name),
            ("address", before.address != c.address),
            ("district", before.district != c.district),
            ("street", before.street != c.street),
            ("location", before.lat != c.lat || before.lon != c.lon),
            ("language", before.language != c.language),
            ("medical_notes", before.medical_notes != c.medical_notes),
            ("medications", before.medications != c.medications),
            ("allergies", before.allergies != c.allergies),
            ("key_safe", before.key_safe != c.key_safe),
            ("birth_year", before.birth_year != c.birth_year),
            (
                "subsidy_category",
                before.subsidy_category != c.subsidy_category,
            ),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        sqlx::query(
            "UPDATE clients SET name = $1, address = $2, district = $3, street = $4, \
             lat = $5, lon = $6, language = $7, medical_notes = $8, medications = $9, \
             allergies = $10, key_safe = $11, birth_year = $12, subsidy_category = $13, \
             external_ref = $14, updated_at = $15 WHERE id = $16",
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
        .bind(&entry.external_ref)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            unique_or(e, || {
                format!("external_ref: {:?} is already taken", entry.external_ref)
            })
        })?;
        let detail = if changed.is_empty() {
            "nothing changed".to_owned()
        } else {
            format!("changed {}", changed.join(", "))
        };
        let subject = format!("client:{id}");
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "client_updated",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_away_audited(
        &mut self,
        begin: &'static str,
        id: i64,
        until: Option<i64>,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let n = sqlx::query("UPDATE clients SET away_until = $1, updated_at = $2 WHERE id = $3")
            .bind(until)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .affected();
        if n == 0 {
            return Err(EditError::NotFound("client"));
        }
        let subject = format!("client:{id}");
        let detail = match until {
            Some(t) => format!("away until {t}"),
            None => "at home".to_owned(),
        };
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "client_away",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_contacts(
        &mut self,
        begin: &'static str,
        client_id: i64,
        contacts: &[ContactEntry],
        actor: &str,
        now: i64,
    ) -> Result<Vec<ContactRecord>, EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        // First, and on the client's row: two lists replaced at once take
        // turns (PostgreSQL locks the row; SQLite's write lock is already
        // held). A deleted contact leaves no row behind to be noticed by,
        // so the client's own time tells the directory cache to re-read them.
        let found = sqlx::query("UPDATE clients SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(client_id)
            .execute(&mut *tx)
            .await?
            .affected();
        if found == 0 {
            return Err(EditError::NotFound("client"));
        }
        let current: Vec<(i64,)> =
            sqlx::query_as("SELECT id FROM contacts WHERE client_id = $1 AND removed_at IS NULL")
                .bind(client_id)
                .fetch_all(&mut *tx)
                .await?;
        let current: Vec<i64> = current.into_iter().map(|r| r.0).collect();
        let mut kept = Vec::new();
        for id in contacts.iter().filter_map(|k| k.id) {
            if !current.contains(&id) {
                return Err(EditError::Conflict(format!(
                    "contacts: {id} is not a contact of client {client_id}"
                )));
            }
            if kept.contains(&id) {
                return Err(EditError::Conflict(format!(
                    "contacts: {id} is listed twice"
                )));
            }
            kept.push(id);
        }
        // Free every position first: (client, position) is unique at each row.
        sqlx::query(
            "UPDATE contacts SET position = -id WHERE client_id = $1 AND removed_at IS NULL",
        )
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        let mut added = 0;
        for (i, k) in contacts.iter().enumerate() {
            let position = i as i64 + 1;
            match k.id {
                Some(id) => {
                    sqlx::query(
                        "UPDATE contacts SET position = $1, name = $2, relation = $3, \
                         phone = $4, notify_channel = $5, notify_address = $6, \
                         updated_at = $7 WHERE id = $8",
                    )
                    .bind(position)
                    .bind(&k.name)
                    .bind(&k.relation)
                    .bind(k.phone.as_str())
                    .bind(k.notify.as_ref().map(|n| n.channel()))
                    .bind(k.notify.as_ref().map_or("", |n| n.address()))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    tx.add_contact(client_id, position, k, now).await?;
                    added += 1;
                }
            }
        }
        let mut removed = 0;
        for id in current.iter().filter(|id| !kept.contains(id)) {
            let (notices,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM notifications WHERE contact_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if notices == 0 {
                sqlx::query("DELETE FROM contacts WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "UPDATE contacts SET removed_at = $1, notify_channel = NULL, \
                     updated_at = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            removed += 1;
        }
        let subject = format!("client:{client_id}");
        let detail = format!(
            "{} contacts: {} kept, {added} added, {removed} removed",
            contacts.len(),
            kept.len()
        );
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "contacts_replaced",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        let list: Vec<ContactRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts \
             WHERE client_id = $1 AND removed_at IS NULL ORDER BY position"
        )))
        .bind(client_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(list)
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Clients in id order after `q.after`, filtered; without health data.
    pub async fn clients_page(
        &self,
        q: &ClientQuery<'_>,
    ) -> Result<Vec<ClientListRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.clients_page(q).await,
            Db::Postgres(p, _) => p.acquire().await?.clients_page(q).await,
        }?)
    }

    /// One client with their contacts in order.
    pub async fn client_record(&self, id: i64) -> Result<Option<ClientRecord>, StoreError> {
        let client = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.client_record(id).await,
            Db::Postgres(p, _) => p.acquire().await?.client_record(id).await,
        }?;
        let Some(client) = client else {
            return Ok(None);
        };
        let mut client = client.opened(self.vault())?;
        client.contacts = self.contacts_of(id).await?;
        Ok(Some(client))
    }

    /// A client's contacts in order (not those taken off the list).
    pub async fn contacts_of(&self, client_id: i64) -> Result<Vec<ContactRecord>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.contacts_of(client_id).await,
            Db::Postgres(p, _) => p.acquire().await?.contacts_of(client_id).await,
        }?)
    }

    /// A new client with their contacts, audited as done by `actor`. Returns the id.
    pub async fn create_client(
        &self,
        entry: &ClientEntry,
        contacts: &[ContactEntry],
        actor: &str,
    ) -> Result<i64, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        let vault = self.vault();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .create_client(begin, vault, entry, contacts, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .create_client(begin, vault, entry, contacts, actor, now)
                    .await
            }
        }
    }

    /// Replace a client's profile (not their contacts, not `away_until`).
    /// The audit entry names the fields that changed, never their values.
    pub async fn update_client(
        &self,
        id: i64,
        entry: &ClientEntry,
        actor: &str,
    ) -> Result<(), EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        let vault = self.vault();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .update_client(begin, vault, id, entry, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .update_client(begin, vault, id, entry, actor, now)
                    .await
            }
        }
    }

    /// Mark a client away until `until` (or back home with `None`), audited.
    pub async fn set_client_away_audited(
        &self,
        id: i64,
        until: Option<i64>,
        actor: &str,
    ) -> Result<(), EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_away_audited(begin, id, until, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .set_away_audited(begin, id, until, actor, now)
                    .await
            }
        }
    }

    /// Replace a client's contact list with `contacts`, in that order.
    ///
    /// A contact given with its `id` keeps its row (and so its MQTT topic);
    /// one without is new; one left out is deleted, or, when notices were
    /// sent to it, kept for that history with no channel, a position of
    /// `-id` and `removed_at` set. Returns the new list.
    pub async fn replace_contacts(
        &self,
        client_id: i64,
        contacts: &[ContactEntry],
        actor: &str,
    ) -> Result<Vec<ContactRecord>, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .replace_contacts(begin, client_id, contacts, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .replace_contacts(begin, client_id, contacts, actor, now)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_text_is_literal() {
        assert_eq!(contains_pattern("Chen"), "%chen%");
        assert_eq!(contains_pattern("50%_a\\"), "%50\\%\\_a\\\\%");
        assert_eq!(contains_pattern("陈秀英"), "%陈秀英%");
    }
}
