//! How long people get before the stage escalates, and the clock it reads.

use std::sync::Arc;

/// How long people get before the stage escalates.
#[derive(Debug, Clone, Copy)]
pub struct Escalation {
    /// An incident not claimed by an operator in this time alerts the supervisors.
    pub claim_after_ms: i64,
    /// An offer not accepted in this time goes to the next carer.
    pub offer_after_ms: i64,
    /// While still unclaimed, the alert repeats this often.
    pub remind_every_ms: i64,
}

impl Default for Escalation {
    fn default() -> Self {
        Self {
            claim_after_ms: 60_000,
            offer_after_ms: 90_000,
            remind_every_ms: 60_000,
        }
    }
}

/// Milliseconds since the Unix epoch, from whichever clock the stage runs on
/// (the system's; a test's own to move deadlines without waiting for them).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;
