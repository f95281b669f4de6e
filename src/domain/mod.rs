//! Domain rules every stage shares, free of I/O: the incident state machine,
//! console roles.

pub mod incident_state;
pub mod role;

pub use incident_state::{Action, IllegalTransition, State};
pub use role::Role;
