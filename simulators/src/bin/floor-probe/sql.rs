//! One commit: a single small row inserted per transaction, on SQLite (WAL, synchronous=FULL,
//! as the server runs it) and on PostgreSQL (synchronous_commit as the server's database has it).

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use crate::Meter;

const CREATE: &str = "CREATE TABLE floor_probe (at_ms BIGINT NOT NULL, body TEXT NOT NULL)";
// Autocommit: every INSERT is its own transaction, so every one waits for its commit.
const INSERT: &str = "INSERT INTO floor_probe (at_ms, body) VALUES ($1, $2)";
const BODY: &str = "A00001 1101 01 001 23.13,113.26";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn sqlite_commit(dir: &Path, mut m: Meter) -> Result<Meter, String> {
    let path = dir.join(format!(".floor-probe-{}.db", std::process::id()));
    let run = async {
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await?;
        sqlx::query(CREATE).execute(&mut conn).await?;
        while m.more() {
            let t = Instant::now();
            sqlx::query(INSERT)
                .bind(now_ms())
                .bind(BODY)
                .execute(&mut conn)
                .await?;
            m.record(t.elapsed());
        }
        conn.close().await
    }
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    run.map(|()| m).map_err(|e| format!("sqlite: {e}"))
}

/// A table in a schema of its own, dropped after. Not a TEMP table: PostgreSQL writes no WAL
/// for those, so their commits do not wait for a flush and would flatter the floor.
pub async fn postgres_commit(url: &str, mut m: Meter) -> Result<Meter, String> {
    let schema = format!("floor_probe_{}", std::process::id());
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| format!("postgres: {e}"))?
        .options([("search_path", schema.as_str())]);
    let mut conn = opts.connect().await.map_err(|e| format!("postgres: {e}"))?;
    let run = async {
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await?;
        sqlx::query(CREATE).execute(&mut conn).await?;
        while m.more() {
            let t = Instant::now();
            sqlx::query(INSERT)
                .bind(now_ms())
                .bind(BODY)
                .execute(&mut conn)
                .await?;
            m.record(t.elapsed());
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    let dropped = sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut conn)
    .await;
    let _ = PgConnection::close(conn).await;
    run.map_err(|e| format!("postgres: {e}"))?;
    dropped.map_err(|e| format!("postgres: dropping {schema}: {e}"))?;
    Ok(m)
}
