//! Durable storage: one connection pool per backend, the same SQL on both.
//!
//! SQLite (WAL, `synchronous=FULL`) is the embedded default; PostgreSQL is
//! chosen by URL. Every statement is written once, as a method of its
//! module's trait implemented for any sqlx connection (`TxSql`, `AlarmSql`,
//! `ConsoleSql`, …; ARCHITECTURE.md, "Backends"), and [`Db`]'s functions
//! call it on the backend's pool. All times are stored as milliseconds since
//! the Unix epoch.
//!
//! This crate knows the domain (`pingantong-domain`) and telemetry, never the
//! pipeline or the API above it: where a stage above must hear of something
//! the store did, the store defines the interface ([`writer::Heard`]).

mod alarm_log;
mod alarms;
pub mod audit;
mod backend;
mod checkpoint;
mod cluster;
mod console;
mod data_keys;
mod dispatches;
mod export;
mod handoffs;
mod incidents;
mod mqtt_credentials;
mod notifications;
pub mod presence;
mod registry;
mod registry_edit;
mod retention;
mod seals;
pub mod secret;
mod sla;
mod stage;
mod statistics;
mod timers;
mod transitions;
mod tx;
mod users;
pub mod vault;
mod wellbeing;
mod withdrawals;
pub mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::vault::{MasterKey, Vault, VaultError};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use alarm_log::{AlarmLogQuery, AlarmLogRow};
pub use alarms::{AlarmRecord, AuthStatus, CommitOutcome, UnprocessedAlarm};
pub use audit::{AuditEntry, AuditRecord, AuditReport, ChainBreak, ChainFault};
pub use cluster::{HeardRow, ServerRow, may_take};
pub use console::{CarerJob, DeviceStatus, DispatchRow, QueueFilter, QueueRow, TimelineEntry};
pub use data_keys::{ACTIVATE_AFTER_MS, DataKeyRow, KeysHeld, ResealReport};
pub use dispatches::{CarerAnswer, OfferError, ReplyError};
pub use export::ResidentRecords;
pub use handoffs::{Handoff, HandoffError};
pub use incidents::{
    CarerCandidate, DispatchOffer, IncidentOutcome, IncidentSummary, NewDispatch, NewIncident,
    RouteContext,
};
pub use mqtt_credentials::{CredentialError, CredentialRow};
pub use notifications::{Cascade, GaveUp, NotificationJob, NotificationRow};
pub use registry::{
    CarerRow, ClientProfile, ContactRow, DeviceRow, NewCarer, NewClient, NewContact, NewDevice,
    NewProvider,
};
pub use registry_edit::{
    CarerListRow, ClientEntry, ClientImportRow, ClientListRow, ClientQuery, ClientRecord,
    ClientRef, ContactEntry, ContactRecord, DeviceEntry, DeviceListRow, DeviceQuery, DeviceUpdate,
    EditError, IMPORT_CHUNK, ProviderArea, ProviderRecord, RowOutcome,
};
pub use retention::{PurgeCursor, PurgeReport, RetentionPolicy, cutoffs};
pub use sla::{
    CoverageRow, ImportError, ImportedDispatch, ImportedEvent, ImportedIncident, OfflineSpell,
    SlaData, SlaDeviceRow, SlaDispatchRow, SlaIncidentRow, SlaWellbeingRow,
};
pub use stage::{Chooser, RouteDone, RouteRequest, StageDone, StageWork};
pub use timers::{ClaimCheck, OfferCheck, TimerRow};
pub use transitions::{Transition, TransitionError};
pub use users::{
    LoginUser, NewUser, SessionUser, USERNAME_MAX, UserError, UserSummary, valid_username,
};
pub use wellbeing::{OUTCOMES as WELLBEING_OUTCOMES, WellbeingRow};
pub use withdrawals::Withdrawal;

/// How long a server holds an offer or a withdrawal it is handing to the
/// broker: the others' sweeps leave it alone meanwhile, and take it up if
/// the server died before marking it sent.
pub const PUBLISH_LEASE_MS: i64 = 10_000;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {0:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("schema name {0:?} must be lower-case letters, digits and _")]
    BadSchema(String),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("the server is stopping")]
    CoreGone,
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("encryption at rest: {0}")]
    Vault(#[from] VaultError),
    #[error(
        "the database is a read-only replica: point the server at the primary (with several \
         hosts, add target_session_attrs=read-write to the URL)"
    )]
    Replica,
}

impl StoreError {
    /// Whether the database cannot be reached or cannot take writes just now
    /// (stopped, restarting, cut off, locked by another process, out of
    /// disk), so that the same statement may succeed later — rather than
    /// that the statement itself is wrong. Only the former is held and tried
    /// again: a wrong one would hold every alarm behind it for ever.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Sqlx(e) = self else {
            return false;
        };
        match e {
            // Not `Protocol`: data the driver cannot make sense of may come
            // again on every attempt, and would hold every alarm behind it.
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => true,
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // Primary result codes: BUSY, LOCKED, READONLY, IOERR,
                    // FULL, CANTOPEN (the extended code's low byte).
                    code.parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
                } else {
                    // PostgreSQL: connection exceptions (08), insufficient
                    // resources (53: disk full, too many connections),
                    // operator intervention (57P01–57P05: shut down,
                    // restarting, cannot connect now), read-only after a
                    // fail-over (25006).
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "25006"
                }
            }
            _ => false,
        }
    }
}

/// Which database, and for PostgreSQL optionally which schema.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    /// PostgreSQL schema to create and use (lets several servers or tests share one database).
    pub schema: Option<String>,
    pub max_connections: u32,
    /// Wraps the database's data keys (see [`crate::vault`]).
    pub master_key: Arc<MasterKey>,
}

#[derive(Clone, Debug)]
pub enum Db {
    /// Reads go to `read` (several read-only connections, which WAL lets run
    /// beside the writer); writes to `write`, a single connection.
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        vault: Arc<Vault>,
    },
    Postgres(PgPool, Arc<Vault>),
}

/// Page cache of SQLite's one writer and of each reader, in KiB (a negative
/// `cache_size` is KiB, a positive one pages).
const WRITER_CACHE_KIB: &str = "-65536";
const READER_CACHE_KIB: &str = "-16384";

/// How long a PostgreSQL statement waits for a connection (sqlx's default is
/// 30 s). Longer means the database is away, not busy: the console gets its
/// error, and the writer its answer to hold and retry, in 5 s rather than 30.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// A fresh SQLite database in a temporary directory, for unit tests; the
/// directory lives as long as the returned guard (feature `test-util`, for
/// the unit tests of the crates above).
#[cfg(any(test, feature = "test-util"))]
pub async fn scratch_sqlite() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&StoreConfig {
        url: format!("sqlite://{}/test.db", dir.path().display()),
        schema: None,
        max_connections: 2,
        master_key: Arc::new(
            MasterKey::from_secret(&crate::secret::Secret::new("0".repeat(64))).unwrap(),
        ),
    })
    .await
    .unwrap();
    (db, dir)
}

impl Db {
    /// Connect and apply this backend's migrations.
    pub async fn connect(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let db = if cfg.url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(&cfg.url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk when it returns, which is what an ACK promises.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // SQLite's default page cache is 2 MiB a connection: a city's
            // indexes do not fit, and every miss is a read from the OS.
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone().pragma("cache_size", WRITER_CACHE_KIB))
                .await?;
            SQLITE_MIGRATIONS.run(&write).await?;
            let read = SqlitePoolOptions::new()
                .max_connections(cfg.max_connections.max(2))
                .connect_with(opts.read_only(true).pragma("cache_size", READER_CACHE_KIB))
                .await?;
            Db::Sqlite {
                read,
                write,
                vault: Arc::default(),
            }
        } else if cfg.url.starts_with("postgres:") || cfg.url.starts_with("postgresql:") {
            let mut opts = PgConnectOptions::from_str(&cfg.url)?;
            if let Some(schema) = &cfg.schema {
                if schema.is_empty()
                    || !schema
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(StoreError::BadSchema(schema.clone()));
                }
                let setup = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                let ddl = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
                sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(&setup)
                    .await?;
                setup.close().await;
                opts = opts.options([("search_path", schema.as_str())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections.max(2))
                .acquire_timeout(POOL_WAIT)
                // Just-in-time compilation pays off for long analytic
                // queries; ours are short, and one the planner misjudges as
                // costly would spend tens of milliseconds compiling in an
                // alarm's path. Set per session rather than as a startup
                // option, which connection poolers such as PgBouncer refuse.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(conn, "SET jit = off").await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await?;
            // A replica takes no writes: refused here with the reason, not
            // by the first migration with a read-only error.
            let (replica,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
                .fetch_one(&pool)
                .await?;
            if replica {
                return Err(StoreError::Replica);
            }
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Db::Postgres(pool, Arc::default())
        } else {
            return Err(StoreError::UnsupportedUrl(cfg.url.clone()));
        };
        db.open_vault(&cfg.master_key).await?;
        Ok(db)
    }

    /// The data keys of this database, for sealing and opening sensitive values.
    pub fn vault(&self) -> &Vault {
        match self {
            Db::Sqlite { vault, .. } | Db::Postgres(_, vault) => vault,
        }
    }

    /// A stored position: the sealed `position` column, or the plain
    /// `lat`/`lon` of a row written before encryption (until re-sealed).
    pub(crate) fn position(
        &self,
        sealed: Option<&str>,
        lat: Option<f64>,
        lon: Option<f64>,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        Ok(match self.vault().open_position(sealed)? {
            Some((a, b, _)) => Some((a, b)),
            None => lat.zip(lon),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "sqlite",
            Db::Postgres(..) => "postgres",
        }
    }

    /// How a write transaction that reads before it writes must begin. SQLite:
    /// take the write lock at once, so a writer in another process (the CLI
    /// beside the server) waits its turn instead of failing at its first write.
    pub(crate) fn begin_write(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "BEGIN IMMEDIATE",
            Db::Postgres(..) => "BEGIN",
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.select_one().await,
            Db::Postgres(p, _) => p.acquire().await?.select_one().await,
        }?)
    }

    /// Whether the database takes writes: the write lock taken and given
    /// back (SQLite: another process may hold it), or a statement answered.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.begin_and_roll_back(begin).await,
            Db::Postgres(p, _) => p.acquire().await?.begin_and_roll_back(begin).await,
        }?)
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite { read, write, .. } => {
                read.close().await;
                write.close().await;
            }
            Db::Postgres(p, _) => p.close().await,
        }
    }
}

/// The health probes' statements, written once for both backends (see
/// [`tx`]).
pub(crate) trait ProbeSql {
    /// A statement answered.
    async fn select_one(&mut self) -> Result<(), sqlx::Error>;
    /// A transaction begun with `begin` (for SQLite's, the write lock taken)
    /// and rolled back.
    async fn begin_and_roll_back(&mut self, begin: &'static str) -> Result<(), sqlx::Error>;
}

impl<C> ProbeSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
{
    async fn select_one(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(self).await?;
        Ok(())
    }

    async fn begin_and_roll_back(&mut self, begin: &'static str) -> Result<(), sqlx::Error> {
        // As a `SqlStr` first (see `transitions.rs`): a future holding the
        // `&'static str` itself is not taken for `Send`.
        self.begin_with(sqlx::SqlStr::from_static(begin))
            .await?
            .rollback()
            .await
    }
}

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
