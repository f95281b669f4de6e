//! How a simulated device speaks its protocol: frames out, replies in.

use bytes::BytesMut;
use pingantong_protocol::native::{self, NakReason, Reply};
use pingantong_protocol::{AlarmEvent, DeviceId, EventKind, Location};
use pingantong_protocol::{eview, gt06, h02, sia_dc09, watch};

use crate::roster::Pendant;

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

/// Cut `[start … end]` (inclusive) from `buf` if a whole one is there.
fn cut_between(buf: &mut BytesMut, start: u8, end: u8) -> Result<Option<BytesMut>, String> {
    let Some(from) = buf.iter().position(|&b| b == start) else {
        buf.clear();
        return Ok(None);
    };
    let _ = buf.split_to(from);
    match buf.iter().position(|&b| b == end) {
        Some(to) => Ok(Some(buf.split_to(to + 1))),
        None if buf.len() > 4096 => Err("reply without an end".into()),
        None => Ok(None),
    }
}

fn ack(seq: Option<u32>) -> Option<Answer> {
    Some(Answer {
        seq,
        verdict: Verdict::Ack,
    })
}

/// GT06 (protocol/GT06.md): a login on every connection, replies echo the serial.
pub struct Gt06Speaker;

impl Speaker for Gt06Speaker {
    fn name(&self) -> &'static str {
        "gt06"
    }

    fn wire_seq(&self, seq: u32) -> u32 {
        // Serial 0 is the login's; events count 1 … 65535.
        seq % 65_535 + 1
    }

    fn hello(&self, p: &Pendant) -> Option<(BytesMut, usize)> {
        let login = gt06::encode_login(&p.id, 0).ok()?;
        Some((BytesMut::from(&login[..]), 1))
    }

    fn encode(
        &self,
        _p: &Pendant,
        seq: u32,
        kind: EventKind,
        time_ms: u64,
        location: Option<Location>,
    ) -> BytesMut {
        let serial = self.wire_seq(seq) as u16;
        let frame = match kind {
            EventKind::Heartbeat => gt06::encode_heartbeat(6, 4, false, serial),
            k => gt06::encode_alarm(k, location, time_ms, serial)
                .unwrap_or_else(|_| gt06::encode_heartbeat(6, 4, false, serial)),
        };
        BytesMut::from(&frame[..])
    }

    fn echoes_seq(&self) -> bool {
        true
    }

    fn next_reply(&self, _p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String> {
        // 78 78 05 <type> <serial:2> <crc:2> 0D 0A
        if buf.len() < 10 {
            return Ok(None);
        }
        if buf[..2] != [0x78, 0x78] {
            return Err(format!("not a GT06 reply: {:02x?}", &buf[..2]));
        }
        let len = buf[2] as usize + 5;
        if buf.len() < len {
            return Ok(None);
        }
        let r = buf.split_to(len);
        Ok(ack(Some(u32::from(u16::from_be_bytes([r[4], r[5]])))))
    }
}

/// The 3G/4G watch protocol (protocol/WATCH.md): replies in order, no sequence numbers.
pub struct WatchSpeaker;

impl Speaker for WatchSpeaker {
    fn name(&self) -> &'static str {
        "watch"
    }

    fn encode(
        &self,
        p: &Pendant,
        _seq: u32,
        kind: EventKind,
        time_ms: u64,
        location: Option<Location>,
    ) -> BytesMut {
        let frame = match kind {
            EventKind::Heartbeat => watch::encode_lk("SG", &p.id, Some(80)),
            EventKind::Fall => watch::encode_alarm("SG", &p.id, 1 << 21, location, time_ms, 80),
            _ => watch::encode_alarm("SG", &p.id, 1 << 16, location, time_ms, 80),
        };
        BytesMut::from(&frame[..])
    }

    fn echoes_seq(&self) -> bool {
        false
    }

    fn next_reply(&self, _p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String> {
        Ok(cut_between(buf, b'[', b']')?.and_then(|_| ack(None)))
    }
}

/// H02 (protocol/H02.md): heartbeats echoed, positions answered `V4`, in order.
pub struct H02Speaker;

impl Speaker for H02Speaker {
    fn name(&self) -> &'static str {
        "h02"
    }

    fn encode(
        &self,
        p: &Pendant,
        _seq: u32,
        kind: EventKind,
        time_ms: u64,
        location: Option<Location>,
    ) -> BytesMut {
        let id = DeviceId::parse(&p.id).expect("simulated ids are valid");
        let frame = match kind {
            EventKind::Heartbeat => h02::encode_heartbeat(&id, Some(80)),
            // H02 has no fall bit: a fall is sent as SOS.
            _ => h02::encode_v1(
                &id,
                time_ms,
                location.unwrap_or(Location {
                    lat: 23.13,
                    lon: 113.26,
                    accuracy_m: None,
                }),
                &[EventKind::Sos],
            ),
        };
        BytesMut::from(&frame[..])
    }

    fn echoes_seq(&self) -> bool {
        false
    }

    fn next_reply(&self, _p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String> {
        Ok(cut_between(buf, b'*', b'#')?.and_then(|_| ack(None)))
    }
}

/// Eview (protocol/EVIEW.md): every frame asks for an ACK carrying its sequence.
pub struct EviewSpeaker;

impl Speaker for EviewSpeaker {
    fn name(&self) -> &'static str {
        "eview"
    }

    fn wire_seq(&self, seq: u32) -> u32 {
        seq % 65_536
    }

    fn encode(
        &self,
        p: &Pendant,
        seq: u32,
        kind: EventKind,
        _time_ms: u64,
        location: Option<Location>,
    ) -> BytesMut {
        let id = DeviceId::parse(&p.id).expect("simulated ids are valid");
        let frame = eview::encode_alarm(&id, self.wire_seq(seq) as u16, kind, location, Some(80));
        BytesMut::from(&frame[..])
    }

    fn echoes_seq(&self) -> bool {
        true
    }

    fn next_reply(&self, _p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String> {
        // AB <flags> <len:2 LE> <crc:2> <seq:2 LE> <body>
        if buf.len() < 8 {
            return Ok(None);
        }
        if buf[0] != 0xAB {
            return Err("not an Eview frame".into());
        }
        let len = 8 + u16::from_le_bytes([buf[2], buf[3]]) as usize;
        if buf.len() < len {
            return Ok(None);
        }
        let r = buf.split_to(len);
        Ok(ack(Some(u32::from(u16::from_le_bytes([r[6], r[7]])))))
    }
}

/// SIA DC-09 (protocol/SIA_DC09.md): Contact ID over encrypted (or plain) messages.
pub struct Dc09Speaker {
    pub encrypted: bool,
}

impl Speaker for Dc09Speaker {
    fn name(&self) -> &'static str {
        "sia_dc09"
    }

    fn wire_seq(&self, seq: u32) -> u32 {
        seq % 9_999 + 1
    }

    fn encode(
        &self,
        p: &Pendant,
        seq: u32,
        kind: EventKind,
        time_ms: u64,
        _location: Option<Location>,
    ) -> BytesMut {
        let cid = match kind {
            EventKind::Heartbeat => None,
            EventKind::Fall => Some(format!("#{}|1100 01 001", p.id)),
            _ => Some(format!("#{}|1101 01 001", p.id)),
        };
        let payload = match &cid {
            Some(c) => sia_dc09::Payload::AdmCid(c),
            None => sia_dc09::Payload::Null,
        };
        let key = self.encrypted.then_some(p.secret.as_slice());
        let frame = sia_dc09::encode_message(
            &p.id,
            self.wire_seq(seq) as u16,
            Some("1"),
            Some("1"),
            payload,
            key,
            Some(time_ms as i64),
        )
        .expect("simulated messages encode");
        BytesMut::from(&frame[..])
    }

    fn echoes_seq(&self) -> bool {
        true
    }

    fn next_reply(&self, p: &Pendant, buf: &mut BytesMut) -> Result<Option<Answer>, String> {
        let Some(raw) = cut_between(buf, b'\n', b'\r')? else {
            return Ok(None);
        };
        let key = self.encrypted.then_some(p.secret.as_slice());
        let msg = sia_dc09::parse_message(&raw, key).map_err(|e| e.to_string())?;
        let verdict = match msg.token.as_str() {
            "ACK" => Verdict::Ack,
            "NAK" => Verdict::Retry,
            _ => Verdict::Refused,
        };
        let seq = if msg.token == "NAK" {
            None
        } else {
            Some(u32::from(msg.seq))
        };
        Ok(Some(Answer { seq, verdict }))
    }
}

/// The speaker for a protocol name, as `pendant-sim --protocol` takes it.
pub fn by_name(name: &str) -> Option<std::sync::Arc<dyn Speaker>> {
    Some(match name {
        "native" => std::sync::Arc::new(NativeSpeaker),
        "gt06" => std::sync::Arc::new(Gt06Speaker),
        "watch" => std::sync::Arc::new(WatchSpeaker),
        "h02" => std::sync::Arc::new(H02Speaker),
        "eview" => std::sync::Arc::new(EviewSpeaker),
        "dc09" | "sia_dc09" => std::sync::Arc::new(Dc09Speaker { encrypted: true }),
        "dc09-plain" => std::sync::Arc::new(Dc09Speaker { encrypted: false }),
        _ => return None,
    })
}

/// The `n`-th simulated device id in the form `protocol` needs.
pub fn device_id(protocol: &str, n: usize) -> String {
    match protocol {
        // 15-digit IMEIs
        "gt06" | "eview" => format!("86{:013}", n),
        // 10-digit ids
        "watch" => format!("9{:09}", n),
        "h02" => format!("4{:09}", n),
        // DC-09 accounts: hex
        "dc09" | "sia_dc09" | "dc09-plain" => format!("A{:05X}", n),
        "mqtt" => crate::device_id("GW", n),
        _ => crate::device_id("PA", n),
    }
}

/// The protocol a device of this simulated kind is provisioned with.
pub fn provisioned_protocol(name: &str) -> &'static str {
    match name {
        "gt06" => "gt06",
        "watch" => "watch",
        "h02" => "h02",
        "eview" => "eview",
        "dc09" | "sia_dc09" | "dc09-plain" => "sia_dc09",
        "mqtt" => "mqtt",
        _ => "native",
    }
}

/// The protocols of a fleet and their shares, as `native:3,gt06:1,mqtt:1` (a bare name weighs 1).
///
/// Pendant `n` (from 1) speaks the protocol whose share holds `(n - 1) mod total`, so
/// `pingantong-demo seed --protocol` and `pendant-sim --protocol` agree on every device without
/// exchanging a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    parts: Vec<(String, u32)>,
    total: u32,
}

/// Every protocol a simulated device may speak (`mqtt` publishes through the broker).
pub const PROTOCOLS: &str = "native, gt06, watch, h02, eview, dc09, dc09-plain, mqtt";

impl Mix {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts: Vec<(String, u32)> = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => (
                    n.trim(),
                    w.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|w| (1..=1_000).contains(w))
                        .ok_or_else(|| format!("{part:?}: a share is a whole number 1..1000"))?,
                ),
                None => (part, 1),
            };
            if name != "mqtt" && by_name(name).is_none() {
                return Err(format!("unknown protocol {name:?} ({PROTOCOLS})"));
            }
            if parts.iter().any(|(n, _)| n == name) {
                return Err(format!("{name:?} is named twice"));
            }
            parts.push((name.to_owned(), weight));
        }
        let total = parts.iter().map(|(_, w)| w).sum();
        Ok(Self { parts, total })
    }

    /// One protocol for every pendant.
    pub fn single(name: &str) -> Result<Self, String> {
        Self::parse(name)
    }

    /// Every pendant native.
    pub fn native() -> Self {
        Self {
            parts: vec![("native".into(), 1)],
            total: 1,
        }
    }

    /// The protocol pendant `n` (from 1) speaks.
    pub fn protocol_of(&self, n: usize) -> &str {
        let mut slot = ((n.max(1) - 1) % self.total as usize) as u32;
        for (name, w) in &self.parts {
            if slot < *w {
                return name;
            }
            slot -= w;
        }
        unreachable!("slot < total")
    }

    /// Pendant `n`'s device id, in its protocol's form.
    pub fn device_id(&self, n: usize) -> String {
        device_id(self.protocol_of(n), n)
    }

    /// The protocols named, in order.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|(n, _)| n.as_str())
    }

    pub fn is_single(&self) -> bool {
        self.parts.len() == 1
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [(name, _)] = self.parts.as_slice() {
            return f.write_str(name);
        }
        let parts: Vec<String> = self.parts.iter().map(|(n, w)| format!("{n}:{w}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_deals_protocols_by_share_and_names_its_mistakes() {
        let mix = Mix::parse("native:3, gt06, mqtt:2").unwrap();
        let first: Vec<&str> = (1..=7).map(|n| mix.protocol_of(n)).collect();
        assert_eq!(
            first,
            [
                "native", "native", "native", "gt06", "mqtt", "mqtt", "native"
            ]
        );
        assert_eq!(mix.device_id(4), "860000000000004");
        assert_eq!(mix.device_id(5), "GW000005");
        assert_eq!(mix.to_string(), "native:3,gt06:1,mqtt:2");
        assert!(!mix.is_single());
        let one = Mix::single("watch").unwrap();
        assert!(one.is_single());
        assert_eq!(one.to_string(), "watch");
        assert_eq!(one.protocol_of(99), "watch");
        assert!(Mix::parse("native,telex").unwrap_err().contains("telex"));
        assert!(Mix::parse("native:0").unwrap_err().contains("share"));
        assert!(Mix::parse("gt06,gt06:2").unwrap_err().contains("twice"));
    }
}
