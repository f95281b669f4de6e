//! Bulk import of clients and devices, row by row.
//!
//! Each row is written under its own savepoint, so a row the registry refuses
//! (a duplicate, a reference to nothing) is reported and the others go on.
//! Rows are committed [`IMPORT_CHUNK`] at a time: one fsync per chunk rather
//! than per row, and the write lock (which alarms' group commit also needs)
//! is never held for longer than one chunk takes.
//!
//! A chunk's transaction is [`ImportSql`]'s, written once for both backends
//! (see [`crate::tx`]).

use sqlx::SqlSafeStr;

use super::clients::ClientSql;
use super::devices::DeviceSql;
use super::{ClientEntry, ContactEntry, DeviceEntry, EditError};
use crate::vault::Vault;
use crate::{Db, now_ms};

/// Rows per transaction.
pub const IMPORT_CHUNK: usize = 100;

/// What became of one row: what was created, or why not.
pub type RowOutcome<T> = Result<T, String>;

/// Run `import_chunk` (one transaction) for every chunk of `rows`; the
/// outcomes, in order, and the failure that stopped the import, if one did.
async fn import_rows<'r, R, T, F, Fut>(
    rows: &'r [R],
    mut import_chunk: F,
) -> (Vec<RowOutcome<T>>, Option<EditError>)
where
    F: FnMut(&'r [R]) -> Fut,
    Fut: Future<Output = Result<Vec<RowOutcome<T>>, EditError>>,
{
    let mut out = Vec::with_capacity(rows.len());
    let mut failure = None;
    for chunk in rows.chunks(IMPORT_CHUNK) {
        match import_chunk(chunk).await {
            Ok(r) => out.extend(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    while out.len() < rows.len() {
        out.push(Err(
            "not imported: the database failed during the import; send this row again".to_owned(),
        ));
    }
    (out, failure)
}

/// End a row's savepoint `sp` by what became of the row: kept, or rolled
/// back with the reason when the registry or the database refused the row
/// alone. Any other failure is the chunk's, and stops the import.
async fn settle<DB: sqlx::Database, T>(
    sp: sqlx::Transaction<'_, DB>,
    row: Result<T, EditError>,
) -> Result<RowOutcome<T>, EditError> {
    match row {
        Ok(v) => {
            sp.commit().await?;
            Ok(Ok(v))
        }
        Err(EditError::Conflict(m)) => {
            sp.rollback().await?;
            Ok(Err(m))
        }
        Err(e) if e.is_row_fault() => {
            sp.rollback().await?;
            Ok(Err(format!("refused by the database: {e}")))
        }
        Err(e) => Err(e),
    }
}

/// A client row to import: its row number in the file, the client, their contacts.
pub type ClientImportRow = (u64, ClientEntry, Vec<ContactEntry>);

/// A chunk of an import in one transaction begun by `begin`, each row under
/// its own savepoint; called on a connection of the write pool.
pub(crate) trait ImportSql {
    /// Create each client of `chunk` (with contacts), audited per row as
    /// done by `actor`; each row's id or reason, in order.
    async fn import_client_chunk(
        &mut self,
        begin: &'static str,
        vault: &Vault,
        chunk: &[ClientImportRow],
        actor: &str,
    ) -> Result<Vec<RowOutcome<i64>>, EditError>;
    /// Provision each device of `chunk`, audited per row as done by `actor`.
    async fn import_device_chunk(
        &mut self,
        begin: &'static str,
        chunk: &[(u64, DeviceEntry)],
        actor: &str,
    ) -> Result<Vec<RowOutcome<String>>, EditError>;
}

impl<C> ImportSql for C
where
    C: sqlx::Connection + ClientSql + DeviceSql,
{
    async fn import_client_chunk(
        &mut self,
        begin: &'static str,
        vault: &Vault,
        chunk: &[ClientImportRow],
        actor: &str,
    ) -> Result<Vec<RowOutcome<i64>>, EditError> {
        // Made an owned `SqlStr` first: a `&'static str` passed to
        // `begin_with` leaves the callers' futures not `Send`.
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let mut results = Vec::with_capacity(chunk.len());
        for (line, entry, contacts) in chunk {
            let mut sp = tx.begin().await?;
            let now = now_ms();
            let detail = format!("import row {line}");
            let row = sp
                .add_client(vault, entry, contacts, actor, &detail, now)
                .await;
            results.push(settle(sp, row).await?);
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn import_device_chunk(
        &mut self,
        begin: &'static str,
        chunk: &[(u64, DeviceEntry)],
        actor: &str,
    ) -> Result<Vec<RowOutcome<String>>, EditError> {
        let mut tx = self.begin_with(begin.into_sql_str()).await?;
        let mut results = Vec::with_capacity(chunk.len());
        for (line, entry) in chunk {
            let mut sp = tx.begin().await?;
            let now = now_ms();
            let detail = format!("import row {line}");
            let row = sp
                .add_device(entry, actor, &detail, now)
                .await
                .map(|()| entry.id.clone());
            results.push(settle(sp, row).await?);
        }
        tx.commit().await?;
        Ok(results)
    }
}

// The write pool of each backend, chosen by a match, a connection per chunk.
impl Db {
    /// Create each client (with contacts) on its own, audited per row as
    /// done by `actor`. Returns each row's id or reason, in order, and the
    /// database failure that cut the import short, if any.
    pub async fn import_clients(
        &self,
        rows: &[ClientImportRow],
        actor: &str,
    ) -> (Vec<RowOutcome<i64>>, Option<EditError>) {
        import_rows(rows, |chunk| async move {
            let begin = self.begin_write();
            let vault = self.vault();
            match self {
                Db::Sqlite { write, .. } => {
                    write
                        .acquire()
                        .await?
                        .import_client_chunk(begin, vault, chunk, actor)
                        .await
                }
                Db::Postgres(p, _) => {
                    p.acquire()
                        .await?
                        .import_client_chunk(begin, vault, chunk, actor)
                        .await
                }
            }
        })
        .await
    }

    /// Provision each device on its own, audited per row as done by `actor`.
    pub async fn import_devices(
        &self,
        rows: &[(u64, DeviceEntry)],
        actor: &str,
    ) -> (Vec<RowOutcome<String>>, Option<EditError>) {
        import_rows(rows, |chunk| async move {
            let begin = self.begin_write();
            match self {
                Db::Sqlite { write, .. } => {
                    write
                        .acquire()
                        .await?
                        .import_device_chunk(begin, chunk, actor)
                        .await
                }
                Db::Postgres(p, _) => {
                    p.acquire()
                        .await?
                        .import_device_chunk(begin, chunk, actor)
                        .await
                }
            }
        })
        .await
    }
}
