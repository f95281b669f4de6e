//! What the store's SQL needs of a backend beyond what sqlx's traits say.
//!
//! Store statements are written once as methods of an extension trait with
//! a blanket impl over any sqlx connection whose database binds and reads
//! the types they use (the bounds are the impl's, said once per trait; see
//! `timers.rs` and ARCHITECTURE.md, "Backends"). sqlx has no trait for how
//! many rows a statement touched: this is it, for the two backends.

/// Rows a statement changed.
pub(crate) trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}
