//! Who hears of an alarm among a resident's family and keyholders.

use serde::{Deserialize, Serialize};

/// Who hears of an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cascade {
    /// In the client's order, one at a time, until one is reached: the
    /// keyholder cascade of social alarm services.
    #[default]
    UntilReached,
    /// Everyone at once.
    Everyone,
}
