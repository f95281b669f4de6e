//! Domain rules every stage shares, free of I/O: the incident state machine,
//! why a call for help may be cancelled, who of the family hears of it,
//! console roles.

pub mod cancel_reason;
pub mod cascade;
pub mod escalation;
pub mod incident_state;
pub mod role;

pub use cancel_reason::CancelReason;
pub use cascade::Cascade;
pub use escalation::{Clock, Escalation};
pub use incident_state::{Action, IllegalTransition, State};
pub use role::Role;
