//! Wire formats spoken by the Ping An Tong alarm server: framing, parsing and
//! replies, with no I/O and no policy beyond what each protocol prescribes.

pub mod civil;
pub mod codec;
pub mod event;
pub mod eview;
pub mod gt06;
pub mod h02;
pub mod native;
pub mod sia_dc09;
pub mod watch;

pub use codec::{Codec, Frame, FramingError, Integrity, Observation, ReplyPlan};
pub use event::{AlarmEvent, DeviceId, DeviceIdError, EventKind, Lane, Location};
