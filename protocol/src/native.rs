//! Native pendant protocol v1: binary, length-delimited, HMAC-authenticated (see NATIVE.md).

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::{AuthStatus, Fate, Frame, Integrity, Judge, Judgement, Observation, ReplyPlan};
use crate::event::{AlarmEvent, DeviceId, DeviceIdError, EventKind, Location};

pub const MAGIC: [u8; 2] = *b"PA";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 6;
pub const TAG_LEN: usize = 16;
/// Largest body a frame may announce; anything larger is refused before it is buffered.
pub const MAX_BODY_LEN: usize = 256;
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

pub const TYPE_EVENT: u8 = 0x01;
pub const TYPE_ACK: u8 = 0x02;
pub const TYPE_NAK: u8 = 0x03;

const FLAG_LOCATION: u8 = 0x01;
const BATTERY_UNKNOWN: u8 = 0xFF;
const ACCURACY_UNKNOWN: u16 = 0xFFFF;

/// ACK status bit: this (device, seq, content) was already stored earlier.
pub const ACK_DUPLICATE: u8 = 0x01;
/// ACK status bit: the device clock is outside the server's window; resync from `server_time_ms`.
pub const ACK_CLOCK_SKEW: u8 = 0x02;

type HmacSha256 = Hmac<Sha256>;

/// Reason codes carried by a NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NakReason {
    /// The frame could not be parsed.
    Malformed = 0x01,
    /// The frame's version is not spoken by this server.
    UnsupportedVersion = 0x02,
    /// The tag does not match the device's secret.
    BadTag = 0x03,
    /// The device id is not provisioned.
    UnknownDevice = 0x04,
    /// The server could not store the frame; nothing was kept, send it again.
    Unavailable = 0x05,
}

impl NakReason {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Malformed,
            0x02 => Self::UnsupportedVersion,
            0x03 => Self::BadTag,
            0x04 => Self::UnknownDevice,
            0x05 => Self::Unavailable,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadTag => "bad_tag",
            Self::UnknownDevice => "unknown_device",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A frame the stream cannot be resynchronised after: the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("bad magic 0x{0:02x}{1:02x}, expected \"PA\"")]
    BadMagic(u8, u8),
    #[error("frame announces a {0}-byte body, the limit is {MAX_BODY_LEN}")]
    TooLong(usize),
}

/// A whole frame whose contents are not valid. The stream stays in sync.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("protocol version {0} is not supported (this server speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("frame type 0x{0:02x} is not expected here")]
    UnexpectedType(u8),
    #[error("body ends early: {0}")]
    Truncated(&'static str),
    #[error("{0} bytes after the tag")]
    TrailingBytes(usize),
    #[error("bad device id: {0}")]
    DeviceId(#[from] DeviceIdError),
    #[error("reserved flag bits set: 0x{0:02x}")]
    ReservedFlags(u8),
    #[error("battery {0} % is out of range")]
    Battery(u8),
    #[error("location {0},{1} is out of range")]
    Location(f64, f64),
    #[error("unknown NAK reason 0x{0:02x}")]
    NakReason(u8),
}

/// One length-delimited frame cut from a stream, not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub version: u8,
    pub frame_type: u8,
    /// The whole frame, header included.
    pub bytes: bytes::Bytes,
}

/// Cut the next frame from `buf`. `Ok(None)` means more bytes are needed.
///
/// Only the header is checked here, so a frame with a bad body can still be
/// answered with a NAK and the stream carries on with the next one.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>, FramingError> {
    if buf.len() >= 2 && buf[..2] != MAGIC {
        return Err(FramingError::BadMagic(buf[0], buf[1]));
    }
    if buf.len() == 1 && buf[0] != MAGIC[0] {
        return Err(FramingError::BadMagic(buf[0], 0));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let body_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if body_len > MAX_BODY_LEN {
        return Err(FramingError::TooLong(body_len));
    }
    if buf.len() < HEADER_LEN + body_len {
        // Reserve once so a slow sender does not make us grow the buffer byte by byte.
        buf.reserve(HEADER_LEN + body_len - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(HEADER_LEN + body_len).freeze();
    Ok(Some(RawFrame {
        version: bytes[2],
        frame_type: bytes[3],
        bytes,
    }))
}

/// An EVENT frame, parsed but not yet authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFrame {
    pub event: AlarmEvent,
    /// The bytes the tag covers (header and body up to the tag).
    signed: bytes::Bytes,
    tag: [u8; TAG_LEN],
}

impl EventFrame {
    pub fn parse(raw: &RawFrame) -> Result<Self, ParseError> {
        if raw.version != VERSION {
            return Err(ParseError::UnsupportedVersion(raw.version));
        }
        if raw.frame_type != TYPE_EVENT {
            return Err(ParseError::UnexpectedType(raw.frame_type));
        }
        let mut b = &raw.bytes[HEADER_LEN..];
        let id_len = take_u8(&mut b, "device id length")? as usize;
        if b.len() < id_len {
            return Err(ParseError::Truncated("device id"));
        }
        let device = DeviceId::from_bytes(&b[..id_len])?;
        b.advance(id_len);
        need(b, 4 + 1 + 8 + 1 + 1, "fixed fields")?;
        let seq = b.get_u32();
        let kind = kind_from_code(b.get_u8());
        let device_time = b.get_u64();
        let battery = b.get_u8();
        let flags = b.get_u8();
        if flags & !FLAG_LOCATION != 0 {
            return Err(ParseError::ReservedFlags(flags));
        }
        if battery != BATTERY_UNKNOWN && battery > 100 {
            return Err(ParseError::Battery(battery));
        }
        let location = if flags & FLAG_LOCATION != 0 {
            need(b, 10, "location")?;
            let lat = b.get_i32() as f64 / 1e7;
            let lon = b.get_i32() as f64 / 1e7;
            let acc = b.get_u16();
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err(ParseError::Location(lat, lon));
            }
            Some(Location {
                lat,
                lon,
                accuracy_m: (acc != ACCURACY_UNKNOWN).then_some(acc),
            })
        } else {
            None
        };
        need(b, TAG_LEN, "tag")?;
        if b.len() > TAG_LEN {
            return Err(ParseError::TrailingBytes(b.len() - TAG_LEN));
        }
        let signed_len = raw.bytes.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&raw.bytes[signed_len..]);
        Ok(Self {
            event: AlarmEvent {
                device,
                seq,
                kind,
                device_time_ms: (device_time != 0).then_some(device_time),
                battery_pct: (battery != BATTERY_UNKNOWN).then_some(battery),
                location,
            },
            signed: raw.bytes.slice(..signed_len),
            tag,
        })
    }

    /// Check the tag against the device's secret in constant time.
    pub fn verify(&self, secret: &[u8]) -> bool {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(&self.signed);
        mac.verify_truncated_left(&self.tag).is_ok()
    }

    /// The tag, which is unique per content: retries of one frame carry the same tag.
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        &self.tag
    }
}

/// Encode an EVENT frame signed with `secret`.
pub fn encode_event(event: &AlarmEvent, secret: &[u8], dst: &mut BytesMut) {
    let id = event.device.as_str().as_bytes();
    let loc_len = if event.location.is_some() { 10 } else { 0 };
    let body_len = 1 + id.len() + 4 + 1 + 8 + 1 + 1 + loc_len + TAG_LEN;
    let start = dst.len();
    dst.reserve(HEADER_LEN + body_len);
    put_header(dst, TYPE_EVENT, body_len);
    dst.put_u8(id.len() as u8);
    dst.put_slice(id);
    dst.put_u32(event.seq);
    dst.put_u8(kind_code(event.kind));
    dst.put_u64(event.device_time_ms.unwrap_or(0));
    dst.put_u8(event.battery_pct.unwrap_or(BATTERY_UNKNOWN));
    match event.location {
        Some(loc) => {
            dst.put_u8(FLAG_LOCATION);
            dst.put_i32((loc.lat * 1e7).round() as i32);
            dst.put_i32((loc.lon * 1e7).round() as i32);
            dst.put_u16(loc.accuracy_m.unwrap_or(ACCURACY_UNKNOWN));
        }
        None => dst.put_u8(0),
    }
    let tag = sign(secret, &dst[start..]);
    dst.put_slice(&tag);
}

/// The server's answer to one EVENT frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ack {
        seq: u32,
        status: u8,
        server_time_ms: u64,
    },
    Nak {
        seq: u32,
        reason: NakReason,
        server_time_ms: u64,
    },
}

impl Reply {
    pub fn seq(&self) -> u32 {
        match *self {
            Reply::Ack { seq, .. } | Reply::Nak { seq, .. } => seq,
        }
    }

    /// Encode the reply. With `secret`, the tag lets the device trust it; without
    /// (the server does not know the device), the tag is sixteen zero bytes.
    pub fn encode(&self, secret: Option<&[u8]>, dst: &mut BytesMut) {
        let start = dst.len();
        let (ty, seq, code, time) = match *self {
            Reply::Ack {
                seq,
                status,
                server_time_ms,
            } => (TYPE_ACK, seq, status, server_time_ms),
            Reply::Nak {
                seq,
                reason,
                server_time_ms,
            } => (TYPE_NAK, seq, reason as u8, server_time_ms),
        };
        put_header(dst, ty, 4 + 1 + 8 + TAG_LEN);
        dst.put_u32(seq);
        dst.put_u8(code);
        dst.put_u64(time);
        let tag = match secret {
            Some(s) => sign(s, &dst[start..]),
            None => [0; TAG_LEN],
        };
        dst.put_slice(&tag);
    }

    /// Parse a reply (the device side). Returns the reply and whether its tag
    /// verified against `secret`.
    pub fn parse(raw: &RawFrame, secret: &[u8]) -> Result<(Self, bool), ParseError> {
        if raw.version != VERSION {
            return Err(ParseError::UnsupportedVersion(raw.version));
        }
        let mut b = &raw.bytes[HEADER_LEN..];
        need(b, 4 + 1 + 8 + TAG_LEN, "reply")?;
        if b.len() > 4 + 1 + 8 + TAG_LEN {
            return Err(ParseError::TrailingBytes(b.len() - (4 + 1 + 8 + TAG_LEN)));
        }
        let seq = b.get_u32();
        let code = b.get_u8();
        let server_time_ms = b.get_u64();
        let signed_len = raw.bytes.len() - TAG_LEN;
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(&raw.bytes[..signed_len]);
        let authentic = mac.verify_truncated_left(&raw.bytes[signed_len..]).is_ok();
        let reply = match raw.frame_type {
            TYPE_ACK => Reply::Ack {
                seq,
                status: code,
                server_time_ms,
            },
            TYPE_NAK => Reply::Nak {
                seq,
                reason: NakReason::from_u8(code).ok_or(ParseError::NakReason(code))?,
                server_time_ms,
            },
            other => return Err(ParseError::UnexpectedType(other)),
        };
        Ok((reply, authentic))
    }
}

/// Wire code of an event kind.
pub fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::Sos => 0x01,
        EventKind::Fall => 0x02,
        EventKind::Medical => 0x03,
        EventKind::Cancel => 0x04,
        EventKind::LowBattery => 0x10,
        EventKind::PowerCut => 0x11,
        EventKind::RemovedFromWrist => 0x12,
        EventKind::Tamper => 0x13,
        EventKind::Heartbeat => 0x40,
        EventKind::PeriodicTest => 0x41,
        EventKind::PowerRestored => 0x42,
        EventKind::Position => 0x43,
        // Server verdicts travel in no native frame; a device that sends these
        // codes is heard as an unknown code of the same range, never as a verdict.
        EventKind::Offline => 0x3f,
        EventKind::BackOnline => 0xff,
        EventKind::MissedTest => 0x3e,
        EventKind::Other(code) => code,
    }
}

/// Event kind of a wire code; unassigned codes become [`EventKind::Other`].
pub fn kind_from_code(code: u8) -> EventKind {
    match code {
        0x01 => EventKind::Sos,
        0x02 => EventKind::Fall,
        0x03 => EventKind::Medical,
        0x04 => EventKind::Cancel,
        0x10 => EventKind::LowBattery,
        0x11 => EventKind::PowerCut,
        0x12 => EventKind::RemovedFromWrist,
        0x13 => EventKind::Tamper,
        0x40 => EventKind::Heartbeat,
        0x41 => EventKind::PeriodicTest,
        0x42 => EventKind::PowerRestored,
        0x43 => EventKind::Position,
        other => EventKind::Other(other),
    }
}

fn put_header(dst: &mut BytesMut, frame_type: u8, body_len: usize) {
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(frame_type);
    dst.put_u16(body_len as u16);
}

fn sign(secret: &[u8], bytes: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(bytes);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

fn need(b: &[u8], n: usize, what: &'static str) -> Result<(), ParseError> {
    if b.len() < n {
        Err(ParseError::Truncated(what))
    } else {
        Ok(())
    }
}

fn take_u8(b: &mut &[u8], what: &'static str) -> Result<u8, ParseError> {
    need(b, 1, what)?;
    Ok(b.get_u8())
}

/// The native protocol as the server hears it: one [`Codec`](crate::Codec)
/// per connection (it holds no state), judged by [`NativeJudge`].
#[derive(Debug, Default)]
pub struct NativeCodec;

/// The protocol's name on listeners, stored rows and metrics.
pub const PROTOCOL: &str = "native";

impl crate::Codec for NativeCodec {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    /// An EVENT frame becomes one observation, answered once stored
    /// ([`ReplyPlan::Judged`]); a whole frame that does not parse is
    /// answered with a NAK at once, and the stream carries on; a header that
    /// cannot be framed ends the connection after a NAK.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, crate::FramingError> {
        let raw = match split_frame(buf) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(crate::FramingError {
                    reason: "framing",
                    detail: e.to_string(),
                    reply: Some(unsigned_nak(0, NakReason::Malformed)),
                });
            }
        };
        Ok(Some(match EventFrame::parse(&raw) {
            Ok(f) => event_frame(raw.bytes, f.event),
            Err(e) => {
                let reason = match e {
                    ParseError::UnsupportedVersion(_) => NakReason::UnsupportedVersion,
                    _ => NakReason::Malformed,
                };
                Frame {
                    raw: raw.bytes,
                    integrity: Integrity::Intact,
                    device: None,
                    serial: None,
                    observations: Vec::new(),
                    summary: "unparsed".into(),
                    parse_error: Some(e.to_string()),
                    reply: ReplyPlan::AfterCommit {
                        ok: unsigned_nak(0, reason),
                        failed: None,
                    },
                    event_key: None,
                }
            }
        }))
    }

    fn judge(&self) -> &'static dyn Judge {
        &NativeJudge
    }

    fn unparsed_reason(&self, frame: &Frame) -> &'static str {
        // Parsed again on this rare path rather than carried on every frame.
        let Ok(Some(raw)) = split_frame(&mut BytesMut::from(&frame.raw[..])) else {
            return "malformed";
        };
        match EventFrame::parse(&raw) {
            Err(ParseError::UnsupportedVersion(_)) => "unsupported_version",
            Err(ParseError::UnexpectedType(_)) => "unexpected_type",
            Err(ParseError::DeviceId(_)) => "bad_device_id",
            _ => "malformed",
        }
    }
}

/// A parsed EVENT as the server keeps it. A retry repeats the frame's bytes
/// (tag included), so the raw bytes are the event: no separate event key.
fn event_frame(raw: bytes::Bytes, event: AlarmEvent) -> Frame {
    Frame {
        raw,
        integrity: Integrity::Intact,
        summary: event.kind.name(),
        device: Some(event.device),
        serial: Some(event.seq),
        observations: vec![Observation {
            kind: event.kind,
            device_time_ms: event.device_time_ms,
            battery_pct: event.battery_pct,
            location: event.location,
            signal: None,
            code: format!("native kind 0x{:02x}", kind_code(event.kind)),
        }],
        parse_error: None,
        reply: ReplyPlan::Judged,
        event_key: None,
    }
}

/// Checks a frame's HMAC tag against the device's secret and signs the
/// answer with it (protocol/NATIVE.md).
pub struct NativeJudge;

impl Judge for NativeJudge {
    fn authenticate(&self, frame: &Frame, key: Option<&[u8]>) -> AuthStatus {
        let Some(secret) = key else {
            return AuthStatus::UnknownDevice;
        };
        let Some(signed_len) = frame.raw.len().checked_sub(TAG_LEN) else {
            return AuthStatus::BadTag;
        };
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(&frame.raw[..signed_len]);
        match mac.verify_truncated_left(&frame.raw[signed_len..]) {
            Ok(()) => AuthStatus::Verified,
            Err(_) => AuthStatus::BadTag,
        }
    }

    /// An ACK only to a verified device's stored event; otherwise a NAK that
    /// says why. An unknown device's answer cannot be signed; a known one's
    /// always is.
    fn answer(&self, j: &Judgement<'_>) -> Option<bytes::Bytes> {
        let seq = j.serial.unwrap_or(0);
        let server_time_ms = j.server_time_ms;
        let nak = |reason| Reply::Nak {
            seq,
            reason,
            server_time_ms,
        };
        let reply = match (j.fate, j.auth) {
            (Fate::NotStored, _) | (_, None) => nak(NakReason::Unavailable),
            (_, Some(AuthStatus::BadTag)) => nak(NakReason::BadTag),
            (_, Some(AuthStatus::UnknownDevice)) => nak(NakReason::UnknownDevice),
            (fate, Some(AuthStatus::Verified)) => {
                let mut status = 0;
                if fate == Fate::Duplicate {
                    status |= ACK_DUPLICATE;
                }
                if j.clock_skew {
                    status |= ACK_CLOCK_SKEW;
                }
                Reply::Ack {
                    seq,
                    status,
                    server_time_ms,
                }
            }
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + 4 + 1 + 8 + TAG_LEN);
        reply.encode(j.key, &mut out);
        Some(out.freeze())
    }
}

fn unsigned_nak(seq: u32, reason: NakReason) -> bytes::Bytes {
    let server_time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = BytesMut::new();
    Reply::Nak {
        seq,
        reason,
        server_time_ms,
    }
    .encode(None, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests;
