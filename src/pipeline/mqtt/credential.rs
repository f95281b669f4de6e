//! MQTT passwords: derived from one server key, the username and a
//! generation, never stored.
//!
//! `password = hex(HMAC-SHA256(key, "pingantong-mqtt/1\n" + username + "\n" + generation)[..24])`.
//! The registry keeps only the generation (and whether it is revoked), so a
//! leaked database holds no credential; rotating one bumps its generation,
//! which invalidates the old password everywhere. Because the server can
//! derive every live password again, it can rebuild an external broker's
//! credential store from the registry at any time (`ops/mosquitto.conf`). The
//! passwords are 192 random-looking bits, so checking one costs one HMAC: a
//! city's devices reconnecting at once after an outage are let in at once.

use std::path::Path;

use pingantong_store::secret::{create_private, write_private};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Bytes of HMAC output a password carries.
const PASSWORD_BYTES: usize = 24;

/// The key every MQTT password is derived from.
#[derive(Clone)]
pub struct CredentialKey(String);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

impl CredentialKey {
    pub fn new(key: &str) -> Self {
        Self(key.to_owned())
    }

    /// The configured key, or else the one kept in `data_dir/mqtt-credential.key`
    /// (made on first start, readable by the server's user only). Servers
    /// sharing a broker must share the key: configure it.
    pub fn configured_or_kept(configured: Option<&str>, data_dir: &Path) -> std::io::Result<Self> {
        if let Some(k) = configured {
            return Ok(Self::new(k));
        }
        let path = data_dir.join("mqtt-credential.key");
        let empty = match std::fs::read_to_string(&path) {
            Ok(k) if !k.trim().is_empty() => return Ok(Self::new(k.trim())),
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let key = hex::encode(raw);
        std::fs::create_dir_all(data_dir)?;
        if empty {
            write_private(&path, &key)?;
        } else if !create_private(&path, &key)? {
            // Another process made it first: its key is the one.
            return Ok(Self::new(std::fs::read_to_string(&path)?.trim()));
        }
        Ok(Self(key))
    }

    fn mac(&self, username: &str, generation: i64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("HMAC takes any key");
        mac.update(format!("pingantong-mqtt/1\n{username}\n{generation}").as_bytes());
        mac
    }

    /// The password of `username` at `generation`.
    pub fn password(&self, username: &str, generation: i64) -> String {
        hex::encode(&self.mac(username, generation).finalize().into_bytes()[..PASSWORD_BYTES])
    }

    /// Whether `offered` is that password, compared in constant time.
    pub fn verify(&self, username: &str, generation: i64, offered: &[u8]) -> bool {
        let Ok(bytes) = hex::decode(offered) else {
            return false;
        };
        bytes.len() == PASSWORD_BYTES
            && self
                .mac(username, generation)
                .verify_truncated_left(&bytes)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_bound_to_key_username_and_generation() {
        let k = CredentialKey::new("k1");
        let p = k.password("devices/D-1", 1);
        assert_eq!(p.len(), 2 * PASSWORD_BYTES);
        assert!(k.verify("devices/D-1", 1, p.as_bytes()));
        assert!(k.verify("devices/D-1", 1, p.to_uppercase().as_bytes()));
        assert!(
            !k.verify("devices/D-2", 1, p.as_bytes()),
            "another username"
        );
        assert!(!k.verify("devices/D-1", 2, p.as_bytes()), "after rotation");
        assert!(!CredentialKey::new("k2").verify("devices/D-1", 1, p.as_bytes()));
        assert!(!k.verify("devices/D-1", 1, &p.as_bytes()[..46]), "a prefix");
        assert!(!k.verify("devices/D-1", 1, b""));
        assert!(!k.verify("devices/D-1", 1, b"zz"));
    }

    #[test]
    fn the_kept_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = CredentialKey::configured_or_kept(None, dir.path()).unwrap();
        let b = CredentialKey::configured_or_kept(None, dir.path()).unwrap();
        assert_eq!(a.password("carers/1", 1), b.password("carers/1", 1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("mqtt-credential.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "no one else reads it");
        }
        let c = CredentialKey::configured_or_kept(Some("set"), dir.path()).unwrap();
        assert_ne!(a.password("carers/1", 1), c.password("carers/1", 1));
        assert!(!format!("{c:?}").contains("set"), "never printed");
    }
}
