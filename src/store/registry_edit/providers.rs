//! Providers with the areas they are contracted for, and their carers.
//!
//! The statements are [`ProviderSql`]'s, written once for both backends (see
//! [`crate::tx`]).

use crate::audit::AuditSql;
use serde::Serialize;
use sqlx::SqlSafeStr;

use super::EditError;
use crate::backend::Affected;
use crate::registry::RegistrySql;
use crate::{AuditEntry, Db, NewCarer, NewProvider, StoreError, now_ms};

/// One area a provider covers: a whole district (`street` null) or one street.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct ProviderArea {
    #[serde(skip)]
    pub provider_id: i64,
    pub district: String,
    pub street: Option<String>,
    /// Lower first where several providers cover one address.
    pub rank: i64,
}

/// A provider as the registry lists it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProviderRecord {
    pub id: i64,
    pub name: String,
    /// Comma-separated, as stored.
    pub service_types: String,
    pub capacity: i64,
    pub updated_at: i64,
    #[sqlx(skip)]
    pub coverage: Vec<ProviderArea>,
}

/// A carer as the registry lists them.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct CarerListRow {
    pub id: i64,
    pub provider_id: i64,
    pub name: String,
    pub phone: String,
    /// Where they start from (their base or home).
    pub lat: f64,
    pub lon: f64,
    pub on_duty: bool,
    /// Their own "busy" (a break, a job the service does not know of).
    pub busy: bool,
    pub updated_at: i64,
}

/// The providers' and carers' statements and transactions, written once for
/// both backends (see [`crate::tx`]): called on a connection of the
/// backend's pool.
pub(crate) trait ProviderSql {
    /// Every provider with its coverage, in id order.
    async fn providers_list(&mut self) -> Result<Vec<ProviderRecord>, sqlx::Error>;
    /// One provider with its coverage.
    async fn provider_record(&mut self, id: i64) -> Result<Option<ProviderRecord>, sqlx::Error>;
    /// [`Db::create_provider`]'s transaction, begun by `begin`.
    async fn create_provider(
        &mut self,
        begin: &'static str,
        pr: &NewProvider,
        actor: &str,
        now: i64,
    ) -> Result<i64, EditError>;
    /// Carers in id order, of one provider when given.
    async fn carers_list(
        &mut self,
        provider_id: Option<i64>,
    ) -> Result<Vec<CarerListRow>, sqlx::Error>;
    /// One carer as the registry lists them.
    async fn carer_listing(&mut self, id: i64) -> Result<Option<CarerListRow>, sqlx::Error>;
    /// [`Db::create_carer`]'s transaction, begun by `begin`.
    async fn create_carer(
        &mut self,
        begin: &'static str,
        c: &NewCarer,
        actor: &str,
        now: i64,
    ) -> Result<i64, EditError>;
    /// [`Db::set_carer_duty_audited`]'s transaction, begun by `begin`.
    async fn set_duty_audited(
        &mut self,
        begin: &'static str,
        carer_id: i64,
        on_duty: bool,
        busy: bool,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError>;
}

impl<C> ProviderSql for C
where
    C: sqlx::Connection + RegistrySql + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> f64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    f64: sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn providers_list(&mut self) -> Result<Vec<ProviderRecord>, sqlx::Error> {
        let mut providers: Vec<ProviderRecord> = sqlx::query_as(
            "SELECT id, name, service_types, capacity, updated_at FROM providers ORDER BY id",
        )
        .fetch_all(&mut *self)
        .await?;
        let areas: Vec<ProviderArea> = sqlx::query_as(
            "SELECT provider_id, district, street, rank FROM provider_coverage \
             ORDER BY provider_id, district, street",
        )
        .fetch_all(&mut *self)
        .await?;
        for a in areas {
            if let Ok(i) = providers.binary_search_by_key(&a.provider_id, |p| p.id) {
                providers[i].coverage.push(a);
            }
        }
        Ok(providers)
    }

    async fn provider_record(&mut self, id: i64) -> Result<Option<ProviderRecord>, sqlx::Error> {
        let provider: Option<ProviderRecord> = sqlx::query_as(
            "SELECT id, name, service_types, capacity, updated_at FROM providers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self)
        .await?;
        let Some(mut provider) = provider else {
            return Ok(None);
        };
        provider.coverage = sqlx::query_as(
            "SELECT provider_id, district, street, rank FROM provider_coverage \
             WHERE provider_id = $1 ORDER BY district, street",
        )
        .bind(id)
        .fetch_all(&mut *self)
        .await?;
        Ok(Some(provider))
    }

    async fn create_provider(
        &mut self,
        begin: &'static str,
        pr: &NewProvider,
        actor: &str,
        now: i64,
    ) -> Result<i64, EditError> {
        // Made an owned `SqlStr` first: a `&'static str` passed to
        // `begin_with` leaves the callers' futures not `Send`.
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let id = tx.insert_provider_rows(pr, now).await?;
        let subject = format!("provider:{id}");
        let detail = format!("{} areas, rank {}", pr.coverage.len(), pr.rank);
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "provider_created",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn carers_list(
        &mut self,
        provider_id: Option<i64>,
    ) -> Result<Vec<CarerListRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, provider_id, name, phone, lat, lon, on_duty, busy, updated_at \
             FROM carers WHERE ($1 IS NULL OR provider_id = $1) ORDER BY id",
        )
        .bind(provider_id)
        .fetch_all(self)
        .await
    }

    async fn carer_listing(&mut self, id: i64) -> Result<Option<CarerListRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, provider_id, name, phone, lat, lon, on_duty, busy, updated_at \
             FROM carers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self)
        .await
    }

    async fn create_carer(
        &mut self,
        begin: &'static str,
        c: &NewCarer,
        actor: &str,
        now: i64,
    ) -> Result<i64, EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let provider: Option<(i64,)> = sqlx::query_as("SELECT id FROM providers WHERE id = $1")
            .bind(c.provider_id)
            .fetch_optional(&mut *tx)
            .await?;
        if provider.is_none() {
            return Err(EditError::Conflict(format!(
                "provider_id: there is no provider {}",
                c.provider_id
            )));
        }
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
        .fetch_one(&mut *tx)
        .await?;
        let subject = format!("carer:{id}");
        let detail = format!("provider {}", c.provider_id);
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "carer_created",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn set_duty_audited(
        &mut self,
        begin: &'static str,
        carer_id: i64,
        on_duty: bool,
        busy: bool,
        actor: &str,
        now: i64,
    ) -> Result<(), EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let n =
            sqlx::query("UPDATE carers SET on_duty = $1, busy = $2, updated_at = $3 WHERE id = $4")
                .bind(on_duty)
                .bind(busy)
                .bind(now)
                .bind(carer_id)
                .execute(&mut *tx)
                .await?
                .affected();
        if n == 0 {
            return Err(EditError::NotFound("carer"));
        }
        let subject = format!("carer:{carer_id}");
        let detail = format!(
            "{}{}",
            if on_duty { "on duty" } else { "off duty" },
            if busy { ", busy" } else { "" }
        );
        tx.append_audit(
            &AuditEntry {
                actor,
                action: "carer_duty",
                subject: &subject,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Every provider with its coverage, in id order.
    pub async fn providers_list(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.providers_list().await,
            Db::Postgres(p, _) => p.acquire().await?.providers_list().await,
        }?)
    }

    /// One provider with its coverage.
    pub async fn provider_record(&self, id: i64) -> Result<Option<ProviderRecord>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.provider_record(id).await,
            Db::Postgres(p, _) => p.acquire().await?.provider_record(id).await,
        }?)
    }

    /// A new provider with its coverage, audited. Returns its id.
    pub async fn create_provider(&self, pr: &NewProvider, actor: &str) -> Result<i64, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .create_provider(begin, pr, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .create_provider(begin, pr, actor, now)
                    .await
            }
        }
    }

    /// Carers in id order, of one provider when given.
    pub async fn carers_list(
        &self,
        provider_id: Option<i64>,
    ) -> Result<Vec<CarerListRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.carers_list(provider_id).await,
            Db::Postgres(p, _) => p.acquire().await?.carers_list(provider_id).await,
        }?)
    }

    /// One carer as the registry lists them.
    pub async fn carer_listing(&self, id: i64) -> Result<Option<CarerListRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.carer_listing(id).await,
            Db::Postgres(p, _) => p.acquire().await?.carer_listing(id).await,
        }?)
    }

    /// A new carer of an existing provider, audited. Returns their id.
    pub async fn create_carer(&self, c: &NewCarer, actor: &str) -> Result<i64, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .create_carer(begin, c, actor, now)
                    .await
            }
            Db::Postgres(p, _) => p.acquire().await?.create_carer(begin, c, actor, now).await,
        }
    }

    /// Put a carer on or off duty and set their "busy", audited.
    pub async fn set_carer_duty_audited(
        &self,
        carer_id: i64,
        on_duty: bool,
        busy: bool,
        actor: &str,
    ) -> Result<(), EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_duty_audited(begin, carer_id, on_duty, busy, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .set_duty_audited(begin, carer_id, on_duty, busy, actor, now)
                    .await
            }
        }
    }
}
