//! H02 tracker protocol: `*HQ,…#` text frames and `$` binary position frames (see H02.md).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{Codec, Frame, FramingError, Integrity, Observation, ReplyPlan};
use crate::event::{DeviceId, EventKind, Location};

/// Longest text frame accepted, `*` and `#` included. Real H02 frames stay under 300 bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// The two binary frame lengths H02 devices use (5-byte id; the tail after the status word differs).
pub const BINARY_SHORT_LEN: usize = 32;
pub const BINARY_LONG_LEN: usize = 45;

/// Status word bits (active-low: 0 = alarm) and what they map to. Every bit that is
/// 0 yields one observation; bits mapping to the same kind are merged.
pub const STATUS_ALARMS: &[(u8, EventKind, &str)] = &[
    (0, EventKind::Tamper, "vibration"),
    (1, EventKind::Sos, "sos"),
    (2, EventKind::Other(OVERSPEED_CODE), "overspeed"),
    (18, EventKind::Sos, "sos"),
    (19, EventKind::PowerCut, "power cut"),
];

/// Overspeed has no kind of its own: an informational native code (lane >= 0x40).
pub const OVERSPEED_CODE: u8 = 0x42;

/// The H02 codec, one per connection (or per UDP datagram).
pub struct H02Codec {
    /// Binary frame length learned from the first `$` frame of the connection
    /// (0: not yet known), as a device never mixes the two lengths.
    binary_len: usize,
    /// Server clock for the time field of replies, in ms since the epoch.
    clock: fn() -> u64,
}

impl Default for H02Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl H02Codec {
    pub fn new() -> Self {
        Self {
            binary_len: 0,
            clock: system_now_ms,
        }
    }

    /// A codec whose binary frames are always `len` bytes (32 or 45), for
    /// deployments that know their devices' firmware.
    pub fn with_binary_len(len: usize) -> Self {
        Self {
            binary_len: if len == BINARY_LONG_LEN {
                BINARY_LONG_LEN
            } else {
                BINARY_SHORT_LEN
            },
            ..Self::new()
        }
    }

    /// A codec whose replies carry the time `clock` returns (tests, simulators).
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self {
            clock,
            ..Self::new()
        }
    }
}

fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn is_marker(b: u8) -> bool {
    b == b'*' || b == b'$'
}

impl Codec for H02Codec {
    fn protocol(&self) -> &'static str {
        "h02"
    }

    fn max_frame_len(&self) -> usize {
        MAX_TEXT_LEN
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        // Line breaks and padding between frames are normal on H02 links: drop them silently.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
            .count();
        buf.advance(blank);
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        match first {
            b'*' => self.cut_text(buf),
            b'$' => Ok(self.cut_binary(buf)),
            _ => {
                // Bytes outside any frame: hand them over as one unparsed frame up to
                // the next marker, so they are kept and the stream resynchronises.
                let end = buf.iter().position(|&b| is_marker(b)).unwrap_or(buf.len());
                let raw = buf.split_to(end).freeze();
                Ok(Some(unparsed(
                    raw,
                    "bytes outside a frame (no '*' or '$' start)",
                )))
            }
        }
    }
}

impl H02Codec {
    fn cut_text(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        let window = &buf[..buf.len().min(MAX_TEXT_LEN)];
        // A new '*' before the '#' means this frame was cut short: keep the piece, resync on the '*'.
        let stop = window
            .iter()
            .skip(1)
            .position(|&b| b == b'#' || b == b'*')
            .map(|i| i + 1);
        match stop {
            Some(i) if buf[i] == b'#' => {
                let raw = buf.split_to(i + 1).freeze();
                Ok(Some(self.parse_text(raw)))
            }
            Some(i) => {
                let raw = buf.split_to(i).freeze();
                Ok(Some(unparsed(
                    raw,
                    "text frame cut short by a new '*' before its '#'",
                )))
            }
            None if buf.len() >= MAX_TEXT_LEN => Err(FramingError {
                reason: "too_long",
                detail: format!("no '#' within {MAX_TEXT_LEN} bytes of a '*'"),
                reply: None,
            }),
            None => Ok(None),
        }
    }

    fn cut_binary(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let len = match self.binary_len {
            0 => {
                // Learn the length once: exact datagram/buffer sizes or a marker right
                // after a candidate end decide; otherwise wait for more bytes.
                let ends_at =
                    |n: usize| buf.len() == n || buf.get(n).is_some_and(|&b| is_marker(b));
                if ends_at(BINARY_LONG_LEN) {
                    BINARY_LONG_LEN
                } else if ends_at(BINARY_SHORT_LEN) {
                    BINARY_SHORT_LEN
                } else if buf.len() > BINARY_LONG_LEN {
                    // Neither length is followed by a frame start: Traccar's default.
                    BINARY_SHORT_LEN
                } else {
                    return None;
                }
            }
            n => n,
        };
        if buf.len() < len {
            return None;
        }
        self.binary_len = len;
        let raw = buf.split_to(len).freeze();
        Some(parse_binary(raw))
    }

    fn parse_text(&self, raw: Bytes) -> Frame {
        let mut frame = empty_frame(raw.clone(), "text");
        let Ok(text) = std::str::from_utf8(&raw[1..raw.len() - 1]) else {
            frame.parse_error = Some("text frame is not ASCII".into());
            return frame;
        };
        let fields: Vec<&str> = text.split(',').collect();
        if fields.len() < 3 {
            frame.parse_error = Some(format!("{} fields, at least 3 expected", fields.len()));
            return frame;
        }
        let (id, cmd) = (fields[1], fields[2]);
        match DeviceId::parse(id) {
            Ok(d) => frame.device = Some(d),
            Err(e) => {
                frame.parse_error = Some(format!("bad device id: {e}"));
                return frame;
            }
        }
        frame.summary = cmd.to_string();
        let result = match cmd {
            "V1" | "V6" => parse_position(&fields, 3, &format!("H02 {cmd}")),
            // A command reply: V4,<cmd>,<hhmmss>, then the V1 layout when the firmware adds it.
            "V4" => {
                frame.summary = format!("V4 {}", fields.get(3).unwrap_or(&""));
                if fields.len() > 8 {
                    parse_position(&fields, 5, "H02 V4")
                } else {
                    Ok(Vec::new())
                }
            }
            "HTBT" | "V0" => parse_heartbeat(&fields),
            "LINK" => parse_link(&fields),
            "NBR" => parse_nbr(&fields),
            _ => Ok(Vec::new()),
        };
        match result {
            Ok(obs) => frame.observations = obs,
            Err(e) => frame.parse_error = Some(e),
        }
        frame.reply = self.reply_for(cmd, id);
        frame
    }

    /// What Traccar answers (the devices' reference server): V1 gets a V4 echo with
    /// the server time, a heartbeat gets itself back, NBR gets a V4; the rest nothing.
    fn reply_for(&self, cmd: &str, id: &str) -> ReplyPlan {
        let ok = match cmd {
            "V1" | "NBR" => format!("*HQ,{id},V4,{cmd},{}#", yyyymmddhhmmss((self.clock)())),
            "HTBT" | "V0" => format!("*HQ,{id},{cmd}#"),
            _ => return ReplyPlan::None,
        };
        ReplyPlan::AfterCommit {
            ok: Bytes::from(ok),
            failed: None,
        }
    }
}

fn empty_frame(raw: Bytes, summary: &str) -> Frame {
    Frame {
        raw,
        integrity: Integrity::Intact,
        device: None,
        serial: None,
        observations: Vec::new(),
        summary: summary.into(),
        parse_error: None,
        reply: ReplyPlan::None,
        event_key: None,
    }
}

fn unparsed(raw: Bytes, why: &str) -> Frame {
    let mut f = empty_frame(raw, "unparsed");
    f.parse_error = Some(why.into());
    f
}

fn field<'a>(fields: &[&'a str], i: usize, what: &str) -> Result<&'a str, String> {
    fields
        .get(i)
        .copied()
        .ok_or_else(|| format!("{what} missing (field {i})"))
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// `DDMM.MMMM` (or `DDDMM.MMMM`) and a hemisphere letter to signed degrees.
fn coordinate(value: &str, hemi: &str, max: f64, neg: &str, pos: &str) -> Result<f64, String> {
    let dot = value.find('.').unwrap_or(value.len());
    if dot < 3 || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("bad coordinate {value:?}"));
    }
    let deg: f64 = num(&value[..dot - 2], "coordinate degrees")?;
    let min: f64 = num(&value[dot - 2..], "coordinate minutes")?;
    if min >= 60.0 {
        return Err(format!("bad coordinate minutes {value:?}"));
    }
    let v = deg + min / 60.0;
    if v > max {
        return Err(format!("coordinate {value:?} out of range"));
    }
    match hemi {
        h if h == pos => Ok(v),
        h if h == neg => Ok(-v),
        other => Err(format!("bad hemisphere {other:?}")),
    }
}

/// `HHMMSS` and `DDMMYY` (UTC, years 2000–2099) to ms since the epoch.
fn datetime_ms(hms: &str, dmy: &str) -> Result<u64, String> {
    let two = |s: &str, i: usize| -> Option<u32> {
        let d = s.as_bytes().get(i..i + 2)?;
        (d[0].is_ascii_digit() && d[1].is_ascii_digit())
            .then(|| u32::from(d[0] - b'0') * 10 + u32::from(d[1] - b'0'))
    };
    let bad = || format!("bad time {hms:?} / date {dmy:?}");
    if hms.len() != 6 || dmy.len() != 6 {
        return Err(bad());
    }
    let (h, mi, s) = (two(hms, 0), two(hms, 2), two(hms, 4));
    let (d, mo, y) = (two(dmy, 0), two(dmy, 2), two(dmy, 4));
    match (h, mi, s, d, mo, y) {
        (Some(h), Some(mi), Some(s), Some(d), Some(mo), Some(y)) => {
            civil_ms(2000 + y, mo, d, h, mi, s).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// Calendar date and time (UTC) to ms since the epoch; `None` if it is not
/// a real one or before 1970.
pub(crate) fn civil_ms(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<u64> {
    let [y, mo, d, h, mi, s] = [y, mo, d, h, mi, s].map(i64::from);
    u64::try_from(crate::civil::utc_ms(y, mo, d, h, mi, s)?).ok()
}

/// Inverse of [`civil_ms`]: (year, month, day, hour, minute, second).
fn civil_from_ms(ms: u64) -> (i64, u32, u32, u32, u32, u32) {
    let c = i64::try_from(ms)
        .ok()
        .and_then(crate::civil::utc_of_ms)
        .expect("a device clock within years 1970-9999");
    let n = |v: i8| v as u32;
    (
        i64::from(c.year),
        n(c.month),
        n(c.day),
        n(c.hour),
        n(c.minute),
        n(c.second),
    )
}

fn yyyymmddhhmmss(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil_from_ms(ms);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

/// One observation per alarm kind whose bit is 0, in table order.
pub fn status_alarms(status: u32) -> Vec<(EventKind, String)> {
    let mut out: Vec<(EventKind, String)> = Vec::new();
    for &(bit, kind, name) in STATUS_ALARMS {
        if status & (1 << bit) != 0 {
            continue;
        }
        let label = format!("status bit {bit} ({name})");
        match out.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, code)) => code.push_str(&format!(", {label}")),
            None => out.push((kind, format!("H02 {label}"))),
        }
    }
    out
}

fn parse_status(s: &str) -> Result<u32, String> {
    if s.len() != 8 {
        return Err(format!("status word {s:?} is not 8 hex digits"));
    }
    u32::from_str_radix(s, 16).map_err(|_| format!("status word {s:?} is not hex"))
}

fn alarm_observations(
    status: u32,
    time: Option<u64>,
    location: Option<Location>,
    battery: Option<u8>,
) -> Vec<Observation> {
    status_alarms(status)
        .into_iter()
        .map(|(kind, code)| Observation {
            kind,
            device_time_ms: time,
            battery_pct: battery,
            location,
            signal: None,
            code: format!("{code}, status {status:08X}"),
        })
        .collect()
}

/// V1 layout from `at` (the HHMMSS field): time, A/V, lat, N/S, lon, E/W, speed,
/// course, date, status. Alarms first, then the position itself.
fn parse_position(fields: &[&str], at: usize, label: &str) -> Result<Vec<Observation>, String> {
    let f = |i: usize, what: &str| field(fields, at + i, what);
    let time = datetime_ms(f(0, "time")?, f(8, "date")?)?;
    let valid = match f(1, "validity")? {
        "A" => true,
        "V" => false,
        other => return Err(format!("bad validity {other:?}")),
    };
    let lat = coordinate(f(2, "latitude")?, f(3, "N/S")?, 90.0, "S", "N")?;
    let lon = coordinate(f(4, "longitude")?, f(5, "E/W")?, 180.0, "W", "E")?;
    // A 'V' fix repeats the last known coordinates: not reported as a location.
    let location = valid.then_some(Location {
        lat,
        lon,
        accuracy_m: None,
    });
    let status = match fields.get(at + 9) {
        Some(s) => Some(parse_status(s)?),
        None => None,
    };
    let mut obs = status.map_or_else(Vec::new, |s| {
        alarm_observations(s, Some(time), location, None)
    });
    obs.push(Observation {
        kind: EventKind::Position,
        device_time_ms: Some(time),
        battery_pct: None,
        location,
        signal: None,
        code: match status {
            Some(s) => format!("{label} status {s:08X}"),
            None => label.to_string(),
        },
    });
    Ok(obs)
}

/// `HTBT[,battery]`: a battery level makes it a heartbeat worth recording; without
/// one it only keeps the link up.
fn parse_heartbeat(fields: &[&str]) -> Result<Vec<Observation>, String> {
    let Some(b) = fields.get(3).filter(|b| !b.is_empty()) else {
        return Ok(Vec::new());
    };
    let battery: u8 = num(b, "battery")?;
    if battery > 100 {
        return Err(format!("battery {battery} % out of range"));
    }
    Ok(vec![Observation {
        kind: EventKind::Heartbeat,
        device_time_ms: None,
        battery_pct: Some(battery),
        location: None,
        signal: None,
        code: "H02 HTBT".into(),
    }])
}

/// `LINK,hhmmss,rssi,satellites,battery,steps,turnovers,ddmmyy,status`.
fn parse_link(fields: &[&str]) -> Result<Vec<Observation>, String> {
    let time = datetime_ms(field(fields, 3, "time")?, field(fields, 9, "date")?)?;
    let signal: u8 = num(field(fields, 4, "rssi")?, "rssi")?;
    let battery: u8 = num(field(fields, 6, "battery")?, "battery")?;
    let battery = (battery <= 100).then_some(battery);
    let status = parse_status(field(fields, 10, "status")?)?;
    let mut obs = alarm_observations(status, Some(time), None, battery);
    for o in &mut obs {
        o.signal = Some(signal);
    }
    obs.push(Observation {
        kind: EventKind::Heartbeat,
        device_time_ms: Some(time),
        battery_pct: battery,
        location: None,
        signal: Some(signal),
        code: format!("H02 LINK status {status:08X}"),
    });
    Ok(obs)
}

/// `NBR,hhmmss,mcc,mnc,delay,count,(lac,cid,rssi)×count,ddmmyy,status`: cell
/// towers only, so only the status alarms are reported (no location).
fn parse_nbr(fields: &[&str]) -> Result<Vec<Observation>, String> {
    let count: usize = num(field(fields, 7, "cell count")?, "cell count")?;
    let at = 8usize.saturating_add(count.saturating_mul(3));
    let time = datetime_ms(field(fields, 3, "time")?, field(fields, at, "date")?)?;
    let status = parse_status(field(fields, at + 1, "status")?)?;
    Ok(alarm_observations(status, Some(time), None, None))
}

fn bcd(b: &[u8], what: &str) -> Result<u64, String> {
    let mut v = 0u64;
    for &byte in b {
        let (hi, lo) = (byte >> 4, byte & 0x0f);
        if hi > 9 || lo > 9 {
            return Err(format!("{what} is not BCD"));
        }
        v = v * 100 + u64::from(hi) * 10 + u64::from(lo);
    }
    Ok(v)
}

/// Battery byte of binary frames: levels 1–6 or a percentage (as Traccar reads it);
/// 0 and the charging codes 0xF1–0xF6 carry no percentage.
fn binary_battery(v: u8) -> Option<u8> {
    match v {
        1..=3 => Some((v - 1) * 10),
        4..=6 => Some((v - 1) * 20),
        7..=100 => Some(v),
        _ => None,
    }
}

/// Binary frame: `$`, id (5 bytes BCD), HHMMSS DDMMYY (BCD), latitude DDMM.MMMM
/// (4 bytes BCD), battery, longitude DDDMM.MMMM (4½ bytes BCD) + flags nibble,
/// speed (3 BCD digits), course (3 BCD digits), status (u32 BE), then a tail.
fn parse_binary(raw: Bytes) -> Frame {
    let mut frame = empty_frame(raw.clone(), "binary position");
    match decode_binary(&raw) {
        Ok((id, obs)) => {
            frame.device = Some(id);
            frame.observations = obs;
        }
        Err(e) => frame.parse_error = Some(e),
    }
    frame
}

fn decode_binary(b: &[u8]) -> Result<(DeviceId, Vec<Observation>), String> {
    if b.len() < 29 {
        return Err("binary frame shorter than 29 bytes".into());
    }
    let id: String = b[1..6].iter().map(|x| format!("{x:02x}")).collect();
    let device = DeviceId::parse(&id).map_err(|e| format!("bad device id: {e}"))?;
    let hms = bcd(&b[6..9], "time")?;
    let dmy = bcd(&b[9..12], "date")?;
    let time = datetime_ms(&format!("{hms:06}"), &format!("{dmy:06}"))?;
    let lat_deg = bcd(&b[12..13], "latitude")? as f64;
    let lat_min = bcd(&b[13..16], "latitude")? as f64 / 10_000.0;
    let battery = binary_battery(b[16]);
    // Longitude: 3 degree digits then 7 minute digits, the last digit in the high
    // nibble of the byte whose low nibble holds the flags.
    if b[21] >> 4 > 9 {
        return Err("longitude is not BCD".into());
    }
    let lon_digits = bcd(&b[17..21], "longitude")? * 10 + u64::from(b[21] >> 4);
    let lon_deg = (lon_digits / 1_000_000) as f64;
    let lon_min = (lon_digits % 1_000_000) as f64 / 10_000.0;
    let flags = b[21] & 0x0f;
    let mut lat = lat_deg + lat_min / 60.0;
    let mut lon = lon_deg + lon_min / 60.0;
    if lat_min >= 60.0 || lon_min >= 60.0 || lat > 90.0 || lon > 180.0 {
        return Err("coordinates out of range".into());
    }
    if flags & 0x04 == 0 {
        lat = -lat;
    }
    if flags & 0x08 == 0 {
        lon = -lon;
    }
    let location = (flags & 0x02 != 0).then_some(Location {
        lat,
        lon,
        accuracy_m: None,
    });
    let status = u32::from_be_bytes([b[25], b[26], b[27], b[28]]);
    let mut obs = alarm_observations(status, Some(time), location, battery);
    obs.push(Observation {
        kind: EventKind::Position,
        device_time_ms: Some(time),
        battery_pct: battery,
        location,
        signal: None,
        code: format!("H02 binary status {status:08X}"),
    });
    Ok((device, obs))
}

/// Status bit to clear for an alarm kind in [`encode_v1`] (the first listed bit).
fn status_bit(kind: EventKind) -> Option<u8> {
    STATUS_ALARMS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(bit, _, _)| *bit)
}

fn dm(value: f64, deg_digits: usize) -> String {
    // Whole 1/10000 minutes, so the text is exact and the decoder reads it back.
    let total = (value.abs() * 600_000.0).round() as u64;
    let (deg, min) = (total / 600_000, total % 600_000);
    format!(
        "{deg:0w$}{:02}.{:04}",
        min / 10_000,
        min % 10_000,
        w = deg_digits
    )
}

/// A V1 position frame as an H02 tracker sends it. `status_alarms` kinds with an
/// H02 status bit (SOS, power cut, tamper/vibration, overspeed) clear that bit;
/// others are ignored. `time_ms` is written to the second (UTC, 2000–2099).
pub fn encode_v1(
    id: &DeviceId,
    time_ms: u64,
    location: Location,
    status_alarms: &[EventKind],
) -> Bytes {
    let mut status = u32::MAX;
    for &k in status_alarms {
        if let Some(bit) = status_bit(k) {
            status &= !(1 << bit);
        }
    }
    let (y, mo, d, h, mi, s) = civil_from_ms(time_ms);
    Bytes::from(format!(
        "*HQ,{id},V1,{h:02}{mi:02}{s:02},A,{},{},{},{},0.00,0,{d:02}{mo:02}{:02},{status:08X}#",
        dm(location.lat, 2),
        if location.lat < 0.0 { "S" } else { "N" },
        dm(location.lon, 3),
        if location.lon < 0.0 { "W" } else { "E" },
        y.rem_euclid(100),
    ))
}

/// A heartbeat frame, with the battery level when given.
pub fn encode_heartbeat(id: &DeviceId, battery_pct: Option<u8>) -> Bytes {
    Bytes::from(match battery_pct {
        Some(b) => format!("*HQ,{id},HTBT,{b}#"),
        None => format!("*HQ,{id},HTBT#"),
    })
}

#[cfg(test)]
mod tests;
