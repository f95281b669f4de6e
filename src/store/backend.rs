//! What the store's SQL needs of a backend beyond what sqlx's traits say.
//!
//! Store statements are written once as methods of an extension trait with
//! a blanket impl over any sqlx connection whose database binds and reads
//! the types they use (the bounds are the impl's, said once per trait; see
//! `timers.rs` and ARCHITECTURE.md, "Backends"). sqlx has no trait for how
//! many rows a statement touched: this is it, for the two backends.

/// Whether the connection is PostgreSQL's: the few places where the SQL
/// differs (a row or table lock SQLite's single writer does not need).
pub(crate) fn is_postgres<DB: sqlx::Database>() -> bool {
    DB::NAME == <sqlx::Postgres as sqlx::Database>::NAME
}

/// The clause that locks the rows a step reads against a concurrent step
/// (PostgreSQL); SQLite's write transaction is alone already.
pub(crate) fn row_lock<DB: sqlx::Database>() -> &'static str {
    if is_postgres::<DB>() {
        " FOR UPDATE"
    } else {
        ""
    }
}

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
