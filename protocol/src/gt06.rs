//! GT06 (Concox/Jimi) binary tracker protocol: framing, CRC-16/X-25, packets and replies (see GT06.md).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use crc::{CRC_16_IBM_SDLC, Crc};

use crate::codec::{Codec, Frame, FramingError, Integrity, Observation, ReplyPlan};
use crate::event::{DeviceId, EventKind, Location};

/// Start bytes of a short frame (1-byte length field).
pub const SHORT_START: [u8; 2] = [0x78, 0x78];
/// Start bytes of a long frame (2-byte length field).
pub const LONG_START: [u8; 2] = [0x79, 0x79];
pub const STOP: [u8; 2] = [0x0d, 0x0a];
/// Largest frame accepted, start and stop bytes included. Short frames stop at
/// 260 bytes; long frames carry file names and strings, never more than this in practice.
pub const MAX_FRAME_LEN: usize = 2048;
/// The smallest length field: protocol number (1), serial (2) and CRC (2).
const MIN_LENGTH_FIELD: usize = 5;
/// Time, satellites, latitude, longitude, speed, course/status flags.
const GPS_LEN: usize = 18;

pub const LOGIN: u8 = 0x01;
pub const GPS: u8 = 0x10;
pub const GPS_LBS_6: u8 = 0x11;
pub const GPS_LBS: u8 = 0x12;
pub const STATUS: u8 = 0x13;
pub const STRING: u8 = 0x15;
pub const ALARM: u8 = 0x16;
pub const LBS_STATUS: u8 = 0x19;
pub const STRING_INFO: u8 = 0x21;
pub const GPS_LBS_2: u8 = 0x22;
pub const HEARTBEAT: u8 = 0x23;
pub const ALARM_2: u8 = 0x26;
pub const ALARM_3: u8 = 0x27;
pub const ADDRESS_REQUEST: u8 = 0x2a;
pub const GPS_LBS_4: u8 = 0x2d;
pub const GPS_LBS_3: u8 = 0x37;
pub const TIME_REQUEST: u8 = 0x8a;
pub const INFO: u8 = 0x94;
pub const JC_ALARM: u8 = 0x95;
pub const ADDRESS_RESPONSE: u8 = 0x97;
pub const SERIAL_DATA: u8 = 0x9b;
pub const GPS_LBS_7: u8 = 0xa0;
pub const FENCE_ALARM: u8 = 0xa4;
pub const LBS_ALARM: u8 = 0xa5;

/// CRC-16/X-25 (CRC-ITU): over the length field up to and including the serial.
static X25: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_SDLC);

/// The CRC-16/X-25 of `bytes`.
pub fn crc_x25(bytes: &[u8]) -> u16 {
    X25.checksum(bytes)
}

/// Milliseconds since the Unix epoch (UTC); the codec's only source of time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Why a packet could not be read, or an encoder refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Gt06Error {
    #[error("{what} needs {need} bytes of content, the packet has {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("packet type 0x{0:02x} is not supported")]
    Unsupported(u8),
    #[error("{0}")]
    Layout(&'static str),
    #[error("IMEI must be 15 decimal digits, got {0:?}")]
    BadImei(String),
    #[error("{0} has no GT06 alarm code")]
    UnsupportedKind(String),
    #[error("device time {0} ms is outside 2000-2255, which a GT06 date cannot carry")]
    TimeOutOfRange(u64),
    #[error("location {0},{1} is out of range")]
    Location(f64, f64),
}

/// One GT06 connection: the IMEI learned at login names every later frame.
pub struct Gt06Codec {
    clock: Clock,
    device: Option<DeviceId>,
    /// Set once a whole frame has been cut: from then on, bytes that are not a
    /// frame are set aside and the stream resynchronises at the next start.
    synced: bool,
}

impl fmt::Debug for Gt06Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gt06Codec")
            .field("device", &self.device)
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

impl Default for Gt06Codec {
    fn default() -> Self {
        Self::with_system_clock()
    }
}

impl Gt06Codec {
    /// A codec whose time replies (0x8A) read `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            device: None,
            synced: false,
        }
    }

    /// A codec whose time replies read the system clock.
    pub fn with_system_clock() -> Self {
        Self::new(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }))
    }

    /// The IMEI this connection logged in with, if it has.
    pub fn device(&self) -> Option<&DeviceId> {
        self.device.as_ref()
    }

    /// Refuse (before the first frame) or set aside (after it) bytes that are not a frame.
    fn not_a_frame(
        &mut self,
        buf: &mut BytesMut,
        reason: &'static str,
        detail: String,
    ) -> Result<Option<Frame>, FramingError> {
        if !self.synced {
            // Nothing this peer sent has been GT06 yet: it is not one of our devices.
            return Err(FramingError {
                reason,
                detail,
                reply: None,
            });
        }
        let skip = next_start(buf);
        let raw = buf.split_to(skip).freeze();
        Ok(Some(Frame {
            summary: format!("{} bytes skipped to the next frame start", raw.len()),
            raw,
            integrity: Integrity::BadLength,
            device: self.device.clone(),
            serial: None,
            observations: Vec::new(),
            parse_error: Some(format!("{reason}: {detail}")),
            reply: ReplyPlan::None,
            event_key: None,
        }))
    }

    fn decode_frame(&mut self, raw: Bytes, long: bool) -> Frame {
        let head = if long { 4 } else { 3 };
        let end = raw.len();
        let protocol = raw[head];
        let content = &raw[head + 1..end - 6];
        let serial = u16::from_be_bytes([raw[end - 6], raw[end - 5]]);
        let crc = u16::from_be_bytes([raw[end - 4], raw[end - 3]]);
        let integrity = if crc_x25(&raw[2..end - 4]) == crc {
            Integrity::Intact
        } else {
            Integrity::BadChecksum
        };
        let packet = self.decode_packet(protocol, content, serial, long);
        let (summary, observations, parse_error) = match packet.outcome {
            Ok((summary, observations)) => (summary, observations, None),
            Err(e) => (
                format!("0x{protocol:02x} not understood"),
                Vec::new(),
                Some(e.to_string()),
            ),
        };
        Frame {
            raw,
            integrity,
            device: self.device.clone(),
            serial: Some(u32::from(serial)),
            observations,
            summary,
            parse_error,
            reply: match packet.reply {
                Some(ok) => ReplyPlan::AfterCommit { ok, failed: None },
                None => ReplyPlan::None,
            },
            event_key: None,
        }
    }

    fn decode_packet(&mut self, protocol: u8, c: &[u8], serial: u16, long: bool) -> Packet {
        // Every packet type is answered with its own number and serial unless it says otherwise.
        let ack_it = Some(ack(protocol, serial, long));
        match protocol {
            LOGIN => Packet {
                outcome: self.login(c),
                reply: ack_it,
            },
            STATUS => Packet {
                outcome: status(c),
                reply: ack_it,
            },
            HEARTBEAT => Packet {
                outcome: Ok(heartbeat(c)),
                reply: ack_it,
            },
            GPS | GPS_LBS_6 | GPS_LBS | GPS_LBS_2 | GPS_LBS_4 | GPS_LBS_3 | GPS_LBS_7 => Packet {
                outcome: position(protocol, c),
                reply: ack_it,
            },
            ALARM | ALARM_2 | ALARM_3 | FENCE_ALARM => Packet {
                outcome: gps_status(protocol, c),
                reply: ack_it,
            },
            LBS_STATUS | LBS_ALARM => Packet {
                outcome: lbs_status(protocol, c),
                reply: ack_it,
            },
            JC_ALARM => Packet {
                outcome: jc_alarm(c),
                reply: ack_it,
            },
            TIME_REQUEST => self.time_reply(),
            ADDRESS_REQUEST => Packet {
                outcome: Ok(("address request (answered NA)".into(), Vec::new())),
                reply: Some(address_reply()),
            },
            STRING => Packet {
                outcome: Ok((command_reply(c), Vec::new())),
                reply: ack_it,
            },
            // Information uploads that the device does not expect an answer to.
            INFO | STRING_INFO | SERIAL_DATA => Packet {
                outcome: Ok((format!("information 0x{protocol:02x}"), Vec::new())),
                reply: None,
            },
            // Server commands echoed back: answering would loop.
            0x80..=0x82 => Packet {
                outcome: Err(Gt06Error::Unsupported(protocol)),
                reply: None,
            },
            // A device that gets no answer resends and then reconnects; the bytes are
            // kept, so acknowledging what we cannot read costs nothing and keeps it online.
            _ => Packet {
                outcome: Err(Gt06Error::Unsupported(protocol)),
                reply: ack_it,
            },
        }
    }

    fn login(&mut self, c: &[u8]) -> Outcome {
        need(c, 8, "login IMEI")?;
        // Eight BCD bytes: a padding nibble and fifteen digits. Traccar reads the hex
        // dump too, so a device with a non-decimal nibble keeps the same name in both.
        let mut digits = String::with_capacity(16);
        for b in &c[..8] {
            digits.push_str(&format!("{b:02x}"));
        }
        let imei = DeviceId::parse(&digits[1..]).map_err(|_| Gt06Error::Layout("bad IMEI"))?;
        let mut summary = format!("login {imei}");
        if c.len() >= 10 {
            summary.push_str(&format!(", type 0x{:02x}{:02x}", c[8], c[9]));
        }
        if c.len() >= 12 {
            let tz = u16::from_be_bytes([c[10], c[11]]);
            let hm = tz >> 4;
            let sign = if tz & 0x08 != 0 { '-' } else { '+' };
            summary.push_str(&format!(", zone {sign}{:02}:{:02}", hm / 100, hm % 100));
        }
        self.device = Some(imei);
        Ok((summary, Vec::new()))
    }

    fn time_reply(&self) -> Packet {
        let now = (self.clock)();
        let reply = u64::try_from(now)
            .ok()
            .and_then(civil_from_ms)
            .map(|t| packet(false, TIME_REQUEST, &t, 0));
        let summary = match reply {
            Some(_) => "time request".to_string(),
            // Better no answer than a wrong clock: the device asks again.
            None => {
                format!("time request, server clock {now} ms is outside 2000-2255: not answered")
            }
        };
        Packet {
            outcome: Ok((summary, Vec::new())),
            reply,
        }
    }
}

impl Codec for Gt06Codec {
    fn protocol(&self) -> &'static str {
        "gt06"
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != 0x78 && first != 0x79 {
            return self.not_a_frame(
                buf,
                "bad_start",
                format!("0x{first:02x} where 78 78 or 79 79 starts a frame"),
            );
        }
        if buf.len() < 2 {
            return Ok(None);
        }
        if buf[1] != first {
            return self.not_a_frame(
                buf,
                "bad_start",
                format!(
                    "0x{first:02x}{:02x} where 78 78 or 79 79 starts a frame",
                    buf[1]
                ),
            );
        }
        let long = first == 0x79;
        let head = if long { 4 } else { 3 };
        if buf.len() < head {
            return Ok(None);
        }
        let length = if long {
            usize::from(u16::from_be_bytes([buf[2], buf[3]]))
        } else {
            usize::from(buf[2])
        };
        let total = head + length + STOP.len();
        if length < MIN_LENGTH_FIELD {
            return self.not_a_frame(
                buf,
                "bad_length",
                format!("length field {length}, the least a packet needs is {MIN_LENGTH_FIELD}"),
            );
        }
        if total > MAX_FRAME_LEN {
            return self.not_a_frame(
                buf,
                "too_long",
                format!("frame of {total} bytes announced, the limit is {MAX_FRAME_LEN}"),
            );
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        if buf[total - 2..total] != STOP {
            return self.not_a_frame(
                buf,
                "bad_length",
                format!("no 0D 0A where the length field {length} puts the end"),
            );
        }
        let raw = buf.split_to(total).freeze();
        self.synced = true;
        Ok(Some(self.decode_frame(raw, long)))
    }
}

/// What one packet says and what it is answered with.
struct Packet {
    outcome: Outcome,
    reply: Option<Bytes>,
}

/// A summary and the observations, or why the content could not be read.
type Outcome = Result<(String, Vec<Observation>), Gt06Error>;

/// Where the bytes that are not a frame end: at the next `78 78` / `79 79` (or a
/// lone start byte at the very end, which may be half of one), else at the end.
fn next_start(buf: &[u8]) -> usize {
    (1..buf.len())
        .find(|&i| {
            matches!(buf[i], 0x78 | 0x79) && buf.get(i + 1).is_none_or(|&next| next == buf[i])
        })
        .unwrap_or(buf.len())
}

fn need(c: &[u8], n: usize, what: &'static str) -> Result<(), Gt06Error> {
    if c.len() < n {
        Err(Gt06Error::Truncated {
            what,
            need: n,
            have: c.len(),
        })
    } else {
        Ok(())
    }
}

/// Everything an observation of this frame carries besides its kind.
#[derive(Debug, Clone, Copy, Default)]
struct Context {
    time_ms: Option<u64>,
    location: Option<Location>,
    battery_pct: Option<u8>,
    signal: Option<u8>,
}

impl Context {
    fn observe(&self, kind: EventKind, code: String) -> Observation {
        Observation {
            kind,
            device_time_ms: self.time_ms,
            battery_pct: self.battery_pct,
            location: self.location,
            signal: self.signal,
            code,
        }
    }
}

/// The alarms of one frame, one per kind: a status word and an alarm byte that
/// both say "power cut" are one power cut.
#[derive(Default)]
struct Alarms(Vec<(EventKind, String)>);

impl Alarms {
    fn add(&mut self, kind: Option<EventKind>, code: String) {
        let Some(kind) = kind else { return };
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, codes)) => {
                codes.push_str(" + ");
                codes.push_str(&code);
            }
            None => self.0.push((kind, code)),
        }
    }

    /// The alarms, or `otherwise` when there are none.
    fn observations(
        self,
        ctx: &Context,
        otherwise: Option<(EventKind, String)>,
    ) -> Vec<Observation> {
        if self.0.is_empty() {
            otherwise
                .map(|(kind, code)| ctx.observe(kind, code))
                .into_iter()
                .collect()
        } else {
            self.0
                .into_iter()
                .map(|(kind, code)| ctx.observe(kind, code))
                .collect()
        }
    }

    fn names(&self) -> String {
        let names: Vec<String> = self.0.iter().map(|(k, _)| k.name()).collect();
        names.join(", ")
    }
}

/// The alarm in bits 3–5 of the terminal information byte.
pub fn terminal_info_alarm(info: u8) -> Option<EventKind> {
    match (info >> 3) & 0x07 {
        0b010 => Some(EventKind::PowerCut),
        0b011 => Some(EventKind::LowBattery),
        0b100 => Some(EventKind::Sos),
        0b111 => Some(EventKind::RemovedFromWrist),
        // 001 shock, 110 geofence, 000 none: nothing a carer acts on.
        _ => None,
    }
}

/// The alarm named by an alarm byte (0x16/0x26/0x27/0x19/0x13/0xA4/0xA5 packets).
pub fn alarm_byte(code: u8) -> Option<EventKind> {
    match code {
        0x01 => Some(EventKind::Sos),
        0x02 => Some(EventKind::PowerCut),
        0x0c | 0x13 | 0x25 => Some(EventKind::Tamper),
        0x0e | 0x0f | 0x19 => Some(EventKind::LowBattery),
        0x18 => Some(EventKind::RemovedFromWrist),
        0x23 => Some(EventKind::Fall),
        _ => None,
    }
}

/// Battery percent of a voltage-level byte: levels 0–6 step by a sixth; some
/// firmwares send a percent (7–100) in the same byte; anything else is unknown.
pub fn battery_pct_from_level(level: u8) -> Option<u8> {
    match level {
        // At most 6 * 100 / 6 = 100, so the cast cannot truncate.
        0..=6 => Some((u16::from(level) * 100 / 6) as u8),
        7..=100 => Some(level),
        _ => None,
    }
}

/// A rough state of charge of a single Li-ion cell from its voltage in units
/// of 10 mV: 3.40 V is empty, 4.20 V full, linear in between.
pub fn battery_pct_from_centivolts(cv: u16) -> u8 {
    let pct = (i32::from(cv) - 340) * 100 / (420 - 340);
    // Clamped to 0..=100, so the cast cannot truncate.
    pct.clamp(0, 100) as u8
}

/// The status block: terminal information, voltage level, GSM signal, alarm byte.
struct StatusBlock {
    info: u8,
    voltage: u8,
    gsm: u8,
    alarm: Option<u8>,
}

impl StatusBlock {
    fn read(c: &[u8]) -> Result<Self, Gt06Error> {
        need(c, 3, "status block")?;
        Ok(Self {
            info: c[0],
            voltage: c[1],
            gsm: c[2],
            alarm: c.get(3).copied(),
        })
    }

    /// Add this block's alarms; `vxt01` devices use value 7 of bits 3–5 for overspeed.
    fn alarms(&self, protocol: u8, vxt01: bool, alarms: &mut Alarms) {
        let bits = (self.info >> 3) & 0x07;
        if !(vxt01 && bits == 0b111) {
            alarms.add(
                terminal_info_alarm(self.info),
                format!("GT06 0x{protocol:02x} terminal info 0x{:02x}", self.info),
            );
        }
        if let (Some(code), false) = (self.alarm, vxt01) {
            alarms.add(
                alarm_byte(code),
                format!("GT06 0x{protocol:02x} alarm 0x{code:02x}"),
            );
        }
    }
}

/// The GPS block that opens position and alarm packets.
struct Gps {
    time_ms: Option<u64>,
    /// Only when the device marks the fix as valid.
    location: Option<Location>,
    lat: f64,
    lon: f64,
    fixed: bool,
}

impl Gps {
    fn read(c: &[u8]) -> Result<Self, Gt06Error> {
        need(c, GPS_LEN, "GPS block")?;
        let time_ms = ms_from_civil([c[0], c[1], c[2], c[3], c[4], c[5]]);
        // c[6]: GPS info length (high nibble) and satellites (low nibble).
        let lat_raw = u32::from_be_bytes([c[7], c[8], c[9], c[10]]);
        let lon_raw = u32::from_be_bytes([c[11], c[12], c[13], c[14]]);
        // c[15]: speed, km/h.
        let flags = u16::from_be_bytes([c[16], c[17]]);
        Ok(Self::from_raw(time_ms, lat_raw, lon_raw, flags))
    }

    fn from_raw(time_ms: Option<u64>, lat_raw: u32, lon_raw: u32, flags: u16) -> Self {
        // Degrees × 30000 × 60 (half-thousandths of a minute).
        let mut lat = f64::from(lat_raw) / 1_800_000.0;
        let mut lon = f64::from(lon_raw) / 1_800_000.0;
        if flags & (1 << 10) == 0 {
            lat = -lat; // bit 10 clear: south
        }
        if flags & (1 << 11) != 0 {
            lon = -lon; // bit 11 set: west
        }
        let fixed = flags & (1 << 12) != 0;
        let in_range = lat.abs() <= 90.0 && lon.abs() <= 180.0;
        Self {
            time_ms,
            location: (fixed && in_range).then_some(Location {
                lat,
                lon,
                accuracy_m: None,
            }),
            lat,
            lon,
            fixed,
        }
    }

    fn describe(&self) -> String {
        if self.location.is_some() {
            format!("{:.5},{:.5}", self.lat, self.lon)
        } else if self.fixed {
            format!("{:.5},{:.5} out of range", self.lat, self.lon)
        } else {
            format!("no fix (last {:.5},{:.5})", self.lat, self.lon)
        }
    }
}

/// 0x13: the status heartbeat, in the standard layout or the longer Jimi one.
fn status(c: &[u8]) -> Outcome {
    let mut alarms = Alarms::default();
    let (ctx, block) = if c.len() == 14 || c.len() == 16 {
        // Longer layout: terminal info, signal word (GSM in its low 5 bits), alarm,
        // language, battery percent, working mode, voltage in 10 mV, ...
        let block = StatusBlock {
            info: c[0],
            voltage: c[5],
            gsm: c[2] & 0x1f,
            alarm: Some(c[3]),
        };
        let ctx = Context {
            battery_pct: (block.voltage <= 100).then_some(block.voltage),
            signal: Some(block.gsm),
            ..Context::default()
        };
        (ctx, block)
    } else {
        let block = StatusBlock::read(c)?;
        let ctx = Context {
            battery_pct: battery_pct_from_level(block.voltage),
            signal: Some(block.gsm),
            ..Context::default()
        };
        (ctx, block)
    };
    block.alarms(STATUS, false, &mut alarms);
    let summary = if alarms.0.is_empty() {
        "heartbeat 0x13".to_string()
    } else {
        format!("heartbeat 0x13 with alarm: {}", alarms.names())
    };
    let obs = alarms.observations(
        &ctx,
        Some((EventKind::Heartbeat, "GT06 0x13 heartbeat".into())),
    );
    Ok((summary, obs))
}

/// 0x23: the GK310-style heartbeat with the battery in volts.
fn heartbeat(c: &[u8]) -> (String, Vec<Observation>) {
    let volts = (c.len() >= 3).then(|| u16::from_be_bytes([c[1], c[2]]));
    let ctx = Context {
        battery_pct: volts.map(battery_pct_from_centivolts),
        signal: c.get(3).copied(),
        ..Context::default()
    };
    let summary = match volts {
        Some(v) => format!("heartbeat 0x23, battery {}.{:02} V", v / 100, v % 100),
        None => "heartbeat 0x23".to_string(),
    };
    let obs = ctx.observe(EventKind::Heartbeat, "GT06 0x23 heartbeat".into());
    (summary, vec![obs])
}

/// 0x10/0x11/0x12/0x22/0x2D/0x37/0xA0: a position, no status.
fn position(protocol: u8, c: &[u8]) -> Outcome {
    if c.is_empty() {
        return Ok((
            format!("position 0x{protocol:02x} without data"),
            Vec::new(),
        ));
    }
    let gps = Gps::read(c)?;
    let ctx = Context {
        time_ms: gps.time_ms,
        location: gps.location,
        ..Context::default()
    };
    let summary = format!("position 0x{protocol:02x} {}", gps.describe());
    let obs = match gps.location {
        Some(_) => vec![ctx.observe(
            EventKind::Position,
            format!("GT06 0x{protocol:02x} position"),
        )],
        // A position the device itself marks as not fixed would send a carer to
        // the wrong door: it stays in the summary only.
        None => Vec::new(),
    };
    Ok((summary, obs))
}

/// 0x16/0x26/0x27/0xA4: GPS, cell, status block (and a fence byte for 0x27/0xA4).
fn gps_status(protocol: u8, c: &[u8]) -> Outcome {
    let gps = Gps::read(c)?;
    let tail = if matches!(protocol, ALARM_3 | FENCE_ALARM) {
        6
    } else {
        5
    };
    need(c, GPS_LEN + tail, "GPS and status blocks")?;
    // The status block ends the packet. The cell block before it varies by
    // firmware: a length byte that counts itself (9, 16) or not (8), a 4-byte cell
    // id under a length byte of 9, no length byte at all. Take the block from the
    // end when the cell block between is one of those sizes, else from the front.
    let from_end = c.len() - tail;
    let lbs_len = usize::from(c.get(GPS_LEN).copied().unwrap_or(0));
    let cell = from_end - GPS_LEN;
    let at = if [0, 8, 9, 10, lbs_len, lbs_len + 1].contains(&cell) {
        from_end
    } else {
        GPS_LEN + lbs_len.max(9)
    };
    need(c, at + 4, "status block after the cell block")?;
    let block = StatusBlock::read(&c[at..])?;
    // VXT01 sends 0x16 with a 36-byte length field and gives bits 3-5 value 7 another meaning.
    let vxt01 = protocol == ALARM && c.len() == 31;
    let mut alarms = Alarms::default();
    block.alarms(protocol, vxt01, &mut alarms);
    let ctx = Context {
        time_ms: gps.time_ms,
        location: gps.location,
        battery_pct: battery_pct_from_level(block.voltage),
        signal: Some(block.gsm),
    };
    let summary = if alarms.0.is_empty() {
        format!("status 0x{protocol:02x} {}", gps.describe())
    } else {
        format!(
            "alarm 0x{protocol:02x} {}: {}",
            gps.describe(),
            alarms.names()
        )
    };
    let otherwise = match gps.location {
        Some(_) => (
            EventKind::Position,
            format!("GT06 0x{protocol:02x} position"),
        ),
        None => (
            EventKind::Heartbeat,
            format!("GT06 0x{protocol:02x} status"),
        ),
    };
    Ok((summary, alarms.observations(&ctx, Some(otherwise))))
}

/// 0x19/0xA5: cell and status block, no GPS.
fn lbs_status(protocol: u8, c: &[u8]) -> Outcome {
    need(c, 2, "cell block")?;
    // An MCC with its top bit set announces a 2-byte MNC.
    let wide_mnc = usize::from(c[0] & 0x80 != 0);
    let cell = if protocol == LBS_ALARM {
        2 + 1 + wide_mnc + 4 + 8
    } else {
        2 + 1 + wide_mnc + 2 + 3
    };
    need(c, cell + 4, "cell and status blocks")?;
    let block = StatusBlock::read(&c[cell..])?;
    let mut alarms = Alarms::default();
    block.alarms(protocol, false, &mut alarms);
    let ctx = Context {
        battery_pct: battery_pct_from_level(block.voltage),
        signal: Some(block.gsm),
        ..Context::default()
    };
    let summary = if alarms.0.is_empty() {
        format!("cell status 0x{protocol:02x}")
    } else {
        format!("cell alarm 0x{protocol:02x}: {}", alarms.names())
    };
    let otherwise = (
        EventKind::Heartbeat,
        format!("GT06 0x{protocol:02x} status"),
    );
    Ok((summary, alarms.observations(&ctx, Some(otherwise))))
}

/// 0x95 (JC100-style alarm): time, then position (long form), then an event byte.
fn jc_alarm(c: &[u8]) -> Outcome {
    if c.starts_with(&[0xff, 0xff]) {
        return Err(Gt06Error::Layout(
            "JC400 0x95 alarm layout is not supported",
        ));
    }
    let (ctx, event, place) = if c.len() > 7 {
        need(c, 17, "0x95 alarm with position")?;
        let time_ms = ms_from_civil([c[0], c[1], c[2], c[3], c[4], c[5]]);
        let lat = u32::from_be_bytes([c[6], c[7], c[8], c[9]]);
        let lon = u32::from_be_bytes([c[10], c[11], c[12], c[13]]);
        let gps = Gps::from_raw(time_ms, lat, lon, u16::from_be_bytes([c[14], c[15]]));
        let ctx = Context {
            time_ms,
            location: gps.location,
            ..Context::default()
        };
        (ctx, c[16], gps.describe())
    } else {
        need(c, 7, "0x95 alarm")?;
        let ctx = Context {
            time_ms: ms_from_civil([c[0], c[1], c[2], c[3], c[4], c[5]]),
            ..Context::default()
        };
        (ctx, c[6], "no position".to_string())
    };
    let kind = match event {
        // Short form calls it a general alarm; on a personal alarm that is a call for help.
        0x01 => Some(EventKind::Sos),
        0x0e => Some(EventKind::LowBattery),
        0x88 => Some(EventKind::PowerCut),
        _ => None,
    };
    let mut alarms = Alarms::default();
    alarms.add(kind, format!("GT06 0x95 alarm 0x{event:02x}"));
    let summary = format!("alarm 0x95 event 0x{event:02x} {place}");
    let otherwise = ctx
        .location
        .map(|_| (EventKind::Position, "GT06 0x95 position".to_string()));
    Ok((summary, alarms.observations(&ctx, otherwise)))
}

/// 0x15: the answer to a server command, kept for people.
fn command_reply(c: &[u8]) -> String {
    // Length byte, 4-byte server flag, ASCII text.
    let text = c
        .get(5..(1 + usize::from(c.first().copied().unwrap_or(0))).min(c.len()))
        .unwrap_or(&[]);
    format!("command reply {:?}", String::from_utf8_lossy(text))
}

/// A whole packet: start, length, protocol number, content, serial, CRC, stop.
fn packet(long: bool, protocol: u8, content: &[u8], serial: u16) -> Bytes {
    let length = 1 + content.len() + 2 + 2;
    let mut b = BytesMut::with_capacity(length + 6);
    if long {
        b.put_slice(&LONG_START);
        // Only the encoders and replies below build packets, all far under 64 KiB.
        b.put_u16(length as u16);
    } else {
        b.put_slice(&SHORT_START);
        b.put_u8(length as u8);
    }
    b.put_u8(protocol);
    b.put_slice(content);
    b.put_u16(serial);
    let crc = crc_x25(&b[2..]);
    b.put_u16(crc);
    b.put_slice(&STOP);
    b.freeze()
}

/// The server's acknowledgement of a packet: its protocol number and serial,
/// in the frame form (short or long) it arrived in.
pub fn ack(protocol: u8, serial: u16, long: bool) -> Bytes {
    packet(long, protocol, &[], serial)
}

/// The answer to an address request (0x2A): "no address", as Traccar sends it.
fn address_reply() -> Bytes {
    const NA: &[u8] = b"NA&&NA&&0##";
    let mut content = Vec::with_capacity(1 + 4 + NA.len());
    content.push(NA.len() as u8);
    content.extend_from_slice(&[0; 4]); // server flag
    content.extend_from_slice(NA);
    packet(true, ADDRESS_RESPONSE, &content, 0)
}

// ---- Encoders (device side, for simulators and tests) ----

/// A login (0x01) for a 15-digit IMEI.
pub fn encode_login(imei: &str, serial: u16) -> Result<Bytes, Gt06Error> {
    if imei.len() != 15 || !imei.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Gt06Error::BadImei(imei.into()));
    }
    let digits: Vec<u8> = std::iter::once(0)
        .chain(imei.bytes().map(|b| b - b'0'))
        .collect();
    let bcd: Vec<u8> = digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    Ok(packet(false, LOGIN, &bcd, serial))
}

/// A status heartbeat (0x13) in the standard layout.
pub fn encode_heartbeat(voltage_level: u8, gsm_signal: u8, charging: bool, serial: u16) -> Bytes {
    // Terminal info: bit 6 GPS on, bit 2 charging; no alarm in bits 3-5.
    let info = 0x40 | (u8::from(charging) << 2);
    packet(
        false,
        STATUS,
        &[info, voltage_level, gsm_signal, 0x00, 0x02],
        serial,
    )
}

/// A time request (0x8A).
pub fn encode_time_request(serial: u16) -> Bytes {
    packet(false, TIME_REQUEST, &[], serial)
}

/// A position (0x12): GPS block and a placeholder cell block.
pub fn encode_position(
    location: Location,
    device_time_ms: u64,
    serial: u16,
) -> Result<Bytes, Gt06Error> {
    let mut content = gps_block(Some(location), device_time_ms)?;
    content.extend_from_slice(&[0x01, 0xcc, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    Ok(packet(false, GPS_LBS, &content, serial))
}

/// An alarm packet (0x16) for `kind`, full battery (level 6) and GSM level 4.
/// Without a location the GPS block is marked "no fix".
pub fn encode_alarm(
    kind: EventKind,
    location: Option<Location>,
    device_time_ms: u64,
    serial: u16,
) -> Result<Bytes, Gt06Error> {
    let code = match kind {
        EventKind::Sos => 0x01,
        EventKind::PowerCut => 0x02,
        EventKind::LowBattery => 0x0e,
        EventKind::Tamper => 0x13,
        EventKind::RemovedFromWrist => 0x18,
        EventKind::Fall => 0x23,
        other => return Err(Gt06Error::UnsupportedKind(other.name())),
    };
    let mut content = gps_block(location, device_time_ms)?;
    // Cell block: length 9 (counting itself), MCC 460, MNC 0, LAC 0, cell 0.
    content.extend_from_slice(&[0x09, 0x01, 0xcc, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    // Terminal info (GPS on, no alarm bits), voltage level 6, GSM 4, alarm, language.
    content.extend_from_slice(&[0x40, 0x06, 0x04, code, 0x02]);
    Ok(packet(false, ALARM, &content, serial))
}

fn gps_block(location: Option<Location>, device_time_ms: u64) -> Result<Vec<u8>, Gt06Error> {
    let time = civil_from_ms(device_time_ms).ok_or(Gt06Error::TimeOutOfRange(device_time_ms))?;
    let mut b = Vec::with_capacity(GPS_LEN);
    b.extend_from_slice(&time);
    let (lat, lon, flags) = match location {
        Some(l) => {
            if !(l.lat.abs() <= 90.0 && l.lon.abs() <= 180.0) {
                return Err(Gt06Error::Location(l.lat, l.lon));
            }
            let mut flags = 1 << 12; // fixed
            if l.lat >= 0.0 {
                flags |= 1 << 10;
            }
            if l.lon < 0.0 {
                flags |= 1 << 11;
            }
            // At most 180 * 1_800_000 = 324_000_000, within u32.
            let raw = |deg: f64| (deg.abs() * 1_800_000.0).round() as u32;
            (raw(l.lat), raw(l.lon), flags)
        }
        None => (0, 0, 0),
    };
    b.push(if location.is_some() { 0xc8 } else { 0xc0 }); // info length 12, satellites
    b.extend_from_slice(&lat.to_be_bytes());
    b.extend_from_slice(&lon.to_be_bytes());
    b.push(0); // speed
    b.extend_from_slice(&u16::to_be_bytes(flags));
    Ok(b)
}

// ---- Calendar (GT06 dates are yy mm dd hh mm ss, UTC, years 2000-2255) ----

/// Milliseconds since the epoch of a GT06 date, `None` if it is not a real date.
fn ms_from_civil(t: [u8; 6]) -> Option<u64> {
    let [yy, mo, dd, hh, mi, ss] = t.map(i64::from);
    let ms = crate::civil::utc_ms(2000 + yy, mo, dd, hh, mi, ss)?;
    u64::try_from(ms).ok()
}

/// The GT06 date of an instant, `None` outside 2000-2255.
fn civil_from_ms(ms: u64) -> Option<[u8; 6]> {
    let c = crate::civil::utc_of_ms(i64::try_from(ms).ok()?)?;
    let yy = u8::try_from(c.year - 2000).ok()?;
    // Month, day, hour, minute and second are all small and positive.
    Some([
        yy,
        c.month as u8,
        c.day as u8,
        c.hour as u8,
        c.minute as u8,
        c.second as u8,
    ])
}

#[cfg(test)]
mod tests;
