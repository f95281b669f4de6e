//! Eview Minifinder2 (EV-04/EV-05 personal alarms): binary, CRC-16/XMODEM, key/value records (see EVIEW.md).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use crc::{CRC_16_XMODEM, Crc};

use crate::codec::{Codec, Frame, FramingError, Integrity, Observation, ReplyPlan};
use crate::event::{DeviceId, EventKind, Location};

pub const HEADER: u8 = 0xAB;
pub const HEADER_LEN: usize = 8;
/// Largest body accepted. Devices send well under 300 bytes; history uploads stay below this.
pub const MAX_BODY_LEN: usize = 2048;
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BODY_LEN;

/// Flags bit 4: the device wants an answer to this frame.
pub const FLAG_ACK_REQUESTED: u8 = 0x10;

pub const CMD_DATA: u8 = 0x01;
pub const CMD_CONFIGURATION: u8 = 0x02;
pub const CMD_SERVICES: u8 = 0x03;
pub const CMD_SYSTEM_CONTROL: u8 = 0x04;
pub const CMD_FIRMWARE: u8 = 0x7E;
pub const CMD_RESPONSE: u8 = 0x7F;

pub const KEY_IMEI: u8 = 0x01;
pub const KEY_ALARM: u8 = 0x02;
pub const KEY_BATTERY: u8 = 0x14;
pub const KEY_GPS: u8 = 0x20;
pub const KEY_GENERAL: u8 = 0x24;

static CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// Alarm code bits (key 0x02, u32 LE) we know the meaning of. A set bit not
/// listed here becomes `Other(0x20 + bit)`: technical lane, seen by a person.
pub const ALARM_BITS: &[(u8, EventKind, &str)] = &[
    (0, EventKind::LowBattery, "low battery"),
    (1, EventKind::Other(0x41), "overspeed"),
    (2, EventKind::Fall, "fall down"),
    (8, EventKind::PowerCut, "power off"),
    (9, EventKind::PowerRestored, "power on"),
    (12, EventKind::Sos, "SOS"),
    (31, EventKind::Other(0x5F), "bark"),
];

/// Kind for one set alarm bit and its name for people.
pub fn alarm_kind(bit: u8) -> (EventKind, String) {
    match ALARM_BITS.iter().find(|(b, _, _)| *b == bit) {
        Some(&(_, kind, name)) => (kind, format!("Eview alarm bit {bit} ({name})")),
        None => (
            EventKind::Other(0x20 + bit),
            format!("Eview alarm bit {bit} (unassigned)"),
        ),
    }
}

/// The fixed 8-byte header and the command byte that opens the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub body_len: u16,
    pub crc: u16,
    pub sequence: u16,
    /// First byte of the body; `None` for an empty body.
    pub command: Option<u8>,
}

impl Header {
    /// Read the header of a whole frame (as [`Frame::raw`] holds it).
    pub fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() < HEADER_LEN || raw[0] != HEADER {
            return None;
        }
        Some(Self {
            flags: raw[1],
            body_len: u16::from_le_bytes([raw[2], raw[3]]),
            crc: u16::from_le_bytes([raw[4], raw[5]]),
            sequence: u16::from_le_bytes([raw[6], raw[7]]),
            command: raw.get(HEADER_LEN).copied(),
        })
    }

    pub fn ack_requested(&self) -> bool {
        self.flags & FLAG_ACK_REQUESTED != 0
    }
}

pub fn crc16(body: &[u8]) -> u16 {
    CRC16.checksum(body)
}

/// A whole frame: header (flags, length, CRC over `body`, sequence) and body.
pub fn encode_frame(flags: u8, sequence: u16, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_u8(HEADER);
    out.put_u8(flags);
    out.put_u16_le(body.len() as u16);
    out.put_u16_le(crc16(body));
    out.put_u16_le(sequence);
    out.put_slice(body);
    out.freeze()
}

/// The server's acknowledgement of frame `sequence`: response command, result 0 (success).
pub fn ack(sequence: u16) -> Bytes {
    encode_frame(0x00, sequence, &[CMD_RESPONSE, 0x01, 0x00])
}

/// The Eview codec, one per connection.
#[derive(Debug, Default)]
pub struct EviewCodec {
    /// The IMEI seen last on this connection, for frames that do not repeat it.
    device: Option<DeviceId>,
}

impl EviewCodec {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Codec for EviewCodec {
    fn protocol(&self) -> &'static str {
        "eview"
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != HEADER {
            // Bytes before a header: kept as one unparsed frame, then resync on the next 0xAB.
            let end = buf.iter().position(|&b| b == HEADER).unwrap_or(buf.len());
            let raw = buf.split_to(end).freeze();
            let mut f = empty_frame(raw);
            f.summary = "unparsed".into();
            f.parse_error = Some("bytes outside a frame (no 0xAB header)".into());
            return Ok(Some(f));
        }
        if buf.len() < 4 {
            return Ok(None);
        }
        let body_len = usize::from(u16::from_le_bytes([buf[2], buf[3]]));
        if body_len > MAX_BODY_LEN {
            return Err(FramingError {
                reason: "too_long",
                detail: format!(
                    "frame announces a {body_len}-byte body, the limit is {MAX_BODY_LEN}"
                ),
                reply: None,
            });
        }
        let total = HEADER_LEN + body_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let raw = buf.split_to(total).freeze();
        Ok(Some(self.parse(raw)))
    }
}

fn empty_frame(raw: Bytes) -> Frame {
    Frame {
        raw,
        integrity: Integrity::Intact,
        device: None,
        serial: None,
        observations: Vec::new(),
        summary: String::new(),
        parse_error: None,
        reply: ReplyPlan::None,
        event_key: None,
    }
}

/// What one group of records (one report) says.
#[derive(Default)]
struct Report {
    alarm: Option<u32>,
    alarm_time: Option<u64>,
    time: Option<u64>,
    battery: Option<u8>,
    location: Option<Location>,
    /// A record that only a status report carries (battery or general data).
    status: bool,
}

impl Report {
    fn observations(&self, out: &mut Vec<Observation>) {
        let time = self.time.or(self.alarm_time);
        let mk = |kind, code: String| Observation {
            kind,
            device_time_ms: time,
            battery_pct: self.battery,
            location: self.location,
            signal: None,
            code,
        };
        let alarm = self.alarm.unwrap_or(0);
        for bit in (0..32u8).filter(|b| alarm & (1 << b) != 0) {
            let (kind, code) = alarm_kind(bit);
            out.push(mk(kind, code));
        }
        if alarm == 0 && self.location.is_some() {
            out.push(mk(EventKind::Position, "Eview position".into()));
        } else if alarm == 0 && self.status {
            out.push(mk(EventKind::Heartbeat, "Eview status".into()));
        }
    }
}

impl EviewCodec {
    fn parse(&mut self, raw: Bytes) -> Frame {
        let mut frame = empty_frame(raw.clone());
        let Some(h) = Header::parse(&raw) else {
            frame.parse_error = Some("no header".into());
            return frame;
        };
        let body = &raw[HEADER_LEN..];
        frame.serial = Some(u32::from(h.sequence));
        let intact = crc16(body) == h.crc;
        if !intact {
            frame.integrity = Integrity::BadChecksum;
        }
        // A corrupt frame is not acknowledged: the device sends it again and the
        // retry is the intact copy (the corrupt one is still stored and reported).
        if h.ack_requested() && intact {
            frame.reply = ReplyPlan::AfterCommit {
                ok: ack(h.sequence),
                failed: None,
            };
        }
        let Some((&cmd, records)) = body.split_first() else {
            frame.summary = "empty".into();
            frame.parse_error = Some("empty body".into());
            return frame;
        };
        frame.summary = match cmd {
            CMD_DATA => "data",
            CMD_CONFIGURATION => "configuration",
            CMD_SERVICES => "services",
            CMD_SYSTEM_CONTROL => "system control",
            CMD_FIRMWARE => "firmware",
            CMD_RESPONSE => "response",
            _ => "unknown command",
        }
        .to_string();
        // A response answers the other side; its one record is the result byte.
        if cmd == CMD_RESPONSE {
            if let [1, result] = records {
                frame.summary = format!("response result {result}");
            }
            frame.device = self.device.clone();
            return frame;
        }
        let mut reports = vec![Report::default()];
        let mut seen: Vec<u8> = Vec::new();
        let mut b = records;
        let mut error = None;
        while !b.is_empty() {
            let len = usize::from(b[0]);
            if len == 0 || b.len() < 1 + len {
                error = Some(format!(
                    "record at byte {} overruns the body",
                    records.len() - b.len()
                ));
                break;
            }
            let key = b[1];
            let value = &b[2..1 + len];
            b = &b[1 + len..];
            // Only data frames report; other commands are read for the IMEI alone.
            if cmd != CMD_DATA && key != KEY_IMEI {
                continue;
            }
            // A repeated key starts the next report (a device uploading its history).
            if seen.contains(&key) {
                reports.push(Report::default());
                seen.clear();
            }
            seen.push(key);
            if let Some(r) = reports.last_mut()
                && let Err(e) = self.record(key, value, r)
            {
                error = Some(e);
                break;
            }
        }
        frame.device = self.device.clone();
        for r in &reports {
            r.observations(&mut frame.observations);
        }
        frame.parse_error = error;
        frame
    }

    fn record(&mut self, key: u8, v: &[u8], r: &mut Report) -> Result<(), String> {
        let need = |n: usize, what: &str| {
            if v.len() < n {
                Err(format!("{what} record has {} bytes, {n} expected", v.len()))
            } else {
                Ok(())
            }
        };
        let mut c = v;
        match key {
            KEY_IMEI => match DeviceId::from_bytes(v) {
                Ok(d) => self.device = Some(d),
                Err(e) => return Err(format!("bad IMEI: {e}")),
            },
            KEY_ALARM => {
                need(4, "alarm")?;
                r.alarm = Some(c.get_u32_le());
                if c.len() >= 4 {
                    r.alarm_time = Some(u64::from(c.get_u32_le()) * 1000);
                }
            }
            KEY_BATTERY => {
                need(1, "battery")?;
                let pct = v[0];
                r.battery = (pct <= 100).then_some(pct);
                r.status = true;
            }
            KEY_GPS => {
                need(12, "GPS")?;
                let lat = f64::from(c.get_i32_le()) / 1e7;
                let lon = f64::from(c.get_i32_le()) / 1e7;
                let _speed = c.get_u16_le();
                let _course = c.get_u16_le();
                // HDOP 0 means no fix; its value (×0.1) is not an accuracy in metres.
                let hdop = if c.len() >= 4 {
                    let _altitude = c.get_i16_le();
                    c.get_u16_le()
                } else {
                    1
                };
                if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                    return Err(format!("location {lat},{lon} out of range"));
                }
                if hdop > 0 {
                    r.location = Some(Location {
                        lat,
                        lon,
                        accuracy_m: None,
                    });
                }
            }
            KEY_GENERAL => {
                need(8, "general data")?;
                r.time = Some(u64::from(c.get_u32_le()) * 1000);
                let status = c.get_u32_le();
                let pct = (status >> 24) as u8;
                r.battery = (pct <= 100).then_some(pct).or(r.battery);
                r.status = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Alarm bit an encoder sets for `kind`, if Eview has one.
fn alarm_bit(kind: EventKind) -> Option<u8> {
    ALARM_BITS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(b, _, _)| *b)
}

/// A data frame as an EV-04 sends it for an alarm, with the ACK-requested flag:
/// IMEI, the alarm code (when `alarm` has an Eview bit; other kinds send none),
/// battery and GPS position when given.
pub fn encode_alarm(
    imei: &DeviceId,
    seq: u16,
    alarm: EventKind,
    location: Option<Location>,
    battery: Option<u8>,
) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(CMD_DATA);
    let id = imei.as_str().as_bytes();
    body.put_u8(1 + id.len() as u8);
    body.put_u8(KEY_IMEI);
    body.put_slice(id);
    if let Some(bit) = alarm_bit(alarm) {
        body.put_u8(5);
        body.put_u8(KEY_ALARM);
        body.put_u32_le(1 << bit);
    }
    if let Some(pct) = battery {
        body.put_u8(4);
        body.put_u8(KEY_BATTERY);
        body.put_u8(pct);
        body.put_u16_le(0); // voltage not simulated
    }
    if let Some(loc) = location {
        body.put_u8(22);
        body.put_u8(KEY_GPS);
        body.put_i32_le((loc.lat * 1e7).round() as i32);
        body.put_i32_le((loc.lon * 1e7).round() as i32);
        body.put_u16_le(0); // speed km/h
        body.put_u16_le(0); // course
        body.put_i16_le(0); // altitude m
        body.put_u16_le(10); // HDOP 1.0: a fix
        body.put_u32_le(0); // odometer
        body.put_u8(8); // satellites
    }
    encode_frame(FLAG_ACK_REQUESTED, seq, &body)
}

#[cfg(test)]
mod tests;
