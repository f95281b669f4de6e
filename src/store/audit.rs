//! The tamper-evident audit log: each entry's hash covers its content and its
//! predecessor's hash, so an edited, removed or renumbered row breaks the chain there.

use std::fmt;

use sha2::{Digest, Sha256};
use sqlx::SqlStr;

use super::backend::Affected;
use super::{Db, StoreError, now_ms};

/// Entries read per query while verifying: memory stays bounded however long the log.
const VERIFY_PAGE: i64 = 1_000;

/// What the predecessor of the first entry is taken to be.
const GENESIS: [u8; 32] = [0; 32];

/// One thing someone did, as the audit log keeps it.
#[derive(Debug, Clone, Copy)]
pub struct AuditEntry<'a> {
    /// `user:<username>`, `cli:<os user>`, `anonymous`, `system`.
    pub actor: &'a str,
    /// `login`, `login_failed`, `logout`, `user_added`, …
    pub action: &'a str,
    /// What it was done to: `user:<username>`, `incident:<id>`, …
    pub subject: &'a str,
    pub detail: &'a str,
}

/// The hash of entry `id`, written at `at`, following an entry whose hash is `prev`:
///
/// ```text
/// SHA-256( prev                      32 bytes; all zero before the first entry
///        ‖ id                        8 bytes, big-endian
///        ‖ at                        8 bytes, big-endian (ms since the Unix epoch)
///        ‖ len(actor)   ‖ actor      length: 8 bytes, big-endian count of UTF-8 bytes
///        ‖ len(action)  ‖ action
///        ‖ len(subject) ‖ subject
///        ‖ len(detail)  ‖ detail )
/// ```
///
/// Fixed widths and length prefixes make the encoding unambiguous: moving
/// bytes from one field to the next changes the hash.
pub fn entry_hash(prev: &[u8; 32], id: i64, at: i64, e: &AuditEntry<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(id.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [e.actor, e.action, e.subject, e.detail] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// An entry's place in the chain.
pub(crate) struct Sealed {
    pub id: i64,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: [u8; 32],
}

/// Place an entry after `last` (its id and hash), or first when the log is empty.
pub(crate) fn seal(last: Option<(i64, Vec<u8>)>, at: i64, e: &AuditEntry<'_>) -> Sealed {
    let (id, prev) = match last {
        Some((id, hash)) => (id + 1, Some(hash)),
        None => (1, None),
    };
    // A stored hash is always 32 bytes; one that is not is already a break
    // the verifier reports, and chaining onto its zero-padded form keeps
    // this entry verifiable.
    let mut link = GENESIS;
    if let Some(p) = &prev {
        let n = p.len().min(32);
        link[..n].copy_from_slice(&p[..n]);
    }
    Sealed {
        id,
        hash: entry_hash(&link, id, at, e),
        prev_hash: prev,
    }
}

/// The audit log's statements, written once for both backends (see
/// [`super::tx`]): the append, called on the connection of the transaction
/// that makes the change it records, and the reads of the log, called on a
/// connection of the backend's pool.
pub(crate) trait AuditSql {
    /// Append `entry`, stamped `at`, to the audit log; its id.
    ///
    /// Appends are serialized: on PostgreSQL the table is locked in
    /// EXCLUSIVE mode (plain reads go on) until the transaction ends; on
    /// SQLite the write lock does the same. Append last, just before the
    /// commit: from here on every other writer of the log waits for this
    /// transaction.
    async fn append_audit(&mut self, entry: &AuditEntry<'_>, at: i64) -> Result<i64, sqlx::Error>;
    /// Append `entry` in a transaction of its own, begun with `begin`
    /// ([`Db::begin_write`], as a [`SqlStr`]: as a `&'static str` the
    /// compiler fails to prove the callers' futures `Send`).
    async fn append_audit_alone(
        &mut self,
        begin: &'static str,
        entry: &AuditEntry<'_>,
        at: i64,
    ) -> Result<i64, sqlx::Error>;
    /// The newest `limit` entries, newest first, about `subject` if given.
    async fn audit_trail(
        &mut self,
        subject: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, sqlx::Error>;
    /// The chain's length and its newest entry (id, hash), if any.
    async fn audit_head(&mut self) -> Result<Option<(i64, i64, Vec<u8>)>, sqlx::Error>;
    /// The stored hash of entry `id`.
    async fn audit_entry_hash(&mut self, id: i64) -> Result<Option<(Vec<u8>,)>, sqlx::Error>;
    /// The retention purges' entries (id, detail), in order.
    async fn audit_purges(&mut self) -> Result<Vec<(i64, String)>, sqlx::Error>;
    /// Up to `limit` entries after id `after`, in order.
    async fn audit_page(&mut self, after: i64, limit: i64) -> Result<Vec<AuditRow>, sqlx::Error>;
}

impl<C> AuditSql for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Decode<'q, C::Database>,
    Vec<u8>: sqlx::Type<C::Database>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> &'q [u8]: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<Vec<u8>>: sqlx::Decode<'q, C::Database>,
    for<'r> AuditRecord: sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn append_audit(&mut self, entry: &AuditEntry<'_>, at: i64) -> Result<i64, sqlx::Error> {
        if super::backend::is_postgres::<C::Database>() {
            sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
                .execute(&mut *self)
                .await?;
        }
        let last: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *self)
                .await?;
        let sealed = seal(last, at, entry);
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(sealed.id)
        .bind(at)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.subject)
        .bind(entry.detail)
        .bind(sealed.prev_hash)
        .bind(&sealed.hash[..])
        .execute(&mut *self)
        .await?;
        Ok(sealed.id)
    }

    async fn append_audit_alone(
        &mut self,
        begin: &'static str,
        entry: &AuditEntry<'_>,
        at: i64,
    ) -> Result<i64, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let id = tx.append_audit(entry, at).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn audit_trail(
        &mut self,
        subject: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, at, actor, action, subject, detail FROM audit_log \
             WHERE ($1 IS NULL OR subject = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(subject)
        .bind(limit)
        .fetch_all(self)
        .await
    }

    async fn audit_head(&mut self) -> Result<Option<(i64, i64, Vec<u8>)>, sqlx::Error> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *self)
                .await?;
        let Some((id, hash)) = row else {
            return Ok(None);
        };
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE id <= $1")
            .bind(id)
            .fetch_one(&mut *self)
            .await?;
        Ok(Some((count, id, hash)))
    }

    async fn audit_entry_hash(&mut self, id: i64) -> Result<Option<(Vec<u8>,)>, sqlx::Error> {
        sqlx::query_as("SELECT hash FROM audit_log WHERE id = $1")
            .bind(id)
            .fetch_optional(self)
            .await
    }

    async fn audit_purges(&mut self) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, detail FROM audit_log WHERE action = 'timeline_purged' ORDER BY id",
        )
        .fetch_all(self)
        .await
    }

    async fn audit_page(&mut self, after: i64, limit: i64) -> Result<Vec<AuditRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, at, actor, action, subject, detail, prev_hash, hash \
             FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self)
        .await
    }
}

/// What is wrong with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainFault {
    /// The stored hash is not the hash of the entry's content: the row was edited.
    HashMismatch,
    /// `prev_hash` is not the previous entry's hash: a row before it was
    /// removed, inserted or rewritten, or the log does not start at its first entry.
    PrevHashMismatch,
    /// The incident steps this entry seals were edited, removed or unmarked
    /// after it sealed them.
    TimelineAltered,
}

impl fmt::Display for ChainFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainFault::HashMismatch => "hash does not match the entry's content",
            ChainFault::PrevHashMismatch => "prev_hash does not link to the previous entry",
            ChainFault::TimelineAltered => "the incident steps it seals were changed since",
        })
    }
}

/// The first entry that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    pub id: i64,
    pub fault: ChainFault,
}

/// What a verification found: `entries` read (up to and including a break, where it stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    pub entries: u64,
    pub broken: Option<ChainBreak>,
}

impl AuditReport {
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// A stored entry, as read back for verification.
type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    Option<Vec<u8>>,
    Vec<u8>,
);

/// One audit entry as read back.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

impl Db {
    /// The newest `limit` entries, newest first; only those about `subject`
    /// (e.g. `client:12`) when given.
    pub async fn audit_trail(
        &self,
        subject: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = limit.clamp(1, 10_000);
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.audit_trail(subject, limit).await,
            Db::Postgres(p, _) => p.acquire().await?.audit_trail(subject, limit).await,
        }?)
    }

    /// Append one entry to the audit log on its own; returns its id. Inside a
    /// transaction that also makes the change, use [`AuditSql::append_audit`] instead.
    pub async fn audit(&self, entry: AuditEntry<'_>) -> Result<i64, StoreError> {
        let begin = self.begin_write();
        let at = now_ms();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .append_audit_alone(begin, &entry, at)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .append_audit_alone(begin, &entry, at)
                    .await
            }
        }?)
    }

    /// The chain's length and its newest entry (id, hash), if any.
    pub async fn audit_head(&self) -> Result<Option<(i64, i64, Vec<u8>)>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.audit_head().await,
            Db::Postgres(p, _) => p.acquire().await?.audit_head().await,
        }?)
    }

    /// The stored hash of entry `id`, if it is there.
    pub async fn audit_entry_hash(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.audit_entry_hash(id).await,
            Db::Postgres(p, _) => p.acquire().await?.audit_entry_hash(id).await,
        }?;
        Ok(row.map(|r| r.0))
    }

    /// Walk the whole log in id order and check every link; stops at the
    /// first entry that does not verify.
    pub async fn verify_audit_chain(&self) -> Result<AuditReport, StoreError> {
        let mut entries = 0;
        let mut after = i64::MIN;
        let mut prev: Option<[u8; 32]> = None;
        // Seals a retention purge took over (store::retention): their
        // surviving steps are checked against the purge entry instead. The
        // purge entries themselves are checked in the chain below.
        let purges = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.audit_purges().await,
            Db::Postgres(p, _) => p.acquire().await?.audit_purges().await,
        }?;
        let mut retired = std::collections::HashMap::new();
        for (purge, detail) in &purges {
            for seal in retired_seals(detail) {
                retired.insert(seal, *purge);
            }
        }
        loop {
            let page = match self {
                Db::Sqlite { read, .. } => {
                    read.acquire().await?.audit_page(after, VERIFY_PAGE).await
                }
                Db::Postgres(p, _) => p.acquire().await?.audit_page(after, VERIFY_PAGE).await,
            }?;
            let Some(last) = page.last() else {
                return Ok(AuditReport {
                    entries,
                    broken: None,
                });
            };
            after = last.0;
            for (id, at, actor, action, subject, detail, prev_hash, hash) in page {
                entries += 1;
                let fault = |fault| {
                    Ok(AuditReport {
                        entries,
                        broken: Some(ChainBreak { id, fault }),
                    })
                };
                if prev_hash.as_deref() != prev.as_ref().map(|h| &h[..]) {
                    return fault(ChainFault::PrevHashMismatch);
                }
                let entry = AuditEntry {
                    actor: &actor,
                    action: &action,
                    subject: &subject,
                    detail: &detail,
                };
                let expected = entry_hash(prev.as_ref().unwrap_or(&GENESIS), id, at, &entry);
                if hash[..] != expected[..] {
                    return fault(ChainFault::HashMismatch);
                }
                let seals = matches!(action.as_str(), "timeline_sealed" | "timeline_purged");
                let holds = if !seals {
                    true
                } else if retired.get(&id).is_some_and(|p| *p > id) {
                    // Retired by a later purge (only a later one), which now
                    // seals what survived of it: no step may still name it.
                    self.seal_is_empty(id).await?
                } else if action == "timeline_sealed" {
                    self.seal_holds(id, &detail, false).await?
                } else {
                    self.seal_holds(id, sealed_part(&detail), true).await?
                };
                if !holds {
                    return fault(ChainFault::TimelineAltered);
                }
                prev = Some(expected);
            }
        }
    }
}

/// The seal a `timeline_sealed` or `timeline_purged` entry's detail states
/// (`<n> steps <first>..<last> sha256 <hex>`).
pub(super) fn sealed_part(detail: &str) -> &str {
    detail.rsplit("; ").next().unwrap_or(detail)
}

/// The seals a `timeline_purged` entry retires.
pub(super) fn retired_seals(detail: &str) -> Vec<i64> {
    detail
        .strip_prefix("retires ")
        .and_then(|r| r.split(';').next())
        .map(|ids| {
            ids.split(',')
                .filter_map(|i| i.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(actor: &'a str, action: &'a str) -> AuditEntry<'a> {
        AuditEntry {
            actor,
            action,
            subject: "user:li",
            detail: "",
        }
    }

    #[test]
    fn a_purge_entry_names_what_it_retires_and_what_it_seals() {
        let d = "retires 12,57; purged 40 steps of 3 incidents; 2 steps 3..5 sha256 ab";
        assert_eq!(retired_seals(d), vec![12, 57]);
        assert_eq!(sealed_part(d), "2 steps 3..5 sha256 ab");
        assert_eq!(
            sealed_part("2 steps 3..5 sha256 ab"),
            "2 steps 3..5 sha256 ab"
        );
        assert!(retired_seals("2 steps 3..5 sha256 ab").is_empty());
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let a = entry_hash(&GENESIS, 1, 5, &entry("ab", "c"));
        let b = entry_hash(&GENESIS, 1, 5, &entry("a", "bc"));
        assert_ne!(a, b);
    }

    #[test]
    fn every_input_counts() {
        let base = entry_hash(&GENESIS, 1, 5, &entry("a", "b"));
        assert_ne!(base, entry_hash(&[1; 32], 1, 5, &entry("a", "b")));
        assert_ne!(base, entry_hash(&GENESIS, 2, 5, &entry("a", "b")));
        assert_ne!(base, entry_hash(&GENESIS, 1, 6, &entry("a", "b")));
        let mut e = entry("a", "b");
        e.detail = "x";
        assert_ne!(base, entry_hash(&GENESIS, 1, 5, &e));
    }

    #[test]
    fn encoding_is_as_documented() {
        // prev ‖ id ‖ at ‖ (len ‖ bytes) × 4, spelt out by hand.
        let mut bytes = vec![0u8; 32];
        bytes.extend(7i64.to_be_bytes());
        bytes.extend(1_700_000_000_000i64.to_be_bytes());
        for f in ["user:wang", "login", "user:wang", "ok"] {
            bytes.extend((f.len() as u64).to_be_bytes());
            bytes.extend(f.as_bytes());
        }
        let e = AuditEntry {
            actor: "user:wang",
            action: "login",
            subject: "user:wang",
            detail: "ok",
        };
        let want: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(entry_hash(&GENESIS, 7, 1_700_000_000_000, &e), want);
    }

    #[test]
    fn the_first_entry_has_no_predecessor_and_the_next_links_to_it() {
        let first = seal(None, 10, &entry("a", "b"));
        assert_eq!((first.id, first.prev_hash.as_deref()), (1, None));
        let second = seal(Some((1, first.hash.to_vec())), 11, &entry("a", "b"));
        assert_eq!(second.id, 2);
        assert_eq!(second.prev_hash.as_deref(), Some(&first.hash[..]));
        assert_eq!(
            second.hash,
            entry_hash(&first.hash, 2, 11, &entry("a", "b"))
        );
    }
}
