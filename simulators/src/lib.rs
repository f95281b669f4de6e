//! Simulators that talk to a Ping An Tong server over the wire only: pendant
//! fleets (press → ACK latency) and carers (dispatch offers over MQTT).

pub mod carer;
pub mod city;
pub mod fleet;
pub mod mqtt_fleet;
pub mod record;
pub mod roster;
pub mod scenario;
pub mod source;
pub mod speaker;

use sha2::{Digest, Sha256};

/// A pendant's secret derived from a fleet seed, so a server seeded with the
/// same seed and a simulator agree without exchanging secrets.
pub fn derive_secret(seed: &str, device_id: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(b":");
    h.update(device_id.as_bytes());
    h.finalize().to_vec()
}

/// MQTT credentials from `PAT_MQTT_USERNAME` and `PAT_MQTT_PASSWORD`, for
/// the probes (a password never travels as a flag: flags show in `ps`).
pub fn login_from_env() -> Option<(String, String)> {
    Some((
        std::env::var("PAT_MQTT_USERNAME").ok()?,
        std::env::var("PAT_MQTT_PASSWORD").ok()?,
    ))
}

/// The id of the `n`-th pendant of a fleet (`PA000001` …).
pub fn device_id(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:06}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_differ_per_device_and_seed() {
        let a = super::derive_secret("s", "PA000001");
        assert_eq!(a.len(), 32);
        assert_eq!(a, super::derive_secret("s", "PA000001"));
        assert_ne!(a, super::derive_secret("s", "PA000002"));
        assert_ne!(a, super::derive_secret("t", "PA000001"));
        assert_eq!(super::device_id("PA", 7), "PA000007");
    }
}
