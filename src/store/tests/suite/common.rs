//! A database of its own for each test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pingantong_store::secret::Secret;
use pingantong_store::vault::MasterKey;
use pingantong_store::{Db, StoreConfig};

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn master_key() -> Arc<MasterKey> {
    Arc::new(MasterKey::from_secret(&Secret::new("7".repeat(64))).expect("a valid master key"))
}

/// A fresh SQLite file; it lives as long as the returned directory.
pub async fn sqlite() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let db = Db::connect(&StoreConfig {
        url: format!("sqlite://{}/suite.db", dir.path().display()),
        schema: None,
        max_connections: 4,
        master_key: master_key(),
    })
    .await
    .expect("SQLite opens");
    (db, dir)
}

/// A fresh schema on the PostgreSQL the other tests use (`t_` and 16 hex
/// digits, which `ops/test.sh` drops at its next run).
pub async fn postgres() -> Db {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let tag = nanos ^ (u64::from(std::process::id()) << 40) ^ N.fetch_add(1, Ordering::Relaxed);
    let url = std::env::var("PAT_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL.into());
    Db::connect(&StoreConfig {
        url,
        schema: Some(format!("t_{tag:016x}")),
        max_connections: 4,
        master_key: master_key(),
    })
    .await
    .expect("PostgreSQL must be reachable for the store suite (ops/services.sh starts it)")
}
