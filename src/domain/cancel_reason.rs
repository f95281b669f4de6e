//! Why an operator cancels a call for help: a fixed list, so the city's
//! figures can count false alarms, tests and mistakes apart.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Pressed by mistake; the resident (or someone with them) says all is well.
    ResidentFalseAlarm,
    /// Another incident already covers the same call.
    Duplicate,
    /// An installer's, a family's or a scheduled test.
    Test,
    /// Raised by the device without a press (a fault, a wet button).
    DeviceFault,
    /// Opened or handled by mistake on the console.
    OperatorError,
}

impl CancelReason {
    pub const ALL: [CancelReason; 5] = [
        CancelReason::ResidentFalseAlarm,
        CancelReason::Duplicate,
        CancelReason::Test,
        CancelReason::DeviceFault,
        CancelReason::OperatorError,
    ];

    /// As stored in the incident's outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::ResidentFalseAlarm => "resident_false_alarm",
            CancelReason::Duplicate => "duplicate",
            CancelReason::Test => "test",
            CancelReason::DeviceFault => "device_fault",
            CancelReason::OperatorError => "operator_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Every reason, comma-separated, for error messages.
    pub fn list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_stored_and_as_json() {
        for r in CancelReason::ALL {
            assert_eq!(CancelReason::parse(r.as_str()), Some(r));
            let json: CancelReason = serde_json::from_value(serde_json::json!(r.as_str())).unwrap();
            assert_eq!(json, r);
        }
        assert_eq!(CancelReason::parse("false_alarm"), None);
        assert!(CancelReason::list().contains("resident_false_alarm"));
    }
}
