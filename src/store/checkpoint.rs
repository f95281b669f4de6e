//! SQLite WAL checkpoints, off the alarm path.
//!
//! By default SQLite checkpoints inside a commit: the commit that takes the
//! write-ahead log past 1,000 pages also copies them into the database file
//! and syncs it before it returns. That commit is an SOS's as often as not,
//! and the next SOS waits behind it on the one write connection. Here the
//! write connection never checkpoints; a connection of its own does, every
//! `every`, in PASSIVE mode (it takes no lock a writer or a reader needs).

use std::time::{Duration, Instant};

use sqlx::sqlite::SqlitePoolOptions;
use tokio_util::sync::CancellationToken;

use super::{Db, StoreError};
use pingantong_telemetry::events;

impl Db {
    /// SQLite: checkpoint every `every` from a connection of its own until
    /// `shutdown`, and stop the writer's own checkpoints. PostgreSQL: nothing
    /// to do (`None`).
    pub async fn spawn_checkpointer(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        let Db::Sqlite { write, .. } = self else {
            return Ok(None);
        };
        let own = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with((*write.connect_options()).clone())
            .await?;
        // Only now that someone else checkpoints: a log nobody checkpoints
        // grows without bound. A write connection opened again later (after
        // an error) has SQLite's default back, which is safe.
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(write)
            .await?;
        Ok(Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let started = Instant::now();
                // (busy, frames in the log, frames copied to the database)
                match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(&own)
                    .await
                {
                    Ok((_, logged, copied)) => events::WalCheckpointed {
                        logged,
                        copied,
                        elapsed: started.elapsed(),
                    }
                    .emit(),
                    Err(e) => events::StageFailed {
                        stage: "wal_checkpoint",
                        error: &e,
                    }
                    .emit(),
                }
            }
            own.close().await;
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's commits no longer copy the log into the database file;
    /// the checkpointer does, so the file grows as rows are written.
    #[tokio::test]
    async fn the_log_is_checkpointed_by_its_own_connection() {
        let (db, dir) = crate::scratch_sqlite().await;
        let stop = CancellationToken::new();
        let task = db
            .spawn_checkpointer(Duration::from_millis(20), stop.clone())
            .await
            .unwrap()
            .expect("SQLite has a checkpointer");
        let Db::Sqlite { write, .. } = &db else {
            unreachable!()
        };
        let (pages,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(write)
            .await
            .unwrap();
        assert_eq!(pages, 0, "the writer no longer checkpoints in its commits");
        let file = dir.path().join("test.db");
        let before = std::fs::metadata(&file).unwrap().len();
        // ~2 MB of rows, in the log first.
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(write)
            .await
            .unwrap();
        for _ in 0..64 {
            sqlx::query("INSERT INTO filler VALUES (randomblob(32768))")
                .execute(write)
                .await
                .unwrap();
        }
        let grown = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let now = std::fs::metadata(&file).unwrap().len();
                if now >= before + 2_000_000 {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            grown.is_ok(),
            "the database file stayed at {} bytes: nothing checkpointed",
            std::fs::metadata(&file).unwrap().len()
        );
        stop.cancel();
        task.await.unwrap();
    }
}
