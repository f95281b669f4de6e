//! What a TCP fleet is told: its protocols and listeners, pendants, rates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::roster::Pendant;
use crate::speaker::Speaker;

/// A protocol and the server's listener for it.
#[derive(Clone)]
pub struct Line {
    pub speaker: Arc<dyn Speaker>,
    pub addr: SocketAddr,
}

impl Line {
    pub fn new(speaker: Arc<dyn Speaker>, addr: SocketAddr) -> Self {
        Self { speaker, addr }
    }
}

#[derive(Clone)]
pub struct FleetConfig {
    /// What the pendants speak, and where to; each pendant names its line.
    pub lines: Vec<Line>,
    pub pendants: Vec<Pendant>,
    pub heartbeat: Duration,
    /// Presses per second across the whole fleet (Poisson).
    pub alarm_rate: f64,
    /// Technical events (low battery) per second across the fleet: a flood to
    /// time the presses through. Counted with the heartbeats.
    pub technical_rate: f64,
    /// How long pendants keep pressing and beating (`run`; `run_plan` takes the plan's phases).
    pub duration: Duration,
    /// A frame unanswered this long is sent again (same bytes: a retry).
    pub retry_after: Duration,
    /// After `duration`, how long to wait for the last answers.
    pub grace: Duration,
}
