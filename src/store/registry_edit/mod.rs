//! The registry as staff keep it: clients and their contacts, devices,
//! providers and carers created and changed one at a time or imported in
//! bulk, each change with its audit entry in the same transaction.
//!
//! Every write sets `updated_at`: the directory cache re-reads rows by it.

mod clients;
mod devices;
mod import;
mod providers;

use super::StoreError;

pub use clients::{
    ClientEntry, ClientListRow, ClientQuery, ClientRecord, ContactEntry, ContactRecord,
};
pub use devices::{ClientRef, DeviceEntry, DeviceListRow, DeviceQuery, DeviceUpdate};
pub use import::{ClientImportRow, IMPORT_CHUNK, RowOutcome};
pub use providers::{CarerListRow, ProviderArea, ProviderRecord};

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The record the change is about does not exist.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The change cannot be made as the registry stands: a duplicate, a
    /// reference to nothing, a retired device. The message names the field.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for EditError {
    fn from(e: sqlx::Error) -> Self {
        EditError::Store(e.into())
    }
}

impl EditError {
    /// A database error that belongs to one row (a constraint), not to the
    /// connection: an import reports it on that row and goes on.
    fn is_row_fault(&self) -> bool {
        matches!(
            self,
            EditError::Store(StoreError::Sqlx(sqlx::Error::Database(_)))
        )
    }
}

/// A unique index refused the row: somebody else took the name meanwhile.
fn unique_or(e: sqlx::Error, message: impl FnOnce() -> String) -> EditError {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => EditError::Conflict(message()),
        e => e.into(),
    }
}
