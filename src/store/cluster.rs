//! The servers sharing one database, and what each needs to know of the
//! devices the others hear.
//!
//! A server holds a lease on its instance id and renews it every few
//! seconds; the others take it for gone once the lease has run out (or it
//! stopped cleanly). Supervision reads the database's truth of when each
//! device last reported, whichever server heard it: a device beating on one
//! server is never taken for silent by another.

use std::collections::HashMap;

use super::backend::Affected;
use super::{Db, StoreError, now_ms};

/// A server as the others see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ServerRow {
    pub instance_id: String,
    /// This run of the server: a restart has a new one.
    pub boot_id: String,
    pub version: String,
    /// The host it runs on and its process id there.
    pub host: String,
    pub pid: i64,
    pub started_at: i64,
    pub renewed_at: i64,
    pub lease_until: i64,
    pub stopped_at: Option<i64>,
}

impl ServerRow {
    /// Running, as far as the others can tell at `now`.
    pub fn is_up(&self, now: i64) -> bool {
        self.stopped_at.is_none() && self.lease_until > now
    }
}

/// A report some server heard, as the database has it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HeardRow {
    pub device_id: String,
    pub protocol: String,
    pub heard_at: i64,
}

/// Which of a device's latest the database is asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Latest {
    Report,
    Test,
}

/// The statements, written once for both backends (see [`super::tx`]).
pub(crate) trait ClusterSql {
    /// Take the instance id for this boot, unless another boot holds a live
    /// lease on it: one atomic upsert. Returns whether it was taken.
    async fn take_instance(&mut self, row: &ServerRow) -> Result<bool, sqlx::Error>;
    /// Take the instance id from `holder`, if it has not renewed since it was read.
    async fn take_over(&mut self, row: &ServerRow, holder: &ServerRow)
    -> Result<bool, sqlx::Error>;
    async fn renew_instance(
        &mut self,
        instance: &str,
        boot: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, sqlx::Error>;
    async fn stop_instance(
        &mut self,
        instance: &str,
        boot: &str,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    async fn all_servers(&mut self) -> Result<Vec<ServerRow>, sqlx::Error>;
    async fn presence_after(&mut self, since: i64) -> Result<Vec<HeardRow>, sqlx::Error>;
    /// Each of `ids`' latest report (`Latest::Report`) or periodic test.
    async fn latest_of(
        &mut self,
        ids: &[String],
        what: Latest,
    ) -> Result<Vec<HeardRow>, sqlx::Error>;
    async fn tests_after(&mut self, after_id: i64) -> Result<Vec<(i64, HeardRow)>, sqlx::Error>;
    async fn newest_alarm_id(&mut self) -> Result<i64, sqlx::Error>;
}

impl<C> ClusterSql for C
where
    C: sqlx::Connection,
    C::Database: sqlx::database::HasStatementCache,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'r> ServerRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> HeardRow: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> (i64, String, String, i64): sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    for<'r> (i64,): sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
{
    async fn take_instance(&mut self, row: &ServerRow) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO servers (instance_id, boot_id, version, host, pid, started_at, \
             renewed_at, lease_until, stopped_at) VALUES ($1, $2, $3, $6, $7, $4, $4, $5, NULL) \
             ON CONFLICT (instance_id) DO UPDATE SET boot_id = excluded.boot_id, \
             version = excluded.version, host = excluded.host, pid = excluded.pid, \
             started_at = excluded.started_at, \
             renewed_at = excluded.renewed_at, lease_until = excluded.lease_until, \
             stopped_at = NULL \
             WHERE servers.boot_id = excluded.boot_id OR servers.stopped_at IS NOT NULL \
             OR servers.lease_until <= excluded.started_at",
        )
        .bind(row.instance_id.as_str())
        .bind(row.boot_id.as_str())
        .bind(row.version.as_str())
        .bind(row.started_at)
        .bind(row.lease_until)
        .bind(row.host.as_str())
        .bind(row.pid)
        .execute(self)
        .await?;
        Ok(done.affected() == 1)
    }

    async fn take_over(
        &mut self,
        row: &ServerRow,
        holder: &ServerRow,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE servers SET boot_id = $1, version = $2, host = $3, pid = $4, \
             started_at = $5, renewed_at = $5, lease_until = $6, stopped_at = NULL \
             WHERE instance_id = $7 AND boot_id = $8 AND renewed_at = $9",
        )
        .bind(row.boot_id.as_str())
        .bind(row.version.as_str())
        .bind(row.host.as_str())
        .bind(row.pid)
        .bind(row.started_at)
        .bind(row.lease_until)
        .bind(row.instance_id.as_str())
        .bind(holder.boot_id.as_str())
        .bind(holder.renewed_at)
        .execute(self)
        .await?;
        Ok(done.affected() == 1)
    }

    async fn renew_instance(
        &mut self,
        instance: &str,
        boot: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE servers SET renewed_at = $1, lease_until = $2 \
             WHERE instance_id = $3 AND boot_id = $4 AND stopped_at IS NULL",
        )
        .bind(now)
        .bind(until)
        .bind(instance)
        .bind(boot)
        .execute(self)
        .await?;
        Ok(done.affected() == 1)
    }

    async fn stop_instance(
        &mut self,
        instance: &str,
        boot: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE servers SET stopped_at = $1, lease_until = $1 \
             WHERE instance_id = $2 AND boot_id = $3",
        )
        .bind(now)
        .bind(instance)
        .bind(boot)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn all_servers(&mut self) -> Result<Vec<ServerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, boot_id, version, host, pid, started_at, renewed_at, \
             lease_until, stopped_at FROM servers ORDER BY instance_id",
        )
        .fetch_all(self)
        .await
    }

    async fn presence_after(&mut self, since: i64) -> Result<Vec<HeardRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT p.device_id, p.protocol, p.heard_at FROM device_presence p \
             JOIN devices d ON d.id = p.device_id AND d.retired = FALSE \
             WHERE p.heard_at > $1",
        )
        .bind(since)
        .fetch_all(self)
        .await
    }

    async fn latest_of(
        &mut self,
        ids: &[String],
        what: Latest,
    ) -> Result<Vec<HeardRow>, sqlx::Error> {
        let mut q = sqlx::QueryBuilder::new(match what {
            Latest::Report => {
                "SELECT device_id, protocol, heard_at FROM device_presence WHERE device_id IN ("
            }
            Latest::Test => {
                "SELECT device_id, MAX(protocol) AS protocol, MAX(received_at) AS heard_at \
                 FROM alarms WHERE kind = 'periodic_test' AND auth = 'verified' AND device_id IN ("
            }
        });
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.as_str());
        }
        q.push(match what {
            Latest::Report => ")",
            Latest::Test => ") GROUP BY device_id",
        });
        q.build_query_as().persistent(false).fetch_all(self).await
    }

    async fn tests_after(&mut self, after_id: i64) -> Result<Vec<(i64, HeardRow)>, sqlx::Error> {
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT id, device_id, protocol, received_at FROM alarms \
             WHERE id > $1 AND kind = 'periodic_test' AND auth = 'verified' ORDER BY id",
        )
        .bind(after_id)
        .fetch_all(self)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, device_id, protocol, heard_at)| {
                (
                    id,
                    HeardRow {
                        device_id,
                        protocol,
                        heard_at,
                    },
                )
            })
            .collect())
    }

    async fn newest_alarm_id(&mut self) -> Result<i64, sqlx::Error> {
        let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM alarms")
            .fetch_one(self)
            .await?;
        Ok(id)
    }
}

/// Whether a server starting as `boot` may take an instance id whose row is
/// `row` at `now` (what [`ClusterSql::take_instance`]'s upsert decides).
pub fn may_take(row: Option<&ServerRow>, boot: &str, now: i64) -> bool {
    row.is_none_or(|r| r.boot_id == boot || !r.is_up(now))
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Take `me.instance_id` for `me.boot_id`: `None` when taken, else the
    /// running server that holds it (its lease has not run out).
    pub async fn join_cluster(&self, me: &ServerRow) -> Result<Option<ServerRow>, StoreError> {
        let taken = match self {
            Db::Sqlite { write, .. } => write.acquire().await?.take_instance(me).await,
            Db::Postgres(p, _) => p.acquire().await?.take_instance(me).await,
        }?;
        if taken {
            return Ok(None);
        }
        Ok(self
            .servers()
            .await?
            .into_iter()
            .find(|s| s.instance_id == me.instance_id))
    }

    /// Take the instance id from `holder`, a server found gone (its process
    /// ended, or it stopped renewing): `false` if it renewed since it was read.
    pub async fn take_over(&self, me: &ServerRow, holder: &ServerRow) -> Result<bool, StoreError> {
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.take_over(me, holder).await,
            Db::Postgres(p, _) => p.acquire().await?.take_over(me, holder).await,
        }?)
    }

    /// Renew this boot's lease; `false`: it was lost (it ran out and
    /// another server took the instance id, or the server stopped).
    pub async fn renew_lease(
        &self,
        instance: &str,
        boot: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let until = now + lease_ms;
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .renew_instance(instance, boot, now, until)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .renew_instance(instance, boot, now, until)
                    .await
            }
        }?)
    }

    /// A clean stop: the others take over at once, without waiting for the lease.
    pub async fn leave_cluster(&self, instance: &str, boot: &str) -> Result<(), StoreError> {
        let now = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .stop_instance(instance, boot, now)
                    .await
            }
            Db::Postgres(p, _) => p.acquire().await?.stop_instance(instance, boot, now).await,
        }?)
    }

    /// Every server that ever joined, by instance id.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.all_servers().await,
            Db::Postgres(p, _) => p.acquire().await?.all_servers().await,
        }?)
    }

    /// The latest report of every device (not retired) heard after `since`,
    /// by any server.
    pub async fn presence_after(&self, since: i64) -> Result<Vec<HeardRow>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.presence_after(since).await,
            Db::Postgres(p, _) => p.acquire().await?.presence_after(since).await,
        }?)
    }

    /// When each of these devices last reported, by any server, as written.
    pub async fn last_heard(&self, ids: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        self.latest(ids, Latest::Report).await
    }

    /// When each of these devices last sent a verified periodic test, by any server.
    pub async fn last_tests(&self, ids: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        self.latest(ids, Latest::Test).await
    }

    async fn latest(
        &self,
        ids: &[String],
        what: Latest,
    ) -> Result<HashMap<String, i64>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.latest_of(ids, what).await,
            Db::Postgres(p, _) => p.acquire().await?.latest_of(ids, what).await,
        }?;
        Ok(rows
            .into_iter()
            .map(|r| (r.device_id, r.heard_at))
            .collect())
    }

    /// Verified periodic tests stored after alarm `after_id`, with their ids,
    /// oldest first.
    pub async fn tests_after(&self, after_id: i64) -> Result<Vec<(i64, HeardRow)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.tests_after(after_id).await,
            Db::Postgres(p, _) => p.acquire().await?.tests_after(after_id).await,
        }?)
    }

    /// The newest alarm's id (0: none yet): where following the periodic
    /// tests other servers store begins.
    pub async fn newest_alarm_id(&self) -> Result<i64, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.newest_alarm_id().await,
            Db::Postgres(p, _) => p.acquire().await?.newest_alarm_id().await,
        }?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(boot: &str, lease_until: i64, stopped_at: Option<i64>) -> ServerRow {
        ServerRow {
            instance_id: "a".into(),
            boot_id: boot.into(),
            version: "0".into(),
            host: "h".into(),
            pid: 1,
            started_at: 0,
            renewed_at: 0,
            lease_until,
            stopped_at,
        }
    }

    #[test]
    fn an_instance_id_is_taken_only_from_nobody_itself_or_the_gone() {
        assert!(may_take(None, "b1", 100));
        assert!(
            may_take(Some(&row("b1", 200, None)), "b1", 100),
            "a restart of the same boot"
        );
        assert!(
            !may_take(Some(&row("b1", 200, None)), "b2", 100),
            "a live lease"
        );
        assert!(
            may_take(Some(&row("b1", 100, None)), "b2", 100),
            "a lease run out"
        );
        assert!(
            may_take(Some(&row("b1", 200, Some(50))), "b2", 100),
            "a clean stop"
        );
    }
}
