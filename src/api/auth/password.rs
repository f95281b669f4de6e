//! Passwords: argon2id with the crate's default parameters, kept as PHC
//! strings. Each hash carries its own parameters, so raising them later leaves
//! older hashes verifiable. Both functions are deliberately slow: call them
//! off the async runtime (`spawn_blocking`).

use std::sync::LazyLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Shortest password accepted for a new account, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Longest password, in bytes: a log-in with a longer one is refused before
/// hashing, so no one can make the server hash megabytes.
pub const PASSWORD_MAX_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "a password needs at least {PASSWORD_MIN_CHARS} characters and at most {PASSWORD_MAX_BYTES} bytes"
    )]
    Length,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The PHC string of a new password, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < PASSWORD_MIN_CHARS || password.len() > PASSWORD_MAX_BYTES {
        return Err(PasswordError::Length);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// A hash with the same parameters as every new one, matching no password
/// anyone can type in time: checked for unknown users so that a wrong name
/// takes as long to refuse as a wrong password.
static DUMMY: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password_with_salt(b"no such user", b"pingantong-dummy-salt")
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Whether `password` matches the PHC string `stored`; with no stored hash
/// (no such user) the dummy is checked and the answer is `false`.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    match stored {
        Some(phc) => Argon2::default()
            .verify_password(password.as_bytes(), phc)
            .is_ok(),
        None => {
            let _ = Argon2::default().verify_password(password.as_bytes(), DUMMY.as_str());
            false
        }
    }
}

/// Compute the dummy hash now rather than during the first unknown-user log-in.
pub fn warm_up() {
    LazyLock::force(&DUMMY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password("correct horse", Some(&h)));
        assert!(!verify_password("correct hors", Some(&h)));
        assert!(!verify_password("correct horse", None));
        assert!(!verify_password("correct horse", Some("not a phc string")));
        // A fresh salt every time.
        assert_ne!(h, hash_password("correct horse").unwrap());
    }

    #[test]
    fn lengths() {
        assert!(matches!(hash_password("short"), Err(PasswordError::Length)));
        let long = "x".repeat(PASSWORD_MAX_BYTES + 1);
        assert!(matches!(hash_password(&long), Err(PasswordError::Length)));
        // Characters, not bytes, for the minimum: 8 CJK characters are enough.
        assert!(hash_password("平安通平安通平安").is_ok());
    }

    #[test]
    fn the_dummy_has_the_parameters_of_a_real_hash() {
        warm_up();
        let real = hash_password("whatever password").unwrap();
        let params = |h: &str| h.split('$').take(4).collect::<Vec<_>>().join("$");
        assert_eq!(params(&DUMMY), params(&real));
    }
}
