//! Bulk import of clients and devices, row by row.
//!
//! Each row is written under its own savepoint, so a row the registry refuses
//! (a duplicate, a reference to nothing) is reported and the others go on.
//! Rows are committed [`IMPORT_CHUNK`] at a time: one fsync per chunk rather
//! than per row, and the write lock (which alarms' group commit also needs)
//! is never held for longer than one chunk takes.

use super::clients::ClientSql;
use super::devices::DeviceSql;
use super::{ClientEntry, ContactEntry, DeviceEntry, EditError};
use crate::{Db, now_ms, on_write_pool};

/// Rows per transaction.
pub const IMPORT_CHUNK: usize = 100;

/// What became of one row: what was created, or why not.
pub type RowOutcome<T> = Result<T, String>;

/// Run `$insert` (which uses the savepoint `$sp` and the row `$row`) for every
/// row of `$rows`, chunk by chunk; evaluates to the outcomes, in order, and
/// the failure that stopped the import, if one did.
macro_rules! import_rows {
    ($db:expr, $rows:expr, |$sp:ident, $row:ident| $insert:expr) => {{
        let rows = $rows;
        let mut out = Vec::with_capacity(rows.len());
        let mut failure = None;
        for chunk in rows.chunks(IMPORT_CHUNK) {
            let begin = $db.begin_write();
            let done: Result<Vec<_>, EditError> = on_write_pool!($db, |p| {
                async {
                    let mut tx = p.begin_with(begin).await?;
                    let mut results = Vec::with_capacity(chunk.len());
                    for $row in chunk {
                        let mut $sp = sqlx::Acquire::begin(&mut *tx).await?;
                        match $insert {
                            Ok(v) => {
                                $sp.commit().await?;
                                results.push(Ok(v));
                            }
                            Err(EditError::Conflict(m)) => {
                                $sp.rollback().await?;
                                results.push(Err(m));
                            }
                            Err(e) if e.is_row_fault() => {
                                $sp.rollback().await?;
                                results.push(Err(format!("refused by the database: {e}")));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    tx.commit().await?;
                    Ok(results)
                }
                .await
            });
            match done {
                Ok(r) => out.extend(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        while out.len() < rows.len() {
            out.push(Err(
                "not imported: the database failed during the import; send this row again"
                    .to_owned(),
            ));
        }
        (out, failure)
    }};
}

/// A client row to import: its row number in the file, the client, their contacts.
pub type ClientImportRow = (u64, ClientEntry, Vec<ContactEntry>);

impl Db {
    /// Create each client (with contacts) on its own, audited per row as
    /// done by `actor`. Returns each row's id or reason, in order, and the
    /// database failure that cut the import short, if any.
    pub async fn import_clients(
        &self,
        rows: &[ClientImportRow],
        actor: &str,
    ) -> (Vec<RowOutcome<i64>>, Option<EditError>) {
        import_rows!(self, rows, |sp, row| {
            let (line, entry, contacts) = row;
            let now = now_ms();
            let detail = format!("import row {line}");
            sp.add_client(self.vault(), entry, contacts, actor, &detail, now)
                .await
        })
    }

    /// Provision each device on its own, audited per row as done by `actor`.
    pub async fn import_devices(
        &self,
        rows: &[(u64, DeviceEntry)],
        actor: &str,
    ) -> (Vec<RowOutcome<String>>, Option<EditError>) {
        import_rows!(self, rows, |sp, row| {
            let (line, entry) = row;
            let now = now_ms();
            let detail = format!("import row {line}");
            sp.add_device(entry, actor, &detail, now)
                .await
                .map(|()| entry.id.clone())
        })
    }
}
