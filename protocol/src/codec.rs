//! The one interface every device protocol implements: cut a frame from a
//! stream, say what it reports, and say what to answer.
//!
//! A codec holds per-connection state (a GT06 device names itself once, at
//! login) but does no I/O and knows nothing of storage: the server stores each
//! [`Frame`] and sends [`ReplyPlan::AfterCommit::ok`] only once it is committed.

use bytes::{Bytes, BytesMut};

use crate::event::{DeviceId, EventKind, Location};

/// Whether a frame's own checks (checksum, length field) held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integrity {
    Intact,
    /// The checksum does not match. What the server does with such a frame is
    /// each protocol's documented policy (an SOS with a bad CRC is still an SOS).
    BadChecksum,
    /// The frame's length field disagrees with its real length.
    BadLength,
}

impl Integrity {
    pub fn as_str(self) -> &'static str {
        match self {
            Integrity::Intact => "intact",
            Integrity::BadChecksum => "bad_checksum",
            Integrity::BadLength => "bad_length",
        }
    }
}

/// One thing a frame reports. A frame may carry several (a watch status word
/// with SOS and low battery set yields two).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: EventKind,
    /// Device clock, milliseconds since the Unix epoch (UTC), if the frame has one.
    pub device_time_ms: Option<u64>,
    pub battery_pct: Option<u8>,
    pub location: Option<Location>,
    /// Signal strength as the protocol reports it (GSM 0–31, or 0–100 %), if any.
    pub signal: Option<u8>,
    /// The protocol's own name for it, kept for people: `"AL status bit 16"`,
    /// `"CID 1101"`, `"SIA FA"`, `"GT06 0x16 alarm 0x01"`.
    pub code: String,
}

/// What to answer a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyPlan {
    /// The protocol expects no answer to this frame.
    None,
    /// Answer with `ok` once the frame is committed; the server never sends
    /// `ok` before the commit. `failed`, if the protocol has such an answer,
    /// says "received, cannot process it now": it is sent at once instead
    /// while the server's database is away (the server still holds the frame
    /// and stores it when the database returns). Without one the device
    /// waits for `ok`, however long the database is away.
    AfterCommit { ok: Bytes, failed: Option<Bytes> },
    /// The answer depends on what the server made of the frame — whether
    /// its sender proved who it is, whether it was a copy, whether the
    /// device's clock is off — and is signed with the device's key: the
    /// server asks the protocol's [`Judge::answer`] for it once the frame is
    /// committed (or cannot be). The native protocol's ACK and NAK.
    Judged,
}

/// Whether the sender of an event proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStatus {
    Verified,
    /// The device is known but the frame's proof did not hold: its tag did
    /// not match the device's secret, or its checksum failed (so the id it
    /// names may be wrong).
    BadTag,
    /// No device is provisioned with this id for this protocol.
    UnknownDevice,
}

impl AuthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Verified => "verified",
            AuthStatus::BadTag => "bad_tag",
            AuthStatus::UnknownDevice => "unknown_device",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "verified" => AuthStatus::Verified,
            "bad_tag" => AuthStatus::BadTag,
            _ => AuthStatus::UnknownDevice,
        }
    }
}

/// What became of a frame's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Committed now (or, for a heartbeat, noted).
    Stored,
    /// Every record had been stored before: the device sent it again.
    Duplicate,
    /// Not stored: the device must send it again.
    NotStored,
}

/// What the server made of a frame planned as [`ReplyPlan::Judged`].
#[derive(Debug, Clone, Copy)]
pub struct Judgement<'a> {
    /// The frame's own counter.
    pub serial: Option<u32>,
    /// `None`: the sender could not be checked (the device directory was
    /// unreachable as the server stopped).
    pub auth: Option<AuthStatus>,
    pub fate: Fate,
    /// The device's clock is further from the server's than the server allows.
    pub clock_skew: bool,
    /// The key the device is provisioned with, when it is known: the answer
    /// is signed with it.
    pub key: Option<&'a [u8]>,
    pub server_time_ms: u64,
}

/// How a protocol tells who sent a frame, and words its answer once the
/// frame's fate is known. Stateless and shared by every connection of the
/// protocol, unlike its [`Codec`]: the server checks one frame's sender
/// while the codec already cuts the next.
pub trait Judge: Sync {
    /// Whether `frame` comes from the device it names, given the key that
    /// device is provisioned with for this protocol (`None`: no device of
    /// this protocol has that id). Only asked of frames that name a device.
    fn authenticate(&self, frame: &Frame, key: Option<&[u8]>) -> AuthStatus;

    /// The answer to a frame planned as [`ReplyPlan::Judged`]; `None`: silence.
    fn answer(&self, judgement: &Judgement<'_>) -> Option<Bytes>;
}

/// The protocols whose frames carry no proof but the id they name (GT06,
/// watches, H02, Eview, DC-09): a frame is its device's when that id is
/// provisioned for the protocol and the frame's own check held.
pub struct ById;

impl Judge for ById {
    fn authenticate(&self, frame: &Frame, key: Option<&[u8]>) -> AuthStatus {
        match key {
            // A frame whose own check failed may name the wrong device: its
            // alarms reach an operator, never a carer by themselves.
            _ if frame.integrity == Integrity::BadChecksum => AuthStatus::BadTag,
            Some(_) => AuthStatus::Verified,
            None => AuthStatus::UnknownDevice,
        }
    }

    fn answer(&self, _: &Judgement<'_>) -> Option<Bytes> {
        None
    }
}

/// One frame cut from a stream and decoded as far as it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The whole frame exactly as received (delimiters included).
    pub raw: Bytes,
    pub integrity: Integrity,
    /// The device this frame is from: named by the frame, or learned by the
    /// codec earlier on this connection (GT06 login). `None`: not known yet.
    pub device: Option<DeviceId>,
    /// The frame's own counter (GT06 serial, DC-09 sequence, Eview sequence).
    pub serial: Option<u32>,
    /// What the frame reports; empty for frames that only keep the link up.
    pub observations: Vec<Observation>,
    /// A short description for logs and the stored decoded form: `"login"`,
    /// `"AL"`, `"SIA-DCS FA"`, `"heartbeat"`.
    pub summary: String,
    /// Set when the frame was cut cleanly but its content could not be
    /// understood; the server keeps the raw bytes with this reason.
    pub parse_error: Option<String>,
    pub reply: ReplyPlan,
    /// What stays the same when a device sends this event again, where its
    /// bytes do not: DC-09 repeats a message with a new send time and, when
    /// encrypted, a new pad, so its token, sequence number, data and extended
    /// data are the event. `None`: a retransmission repeats the raw bytes
    /// exactly, and they are the event. The server keys duplicates on this.
    pub event_key: Option<Bytes>,
}

/// The stream cannot be resynchronised (no frame start, a frame over the size
/// cap). The server sends `reply` if there is one, keeps the bytes and closes
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct FramingError {
    /// Low-cardinality reason for metrics: `"bad_start"`, `"too_long"`.
    pub reason: &'static str,
    pub detail: String,
    pub reply: Option<Bytes>,
}

/// A device protocol, one value per connection.
pub trait Codec: Send {
    /// Short lower-case name: `"gt06"`, `"watch"`, `"sia_dc09"`, `"h02"`, `"eview"`.
    fn protocol(&self) -> &'static str;

    /// Largest frame this protocol accepts, delimiters included.
    fn max_frame_len(&self) -> usize;

    /// Cut the next frame from the front of `buf` and decode it. `Ok(None)`:
    /// no whole frame yet (not an error; `buf` is left as it was). A frame is
    /// consumed exactly: bytes of the next frame stay in `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError>;

    /// How this protocol's senders are checked and its judged answers worded.
    fn judge(&self) -> &'static dyn Judge {
        &ById
    }

    /// The low-cardinality reason a frame that was cut but not understood
    /// (`parse_error` set) is counted under.
    fn unparsed_reason(&self, _frame: &Frame) -> &'static str {
        "unparsed"
    }
}
