//! The family / keyholder notification cascade: one row per incident and
//! contact, with its delivery status, attempts and the last error.

use serde::{Deserialize, Serialize};

use super::incidents::insert_event;
use super::{Db, StoreError, now_ms, on_pool, on_write_pool};

/// Who hears of an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cascade {
    /// In the client's order, one at a time, until one is reached: the
    /// keyholder cascade of social alarm services.
    #[default]
    UntilReached,
    /// Everyone at once.
    Everyone,
}

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
    /// Notifications due at `now` (new, retries, and attempts whose lease ran out).
    pub async fn due_notifications(&self, now: i64, limit: i64) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = on_pool!(self, |p| sqlx::query_as(
            "SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at LIMIT $2"
        )
        .bind(now)
        .bind(limit)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Take one due notification for an attempt: counts the attempt and holds
    /// it until `lease_until`, so a crash mid-send means a retry, not silence.
    /// `None` when it is not due (another pass took it, or it is settled).
    pub async fn begin_notification_attempt(
        &self,
        id: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<NotificationJob>, StoreError> {
        let taken = on_write_pool!(self, |p| sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = $1, \
             updated_at = $2 WHERE id = $3 AND status = 'pending' AND next_attempt_at <= $4"
        )
        .bind(lease_until)
        .bind(now_ms())
        .bind(id)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        if taken == 0 {
            return Ok(None);
        }
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT n.id, n.incident_id, n.contact_id, n.channel, n.address, n.attempts, \
             ct.name AS contact_name, ct.relation, c.name AS client_name, \
             c.address AS client_address, i.kind, i.opened_at, c.lat AS home_lat, \
             c.lon AS home_lon \
             FROM notifications n JOIN contacts ct ON ct.id = n.contact_id \
             JOIN incidents i ON i.id = n.incident_id JOIN clients c ON c.id = i.client_id \
             WHERE n.id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await)?)
    }

    /// The last position a device of the incident reported, if any.
    pub async fn incident_position(
        &self,
        incident_id: i64,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT lat, lon FROM alarms WHERE incident_id = $1 AND lat IS NOT NULL \
             AND lon IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        .bind(incident_id)
        .fetch_optional(p)
        .await)?)
    }

    /// Delivered: on the timeline, and the cascade stops (later contacts are skipped).
    pub async fn notification_delivered(&self, job: &NotificationJob) -> Result<(), StoreError> {
        let now = now_ms();
        let detail = format!(
            "{} ({}) told by {}",
            job.contact_name, job.relation, job.channel
        );
        on_write_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let updated = sqlx::query(
                "UPDATE notifications SET status = 'delivered', delivered_at = $1, \
                 next_attempt_at = NULL, last_error = NULL, updated_at = $1 \
                 WHERE id = $2 AND status = 'pending'",
            )
            .bind(now)
            .bind(job.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 1 {
                sqlx::query(
                    "UPDATE notifications SET status = 'skipped', updated_at = $1 \
                     WHERE incident_id = $2 AND status = 'waiting'",
                )
                .bind(now)
                .bind(job.incident_id)
                .execute(&mut *tx)
                .await?;
                insert_event!(
                    tx,
                    job.incident_id,
                    now,
                    "system",
                    "family_notified",
                    None::<&str>,
                    &detail
                )?;
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
            insert_event!(
                tx,
                job.incident_id,
                now,
                "system",
                "family_notice_failed",
                None::<&str>,
                &detail
            )?;
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
                    insert_event!(
                        tx,
                        job.incident_id,
                        now,
                        "system",
                        "family_not_reached",
                        None::<&str>,
                        "nobody on the contact list could be reached: telephone them"
                    )?;
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
