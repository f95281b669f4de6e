//! Domain rules every stage shares, free of I/O: the incident state machine.

pub mod incident_state;

pub use incident_state::{Action, IllegalTransition, State};
