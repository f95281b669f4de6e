//! How a simulated device speaks its protocol: frames out, replies in.

use bytes::BytesMut;
use pingantong_protocol::native::{self, NakReason, Reply};
use pingantong_protocol::{AlarmEvent, DeviceId, EventKind, Location};

use crate::fleet::Pendant;

/// What the server said to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored: the device may forget the frame.
    Ack,
    /// Refused for good (unknown device, bad tag): sending again will not help.
    Refused,
    /// Not stored: send the same frame again.
    Retry,
}

/// One reply, and the wire sequence number it answers if the protocol echoes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub seq: Option<u32>,
    pub verdict: Verdict,
}

/// A device protocol as a device speaks it.
pub trait Speaker: Send + Sync {
    fn name(&self) -> &'static str;

    /// The sequence number as it travels on the wire (some protocols count in 16 bits).
    fn wire_seq(&self, seq: u32) -> u32 {
        seq
    }

    /// Frames to send first on every connection (a login), and how many replies they draw.
    fn hello(&self, _p: &Pendant) -> Option<(BytesMut, usize)> {
        None
    }

    /// One event as a frame.
    fn encode(
        &self,
        p: &Pendant,
        seq: u32,
        kind: EventKind,
        time_ms: u64,
        location: Option<Location>,
    ) -> BytesMut;

    /// Whether the server answers this kind of event (some protocols never answer some frames).
    fn answered(&self, _kind: EventKind) -> bool {
        true
    }

    /// Whether replies carry the sequence number; if not, replies are matched in order.
    fn echoes_seq(&self) -> bool;

    /// Cut the next reply from `buf`; `Err` when the bytes make no sense.
    fn next_reply(&self, p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String>;
}

/// The native protocol (protocol/NATIVE.md).
pub struct NativeSpeaker;

impl Speaker for NativeSpeaker {
    fn name(&self) -> &'static str {
        "native"
    }

    fn encode(
        &self,
        p: &Pendant,
        seq: u32,
        kind: EventKind,
        time_ms: u64,
        location: Option<Location>,
    ) -> BytesMut {
        let event = AlarmEvent {
            device: DeviceId::parse(&p.id).expect("simulated ids are valid"),
            seq,
            kind,
            device_time_ms: Some(time_ms),
            battery_pct: Some(80),
            location,
        };
        let mut bytes = BytesMut::new();
        native::encode_event(&event, &p.secret, &mut bytes);
        bytes
    }

    fn echoes_seq(&self) -> bool {
        true
    }

    fn next_reply(&self, p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String> {
        let Some(raw) = native::split_frame(buf).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (reply, _authentic) = Reply::parse(&raw, &p.secret).map_err(|e| e.to_string())?;
        let verdict = match reply {
            Reply::Ack { .. } => Verdict::Ack,
            Reply::Nak {
                reason: NakReason::Unavailable,
                ..
            } => Verdict::Retry,
            Reply::Nak { .. } => Verdict::Refused,
        };
        Ok(Some(Answer {
            seq: Some(reply.seq()),
            verdict,
        }))
    }
}
