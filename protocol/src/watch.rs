//! "Watch" 3G/4G text protocol of elderly and children's smart watches: `[MF*ID*LEN*CONTENT]` (see WATCH.md).

use std::fmt::Write as _;

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{Codec, Frame, FramingError, Integrity, Observation, ReplyPlan};
use crate::event::{DeviceId, DeviceIdError, EventKind, Location};

/// Largest frame accepted, brackets included. Text reports are a few hundred
/// bytes even with six Wi-Fi access points; only media (`img`, `TK`, `JXTK`)
/// is larger, and media is not supported (see WATCH.md, *Size cap*).
pub const MAX_FRAME_LEN: usize = 4096;

/// An `AL` frame whose status word names no alarm this server knows, or a set
/// bit in the alarm half (16–31) that has no assignment. Life-safety range: an
/// operator sees it at once, because the watch said "alarm" and an unexplained
/// alarm from a resident may be an SOS from firmware that does not set bit 16.
pub const UNSPECIFIED_ALARM: EventKind = EventKind::Other(0x0F);
/// Status bits 1 and 18: the wearer is outside the safe zone set in the app.
/// Life-safety range: a resident with dementia walking off needs a human now.
pub const GEOFENCE_EXIT: EventKind = EventKind::Other(0x05);
/// Status bits 2 and 19: the wearer is back inside the safe zone. Recorded only.
pub const GEOFENCE_ENTER: EventKind = EventKind::Other(0x45);

/// Bytes dropped silently between frames (some firmware ends a frame with CRLF).
const FILLER: &[u8] = b"\r\n\t \0";

/// Status word bits and what each one reports. Bits not listed are states with
/// no event (bit 3 worn, bit 4 moving) or, in the alarm half, unassigned.
const STATUS_BITS: &[(u8, EventKind)] = &[
    (0, EventKind::LowBattery),
    (1, GEOFENCE_EXIT),
    (2, GEOFENCE_ENTER),
    (14, EventKind::PowerCut),
    (16, EventKind::Sos),
    (17, EventKind::LowBattery),
    (18, GEOFENCE_EXIT),
    (19, GEOFENCE_ENTER),
    (20, EventKind::RemovedFromWrist),
    (21, EventKind::Fall),
    (22, EventKind::Fall),
];

/// The first bit of the status word's alarm half.
const ALARM_HALF: u8 = 16;

/// Why a frame's content could not be fully understood. The frame is still
/// cut, kept and (as far as it goes) reported; see [`Frame::parse_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("no '*' after the manufacturer")]
    NoManufacturer,
    #[error("manufacturer {0:?} is not 1-8 ASCII letters or digits")]
    BadManufacturer(String),
    #[error("no '*' after the device id")]
    NoDeviceId,
    #[error("bad device id: {0}")]
    DeviceId(#[from] DeviceIdError),
    #[error("no length field")]
    NoLength,
    #[error("{0} bytes outside any frame")]
    Garbage(usize),
    #[error("frame cut short: a new '[' starts before this frame's ']'")]
    CutShort,
    #[error(
        "frame of {0} bytes is over the {MAX_FRAME_LEN}-byte cap: only its head is kept and it is \
         not decoded (media such as img, TK and JXTK is not supported)"
    )]
    Oversize(usize),
    #[error("report has {0} fields, at least 16 expected")]
    ShortReport(usize),
    #[error("status word {0:?} is not 1-8 hex digits")]
    BadStatus(String),
    #[error("content is empty")]
    EmptyContent,
}

/// A Watch protocol connection. The only state is an oversize frame being
/// skipped; every frame names its device, so nothing is learned across frames.
#[derive(Debug, Default)]
pub struct WatchCodec {
    oversize: Option<Oversize>,
}

#[derive(Debug)]
struct Oversize {
    /// The first [`MAX_FRAME_LEN`] bytes, kept for people and to name the device.
    head: Bytes,
    /// Bytes of the frame seen so far.
    total: usize,
}

/// How a frame ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// With its `]`.
    Complete,
    /// Without `]`: the next frame's `[` came first.
    CutShort,
    /// Longer than the cap; `raw` is only the head.
    Oversize(usize),
}

impl WatchCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Swallow the rest of an oversize frame. `Some` once it has ended.
    fn skip_oversize(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let over = self.oversize.as_mut()?;
        match buf.iter().position(|&b| b == b']' || b == b'[') {
            Some(i) => {
                // A ']' belongs to this frame; a '[' is the next frame's and stays.
                let end = if buf[i] == b']' { i + 1 } else { i };
                over.total += end;
                buf.advance(end);
                let over = self.oversize.take()?;
                Some(decode_frame(over.head, Ending::Oversize(over.total)))
            }
            None => {
                over.total += buf.len();
                buf.clear();
                None
            }
        }
    }
}

impl Codec for WatchCodec {
    fn protocol(&self) -> &'static str {
        "watch"
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        if self.oversize.is_some() {
            return Ok(self.skip_oversize(buf));
        }
        // Filler is consumed even when no frame follows: left in the buffer it
        // would look like a frame begun and never finished, and the server
        // closes such a connection after a few seconds.
        let filler = buf.iter().take_while(|b| FILLER.contains(b)).count();
        buf.advance(filler);
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'[' {
            let window = &buf[..buf.len().min(MAX_FRAME_LEN)];
            return match window.iter().position(|&b| b == b'[') {
                Some(i) => Ok(Some(garbage_frame(buf.split_to(i).freeze()))),
                None if buf.len() >= MAX_FRAME_LEN => Err(FramingError {
                    reason: "bad_start",
                    detail: format!(
                        "{} bytes without a '[': this is not the Watch protocol",
                        buf.len()
                    ),
                    reply: None,
                }),
                None => Ok(None),
            };
        }
        let window = &buf[1..buf.len().min(MAX_FRAME_LEN)];
        match window.iter().position(|&b| b == b']' || b == b'[') {
            Some(i) if window[i] == b']' => {
                let raw = buf.split_to(i + 2).freeze();
                Ok(Some(decode_frame(raw, Ending::Complete)))
            }
            Some(i) => {
                let raw = buf.split_to(i + 1).freeze();
                Ok(Some(decode_frame(raw, Ending::CutShort)))
            }
            None if buf.len() >= MAX_FRAME_LEN => {
                let head = buf.split_to(MAX_FRAME_LEN).freeze();
                self.oversize = Some(Oversize {
                    head,
                    total: MAX_FRAME_LEN,
                });
                Ok(self.skip_oversize(buf))
            }
            None => Ok(None),
        }
    }
}

/// Bytes before a `[`, kept so that nothing a device sends is dropped unseen.
fn garbage_frame(raw: Bytes) -> Frame {
    Frame {
        integrity: Integrity::Intact,
        device: None,
        serial: None,
        observations: Vec::new(),
        summary: "garbage".into(),
        parse_error: Some(WatchError::Garbage(raw.len()).to_string()),
        reply: ReplyPlan::None,
        event_key: None,
        raw,
    }
}

/// The header fields of a frame, borrowed from its bytes.
#[derive(Debug)]
struct Header<'a> {
    manufacturer: &'a [u8],
    id: &'a [u8],
    index: Option<&'a [u8]>,
    length: &'a [u8],
    content: &'a [u8],
}

/// Split `MF*ID*LEN*CONTENT` or `MF*ID*INDEX*LEN*CONTENT` (brackets removed).
fn split_header(inner: &[u8]) -> Result<Header<'_>, WatchError> {
    let (manufacturer, rest) = split_once(inner, b'*').ok_or(WatchError::NoManufacturer)?;
    if manufacturer.is_empty()
        || manufacturer.len() > 8
        || !manufacturer.iter().all(u8::is_ascii_alphanumeric)
    {
        return Err(WatchError::BadManufacturer(
            String::from_utf8_lossy(manufacturer).into_owned(),
        ));
    }
    let (id, rest) = split_once(rest, b'*').ok_or(WatchError::NoDeviceId)?;
    let (first, after) = split_once(rest, b'*').ok_or(WatchError::NoLength)?;
    // The index variant has a second field of exactly four hex digits before
    // the content; a content type never looks like that ("AL", "LK", "UD2").
    let (index, length, content) = match after.get(..5) {
        Some([a, b, c, d, b'*']) if [a, b, c, d].iter().all(|x| x.is_ascii_hexdigit()) => {
            (Some(first), &after[..4], &after[5..])
        }
        _ => (None, first, after),
    };
    Ok(Header {
        manufacturer,
        id,
        index,
        length,
        content,
    })
}

fn split_once(b: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&x| x == sep)?;
    Some((&b[..i], &b[i + 1..]))
}

/// Undo the escaping that keeps `[ ] , * }` out of binary content:
/// `}` followed by 0x01–0x05. An unknown escape is kept as it is.
fn unescape(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        let replaced = match (b, content.get(i + 1)) {
            (b'}', Some(1)) => Some(b'}'),
            (b'}', Some(2)) => Some(b'['),
            (b'}', Some(3)) => Some(b']'),
            (b'}', Some(4)) => Some(b','),
            (b'}', Some(5)) => Some(b'*'),
            _ => None,
        };
        match replaced {
            Some(r) => {
                out.push(r);
                i += 2;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Decode a cut frame as far as it goes. Never fails: what is not understood
/// goes to `parse_error` and the raw bytes are kept.
fn decode_frame(raw: Bytes, ending: Ending) -> Frame {
    let mut frame = Frame {
        raw: raw.clone(),
        integrity: Integrity::Intact,
        device: None,
        serial: None,
        observations: Vec::new(),
        summary: String::new(),
        parse_error: None,
        reply: ReplyPlan::None,
        event_key: None,
    };
    let mut problems: Vec<String> = Vec::new();
    match ending {
        Ending::Complete => {}
        Ending::CutShort => problems.push(WatchError::CutShort.to_string()),
        Ending::Oversize(total) => problems.push(WatchError::Oversize(total).to_string()),
    }
    let end = if ending == Ending::Complete {
        raw.len() - 1
    } else {
        raw.len()
    };
    let inner = raw.get(1..end).unwrap_or_default();
    let header = match split_header(inner) {
        Ok(h) => h,
        Err(e) => {
            problems.push(e.to_string());
            frame.summary = "unparsed".into();
            frame.integrity = integrity_for(ending, Integrity::Intact);
            frame.parse_error = Some(problems.join("; "));
            return frame;
        }
    };
    match DeviceId::from_bytes(header.id) {
        Ok(id) => frame.device = Some(id),
        Err(e) => problems.push(WatchError::DeviceId(e).to_string()),
    }
    frame.serial = header
        .index
        .and_then(|i| std::str::from_utf8(i).ok())
        .and_then(|i| u32::from_str_radix(i, 16).ok());

    let content = unescape(header.content);
    let length_ok = std::str::from_utf8(header.length)
        .ok()
        .filter(|l| l.len() == 4)
        .and_then(|l| usize::from_str_radix(l, 16).ok())
        .is_some_and(|n| n == header.content.len() || n == content.len());
    frame.integrity = integrity_for(
        ending,
        if length_ok {
            Integrity::Intact
        } else {
            Integrity::BadLength
        },
    );

    let (ty, body) = match split_once(&content, b',') {
        Some((t, b)) => (t, Some(b)),
        None => (&content[..], None),
    };
    let ty = String::from_utf8_lossy(ty).into_owned();
    // Answers go only to whole frames: an answered cut-short alarm would not be
    // sent again, and its resend is the only way to get the whole of it.
    let can_answer = ending == Ending::Complete && frame.device.is_some();
    let answer = |content: &str| {
        if can_answer {
            ReplyPlan::AfterCommit {
                ok: encode(
                    header.manufacturer,
                    header.id,
                    header.index,
                    content.as_bytes(),
                ),
                failed: None,
            }
        } else {
            ReplyPlan::None
        }
    };
    let body = body.unwrap_or_default();
    let mut reply = ReplyPlan::None;
    if ty.is_empty() {
        problems.push(WatchError::EmptyContent.to_string());
        frame.summary = "empty".into();
    } else if ty == "LK" {
        reply = answer("LK");
        frame.summary = "LK".into();
        let values: Vec<&[u8]> = if body.is_empty() {
            Vec::new()
        } else {
            body.split(|&b| b == b',').collect()
        };
        frame.observations.push(Observation {
            kind: EventKind::Heartbeat,
            device_time_ms: None,
            // `LK,steps,rolls,battery`: with fewer values there is no battery.
            battery_pct: values.get(2).and_then(|v| percent(v)),
            location: None,
            signal: None,
            code: "LK".into(),
        });
    } else if ty.starts_with("AL") || ty.starts_with("UD") || ty.starts_with("WT") {
        let alarm = ty.starts_with("AL");
        if alarm {
            reply = answer("AL");
        }
        let report = parse_report(body, &mut problems);
        let mut obs = status_observations(&ty, &report, alarm);
        if alarm && obs.is_empty() {
            obs.push(report.observation(
                UNSPECIFIED_ALARM,
                format!("{ty} status {}", report.status_text()),
            ));
        }
        let names: Vec<String> = obs.iter().map(|o| label(o.kind)).collect();
        if !alarm {
            obs.insert(0, report.observation(EventKind::Position, ty.clone()));
        }
        frame.summary = if alarm {
            format!("{ty} {}", names.join(","))
        } else if names.is_empty() {
            format!("{ty} position")
        } else {
            format!("{ty} position {}", names.join(","))
        };
        frame.observations = obs;
    } else if ty == "TKQ" || ty == "TKQ2" {
        reply = answer(&ty);
        frame.summary = ty;
    } else if ty == "INIT" {
        reply = answer("INIT,1");
        frame.summary = ty;
    } else if let Some(reading) = health(&ty, body) {
        frame.summary = format!("{ty}: {reading}");
    } else {
        frame.summary = format!("{ty} (not decoded)");
    }
    frame.reply = reply;
    if !problems.is_empty() {
        frame.parse_error = Some(problems.join("; "));
    }
    frame
}

/// A kind's name for summaries, with this protocol's own `Other` codes spelled out.
fn label(kind: EventKind) -> String {
    match kind {
        UNSPECIFIED_ALARM => "unspecified_alarm".into(),
        GEOFENCE_EXIT => "geofence_exit".into(),
        GEOFENCE_ENTER => "geofence_enter".into(),
        other => other.name(),
    }
}

fn integrity_for(ending: Ending, whole: Integrity) -> Integrity {
    match ending {
        Ending::Complete => whole,
        // The bytes received do not match what the device meant to send.
        Ending::CutShort | Ending::Oversize(_) => Integrity::BadLength,
    }
}

/// A health reading, described for the summary. `None`: not a health type.
fn health(ty: &str, body: &[u8]) -> Option<String> {
    let v: Vec<String> = body
        .split(|&b| b == b',')
        .map(|f| String::from_utf8_lossy(f).trim().to_owned())
        .collect();
    let at = |i: usize| v.get(i).map(String::as_str).unwrap_or("?");
    let lower = ty.to_ascii_lowercase();
    Some(match lower.as_str() {
        "oxygen" => format!("blood oxygen {} %", at(1)),
        "temp" => format!("body temperature {} °C", at(0)),
        "btemp2" if at(0) == "0" => "body temperature not measured".into(),
        "btemp2" => format!("body temperature {} °C", at(1)),
        "bphrt" | "blood" => {
            let mut s = format!("blood pressure {}/{}", at(0), at(1));
            if v.get(2).is_some_and(|h| !h.is_empty()) {
                let _ = write!(s, ", heart rate {}", at(2));
            }
            s
        }
        "pulse" | "heart" => format!("heart rate {}", at(0)),
        _ => return None,
    })
}

/// The fields of a `UD`/`AL`/`WT` report that map to an observation.
#[derive(Debug, Default)]
struct Report {
    device_time_ms: Option<u64>,
    location: Option<Location>,
    battery_pct: Option<u8>,
    signal: Option<u8>,
    status: Option<u32>,
}

impl Report {
    fn observation(&self, kind: EventKind, code: String) -> Observation {
        Observation {
            kind,
            device_time_ms: self.device_time_ms,
            battery_pct: self.battery_pct,
            location: self.location,
            signal: self.signal,
            code,
        }
    }

    fn status_text(&self) -> String {
        match self.status {
            Some(s) => format!("{s:08x}"),
            None => "unknown".into(),
        }
    }
}

/// Parse `date,time,A/V,lat,N/S,lon,E/W,speed,course,altitude,satellites,
/// signal,battery,steps,rolls,status,…`. Each field stands alone: one bad
/// field costs that field, never the alarm. Fields after the status (cells,
/// Wi-Fi names in any encoding) are not read.
fn parse_report(body: &[u8], problems: &mut Vec<String>) -> Report {
    let f: Vec<&[u8]> = body.split(|&b| b == b',').take(16).collect();
    let field = |i: usize| -> &str {
        f.get(i)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .unwrap_or("")
    };
    if f.len() < 16 {
        problems.push(WatchError::ShortReport(f.len()).to_string());
    }
    let valid = field(2) == "A";
    let location = if valid {
        match (
            coordinate(field(3), field(4), 90.0),
            coordinate(field(5), field(6), 180.0),
        ) {
            (Some(lat), Some(lon)) => Some(Location {
                lat,
                lon,
                accuracy_m: None,
            }),
            _ => None,
        }
    } else {
        None
    };
    let status = if f.len() >= 16 {
        let s = field(15);
        let parsed = (!s.is_empty() && s.len() <= 8)
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten();
        if parsed.is_none() {
            problems.push(WatchError::BadStatus(s.to_owned()).to_string());
        }
        parsed
    } else {
        None
    };
    Report {
        device_time_ms: device_time(field(0), field(1)),
        location,
        battery_pct: percent(field(12).as_bytes()),
        signal: percent(field(11).as_bytes()),
        status,
    }
}

/// Degrees with a hemisphere letter. `S`/`W` make it negative whatever the
/// sign written (one firmware writes `-84.14,W`); no letter keeps the sign.
fn coordinate(value: &str, hemisphere: &str, limit: f64) -> Option<f64> {
    let v: f64 = value.parse().ok()?;
    let v = match hemisphere {
        "S" | "W" => -v.abs(),
        "N" | "E" | "" => v,
        _ => return None,
    };
    (v.is_finite() && v.abs() <= limit).then_some(v)
}

fn percent(v: &[u8]) -> Option<u8> {
    std::str::from_utf8(v)
        .ok()?
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
}

/// `DDMMYY`, `HHMMSS` (UTC, years 2000–2099) as milliseconds since the epoch.
fn device_time(date: &str, time: &str) -> Option<u64> {
    let num = |s: &str, i: usize| -> Option<u32> {
        s.get(i..i + 2)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?
            .parse()
            .ok()
    };
    if date.len() != 6 || time.len() != 6 {
        return None;
    }
    let (day, month, year) = (num(date, 0)?, num(date, 2)?, 2000 + num(date, 4)?);
    let (h, m, s) = (num(time, 0)?, num(time, 2)?, num(time, 4)?);
    let [year, month, day, h, m, s] = [year, month, day, h, m, s].map(i64::from);
    let ms = crate::civil::utc_ms(year, month, day, h, m, s)?;
    u64::try_from(ms).ok()
}

/// One observation per kind the status word reports, SOS and fall first.
/// Unassigned alarm-half bits count only in an `AL` frame (the watch said
/// "alarm"); in a `UD` they are left alone.
fn status_observations(ty: &str, report: &Report, alarm: bool) -> Vec<Observation> {
    let Some(status) = report.status else {
        return Vec::new();
    };
    let mut found: Vec<(EventKind, Vec<u8>)> = Vec::new();
    let mut add = |kind: EventKind, bit: u8| match found.iter_mut().find(|(k, _)| *k == kind) {
        Some((_, bits)) => bits.push(bit),
        None => found.push((kind, vec![bit])),
    };
    for bit in 0..32u8 {
        if status & (1 << bit) == 0 {
            continue;
        }
        match STATUS_BITS.iter().find(|(b, _)| *b == bit) {
            Some(&(_, kind)) => add(kind, bit),
            None if alarm && bit >= ALARM_HALF => add(UNSPECIFIED_ALARM, bit),
            None => {}
        }
    }
    found.sort_by_key(|(kind, bits)| (kind.lane(), bits.first().copied()));
    found
        .into_iter()
        .map(|(kind, bits)| {
            let list: Vec<String> = bits.iter().map(u8::to_string).collect();
            let word = if bits.len() == 1 { "bit" } else { "bits" };
            report.observation(kind, format!("{ty} status {word} {}", list.join(",")))
        })
        .collect()
}

/// A whole frame: `[MF*ID*LEN*CONTENT]`, or `[MF*ID*INDEX*LEN*CONTENT]` with
/// an index. LEN is the content's length in four lower-case hex digits, as the
/// watches and Traccar write it. `content` is sent as given (not escaped).
pub fn encode(manufacturer: &[u8], id: &[u8], index: Option<&[u8]>, content: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(manufacturer.len() + id.len() + content.len() + 16);
    out.push(b'[');
    out.extend_from_slice(manufacturer);
    out.push(b'*');
    out.extend_from_slice(id);
    out.push(b'*');
    if let Some(index) = index {
        out.extend_from_slice(index);
        out.push(b'*');
    }
    // The field has four digits; a longer content could not be framed anyway.
    out.extend_from_slice(format!("{:04x}", content.len().min(0xffff)).as_bytes());
    out.push(b'*');
    out.extend_from_slice(content);
    out.push(b']');
    Bytes::from(out)
}

/// A link keep-alive: `LK` alone, or `LK,0,0,battery` (steps and rolls zero).
pub fn encode_lk(manufacturer: &str, id: &str, battery: Option<u8>) -> Bytes {
    let content = match battery {
        Some(b) => format!("LK,0,0,{b}"),
        None => "LK".into(),
    };
    encode(
        manufacturer.as_bytes(),
        id.as_bytes(),
        None,
        content.as_bytes(),
    )
}

/// An `AL` alarm with the given status word (bit 16 SOS, 20 removed, 21 fall,
/// 0 or 17 low battery…). `location: None` sends an invalid (`V`) fix.
/// `time_ms` is truncated to the second and must fall in 2000–2099.
pub fn encode_alarm(
    manufacturer: &str,
    id: &str,
    status_bits: u32,
    location: Option<Location>,
    time_ms: u64,
    battery: u8,
) -> Bytes {
    let content = report_content("AL", status_bits, location, time_ms, battery);
    encode(
        manufacturer.as_bytes(),
        id.as_bytes(),
        None,
        content.as_bytes(),
    )
}

/// A `UD` position report with status word 0.
pub fn encode_position(
    manufacturer: &str,
    id: &str,
    location: Option<Location>,
    time_ms: u64,
    battery: u8,
) -> Bytes {
    let content = report_content("UD", 0, location, time_ms, battery);
    encode(
        manufacturer.as_bytes(),
        id.as_bytes(),
        None,
        content.as_bytes(),
    )
}

fn report_content(
    ty: &str,
    status: u32,
    location: Option<Location>,
    time_ms: u64,
    battery: u8,
) -> String {
    let c = i64::try_from(time_ms)
        .ok()
        .and_then(crate::civil::utc_of_ms)
        .expect("a device clock within years 1970-9999");
    let (year, month, day) = (c.year, c.month, c.day);
    let (valid, lat, lon) = match location {
        Some(l) => ('A', l.lat, l.lon),
        None => ('V', 0.0, 0.0),
    };
    let ns = if lat < 0.0 { 'S' } else { 'N' };
    let ew = if lon < 0.0 { 'W' } else { 'E' };
    format!(
        "{ty},{day:02}{month:02}{yy:02},{h:02}{m:02}{s:02},{valid},{lat:.6},{ns},{lon:.6},{ew},\
         0.00,0.0,0.0,0,100,{battery},0,0,{status:08x},0,0,0",
        yy = year % 100,
        h = c.hour,
        m = c.minute,
        s = c.second,
        lat = lat.abs(),
        lon = lon.abs(),
    )
}

#[cfg(test)]
mod tests;
