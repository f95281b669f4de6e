//! Providers with the areas they are contracted for, and their carers.

use crate::audit::AuditSql;
use serde::Serialize;

use super::EditError;
use crate::registry::RegistrySql;
use crate::{AuditEntry, Db, NewCarer, NewProvider, StoreError, now_ms, on_pool, on_write_pool};

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

impl Db {
    /// Every provider with its coverage, in id order.
    pub async fn providers_list(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let mut providers: Vec<ProviderRecord> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id, name, service_types, capacity, updated_at FROM providers ORDER BY id"
        )
        .fetch_all(p)
        .await)?;
        let areas: Vec<ProviderArea> = on_pool!(self, |p| sqlx::query_as(
            "SELECT provider_id, district, street, rank FROM provider_coverage \
             ORDER BY provider_id, district, street"
        )
        .fetch_all(p)
        .await)?;
        for a in areas {
            if let Ok(i) = providers.binary_search_by_key(&a.provider_id, |p| p.id) {
                providers[i].coverage.push(a);
            }
        }
        Ok(providers)
    }

    /// One provider with its coverage.
    pub async fn provider_record(&self, id: i64) -> Result<Option<ProviderRecord>, StoreError> {
        let provider: Option<ProviderRecord> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id, name, service_types, capacity, updated_at FROM providers WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await)?;
        let Some(mut provider) = provider else {
            return Ok(None);
        };
        provider.coverage = on_pool!(self, |p| sqlx::query_as(
            "SELECT provider_id, district, street, rank FROM provider_coverage \
             WHERE provider_id = $1 ORDER BY district, street"
        )
        .bind(id)
        .fetch_all(p)
        .await)?;
        Ok(Some(provider))
    }

    /// A new provider with its coverage, audited. Returns its id.
    pub async fn create_provider(&self, pr: &NewProvider, actor: &str) -> Result<i64, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        on_write_pool!(self, |p| {
            let mut tx = p.begin_with(begin).await?;
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
        })
    }

    /// Carers in id order, of one provider when given.
    pub async fn carers_list(
        &self,
        provider_id: Option<i64>,
    ) -> Result<Vec<CarerListRow>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT id, provider_id, name, phone, lat, lon, on_duty, busy, updated_at \
             FROM carers WHERE ($1 IS NULL OR provider_id = $1) ORDER BY id"
        )
        .bind(provider_id)
        .fetch_all(p)
        .await)?)
    }

    /// One carer as the registry lists them.
    pub async fn carer_listing(&self, id: i64) -> Result<Option<CarerListRow>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT id, provider_id, name, phone, lat, lon, on_duty, busy, updated_at \
             FROM carers WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await)?)
    }

    /// A new carer of an existing provider, audited. Returns their id.
    pub async fn create_carer(&self, c: &NewCarer, actor: &str) -> Result<i64, EditError> {
        let now = now_ms();
        let begin = self.begin_write();
        on_write_pool!(self, |p| {
            let mut tx = p.begin_with(begin).await?;
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
        })
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
        on_write_pool!(self, |p| {
            let mut tx = p.begin_with(begin).await?;
            let n = sqlx::query(
                "UPDATE carers SET on_duty = $1, busy = $2, updated_at = $3 WHERE id = $4",
            )
            .bind(on_duty)
            .bind(busy)
            .bind(now)
            .bind(carer_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
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
        })
    }
}
