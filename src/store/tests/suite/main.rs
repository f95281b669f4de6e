//! The store's own suite: every public function of [`Db`] run on SQLite and
//! on PostgreSQL by the same test body.
//!
//! Each test is an `async fn(&Db)` written once; [`both_backends!`] makes of
//! it `<name>::sqlite` and `<name>::postgres`, each on a database of its own
//! (a scratch file; a fresh PostgreSQL schema at `PAT_TEST_POSTGRES_URL` or
//! the local `test` database). A PostgreSQL that cannot be reached fails the
//! test rather than skipping it. `coverage` fails when a public function of
//! `Db` is called by no test here.

mod common;
mod coverage;

/// For each named `async fn(&Db)` in the module, a test on each backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let (db, _dir) = crate::common::sqlite().await;
                    super::$name(&db).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let db = crate::common::postgres().await;
                    super::$name(&db).await;
                }
            }
        )*
    };
}
pub(crate) use both_backends;

mod alarms;
mod cluster;
mod console;
mod dispatch;
mod incidents;
mod keys;
mod people;
mod registry;
