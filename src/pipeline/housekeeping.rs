//! Work on stored data that no request waits for: taking up data keys other
//! servers added and re-sealing values under the current one (encryption at
//! rest, `pingantong_store::vault`), and purging what the retention policy no longer
//! keeps (`store::retention`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use pingantong_store::{Db, PurgeCursor, RetentionPolicy, now_ms};
use pingantong_telemetry::events;

/// How often keys are reloaded: well within `store::ACTIVATE_AFTER_MS`, so
/// every server holds a new key before any seals with it.
const EVERY: Duration = Duration::from_secs(10);

/// How often the retention policy is applied (the first time a minute after
/// the start, out of the way of a restart's catch-up).
const PURGE_EVERY: Duration = Duration::from_secs(3600);
const FIRST_PURGE: Duration = Duration::from_secs(60);

pub fn spawn(
    db: Db,
    retention: RetentionPolicy,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        let mut next_purge = tokio::time::Instant::now() + FIRST_PURGE;
        let mut cursor = PurgeCursor::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = turn(&db, &shutdown).await {
                events::StageFailed {
                    stage: "housekeeping",
                    error: &e,
                }
                .emit();
            }
            if tokio::time::Instant::now() >= next_purge {
                next_purge += PURGE_EVERY;
                let purged = tokio::select! {
                    r = db.purge_expired(&retention, now_ms(), &mut cursor) => r,
                    _ = shutdown.cancelled() => return,
                };
                match purged {
                    Ok(r) => events::RetentionApplied {
                        frames: r.frames,
                        rejected_frames: r.rejected_frames,
                        positions: r.positions,
                        incidents: r.incidents,
                        steps: r.steps,
                    }
                    .emit(),
                    Err(e) => events::StageFailed {
                        stage: "retention",
                        error: &e,
                    }
                    .emit(),
                }
            }
        }
    })
}

async fn turn(db: &Db, shutdown: &CancellationToken) -> Result<(), pingantong_store::StoreError> {
    if db.refresh_vault().await?.reseal_owed {
        // Runs to its end unless the server stops (it is safe to cut: each
        // batch commits on its own and the next start goes on).
        let report = tokio::select! {
            r = db.reseal() => r?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        events::ValuesResealed {
            current: report.current,
            resealed: report.resealed,
            retired: &report.retired,
        }
        .emit();
    }
    Ok(())
}
