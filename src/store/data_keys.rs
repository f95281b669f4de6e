//! The data keys of encryption at rest (see [`crate::vault`]): kept wrapped
//! in `data_keys`, unwrapped into the [`Vault`] each server holds, rotated,
//! rewrapped, and the pass that re-seals every value under the current key.

use super::audit::AuditSql;
use std::sync::Arc;

use sqlx::{Row, SqlStr};

use super::backend::Affected;
use super::{AuditEntry, Db, StoreError, now_ms};
use crate::vault::{Field, MasterKey, Vault, VaultError};

/// A data key added while servers run seals nothing until this long after
/// (ms): every server reloads its keys more often than that (see
/// [`Db::refresh_vault`]), so none meets a value it cannot open.
pub const ACTIVATE_AFTER_MS: i64 = 30_000;

/// Rows re-sealed per transaction.
const BATCH: i64 = 500;

/// One data key as the registry lists it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyRow {
    pub id: i64,
    /// Fingerprint of the master key that wrapped it.
    pub master: String,
    pub created_at: i64,
    /// When it seals from (ms).
    pub active_from: i64,
    /// When every value was found sealed under it.
    pub sealed_all_at: Option<i64>,
}

/// The keys a refresh found (one read of `data_keys`, every turn of the
/// housekeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysHeld {
    pub count: usize,
    /// The current key has not yet taken over every value (see [`Db::reseal`]).
    pub reseal_owed: bool,
}

/// What one re-sealing pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResealReport {
    /// The key everything is sealed under now.
    pub current: i64,
    /// Values sealed anew (plain ones and ones under older keys).
    pub resealed: u64,
    /// Older keys deleted since no value names them.
    pub retired: Vec<i64>,
}

/// How a sealed column is kept.
#[derive(Clone, Copy)]
enum Kind {
    Text(Field),
    Bytes(Field),
    /// `position` text, with the plain `lat`, `lon`, `accuracy_m` of rows
    /// written before encryption moved into it.
    Position,
}

pub(crate) struct Table {
    name: &'static str,
    key: &'static str,
    /// Whether the key is text (`device_presence.device_id`).
    text_key: bool,
    cols: &'static [(&'static str, Kind)],
}

const TABLES: &[Table] = &[
    Table {
        name: "clients",
        key: "id",
        text_key: false,
        cols: &[
            ("medical_notes", Kind::Text(Field::MedicalNotes)),
            ("medications", Kind::Text(Field::Medications)),
            ("allergies", Kind::Text(Field::Allergies)),
            ("key_safe", Kind::Text(Field::KeySafe)),
        ],
    },
    Table {
        name: "alarms",
        key: "id",
        text_key: false,
        cols: &[
            ("raw", Kind::Bytes(Field::Frame)),
            ("decoded", Kind::Text(Field::Decoded)),
            ("position", Kind::Position),
        ],
    },
    Table {
        name: "rejected_frames",
        key: "id",
        text_key: false,
        cols: &[("raw", Kind::Bytes(Field::Rejected))],
    },
    Table {
        name: "handoffs",
        key: "id",
        text_key: false,
        cols: &[("summary", Kind::Text(Field::Handoff))],
    },
    Table {
        name: "device_presence",
        key: "device_id",
        text_key: true,
        cols: &[("position", Kind::Position)],
    },
];

/// A cell as read and as it will be written.
#[derive(Clone, PartialEq)]
pub(crate) enum Cell {
    Text(Option<String>),
    Bytes(Vec<u8>),
}

/// A row as read: its key, its sealed cells, its plain position if any.
type ReadRow = (KeyVal, Vec<Cell>, Option<(f64, f64, Option<i64>)>);

/// A data key as stored: id, wrapped, master, created_at, sealed_all_at.
type StoredKey = (i64, Vec<u8>, String, i64, Option<i64>);

#[derive(Clone, PartialEq)]
pub(crate) enum KeyVal {
    Int(i64),
    Text(String),
}

/// What retention leaves of a frame's decoded form (`alarms.decoded`).
pub(crate) const PURGED_DECODED: &str = "{}";

/// The new value of a cell not sealed under `current`, or `None`.
fn reseal_cell(
    vault: &Vault,
    kind: Kind,
    cell: &Cell,
    legacy: Option<(f64, f64, Option<i64>)>,
    current: i64,
) -> Result<Option<Cell>, VaultError> {
    Ok(match (kind, cell) {
        // A purged frame's decoded form, `{}`, carries nothing and stays
        // plain: sealed, retention would take it for a frame still kept.
        (Kind::Text(Field::Decoded), Cell::Text(Some(v))) if v == PURGED_DECODED => None,
        (Kind::Text(field), Cell::Text(Some(v))) if !v.is_empty() => {
            if Vault::key_of_text(v) == Some(current) {
                None
            } else {
                let plain = vault.open_text(field, v)?;
                Some(Cell::Text(Some(vault.seal_text(field, &plain)?)))
            }
        }
        (Kind::Bytes(field), Cell::Bytes(v)) if !v.is_empty() => {
            if Vault::key_of_bytes(v) == Some(current) {
                None
            } else {
                let plain = vault.open_bytes(field, v)?;
                Some(Cell::Bytes(vault.seal_bytes(field, &plain)?))
            }
        }
        (Kind::Position, Cell::Text(v)) => {
            let sealed_here = v.as_deref().and_then(Vault::key_of_text) == Some(current);
            match (v.as_deref().filter(|s| !s.is_empty()), legacy) {
                (Some(_), None) if sealed_here => None,
                (Some(s), None) => Some(Cell::Text(
                    vault.seal_position(vault.open_position(Some(s))?)?,
                )),
                // Plain columns left from before: they win only when there
                // is no sealed position.
                (None, Some(at)) => Some(Cell::Text(vault.seal_position(Some(at))?)),
                (Some(s), Some(_)) => Some(Cell::Text(
                    vault.seal_position(vault.open_position(Some(s))?)?,
                )),
                (None, None) => None,
            }
        }
        _ => None,
    })
}

/// A row's sealed cells to replace: its key, each changed column with the
/// value read and the new one, whether plain position columns go.
type Change = (KeyVal, Vec<(&'static str, Cell, Cell)>, bool);

/// The data keys' statements and the re-sealing pass's reads and writes,
/// written once for both backends (see [`super::tx`]): called on a
/// connection of the backend's pool. A transaction that reads before it
/// writes begins with `begin` ([`Db::begin_write`]), handed to sqlx as a
/// [`SqlStr`]: as a `&'static str` the compiler fails to prove the callers'
/// futures `Send`.
pub(crate) trait DataKeySql {
    /// Make the first data key, wrapped with `master`, unless another
    /// server just did; `lock`: take the table's lock first (PostgreSQL).
    async fn first_data_key(
        &mut self,
        begin: &'static str,
        lock: bool,
        master: &MasterKey,
    ) -> Result<(), sqlx::Error>;
    /// Every data key (id, wrapped, master, created_at, sealed_all_at), oldest first.
    async fn data_key_rows(&mut self) -> Result<Vec<StoredKey>, sqlx::Error>;
    /// Add a data key `wrapped` with `master`, audited; its id.
    async fn insert_data_key(
        &mut self,
        begin: &'static str,
        master: &MasterKey,
        wrapped: Vec<u8>,
        created_at: i64,
        actor: &str,
        now: i64,
    ) -> Result<i64, sqlx::Error>;
    /// Wrap every data key with `new` instead of `old`, audited; how many.
    async fn rewrap_data_keys(
        &mut self,
        begin: &'static str,
        old: &MasterKey,
        new: &MasterKey,
        actor: &str,
        now: i64,
    ) -> Result<usize, StoreError>;
    /// Every value is under key `current`: say so, and delete the older keys.
    async fn retire_data_keys(&mut self, current: i64, now: i64) -> Result<(), sqlx::Error>;
    /// A batch of table `t`'s rows after `after`, read by `select` (with the
    /// plain position columns when `has_position`).
    async fn reseal_rows(
        &mut self,
        t: &Table,
        select: &str,
        after: &KeyVal,
        has_position: bool,
    ) -> Result<Vec<ReadRow>, sqlx::Error>;
    /// Write the re-sealed cells of table `t`, each only where it still holds
    /// what was read: (cells re-sealed, rows changed since).
    async fn reseal_rows_write(
        &mut self,
        t: &Table,
        changes: &[Change],
    ) -> Result<(u64, u64), sqlx::Error>;
}

impl<C> DataKeySql for C
where
    C: sqlx::Connection + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> Option<f64>: sqlx::Decode<'q, C::Database>,
    Option<f64>: sqlx::Type<C::Database>,
    for<'q> String: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> Option<String>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<String>: sqlx::Type<C::Database>,
    for<'q> Vec<u8>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Vec<u8>: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn first_data_key(
        &mut self,
        begin: &'static str,
        lock: bool,
        master: &MasterKey,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        if lock {
            sqlx::query("LOCK TABLE data_keys IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
            .fetch_one(&mut *tx)
            .await?;
        if n == 0 {
            let (_, wrapped) = master.new_data_key();
            sqlx::query(
                "INSERT INTO data_keys (wrapped, master, created_at, sealed_all_at) \
                 VALUES ($1, $2, $3, NULL)",
            )
            .bind(wrapped)
            .bind(master.fingerprint())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    async fn data_key_rows(&mut self) -> Result<Vec<StoredKey>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, wrapped, master, created_at, sealed_all_at FROM data_keys ORDER BY id",
        )
        .fetch_all(self)
        .await
    }

    async fn insert_data_key(
        &mut self,
        begin: &'static str,
        master: &MasterKey,
        wrapped: Vec<u8>,
        created_at: i64,
        actor: &str,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO data_keys (wrapped, master, created_at) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(wrapped)
        .bind(master.fingerprint())
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await?;
        let detail = format!("master key {}", master.fingerprint());
        let entry = AuditEntry {
            actor,
            action: "data_key_rotated",
            subject: &format!("data_key:{id}"),
            detail: &detail,
        };
        tx.append_audit(&entry, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn rewrap_data_keys(
        &mut self,
        begin: &'static str,
        old: &MasterKey,
        new: &MasterKey,
        actor: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, wrapped FROM data_keys ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        for (id, wrapped) in &rows {
            let dek = old.unwrap(*id, wrapped)?;
            sqlx::query("UPDATE data_keys SET wrapped = $1, master = $2 WHERE id = $3")
                .bind(new.wrap(&dek))
                .bind(new.fingerprint())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let detail = format!(
            "{} data keys, master key {} replaced by {}",
            rows.len(),
            old.fingerprint(),
            new.fingerprint()
        );
        let entry = AuditEntry {
            actor,
            action: "data_keys_rewrapped",
            subject: "data_keys",
            detail: &detail,
        };
        tx.append_audit(&entry, now).await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    async fn retire_data_keys(&mut self, current: i64, now: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE data_keys SET sealed_all_at = $1 WHERE id = $2")
            .bind(now)
            .bind(current)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM data_keys WHERE id < $1")
            .bind(current)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    async fn reseal_rows(
        &mut self,
        t: &Table,
        select: &str,
        after: &KeyVal,
        has_position: bool,
    ) -> Result<Vec<ReadRow>, sqlx::Error> {
        let q = sqlx::query(sqlx::AssertSqlSafe(select));
        let q = match after {
            KeyVal::Int(i) => q.bind(*i),
            KeyVal::Text(s) => q.bind(s.clone()),
        };
        let mut out = Vec::new();
        for r in q.fetch_all(self).await? {
            let key = if t.text_key {
                KeyVal::Text(r.try_get(0)?)
            } else {
                KeyVal::Int(r.try_get(0)?)
            };
            let mut cells = Vec::new();
            for (i, (_, kind)) in t.cols.iter().enumerate() {
                cells.push(match kind {
                    Kind::Bytes(_) => Cell::Bytes(r.try_get(i + 1)?),
                    _ => Cell::Text(r.try_get(i + 1)?),
                });
            }
            let legacy = if has_position {
                let n = t.cols.len() + 1;
                let lat: Option<f64> = r.try_get(n)?;
                let lon: Option<f64> = r.try_get(n + 1)?;
                let acc: Option<i64> = r.try_get(n + 2)?;
                lat.zip(lon).map(|(a, b)| (a, b, acc))
            } else {
                None
            };
            out.push((key, cells, legacy));
        }
        Ok(out)
    }

    async fn reseal_rows_write(
        &mut self,
        t: &Table,
        changes: &[Change],
    ) -> Result<(u64, u64), sqlx::Error> {
        let mut tx = self.begin().await?;
        let mut n = (0u64, 0u64);
        for (key, cols, legacy) in changes {
            let mut sets = Vec::new();
            let mut wheres = vec![format!("{} = $1", t.key)];
            for (i, (col, _, _)) in cols.iter().enumerate() {
                sets.push(format!("{col} = ${}", 2 + 2 * i));
                // Unchanged since read: a writer's newer value wins.
                wheres.push(format!(
                    "({col} = ${0} OR ({col} IS NULL AND ${0} IS NULL))",
                    3 + 2 * i
                ));
            }
            if *legacy {
                sets.push("lat = NULL, lon = NULL, accuracy_m = NULL".into());
            }
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                t.name,
                sets.join(", "),
                wheres.join(" AND ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            q = match key {
                KeyVal::Int(i) => q.bind(*i),
                KeyVal::Text(s) => q.bind(s.clone()),
            };
            for (_, old, new) in cols {
                for c in [new, old] {
                    q = match c {
                        Cell::Text(v) => q.bind(v.clone()),
                        Cell::Bytes(v) => q.bind(v.clone()),
                    };
                }
            }
            match q.execute(&mut *tx).await?.affected() {
                0 => n.1 += 1,
                _ => n.0 += cols.len() as u64,
            }
        }
        tx.commit().await?;
        Ok(n)
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Hold this database's data keys, unwrapped with `master`; the first
    /// start makes the first key. A master key that does not open them is an
    /// error here, before anything is served.
    pub(super) async fn open_vault(&self, master: &Arc<MasterKey>) -> Result<(), StoreError> {
        self.vault().set_master(master.clone());
        if self.refresh_vault().await?.count == 0 {
            let begin = self.begin_write();
            let lock = matches!(self, Db::Postgres(..));
            match self {
                Db::Sqlite { write, .. } => {
                    write
                        .acquire()
                        .await?
                        .first_data_key(begin, lock, master)
                        .await
                }
                Db::Postgres(p, _) => p.acquire().await?.first_data_key(begin, lock, master).await,
            }?;
            self.refresh_vault().await?;
        }
        Ok(())
    }

    async fn data_key_rows(&self) -> Result<Vec<StoredKey>, StoreError> {
        Ok(match self {
            Db::Sqlite { read, .. } => read.acquire().await?.data_key_rows().await,
            Db::Postgres(p, _) => p.acquire().await?.data_key_rows().await,
        }?)
    }

    /// Take up keys added (a rotation on another server or the command
    /// line) and drop retired ones; says how many are held and whether the
    /// current one still owes a re-sealing pass. Servers call it every few seconds.
    pub async fn refresh_vault(&self) -> Result<KeysHeld, StoreError> {
        let rows = self.data_key_rows().await?;
        let vault = self.vault();
        let master = vault.master().ok_or(VaultError::NoCurrentKey)?;
        let first = rows.first().map(|r| r.0);
        for (id, wrapped, _, created_at, _) in &rows {
            if !vault.holds(*id) {
                let dek = master.unwrap(*id, wrapped)?;
                // The first key seals at once: nothing was sealed before it.
                let from = if Some(*id) == first {
                    0
                } else {
                    created_at + ACTIVATE_AFTER_MS
                };
                vault.hold(*id, &dek, from);
            }
        }
        for id in vault.held() {
            if !rows.iter().any(|r| r.0 == id) {
                vault.forget(id);
            }
        }
        let current = vault.current_id();
        Ok(KeysHeld {
            count: rows.len(),
            reseal_owed: rows.iter().any(|r| Some(r.0) == current && r.4.is_none()),
        })
    }

    /// The data keys, oldest first.
    pub async fn data_keys(&self) -> Result<Vec<DataKeyRow>, StoreError> {
        let rows = self.data_key_rows().await?;
        let first = rows.first().map(|r| r.0);
        Ok(rows
            .into_iter()
            .map(|(id, _, master, created_at, sealed_all_at)| DataKeyRow {
                id,
                master,
                created_at,
                active_from: if Some(id) == first {
                    created_at
                } else {
                    created_at + ACTIVATE_AFTER_MS
                },
                sealed_all_at,
            })
            .collect())
    }

    /// Add a new data key; servers seal with it from `ACTIVATE_AFTER_MS` on
    /// and re-seal everything under it in the background. Returns its id.
    ///
    /// `offline`: no server is running on this database, so the key seals at
    /// once (the caller re-seals with [`Db::reseal`]).
    pub async fn rotate_data_key(&self, actor: &str, offline: bool) -> Result<i64, StoreError> {
        let master = self.vault().master().ok_or(VaultError::NoCurrentKey)?;
        let (_, wrapped) = master.new_data_key();
        let now = now_ms();
        // Dated back by the wait, an offline key is active at once.
        let created_at = if offline {
            now - ACTIVATE_AFTER_MS
        } else {
            now
        };
        let begin = self.begin_write();
        let id = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .insert_data_key(begin, &master, wrapped, created_at, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .insert_data_key(begin, &master, wrapped, created_at, actor, now)
                    .await
            }
        }?;
        self.refresh_vault().await?;
        Ok(id)
    }

    /// Wrap every data key with `new` instead of the master key this store
    /// was opened with, in one transaction. No value changes; servers must be
    /// given the new key before they next start.
    pub async fn rewrap_data_keys(
        &self,
        new: &MasterKey,
        actor: &str,
    ) -> Result<usize, StoreError> {
        let old = self.vault().master().ok_or(VaultError::NoCurrentKey)?;
        let now = now_ms();
        let begin = self.begin_write();
        let n = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .rewrap_data_keys(begin, &old, new, actor, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .rewrap_data_keys(begin, &old, new, actor, now)
                    .await
            }
        }?;
        Ok(n)
    }

    /// Whether the current key still has values to take over (plain ones
    /// from before encryption, or ones under older keys).
    pub async fn reseal_owed(&self) -> Result<bool, StoreError> {
        Ok(self.refresh_vault().await?.reseal_owed)
    }

    /// Seal every value not sealed under the current key (plain ones left
    /// from before encryption, ones under older keys), then delete the older
    /// keys. Safe beside writers: each cell is replaced only if it still
    /// holds what was read.
    pub async fn reseal(&self) -> Result<ResealReport, StoreError> {
        let vault = self.vault();
        let current = vault.current_id().ok_or(VaultError::NoCurrentKey)?;
        let mut report = ResealReport {
            current,
            ..Default::default()
        };
        let mut missed = 0;
        for t in TABLES {
            let (done, lost) = self.reseal_table(t, current).await?;
            report.resealed += done;
            missed += lost;
        }
        // The older keys go only once a second pass finds nothing left under
        // them: a cell a writer changed between read and write (its update
        // matched nothing), or a value a server sealed under an older key
        // meanwhile, is taken up first — at the next turn if not now. A key
        // deleted while a value names it would lose that value.
        if missed == 0 {
            for t in TABLES {
                let (done, lost) = self.reseal_table(t, current).await?;
                report.resealed += done;
                missed += lost + done;
            }
        }
        if missed > 0 {
            return Ok(report);
        }
        let now = now_ms();
        let older: Vec<i64> = self
            .data_key_rows()
            .await?
            .iter()
            .map(|r| r.0)
            .filter(|id| *id < current)
            .collect();
        match self {
            Db::Sqlite { write, .. } => write.acquire().await?.retire_data_keys(current, now).await,
            Db::Postgres(p, _) => p.acquire().await?.retire_data_keys(current, now).await,
        }?;
        for id in &older {
            vault.forget(*id);
        }
        report.retired = older;
        Ok(report)
    }

    /// Re-seal one table's cells not under `current`: (cells re-sealed, rows
    /// whose update found the row changed since it was read).
    async fn reseal_table(&self, t: &Table, current: i64) -> Result<(u64, u64), StoreError> {
        let vault = self.vault();
        let has_position = t.cols.iter().any(|c| matches!(c.1, Kind::Position));
        let mut select_cols: Vec<&str> = t.cols.iter().map(|c| c.0).collect();
        if has_position {
            select_cols.extend(["lat", "lon", "accuracy_m"]);
        }
        let select = format!(
            "SELECT {key}, {cols} FROM {name} WHERE {key} > $1 ORDER BY {key} LIMIT {BATCH}",
            key = t.key,
            cols = select_cols.join(", "),
            name = t.name,
        );
        let mut after = if t.text_key {
            KeyVal::Text(String::new())
        } else {
            KeyVal::Int(i64::MIN)
        };
        let mut done = 0u64;
        let mut missed = 0u64;
        loop {
            // Read a batch, decide in memory, write what changed.
            let rows = match self {
                Db::Sqlite { read, .. } => {
                    read.acquire()
                        .await?
                        .reseal_rows(t, &select, &after, has_position)
                        .await
                }
                Db::Postgres(p, _) => {
                    p.acquire()
                        .await?
                        .reseal_rows(t, &select, &after, has_position)
                        .await
                }
            }?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.0.clone();
            let mut changes = Vec::new();
            for (key, cells, legacy) in &rows {
                let mut new = Vec::new();
                for ((col, kind), cell) in t.cols.iter().zip(cells) {
                    if let Some(c) = reseal_cell(vault, *kind, cell, *legacy, current)? {
                        new.push((*col, cell.clone(), c));
                    }
                }
                if !new.is_empty() {
                    changes.push((key.clone(), new, legacy.is_some()));
                }
            }
            if changes.is_empty() {
                continue;
            }
            let n = match self {
                Db::Sqlite { write, .. } => {
                    write.acquire().await?.reseal_rows_write(t, &changes).await
                }
                Db::Postgres(p, _) => p.acquire().await?.reseal_rows_write(t, &changes).await,
            }?;
            done += n.0;
            missed += n.1;
        }
        Ok((done, missed))
    }
}
