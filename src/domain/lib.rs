//! Domain rules every stage shares, free of I/O: the incident state machine,
//! why a call for help may be cancelled, who of the family hears of it,
//! console roles, what each kind of event gets (`rules`) and who may say what
//! on a broker (`acl`). This crate imports nothing of the server: every other
//! crate may import it, it imports none of them.

pub mod acl;
pub mod cancel_reason;
pub mod cascade;
pub mod dispatch_state;
pub mod escalation;
pub mod incident_state;
pub mod reach;
pub mod role;
pub mod rules;

pub use cancel_reason::CancelReason;
pub use cascade::Cascade;
pub use dispatch_state::DispatchState;
pub use escalation::{Clock, Escalation};
pub use incident_state::{Action, IllegalTransition, State};
pub use reach::{Email, NoticeRoute, Phone, WebhookUrl};
pub use role::Role;
