//! PostgreSQL's planner statistics, kept from going stale after a bulk load.
//!
//! Until a table is analyzed the planner guesses its contents, and at city
//! scale it guesses wrong: the incident stage's notice insert, for one,
//! scanned every contact of 100,000 clients (40 ms) instead of reading two
//! by index (0.5 ms), and the stage fell seconds behind. Autovacuum analyzes
//! in time when it runs and keeps up; a city just seeded or imported, or a
//! server whose database runs without autovacuum, needs it done here.

use std::time::Instant;

use super::{Db, StoreError};
use pingantong_telemetry::events;

/// The tables of this schema the planner has never seen analyzed, or that
/// changed by more than a tenth since (autovacuum's own rule). Small tables
/// are left alone: an empty one analyzed is taken for empty until analyzed
/// again, and where autovacuum does not run, the alarms piling into it would
/// be read by full scans. A table's size on disk says at once what it holds;
/// the row counters can lag a second behind a bulk load just finished.
const STALE: &str = "SELECT relname::TEXT FROM pg_stat_user_tables \
     WHERE schemaname = current_schema() \
     AND ((COALESCE(last_analyze, last_autoanalyze) IS NULL \
           AND pg_relation_size(relid) >= 65536) \
          OR (n_live_tup >= 1000 AND n_mod_since_analyze > n_live_tup / 10)) \
     ORDER BY relname";

impl Db {
    /// PostgreSQL: analyze the tables whose statistics are missing or stale;
    /// returns their names. SQLite plans by its indexes without statistics:
    /// nothing to do.
    pub async fn refresh_statistics(&self) -> Result<Vec<String>, StoreError> {
        let Db::Postgres(pool, _) = self else {
            return Ok(Vec::new());
        };
        let started = Instant::now();
        let stale: Vec<(String,)> = sqlx::query_as(STALE).fetch_all(pool).await?;
        let tables: Vec<String> = stale.into_iter().map(|(t,)| t).collect();
        if tables.is_empty() {
            return Ok(tables);
        }
        // Names the catalog gave, quoted as identifiers.
        let list = tables
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {list}")))
            .persistent(false)
            .execute(pool)
            .await?;
        events::StatisticsRefreshed {
            tables: &tables,
            elapsed: started.elapsed(),
        }
        .emit();
        Ok(tables)
    }
}
