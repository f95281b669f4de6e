//! The common alarm event every wire format maps to.

use std::fmt;

/// A device identifier as it appears on the wire: 1 to 32 characters of
/// `A-Z a-z 0-9 . _ : -`. IMEIs, SIA account numbers and native ids all fit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// Why a device identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {0} bytes long, the limit is {max}", max = DeviceId::MAX_LEN)]
    TooLong(usize),
    #[error("device id contains the byte 0x{0:02x}, allowed are A-Z a-z 0-9 . _ : -")]
    BadByte(u8),
}

impl DeviceId {
    pub const MAX_LEN: usize = 32;

    pub fn parse(s: &str) -> Result<Self, DeviceIdError> {
        Self::from_bytes(s.as_bytes())
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DeviceIdError> {
        if b.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if b.len() > Self::MAX_LEN {
            return Err(DeviceIdError::TooLong(b.len()));
        }
        if let Some(&bad) = b
            .iter()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-')))
        {
            return Err(DeviceIdError::BadByte(bad));
        }
        // Checked above: every byte is ASCII.
        Ok(Self(String::from_utf8_lossy(b).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

/// How urgently an event needs a human. Ordered: the first is the most urgent.
/// Stored, served and taken by the names [`Lane::NAMES`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Lane {
    /// Someone may be hurt: SOS, fall, medical.
    LifeSafety,
    /// The service may be degraded: low battery, power cut, removed, tamper.
    Technical,
    /// Nothing to do but record: heartbeat, test, position, cancel.
    Informational,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::LifeSafety, Lane::Technical, Lane::Informational];
    /// Every lane's name, in [`Lane::ALL`]'s order.
    pub const NAMES: [&'static str; 3] = ["life_safety", "technical", "informational"];

    /// The lane's name wherever it is stored, served or taken.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::LifeSafety => Self::NAMES[0],
            Lane::Technical => Self::NAMES[1],
            Lane::Informational => Self::NAMES[2],
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Compared with a lane's stored name: `row.lane == "life_safety"`.
impl PartialEq<&str> for Lane {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

#[cfg(feature = "sqlx")]
crate::stored_as_text!(Lane, "lane");

/// What happened, independent of the protocol that said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Sos,
    Fall,
    Medical,
    /// The resident cancelled an earlier alarm from the device.
    Cancel,
    Heartbeat,
    LowBattery,
    PeriodicTest,
    PowerCut,
    PowerRestored,
    RemovedFromWrist,
    Tamper,
    Position,
    /// The server's verdict, not a device's report: the device missed its
    /// heartbeats. No wire format decodes to it.
    Offline,
    /// The server's verdict: an offline device was heard from again.
    BackOnline,
    /// The server's verdict: a device that sends periodic tests missed one.
    MissedTest,
    /// A native event code this server does not know yet. Codes in the
    /// life-safety range are still treated as life-safety (see NATIVE.md).
    Other(u8),
}

impl EventKind {
    pub fn lane(self) -> Lane {
        match self {
            // A cancel travels with the alarms it may stop: a carer on the way must hear it
            // as fast as they heard the alarm.
            EventKind::Sos | EventKind::Fall | EventKind::Medical | EventKind::Cancel => {
                Lane::LifeSafety
            }
            EventKind::LowBattery
            | EventKind::PowerCut
            | EventKind::RemovedFromWrist
            | EventKind::Tamper
            | EventKind::Offline
            | EventKind::MissedTest => Lane::Technical,
            EventKind::Heartbeat
            | EventKind::PeriodicTest
            | EventKind::PowerRestored
            | EventKind::Position
            | EventKind::BackOnline => Lane::Informational,
            EventKind::Other(code) if code < 0x10 => Lane::LifeSafety,
            EventKind::Other(code) if code < 0x40 => Lane::Technical,
            EventKind::Other(_) => Lane::Informational,
        }
    }

    /// Whether this event asks for a human to act on a person (opens an incident).
    pub fn raises_alarm(self) -> bool {
        self.lane() == Lane::LifeSafety && self != EventKind::Cancel
    }

    /// A verdict of the server's own supervision, which no device may report.
    pub fn is_server_verdict(self) -> bool {
        matches!(
            self,
            EventKind::Offline | EventKind::BackOnline | EventKind::MissedTest
        )
    }

    /// Stable lower-case name used in the database and in JSON.
    pub fn name(self) -> String {
        match self {
            EventKind::Sos => "sos".into(),
            EventKind::Fall => "fall".into(),
            EventKind::Medical => "medical".into(),
            EventKind::Cancel => "cancel".into(),
            EventKind::Heartbeat => "heartbeat".into(),
            EventKind::LowBattery => "low_battery".into(),
            EventKind::PeriodicTest => "periodic_test".into(),
            EventKind::PowerCut => "power_cut".into(),
            EventKind::PowerRestored => "power_restored".into(),
            EventKind::RemovedFromWrist => "removed_from_wrist".into(),
            EventKind::Tamper => "tamper".into(),
            EventKind::Position => "position".into(),
            EventKind::Offline => "offline".into(),
            EventKind::BackOnline => "back_online".into(),
            EventKind::MissedTest => "missed_test".into(),
            EventKind::Other(code) => format!("other_{code:02x}"),
        }
    }

    /// Inverse of [`EventKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sos" => EventKind::Sos,
            "fall" => EventKind::Fall,
            "medical" => EventKind::Medical,
            "cancel" => EventKind::Cancel,
            "heartbeat" => EventKind::Heartbeat,
            "low_battery" => EventKind::LowBattery,
            "periodic_test" => EventKind::PeriodicTest,
            "power_cut" => EventKind::PowerCut,
            "power_restored" => EventKind::PowerRestored,
            "removed_from_wrist" => EventKind::RemovedFromWrist,
            "tamper" => EventKind::Tamper,
            "position" => EventKind::Position,
            "offline" => EventKind::Offline,
            "back_online" => EventKind::BackOnline,
            "missed_test" => EventKind::MissedTest,
            other => {
                let hex = other.strip_prefix("other_")?;
                EventKind::Other(u8::from_str_radix(hex, 16).ok()?)
            }
        })
    }
}

/// A position reported by the device (WGS-84).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<u16>,
}

/// One event from one device, as every protocol module produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    pub device: DeviceId,
    /// Per-device sequence number; the idempotency key together with the device.
    pub seq: u32,
    pub kind: EventKind,
    /// Device clock, milliseconds since the Unix epoch, if the device has one.
    pub device_time_ms: Option<u64>,
    pub battery_pct: Option<u8>,
    pub location: Option<Location>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_accepts_imei_and_refuses_bad_bytes() {
        assert_eq!(
            DeviceId::parse("862182030000001").unwrap().as_str(),
            "862182030000001"
        );
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::parse("a b"), Err(DeviceIdError::BadByte(b' ')));
        assert_eq!(
            DeviceId::parse(&"x".repeat(33)),
            Err(DeviceIdError::TooLong(33))
        );
    }

    #[test]
    fn unknown_codes_keep_a_safe_lane() {
        assert_eq!(EventKind::Other(0x0e).lane(), Lane::LifeSafety);
        for l in Lane::ALL {
            assert_eq!(Lane::parse(l.as_str()), Some(l));
        }
        assert_eq!(Lane::parse("Life_safety"), None);
        assert_eq!(EventKind::Other(0x20).lane(), Lane::Technical);
        assert_eq!(EventKind::Other(0x80).lane(), Lane::Informational);
    }

    #[test]
    fn kind_names_round_trip() {
        for code in 0..=255u8 {
            let k = EventKind::Other(code);
            assert_eq!(EventKind::from_name(&k.name()), Some(k));
        }
        for k in [EventKind::Sos, EventKind::Fall, EventKind::RemovedFromWrist] {
            assert_eq!(EventKind::from_name(&k.name()), Some(k));
        }
        assert_eq!(EventKind::from_name("bogus"), None);
    }
}
