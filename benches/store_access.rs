//! How the store reaches its two backends, measured: the same statements
//! through the store's typed pools (one `SqlitePool` or `PgPool`, chosen by
//! a `match`) and through sqlx's `Any` driver (one pool type for both, each
//! value converted to and from the driver's own). `cargo bench --bench
//! store_access`; PostgreSQL is measured when `PAT_BENCH_PG` names a database
//! (e.g. `postgres://postgres@127.0.0.1/test`).
//!
//! Per statement, alternating the two ways in rounds so both see the same
//! machine: a read of 50 rows (the timer sweep's query) and a one-row insert
//! inside a transaction that is rolled back (no fsync in the figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingantong::store::{Db, StoreConfig};
use pingantong::vault::MasterKey;
use sqlx::Any;
use sqlx::pool::PoolOptions;

type AnyPool = sqlx::Pool<Any>;

/// Rounds and statements per round under `cargo bench`; `cargo test` runs a
/// few of each, as a check that the bench still works.
const FULL: (usize, usize) = (10, 2_000);
const CHECK: (usize, usize) = (1, 20);
const READ: &str = "SELECT id, incident_id, dispatch_id, kind, round, due_at FROM timers \
                    WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2";
const INSERT: &str = "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
                      VALUES ($1, $2, 'system', 'bench', $3)";

type Row = (i64, i64, Option<i64>, String, i64, i64);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    sqlx::any::install_default_drivers();
    let (rounds, per_round) = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        CHECK
    };
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(MasterKey::configured_or_kept(None, dir.path()).unwrap());
    let sqlite = format!("sqlite://{}/bench.db", dir.path().display());
    measure("sqlite", &sqlite, None, &key, rounds, per_round).await;
    if let Ok(pg) = std::env::var("PAT_BENCH_PG") {
        let schema = format!("bench_store_{}", std::process::id());
        measure("postgres", &pg, Some(schema), &key, rounds, per_round).await;
    }
}

async fn measure(
    name: &str,
    url: &str,
    schema: Option<String>,
    key: &Arc<MasterKey>,
    rounds: usize,
    per_round: usize,
) {
    let db = Db::connect(&StoreConfig {
        url: url.to_owned(),
        schema: schema.clone(),
        max_connections: 1,
        master_key: Arc::clone(key),
    })
    .await
    .unwrap();
    let any_url = match &schema {
        // The schema the store made, first on the search path, as the store sets it.
        Some(s) => format!("{url}?options=-c%20search_path%3D{s}"),
        None => url.to_owned(),
    };
    let any = PoolOptions::<Any>::new()
        .max_connections(1)
        .connect(&any_url)
        .await
        .unwrap();
    seed(&any).await;

    let (mut typed_read, mut any_read) = (Duration::ZERO, Duration::ZERO);
    let (mut typed_insert, mut any_insert) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            let rows = db.due_timers(i64::MAX, 50).await.unwrap();
            assert_eq!(rows.len(), 50);
        }
        typed_read += t.elapsed();
        let t = Instant::now();
        for _ in 0..per_round {
            let rows: Vec<Row> = sqlx::query_as(READ)
                .bind(i64::MAX)
                .bind(50i64)
                .fetch_all(&any)
                .await
                .unwrap();
            assert_eq!(rows.len(), 50);
        }
        any_read += t.elapsed();
        typed_insert += typed_inserts(&db, per_round).await;
        any_insert += rolled_back(&any, per_round).await;
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (rounds * per_round) as f64;
    println!(
        "{name}: read 50 rows  typed {:.1} µs  any {:.1} µs  any/typed {:.2}",
        per(typed_read),
        per(any_read),
        any_read.as_secs_f64() / typed_read.as_secs_f64()
    );
    println!(
        "{name}: insert 1 row  typed {:.1} µs  any {:.1} µs  any/typed {:.2}",
        per(typed_insert),
        per(any_insert),
        any_insert.as_secs_f64() / typed_insert.as_secs_f64()
    );
    if let Some(s) = schema {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE"
        )))
        .execute(&any)
        .await
        .unwrap();
    }
    any.close().await;
    db.close().await;
}

/// 200 open timers on one incident (of one alarm).
async fn seed(any: &AnyPool) {
    sqlx::query(
        "INSERT INTO alarms (id, received_at, protocol, peer, device_id, seq, kind, auth, raw, \
         decoded, dedup_key) VALUES (1, 1, 'native', 'bench', 'PA1', 1, 'sos', 'verified', \
         $1, '{}', 'bench:1')",
    )
    .bind(Vec::<u8>::new())
    .execute(any)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO incidents (opened_at, opening_alarm_id, fold_key, device_id, kind, lane, \
         state, verified, press_count, last_press_at, updated_at) \
         VALUES (1, 1, 'bench', 'PA1', 'sos', 'life_safety', 'queued', TRUE, 1, 1, 1)",
    )
    .execute(any)
    .await
    .unwrap();
    for due in 0..200i64 {
        sqlx::query(
            "INSERT INTO timers (incident_id, kind, round, due_at) \
             SELECT id, 'claim', 0, $1 FROM incidents WHERE fold_key = 'bench'",
        )
        .bind(due)
        .execute(any)
        .await
        .unwrap();
    }
}

/// The store's way: the backend's own pool, picked by a `match`.
async fn typed_inserts(db: &Db, n: usize) -> Duration {
    match db {
        Db::Sqlite { write, .. } => rolled_back(write, n).await,
        Db::Postgres(p, _) => rolled_back(p, n).await,
    }
}

/// A one-row insert rolled back, `times` times: written once over any
/// sqlx database (each typed backend, and `Any`) with the bounds a generic
/// store function carries.
async fn rolled_back<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, times: usize) -> Duration
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let t = Instant::now();
    for n in 0..times as i64 {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(INSERT)
            .bind(1i64)
            .bind(n)
            .bind("bench")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    t.elapsed()
}
