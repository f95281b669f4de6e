//! Sensitive fields at rest: envelope encryption.
//!
//! Residents' medical notes, medications, allergies and key-safe codes, the
//! positions devices report and the frames that carry them are sensitive
//! personal information (PIPL art. 28): the database holds them encrypted,
//! so a copied database file, a backup or a replica read without the key
//! gives them away to no one.
//!
//! Two levels of key, as cloud KMSs do it:
//! - the **master key** comes from the settings (`data_key`) or, on a single
//!   server, from `data_dir/data.key` (made on first start, 0600); it never
//!   touches a value, it only wraps the data keys;
//! - **data keys** (random AES-256 keys) live in the database's `data_keys`
//!   table, each wrapped (AES-256-GCM) by the master key. The newest is
//!   current: every value written is sealed with it.
//!
//! Rotating the master key rewraps the few data keys and touches no value
//! (`pingantong data-key rewrap`); rotating the data key makes a new one
//! current and re-seals every value under it, after which the old ones are
//! retired (`pingantong data-key rotate`). Each sealed value names its data
//! key, so both can run while servers keep writing.
//!
//! Every value is sealed with AES-256-GCM under a fresh random nonce, with the
//! field it belongs to as associated data: a value copied into another column
//! does not open. Text is stored as `pat1:<key id>:<base64(nonce‖ciphertext‖tag)>`,
//! bytes as `\0PAT1` ‖ key id (u32, big-endian) ‖ nonce ‖ ciphertext ‖ tag. A
//! value without that mark is read as written before encryption was on (the
//! start-up pass seals those).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

/// The mark that starts a sealed text value.
const TEXT_MARK: &str = "pat1:";
/// The mark that starts a sealed byte value.
const BYTES_MARK: &[u8] = b"\0PAT1";
const KEY_LEN: usize = 32;

/// Where a value belongs; bound into its seal as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    MedicalNotes,
    Medications,
    Allergies,
    KeySafe,
    /// `alarms.position`, `device_presence.position`: "lat,lon[,accuracy_m]".
    Position,
    /// `alarms.raw`: the frame as received.
    Frame,
    /// `alarms.decoded`: the frame as decoded (JSON).
    Decoded,
    /// `rejected_frames.raw`.
    Rejected,
    /// `handoffs.summary`: what the hospital or police were told.
    Handoff,
    /// A data key, wrapped by the master key.
    DataKey,
}

impl Field {
    fn aad(self) -> &'static [u8] {
        match self {
            Field::MedicalNotes => b"pingantong/clients.medical_notes",
            Field::Medications => b"pingantong/clients.medications",
            Field::Allergies => b"pingantong/clients.allergies",
            Field::KeySafe => b"pingantong/clients.key_safe",
            Field::Position => b"pingantong/position",
            Field::Frame => b"pingantong/alarms.raw",
            Field::Decoded => b"pingantong/alarms.decoded",
            Field::Rejected => b"pingantong/rejected_frames.raw",
            Field::Handoff => b"pingantong/handoffs.summary",
            Field::DataKey => b"pingantong/data_keys.wrapped",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("sealed value names data key {0}, which this database does not hold")]
    UnknownKey(i64),
    #[error(
        "a sealed value does not open: altered, moved from another field, or sealed under another key"
    )]
    Tampered,
    #[error("a sealed value is malformed")]
    Malformed,
    #[error(
        "the data key does not open this database's key {0} (fingerprint {1}): every server \
         of one database needs the same `data_key`; see README \"Encryption at rest\""
    )]
    WrongMasterKey(i64, String),
    #[error(
        "`data_key` must be at least 32 characters (64 hex digits from `openssl rand -hex 32`)"
    )]
    WeakMasterKey,
    #[error("no current data key: the store was not opened")]
    NoCurrentKey,
}

fn aead_key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte key"))
}

fn seal_raw(key: &LessSafeKey, field: Field, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random source");
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(field.aad()),
        &mut body,
    )
    .expect("AES-GCM seals any length we store");
    out.extend_from_slice(&body);
    out
}

fn open_raw(key: &LessSafeKey, field: Field, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(VaultError::Malformed);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Malformed)?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(field.aad()), &mut body)
        .map_err(|_| VaultError::Tampered)?;
    Ok(plain.to_vec())
}

/// The key that wraps the data keys.
pub struct MasterKey {
    key: LessSafeKey,
    fingerprint: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint)
    }
}

impl MasterKey {
    /// From the configured text: 64 hex digits are taken as the key itself;
    /// any other text of 32 characters or more is stretched with HKDF-SHA256.
    pub fn from_secret(secret: &Secret) -> Result<Self, VaultError> {
        let text = secret.expose().trim();
        if text.len() < 32 {
            return Err(VaultError::WeakMasterKey);
        }
        let bytes = match hex::decode(text).ok() {
            Some(b) if b.len() == KEY_LEN => b,
            _ => {
                let salt =
                    ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"pingantong data key v1");
                let prk = salt.extract(text.as_bytes());
                let mut out = [0u8; KEY_LEN];
                prk.expand(&[b"master"], ring::hkdf::HKDF_SHA256)
                    .and_then(|okm| okm.fill(&mut out))
                    .expect("32 bytes from HKDF-SHA256");
                out.to_vec()
            }
        };
        // Names the key in errors and in `data_keys` without giving it away.
        let fp = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"pingantong key fingerprint\n".as_slice(), &bytes].concat(),
        );
        Ok(Self {
            key: aead_key(&bytes),
            fingerprint: hex::encode(&fp.as_ref()[..6]),
        })
    }

    /// The configured key, or else the one kept in `data_dir/data.key` (made
    /// on first start, readable by the server's user only).
    pub fn configured_or_kept(
        configured: Option<&Secret>,
        data_dir: &Path,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(k) = configured {
            return Ok(Self::from_secret(k)?);
        }
        let path = data_dir.join("data.key");
        let empty = match std::fs::read_to_string(&path) {
            Ok(k) if !k.trim().is_empty() => return Ok(Self::from_secret(&Secret::new(k.trim()))?),
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("{}: {e}", path.display()).into()),
        };
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| "the system's random source failed")?;
        let text = hex::encode(raw);
        std::fs::create_dir_all(data_dir)?;
        if empty {
            crate::secret::write_private(&path, &text)?;
        } else if !crate::secret::create_private(&path, &text)? {
            // Another process (a command beside the starting server) made
            // it first: its key is the one.
            let k = std::fs::read_to_string(&path)?;
            return Ok(Self::from_secret(&Secret::new(k.trim()))?);
        }
        Ok(Self::from_secret(&Secret::new(text))?)
    }

    /// Names the key (the first 6 bytes of a hash of it, hex).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A new data key, and its wrapped form for the database.
    pub fn new_data_key(&self) -> ([u8; KEY_LEN], Vec<u8>) {
        let mut dek = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut dek)
            .expect("the system's random source");
        let wrapped = self.wrap(&dek);
        (dek, wrapped)
    }

    pub fn wrap(&self, dek: &[u8; KEY_LEN]) -> Vec<u8> {
        seal_raw(&self.key, Field::DataKey, dek)
    }

    /// The data key `id` from its wrapped form.
    pub fn unwrap(&self, id: i64, wrapped: &[u8]) -> Result<[u8; KEY_LEN], VaultError> {
        let plain = open_raw(&self.key, Field::DataKey, wrapped)
            .map_err(|_| VaultError::WrongMasterKey(id, self.fingerprint.clone()))?;
        plain.try_into().map_err(|_| VaultError::Malformed)
    }
}

/// The data keys of one database, unwrapped, and which one is current.
#[derive(Default)]
pub struct Vault {
    inner: RwLock<Keys>,
    /// Unwraps keys other servers add (a rotation) as they are met.
    master: RwLock<Option<Arc<MasterKey>>>,
}

#[derive(Default)]
struct Keys {
    /// Each key, and from when (ms since the epoch) it may seal.
    by_id: HashMap<i64, (Arc<LessSafeKey>, i64)>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().expect("vault lock").by_id.len();
        write!(f, "Vault({n} keys, current {:?})", self.current_id())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Vault {
    /// The master key that unwraps this database's data keys.
    pub fn set_master(&self, key: Arc<MasterKey>) {
        *self.master.write().expect("vault lock") = Some(key);
    }

    pub fn master(&self) -> Option<Arc<MasterKey>> {
        self.master.read().expect("vault lock").clone()
    }

    /// The ids of the data keys held.
    pub fn held(&self) -> Vec<i64> {
        self.inner
            .read()
            .expect("vault lock")
            .by_id
            .keys()
            .copied()
            .collect()
    }

    /// Whether data key `id` is held.
    pub fn holds(&self, id: i64) -> bool {
        self.inner
            .read()
            .expect("vault lock")
            .by_id
            .contains_key(&id)
    }

    /// Hold data key `id`, sealing from `active_from` (ms) on. The newest
    /// active key is current: a key another server added seals nothing here
    /// until every server has had the time to learn it and can open what it
    /// seals.
    pub fn hold(&self, id: i64, dek: &[u8; KEY_LEN], active_from: i64) {
        let key = Arc::new(aead_key(dek));
        let mut k = self.inner.write().expect("vault lock");
        k.by_id.insert(id, (key, active_from));
    }

    /// Forget data key `id` (no value names it any more).
    pub fn forget(&self, id: i64) {
        let mut k = self.inner.write().expect("vault lock");
        k.by_id.remove(&id);
    }

    /// The current data key's id.
    pub fn current_id(&self) -> Option<i64> {
        self.current().ok().map(|c| c.0)
    }

    fn current(&self) -> Result<(i64, Arc<LessSafeKey>), VaultError> {
        let now = now_ms();
        self.inner
            .read()
            .expect("vault lock")
            .by_id
            .iter()
            .filter(|(_, (_, from))| *from <= now)
            .max_by_key(|(id, _)| **id)
            .map(|(id, (k, _))| (*id, k.clone()))
            .ok_or(VaultError::NoCurrentKey)
    }

    fn key(&self, id: i64) -> Result<Arc<LessSafeKey>, VaultError> {
        self.inner
            .read()
            .expect("vault lock")
            .by_id
            .get(&id)
            .map(|(k, _)| k.clone())
            .ok_or(VaultError::UnknownKey(id))
    }

    /// Seal a text value; the empty text stays empty (nothing to hide, and
    /// "no notes" stays cheap to tell).
    pub fn seal_text(&self, field: Field, plain: &str) -> Result<String, VaultError> {
        if plain.is_empty() {
            return Ok(String::new());
        }
        let (id, key) = self.current()?;
        Ok(format!(
            "{TEXT_MARK}{id}:{}",
            B64.encode(seal_raw(&key, field, plain.as_bytes()))
        ))
    }

    /// Open a text value sealed by [`Vault::seal_text`]; one without the mark
    /// is returned as it is.
    pub fn open_text(&self, field: Field, stored: &str) -> Result<String, VaultError> {
        let Some(rest) = stored.strip_prefix(TEXT_MARK) else {
            return Ok(stored.to_owned());
        };
        let (id, body) = rest.split_once(':').ok_or(VaultError::Malformed)?;
        let id: i64 = id.parse().map_err(|_| VaultError::Malformed)?;
        let sealed = B64.decode(body).map_err(|_| VaultError::Malformed)?;
        let plain = open_raw(&*self.key(id)?, field, &sealed)?;
        String::from_utf8(plain).map_err(|_| VaultError::Malformed)
    }

    pub fn seal_bytes(&self, field: Field, plain: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (id, key) = self.current()?;
        let id32 = u32::try_from(id).map_err(|_| VaultError::Malformed)?;
        let mut out = Vec::with_capacity(BYTES_MARK.len() + 4 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(BYTES_MARK);
        out.extend_from_slice(&id32.to_be_bytes());
        out.extend_from_slice(&seal_raw(&key, field, plain));
        Ok(out)
    }

    pub fn open_bytes(&self, field: Field, stored: &[u8]) -> Result<Vec<u8>, VaultError> {
        let Some(rest) = stored.strip_prefix(BYTES_MARK) else {
            return Ok(stored.to_vec());
        };
        if rest.len() < 4 {
            return Err(VaultError::Malformed);
        }
        let id = i64::from(u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")));
        open_raw(&*self.key(id)?, field, &rest[4..])
    }

    /// A position as stored: `lat,lon[,accuracy_m]`, sealed.
    pub fn seal_position(
        &self,
        at: Option<(f64, f64, Option<i64>)>,
    ) -> Result<Option<String>, VaultError> {
        at.map(|(lat, lon, acc)| {
            let text = match acc {
                Some(a) => format!("{lat},{lon},{a}"),
                None => format!("{lat},{lon}"),
            };
            self.seal_text(Field::Position, &text)
        })
        .transpose()
    }

    pub fn open_position(
        &self,
        stored: Option<&str>,
    ) -> Result<Option<(f64, f64, Option<i64>)>, VaultError> {
        let Some(stored) = stored.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let text = self.open_text(Field::Position, stored)?;
        let mut parts = text.split(',');
        let mut num = || parts.next().map(str::parse::<f64>);
        let (Some(Ok(lat)), Some(Ok(lon))) = (num(), num()) else {
            return Err(VaultError::Malformed);
        };
        let acc = match num() {
            Some(Ok(a)) => Some(a as i64),
            Some(Err(_)) => return Err(VaultError::Malformed),
            None => None,
        };
        Ok(Some((lat, lon, acc)))
    }

    /// Which data key sealed a stored text value (`None`: not sealed).
    pub fn key_of_text(stored: &str) -> Option<i64> {
        stored
            .strip_prefix(TEXT_MARK)?
            .split_once(':')?
            .0
            .parse()
            .ok()
    }

    /// Which data key sealed a stored byte value (`None`: not sealed).
    pub fn key_of_bytes(stored: &[u8]) -> Option<i64> {
        let rest = stored.strip_prefix(BYTES_MARK)?;
        Some(i64::from(u32::from_be_bytes(
            rest.get(..4)?.try_into().ok()?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault_with(id: i64) -> Vault {
        let v = Vault::default();
        let mut dek = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut dek).unwrap();
        v.hold(id, &dek, 0);
        v
    }

    #[test]
    fn text_round_trips_and_hides_what_it_holds() {
        let v = vault_with(1);
        let sealed = v.seal_text(Field::MedicalNotes, "高血压；房颤").unwrap();
        assert!(sealed.starts_with("pat1:1:"), "{sealed}");
        assert!(!sealed.contains("高血压"));
        assert_eq!(
            v.open_text(Field::MedicalNotes, &sealed).unwrap(),
            "高血压；房颤"
        );
        // Fresh nonce each time: equal notes do not look equal.
        assert_ne!(
            sealed,
            v.seal_text(Field::MedicalNotes, "高血压；房颤").unwrap()
        );
        assert_eq!(v.seal_text(Field::MedicalNotes, "").unwrap(), "");
        assert_eq!(v.open_text(Field::MedicalNotes, "plain").unwrap(), "plain");
    }

    #[test]
    fn a_value_moved_altered_or_under_an_unknown_key_does_not_open() {
        let v = vault_with(1);
        let sealed = v.seal_text(Field::Medications, "华法林 3mg").unwrap();
        assert_eq!(
            v.open_text(Field::Allergies, &sealed),
            Err(VaultError::Tampered),
            "copied into another field"
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            v.open_text(Field::Medications, std::str::from_utf8(&altered).unwrap())
                .is_err()
        );
        assert_eq!(
            vault_with(2).open_text(Field::Medications, &sealed.replace("pat1:1:", "pat1:2:")),
            Err(VaultError::Tampered),
            "another key of the same id"
        );
        assert_eq!(
            vault_with(1).open_text(Field::Medications, &sealed.replace("pat1:1:", "pat1:9:")),
            Err(VaultError::UnknownKey(9))
        );
        assert_eq!(
            v.open_text(Field::Medications, "pat1:1:%%%"),
            Err(VaultError::Malformed)
        );
    }

    #[test]
    fn bytes_and_positions_round_trip_and_name_their_key() {
        let v = vault_with(3);
        let frame = b"\x78\x78\x0d\x01\x03\x53\x41\x35\x32\x15\x03\x00\x01\x8d\x2d\x0d\x0a";
        let sealed = v.seal_bytes(Field::Frame, frame).unwrap();
        assert_eq!(Vault::key_of_bytes(&sealed), Some(3));
        assert!(!sealed.windows(4).any(|w| w == &frame[..4]));
        assert_eq!(v.open_bytes(Field::Frame, &sealed).unwrap(), frame);
        assert_eq!(v.open_bytes(Field::Frame, frame).unwrap(), frame, "legacy");
        assert!(v.open_bytes(Field::Rejected, &sealed).is_err());

        let p = v
            .seal_position(Some((23.1291, 113.2644, Some(15))))
            .unwrap()
            .unwrap();
        assert_eq!(Vault::key_of_text(&p), Some(3));
        assert!(!p.contains("23.1291"));
        assert_eq!(
            v.open_position(Some(&p)).unwrap(),
            Some((23.1291, 113.2644, Some(15)))
        );
        let q = v.seal_position(Some((-1.5, 2.25, None))).unwrap();
        assert_eq!(
            v.open_position(q.as_deref()).unwrap(),
            Some((-1.5, 2.25, None))
        );
        assert_eq!(v.open_position(None).unwrap(), None);
    }

    #[test]
    fn the_newest_key_is_current_and_old_ones_still_open() {
        let v = vault_with(1);
        let old = v.seal_text(Field::KeySafe, "4711").unwrap();
        let mut dek = [7u8; KEY_LEN];
        dek[0] = 1;
        v.hold(2, &dek, i64::MAX);
        assert_eq!(v.current_id(), Some(1), "not active yet");
        assert!(v.holds(2));
        v.hold(2, &dek, 0);
        assert_eq!(v.current_id(), Some(2));
        assert!(
            v.seal_text(Field::KeySafe, "4711")
                .unwrap()
                .starts_with("pat1:2:")
        );
        assert_eq!(v.open_text(Field::KeySafe, &old).unwrap(), "4711");
        v.forget(1);
        assert_eq!(
            v.open_text(Field::KeySafe, &old),
            Err(VaultError::UnknownKey(1))
        );
        assert_eq!(
            Vault::default().seal_text(Field::KeySafe, "x"),
            Err(VaultError::NoCurrentKey)
        );
    }

    #[test]
    fn a_master_key_wraps_data_keys_only_it_can_unwrap() {
        let a = MasterKey::from_secret(&Secret::new("a".repeat(64))).unwrap();
        let b = MasterKey::from_secret(&Secret::new("correct horse battery staple, long enough"))
            .unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let (dek, wrapped) = a.new_data_key();
        assert_eq!(a.unwrap(1, &wrapped).unwrap(), dek);
        assert!(matches!(
            b.unwrap(1, &wrapped),
            Err(VaultError::WrongMasterKey(1, _))
        ));
        assert_eq!(
            MasterKey::from_secret(&Secret::new("short")).err(),
            Some(VaultError::WeakMasterKey)
        );
        assert!(!format!("{a:?}").contains("aaaa"), "never printed");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Hold key `id`, sealing at once or only in the future.
        Hold(i64, bool),
        Forget(i64),
        Seal(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (1i64..6, any::<bool>()).prop_map(|(id, now)| Op::Hold(id, now)),
            (1i64..6).prop_map(Op::Forget),
            any::<u8>().prop_map(Op::Seal),
        ]
    }

    proptest::proptest! {
        /// Keys held, activated and forgotten in any order, values sealed in
        /// between: after every step the current key is the newest active
        /// one, every value opens to what was sealed while its key is held,
        /// and none opens once it is forgotten or read as another field.
        #[test]
        fn keys_come_and_go_and_values_open_only_under_theirs(ops in proptest::collection::vec(op(), 1..60)) {
            let v = Vault::default();
            // The model: id → (key bytes, active now).
            let mut held: HashMap<i64, ([u8; KEY_LEN], bool)> = HashMap::new();
            let mut sealed: Vec<(i64, String, String)> = Vec::new();
            for op in ops {
                match op {
                    Op::Hold(id, now) => {
                        let dek = [id as u8; KEY_LEN];
                        v.hold(id, &dek, if now { 0 } else { i64::MAX });
                        held.insert(id, (dek, now));
                    }
                    Op::Forget(id) => {
                        v.forget(id);
                        held.remove(&id);
                    }
                    Op::Seal(n) => {
                        let plain = format!("病史 {n}");
                        match v.seal_text(Field::MedicalNotes, &plain) {
                            Ok(s) => sealed.push((Vault::key_of_text(&s).unwrap(), s, plain)),
                            Err(e) => proptest::prop_assert_eq!(e, VaultError::NoCurrentKey),
                        }
                    }
                }
                let newest = held.iter().filter(|(_, (_, now))| *now).map(|(id, _)| *id).max();
                proptest::prop_assert_eq!(v.current_id(), newest);
                for (id, stored, plain) in &sealed {
                    proptest::prop_assert!(!stored.contains(plain.as_str()));
                    let opened = v.open_text(Field::MedicalNotes, stored);
                    if held.contains_key(id) {
                        proptest::prop_assert_eq!(opened.as_deref(), Ok(plain.as_str()));
                        proptest::prop_assert!(v.open_text(Field::Medications, stored).is_err());
                    } else {
                        proptest::prop_assert_eq!(opened, Err(VaultError::UnknownKey(*id)));
                    }
                }
            }
        }
    }

    #[test]
    fn the_kept_master_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::configured_or_kept(None, dir.path()).unwrap();
        let b = MasterKey::configured_or_kept(None, dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("data.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
