//! The family / keyholder notification cascade: one row per incident and
//! contact, with its delivery status, attempts and the last error.

use serde::Serialize;

use super::tx::{NewLine, TxSql};
use super::{Db, StoreError, now_ms, on_pool, on_write_pool};
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
        // The outer conditions repeat the inner ones: a row another server
        // took meanwhile is re-checked against them (PostgreSQL) and skipped.
        let taken: Vec<(i64,)> = on_write_pool!(self, |p| sqlx::query_as(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = $1, \
             updated_at = $2 WHERE status = 'pending' AND next_attempt_at <= $3 AND id IN \
             (SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= $3 \
              ORDER BY next_attempt_at LIMIT $4) RETURNING id"
        )
        .bind(lease_until)
        .bind(now_ms())
        .bind(now)
        .bind(limit)
        .fetch_all(p)
        .await)?;
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        // Integers the database just returned: listed inline.
        let list = taken
            .iter()
            .map(|(id,)| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut jobs: Vec<NotificationJob> =
            on_pool!(self, |p| sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
            .fetch_all(p)
            .await)?;
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
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
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
            tx.commit().await?;
            Ok(())
        })
    }

    /// A failed attempt that will be tried again at `retry_at`.
    pub async fn notification_retry(
        &self,
        id: i64,
        retry_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        on_write_pool!(self, |p| sqlx::query(
            "UPDATE notifications SET next_attempt_at = $1, last_error = $2, updated_at = $3 \
             WHERE id = $4 AND status = 'pending'"
        )
        .bind(retry_at)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
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
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let updated = sqlx::query(
                "UPDATE notifications SET status = 'failed', next_attempt_at = NULL, \
                 last_error = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'",
            )
            .bind(error)
            .bind(now)
            .bind(job.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                return Ok(GaveUp::OthersPending);
            }
            tx.line(NewLine {
                incident_id: job.incident_id,
                at: now,
                actor: "system",
                action: "family_notice_failed",
                to_state: None,
                detail: &detail,
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
        })
    }

    /// Every notification of an incident, in the client's order.
    pub async fn notifications_of(
        &self,
        incident_id: i64,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT id, contact_id, position, channel, status, attempts, last_error, delivered_at \
             FROM notifications WHERE incident_id = $1 ORDER BY position"
        )
        .bind(incident_id)
        .fetch_all(p)
        .await)?)
    }
}
