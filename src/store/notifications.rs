//! The family / keyholder notification cascade: one row per incident and
//! contact, with its delivery status, attempts and the last error.
//! Its statements are written once for both backends (`NotificationSql`).

use serde::Serialize;

use super::backend::Affected;
use super::tx::{NewLine, TxSql};
use super::{Db, StoreError, now_ms};
pub use pingantong_domain::Cascade;

/// Start the family notification cascades of new incidents, in one
/// statement for several: this, then rows `(incident, client, everyone (0 or
/// 1), at)` each value cast to BIGINT, then [`NOTIFY_WHERE`]. The first
/// contact (or, for `everyone`, all of them) is due at `at`; the others wait
/// for the cascade to reach them.
pub(super) const NOTIFY_FROM_VALUES: &str = "INSERT INTO notifications (incident_id, contact_id, \
     position, channel, address, status, next_attempt_at, created_at, updated_at) \
     SELECT v.column1, c.id, c.position, c.notify_channel, c.notify_address, \
     CASE WHEN v.column3 = 1 OR c.position = (SELECT MIN(position) FROM contacts \
          WHERE client_id = c.client_id AND notify_channel IS NOT NULL) \
          THEN 'pending' ELSE 'waiting' END, \
     v.column4, v.column4, v.column4 FROM (VALUES ";

/// The end of [`NOTIFY_FROM_VALUES`].
pub(super) const NOTIFY_WHERE: &str = ") AS v, contacts c \
     WHERE c.client_id = v.column2 AND c.notify_channel IS NOT NULL \
     ON CONFLICT (incident_id, contact_id) DO NOTHING";

/// One notice to deliver, with what it must say.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationJob {
    pub id: i64,
    pub incident_id: i64,
    pub contact_id: i64,
    pub channel: String,
    pub address: String,
    /// Including the one now starting.
    pub attempts: i64,
    pub contact_name: String,
    pub relation: String,
    pub client_name: String,
    pub client_address: String,
    pub kind: String,
    pub opened_at: i64,
    pub home_lat: Option<f64>,
    pub home_lon: Option<f64>,
    /// The last position a device of the incident reported, if any.
    pub device_lat: Option<f64>,
    pub device_lon: Option<f64>,
    /// Sealed; opened into `device_lat`, `device_lon` as read.
    #[sqlx(default)]
    device_position: Option<String>,
}

/// A notification as the console and the tests see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct NotificationRow {
    pub id: i64,
    pub contact_id: i64,
    pub position: i64,
    pub channel: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// What giving up on one contact leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The next contact in order is being tried now.
    NextContact,
    /// Others are still being tried, or someone was reached.
    OthersPending,
    /// Nobody on the list could be reached.
    NobodyReached,
}

/// The notices' statements, written once for both backends (see
/// [`super::tx`]): called on a connection of the backend's pool.
pub(crate) trait NotificationSql {
    /// Count an attempt on up to `limit` due notices and hold each until
    /// `lease_until`; their ids, due order.
    async fn take_due_notices(
        &mut self,
        now: i64,
        lease_until: i64,
        limit: i64,
        stamp: i64,
    ) -> Result<Vec<(i64,)>, sqlx::Error>;
    /// What each notice of `list` (ids the database returned) must say.
    async fn notice_jobs(&mut self, list: &str) -> Result<Vec<NotificationJob>, sqlx::Error>;
    /// Mark `jobs` delivered (those still pending, listed in `list`), skip the
    /// later contacts of their cascades and write a timeline line each.
    async fn deliver_notices(
        &mut self,
        jobs: &[NotificationJob],
        list: &str,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    /// A failed attempt tried again at `retry_at`.
    async fn retry_notice(
        &mut self,
        id: i64,
        retry_at: i64,
        error: &str,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    /// Out of attempts: see [`Db::notification_gave_up`].
    async fn give_up_notice(
        &mut self,
        job: &NotificationJob,
        error: &str,
        detail: &str,
        next_at: i64,
        now: i64,
    ) -> Result<GaveUp, sqlx::Error>;
    /// Every notification of an incident, in the client's order.
    async fn notices_of(&mut self, incident_id: i64) -> Result<Vec<NotificationRow>, sqlx::Error>;
}

impl<C> NotificationSql for C
where
    C: sqlx::Connection + TxSql,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Decode<'q, C::Database>,
    Option<f64>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'q> &'q str: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn take_due_notices(
        &mut self,
        now: i64,
        lease_until: i64,
        limit: i64,
        stamp: i64,
    ) -> Result<Vec<(i64,)>, sqlx::Error> {
        // The outer conditions repeat the inner ones: a row another server
        // took meanwhile is re-checked against them (PostgreSQL) and skipped.
        sqlx::query_as(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = $1, \
             updated_at = $2 WHERE status = 'pending' AND next_attempt_at <= $3 AND id IN \
             (SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= $3 \
              ORDER BY next_attempt_at LIMIT $4) RETURNING id",
        )
        .bind(lease_until)
        .bind(stamp)
        .bind(now)
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn notice_jobs(&mut self, list: &str) -> Result<Vec<NotificationJob>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT n.id, n.incident_id, n.contact_id, n.channel, n.address, n.attempts, \
             ct.name AS contact_name, ct.relation, c.name AS client_name, \
             c.address AS client_address, i.kind, i.opened_at, c.lat AS home_lat, \
             c.lon AS home_lon, p.lat AS device_lat, p.lon AS device_lon, \
             p.position AS device_position \
             FROM notifications n JOIN contacts ct ON ct.id = n.contact_id \
             JOIN incidents i ON i.id = n.incident_id JOIN clients c ON c.id = i.client_id \
             LEFT JOIN alarms p ON p.id = (SELECT MAX(a.id) FROM alarms a \
               WHERE a.incident_id = i.id AND (a.position IS NOT NULL OR a.lat IS NOT NULL)) \
             WHERE n.id IN ({list})"
        )))
        .persistent(false)
        .fetch_all(self)
        .await
    }

    async fn deliver_notices(
        &mut self,
        jobs: &[NotificationJob],
        list: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        let updated: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE notifications SET status = 'delivered', delivered_at = $1, \
             next_attempt_at = NULL, last_error = NULL, updated_at = $1 \
             WHERE id IN ({list}) AND status = 'pending' RETURNING id"
        )))
        .persistent(false)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let told: Vec<&NotificationJob> = jobs
            .iter()
            .filter(|j| updated.iter().any(|(id,)| *id == j.id))
            .collect();
        if !told.is_empty() {
            let incidents = told
                .iter()
                .map(|j| j.incident_id.to_string())
                .collect::<Vec<_>>()
                .join(",");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE notifications SET status = 'skipped', updated_at = $1 \
                 WHERE incident_id IN ({incidents}) AND status = 'waiting'"
            )))
            .persistent(false)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO incident_events (incident_id, at, actor, action, to_state, detail) ",
            );
            q.push_values(&told, |mut b, j| {
                b.push_bind(j.incident_id)
                    .push_bind(now)
                    .push_bind("system")
                    .push_bind("family_notified")
                    .push_bind(None::<&str>)
                    .push_bind(format!(
                        "{} ({}) told by {}",
                        j.contact_name, j.relation, j.channel
                    ));
            });
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn retry_notice(
        &mut self,
        id: i64,
        retry_at: i64,
        error: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET next_attempt_at = $1, last_error = $2, updated_at = $3 \
             WHERE id = $4 AND status = 'pending'",
        )
        .bind(retry_at)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn give_up_notice(
        &mut self,
        job: &NotificationJob,
        error: &str,
        detail: &str,
        next_at: i64,
        now: i64,
    ) -> Result<GaveUp, sqlx::Error> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE notifications SET status = 'failed', next_attempt_at = NULL, \
             last_error = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'",
        )
        .bind(error)
        .bind(now)
        .bind(job.id)
        .execute(&mut *tx)
        .await?
        .affected();
        if updated == 0 {
            return Ok(GaveUp::OthersPending);
        }
        tx.line(NewLine {
            incident_id: job.incident_id,
            at: now,
            actor: "system",
            action: "family_notice_failed",
            to_state: None,
            detail,
        })
        .await?;
        let next: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM notifications WHERE incident_id = $1 AND status = 'waiting' \
             ORDER BY position LIMIT 1",
        )
        .bind(job.incident_id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = if let Some((next,)) = next {
            sqlx::query(
                "UPDATE notifications SET status = 'pending', next_attempt_at = $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(next_at)
            .bind(now)
            .bind(next)
            .execute(&mut *tx)
            .await?;
            GaveUp::NextContact
        } else {
            let (open,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM notifications WHERE incident_id = $1 \
                 AND status IN ('pending', 'delivered')",
            )
            .bind(job.incident_id)
            .fetch_one(&mut *tx)
            .await?;
            if open == 0 {
                tx.line(NewLine {
                    incident_id: job.incident_id,
                    at: now,
                    actor: "system",
                    action: "family_not_reached",
                    to_state: None,
                    detail: "nobody on the contact list could be reached: telephone them",
                })
                .await?;
                GaveUp::NobodyReached
            } else {
                GaveUp::OthersPending
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn notices_of(&mut self, incident_id: i64) -> Result<Vec<NotificationRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, contact_id, position, channel, status, attempts, last_error, delivered_at \
             FROM notifications WHERE incident_id = $1 ORDER BY position",
        )
        .bind(incident_id)
        .fetch_all(self)
        .await
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Take up to `limit` due notifications (new, retries, and attempts whose
    /// lease ran out) for an attempt each, in one statement: counts the
    /// attempt and holds each until `lease_until`, so a crash mid-send means
    /// a retry, not silence. Then reads, in one more, what each must say.
    pub async fn begin_notification_attempts(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<NotificationJob>, StoreError> {
        let stamp = now_ms();
        let taken = match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.take_due_notices(now, lease_until, limit, stamp).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.take_due_notices(now, lease_until, limit, stamp).await
            }
        }?;
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        // Integers the database just returned: listed inline.
        let list = taken
            .iter()
            .map(|(id,)| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut jobs = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.notice_jobs(&list).await,
            Db::Postgres(p, _) => p.acquire().await?.notice_jobs(&list).await,
        }?;
        for j in &mut jobs {
            let at = self.position(
                j.device_position.take().as_deref(),
                j.device_lat,
                j.device_lon,
            )?;
            (j.device_lat, j.device_lon) = (at.map(|a| a.0), at.map(|a| a.1));
        }
        // Due order, as taken.
        jobs.sort_by_key(|j| taken.iter().position(|(id,)| *id == j.id));
        Ok(jobs)
    }

    /// Delivered: each on its incident's timeline, and each cascade stops
    /// (later contacts are skipped); all in one transaction. A job settled
    /// meanwhile (by another server) is left as it is.
    pub async fn notifications_delivered(
        &self,
        jobs: &[NotificationJob],
    ) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let list = jobs
            .iter()
            .map(|j| j.id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Ok(match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.deliver_notices(jobs, &list, now).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.deliver_notices(jobs, &list, now).await
            }
        }?)
    }

    /// A failed attempt that will be tried again at `retry_at`.
    pub async fn notification_retry(
        &self,
        id: i64,
        retry_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.retry_notice(id, retry_at, error, now).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.retry_notice(id, retry_at, error, now).await
            }
        }?)
    }

    /// Out of attempts: the failure goes on the timeline and the next contact
    /// in order (if the cascade waits on this one) becomes due at `next_at`.
    pub async fn notification_gave_up(
        &self,
        job: &NotificationJob,
        error: &str,
        next_at: i64,
    ) -> Result<GaveUp, StoreError> {
        let now = now_ms();
        let detail = format!(
            "{} ({}) not reached by {} after {} attempts: {error}",
            job.contact_name, job.relation, job.channel, job.attempts
        );
        Ok(match self {
            Db::Sqlite { write, .. } => {
                let mut c = write.acquire().await?;
                c.give_up_notice(job, error, &detail, next_at, now).await
            }
            Db::Postgres(p, _) => {
                let mut c = p.acquire().await?;
                c.give_up_notice(job, error, &detail, next_at, now).await
            }
        }?)
    }

    /// Every notification of an incident, in the client's order.
    pub async fn notifications_of(
        &self,
        incident_id: i64,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.notices_of(incident_id).await,
            Db::Postgres(p, _) => p.acquire().await?.notices_of(incident_id).await,
        }?)
    }
}
