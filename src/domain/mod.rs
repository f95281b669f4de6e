//! Domain rules every stage shares, free of I/O: the incident state machine,
//! why a call for help may be cancelled, console roles.

pub mod cancel_reason;
pub mod incident_state;
pub mod role;

pub use cancel_reason::CancelReason;
pub use incident_state::{Action, IllegalTransition, State};
pub use role::Role;
