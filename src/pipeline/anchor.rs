//! The audit log's head, kept outside the database. Each entry's hash covers
//! its predecessor's, so an edited or removed row breaks the chain — except
//! the newest rows: removed, they leave a shorter chain that still verifies.
//! The server therefore writes the head (entries, newest id and hash) to a
//! file beside its data, signed with `audit_key`, whenever it moved and at
//! shutdown; `pingantong audit verify` checks the database against it. Copy
//! the file off the machine (a backup, a log shipper) and deleting the newest
//! rows is found even by someone who holds the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use pingantong_store::secret::Secret;
use pingantong_store::{Db, StoreError, now_ms};
use pingantong_telemetry::events;

/// How often the head is looked at (and written when it moved).
const EVERY: Duration = Duration::from_secs(10);
/// Steps are sealed once this old (ms): the transaction that wrote them has
/// long committed, and a late one is sealed at the next turn anyway.
const SEAL_AFTER_MS: i64 = 2_000;
/// How long one sealing may take before it is left for the next turn.
const SEAL_WAIT: Duration = Duration::from_secs(2);

/// The file's name in the data directory.
pub const FILE: &str = "audit-head.json";

/// What the file says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Entries in the chain when it was written.
    pub entries: i64,
    pub head_id: i64,
    /// The newest entry's hash, lower-case hex.
    pub head_hash: String,
    /// When it was written (ms since the epoch).
    pub at: i64,
    /// HMAC-SHA256 over the fields above with `audit_key`, hex; `None` when
    /// no key is configured (the file then only guards against mistakes).
    pub signature: Option<String>,
}

impl Checkpoint {
    fn signed_text(&self) -> String {
        format!(
            "pingantong audit head v1\n{}\n{}\n{}\n{}",
            self.entries, self.head_id, self.head_hash, self.at
        )
    }

    fn mac(&self, key: &Secret) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key");
        mac.update(self.signed_text().as_bytes());
        mac
    }

    fn sign(mut self, key: Option<&Secret>) -> Self {
        self.signature = key.map(|k| hex::encode(self.mac(k).finalize().into_bytes()));
        self
    }

    /// Whether the signature holds for `key` (compared in constant time).
    pub fn signature_holds(&self, key: &Secret) -> bool {
        let Some(sig) = &self.signature else {
            return false;
        };
        let Some(bytes) = (0..sig.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(sig.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        self.mac(key).verify_slice(&bytes).is_ok()
    }
}

/// The database's head as a checkpoint, signed; `None` for an empty log.
pub async fn current(db: &Db, key: Option<&Secret>) -> Result<Option<Checkpoint>, StoreError> {
    Ok(db.audit_head().await?.map(|(entries, head_id, hash)| {
        Checkpoint {
            entries,
            head_id,
            head_hash: hex::encode(hash),
            at: now_ms(),
            signature: None,
        }
        .sign(key)
    }))
}

/// Write `cp` to `path` whole or not at all: a temporary file, synced, renamed.
pub fn write(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(
        serde_json::to_string_pretty(cp)
            .expect("serialises")
            .as_bytes(),
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn read(path: &Path) -> Result<Checkpoint, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a check of the database against a checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The entry the checkpoint names is there with its hash.
    Holds,
    /// The checkpoint's signature does not verify with the key given.
    BadSignature,
    /// The entry the checkpoint names is gone, or has another hash.
    HeadGone { head_id: i64, at: i64 },
    /// Fewer entries than the checkpoint counted.
    Shorter { entries: i64, now: i64 },
}

/// Check the database against `cp` (decided from what the database says).
pub async fn check(db: &Db, cp: &Checkpoint, key: Option<&Secret>) -> Result<Verdict, StoreError> {
    if let Some(k) = key
        && !cp.signature_holds(k)
    {
        return Ok(Verdict::BadSignature);
    }
    let hash = db.audit_entry_hash(cp.head_id).await?;
    if hash.as_deref().map(hex::encode).as_deref() != Some(cp.head_hash.as_str()) {
        return Ok(Verdict::HeadGone {
            head_id: cp.head_id,
            at: cp.at,
        });
    }
    let now = db.audit_head().await?.map_or(0, |h| h.0);
    if now < cp.entries {
        return Ok(Verdict::Shorter {
            entries: cp.entries,
            now,
        });
    }
    Ok(Verdict::Holds)
}

/// Keep `dir/audit-head.json` up to date until `shutdown`, then write it once more.
pub fn spawn(
    db: Db,
    dir: PathBuf,
    key: Option<Secret>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            events::StageFailed {
                stage: "audit_checkpoint",
                error: &e,
            }
            .emit();
            return;
        }
        let path = dir.join(FILE);
        let mut written: Option<(i64, String)> = None;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.cancelled() => true,
            };
            // The incident steps of the last seconds into the chain first, so
            // the head written below covers them (store::seals). At a stop,
            // all of them.
            let before = if stopping {
                now_ms() + 1
            } else {
                now_ms() - SEAL_AFTER_MS
            };
            // Never held up by a database that is away: what is not sealed
            // now is sealed at the next turn, or after the next start.
            match tokio::time::timeout(SEAL_WAIT, db.seal_timeline(before)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => events::StageFailed {
                    stage: "timeline_seal",
                    error: &e,
                }
                .emit(),
                Err(_) => events::StageFailed {
                    stage: "timeline_seal",
                    error: &"the database did not answer within 2 s",
                }
                .emit(),
            }
            match current(&db, key.as_ref()).await {
                Ok(Some(cp)) if written.as_ref() != Some(&(cp.head_id, cp.head_hash.clone())) => {
                    match write(&path, &cp) {
                        Ok(()) => written = Some((cp.head_id, cp.head_hash)),
                        Err(e) => events::StageFailed {
                            stage: "audit_checkpoint",
                            error: &e,
                        }
                        .emit(),
                    }
                }
                Ok(_) => {}
                Err(e) => events::StageFailed {
                    stage: "audit_checkpoint",
                    error: &e,
                }
                .emit(),
            }
            if stopping {
                break;
            }
        }
    })
}
