//! Wire formats spoken by the Ping An Tong alarm server: framing, parsing and
//! replies, with no I/O and no policy beyond what each protocol prescribes.

pub mod event;
pub mod native;

pub use event::{AlarmEvent, DeviceId, DeviceIdError, EventKind, Lane, Location};
