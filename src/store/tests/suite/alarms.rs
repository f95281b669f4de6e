//! alarms

#[allow(unused_imports)]
use crate::both_backends;
