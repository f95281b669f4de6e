//! GT06 conformance: each corpus frame decodes to what Traccar and the derived split say, and gets Traccar's reply.

use std::sync::Arc;

use bytes::BytesMut;
use pingantong_protocol::gt06::{self, Gt06Codec};
use pingantong_protocol::{Codec, EventKind, Frame, Integrity, ReplyPlan};
use serde_json::Value;

/// 2024-05-17 08:30:15 UTC: the clock the time request (0x8A) is answered from.
const NOW_MS: i64 = 1_715_934_615_000;
/// The IMEI the session logs in with before a non-login frame.
const SESSION_IMEI: &str = "355488020947422";

pub fn check(row: &Value) -> Result<(), String> {
    let bytes = crate::frame_bytes(row);
    let expect = &row["expect"];
    let derived = &expect["derived"];
    let is_login = derived["protocol_no"] == "0x01";

    let mut codec = Gt06Codec::new(Arc::new(|| NOW_MS));
    if !is_login {
        let login = gt06::encode_login(SESSION_IMEI, 1).map_err(|e| e.to_string())?;
        decode_exactly(&mut codec, &login)?;
    }
    let frame = decode_exactly(&mut codec, &bytes)?;

    if let Some(e) = &frame.parse_error {
        return Err(format!("parse error: {e}"));
    }
    if let Some(serial) = derived["serial"].as_u64() {
        eq("serial", frame.serial.map(u64::from), Some(serial))?;
    }
    if let Some(ok) = derived["crc_x25_ok"].as_bool() {
        let want = if ok {
            Integrity::Intact
        } else {
            Integrity::BadChecksum
        };
        eq("integrity", frame.integrity, want)?;
    }
    let device = frame.device.as_ref().map(|d| d.as_str().to_string());
    match derived["imei"].as_str() {
        Some(imei) => eq("device", device.as_deref(), Some(imei))?,
        None if !is_login => eq("device", device.as_deref(), Some(SESSION_IMEI))?,
        None => {}
    }

    check_reply(&frame, expect)?;
    check_alarms(&frame, expect)?;
    check_status(&frame, expect)?;
    check_position(&frame, expect)?;
    if expect["traccar_check"] == "verifyNull" && !frame.observations.is_empty() {
        return Err(format!(
            "Traccar reports nothing, we report {:?}",
            kinds(&frame)
        ));
    }
    Ok(())
}

/// Decode one whole frame from `bytes`, followed by one byte of a next frame
/// that must stay in the buffer.
fn decode_exactly(codec: &mut Gt06Codec, bytes: &[u8]) -> Result<Frame, String> {
    let mut buf = BytesMut::from(bytes);
    buf.extend_from_slice(&[0x78]);
    let frame = codec
        .decode(&mut buf)
        .map_err(|e| format!("framing error: {e}"))?
        .ok_or("no frame cut")?;
    eq("bytes left", &buf[..], &[0x78][..])?;
    Ok(frame)
}

fn check_reply(frame: &Frame, expect: &Value) -> Result<(), String> {
    let want = expect["server_reply_captured"]
        .as_str()
        .or(expect["server_reply_per_traccar"].as_str());
    let Some(want) = want else { return Ok(()) };
    let ReplyPlan::AfterCommit { ok, failed: None } = &frame.reply else {
        return Err(format!(
            "expected a reply after commit, got {:?}",
            frame.reply
        ));
    };
    match hex::decode(want) {
        Ok(want) => eq("reply", hex::encode(ok), hex::encode(want)),
        // The time reply is described, not given: 78 78 0B 8A <UTC now> 00 00 <crc> 0D 0A.
        Err(_) if want.contains("yy mm dd hh mm ss UTC") => {
            let mut want = vec![0x78, 0x78, 0x0b, 0x8a, 24, 5, 17, 8, 30, 15, 0x00, 0x00];
            let crc = gt06::crc_x25(&want[2..]);
            want.extend_from_slice(&crc.to_be_bytes());
            want.extend_from_slice(&[0x0d, 0x0a]);
            eq("time reply", hex::encode(ok), hex::encode(want))
        }
        Err(_) => Err(format!("cannot read the expected reply {want:?}")),
    }
}

/// Our kind for a Traccar alarm name; `None` for alarms a carer does not act on.
fn kind_of(name: &str) -> Result<Option<EventKind>, String> {
    Ok(match name {
        "sos" => Some(EventKind::Sos),
        "lowBattery" => Some(EventKind::LowBattery),
        "tampering" => Some(EventKind::Tamper),
        "removing" => Some(EventKind::RemovedFromWrist),
        "powerCut" => Some(EventKind::PowerCut),
        "fallDown" => Some(EventKind::Fall),
        "none" | "vibration" | "geofence" | "overspeed" => None,
        other => return Err(format!("no mapping for alarm {other:?}")),
    })
}

fn check_alarms(frame: &Frame, expect: &Value) -> Result<(), String> {
    let got: Vec<EventKind> = kinds(frame)
        .into_iter()
        .filter(|k| !matches!(k, EventKind::Position | EventKind::Heartbeat))
        .collect();
    if let Some(name) = expect["attribute"]["alarm"].as_str()
        && let Some(kind) = kind_of(name)?
        && !got.contains(&kind)
    {
        return Err(format!("Traccar says {name}, we report {got:?}"));
    }
    // Where the derived split names both alarm fields, the alarms are exactly those.
    let derived = &expect["derived"];
    let (bits, byte) = (
        derived["terminal_info_alarm_bits3_5"].as_str(),
        derived["alarm_byte_meaning"].as_str(),
    );
    if let (Some(bits), Some(byte)) = (bits, byte.or(Some("none"))) {
        let mut want: Vec<EventKind> = Vec::new();
        for name in [bits, byte] {
            if let Some(k) = kind_of(name)?
                && !want.contains(&k)
            {
                want.push(k);
            }
        }
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|k| k.name());
        want.sort_by_key(|k| k.name());
        eq("alarms", got_sorted, want)?;
    }
    Ok(())
}

fn check_status(frame: &Frame, expect: &Value) -> Result<(), String> {
    let derived = &expect["derived"];
    let first = frame.observations.first();
    if let Some(level) = expect["attribute"]["batteryLevel"].as_str() {
        let level: u8 = level
            .parse()
            .map_err(|_| format!("bad batteryLevel {level}"))?;
        eq("battery", first.and_then(|o| o.battery_pct), Some(level))?;
    }
    // A voltage level over 100 means the derived split does not fit the frame's
    // layout (the longer 0x13 heartbeat): battery and signal are checked above.
    if let Some(level) = derived["voltage_level"].as_u64().filter(|l| *l <= 100) {
        let level = u8::try_from(level).map_err(|e| e.to_string())?;
        let want = gt06::battery_pct_from_level(level);
        for o in &frame.observations {
            eq("battery", o.battery_pct, want)?;
        }
        if let Some(gsm) = derived["gsm_signal"].as_u64() {
            for o in &frame.observations {
                eq("signal", o.signal.map(u64::from), Some(gsm))?;
            }
        }
    }
    if matches!(derived["protocol_no"].as_str(), Some("0x13" | "0x23"))
        && frame
            .observations
            .iter()
            .all(|o| o.kind != EventKind::Heartbeat)
    {
        return Err(format!("heartbeat expected, got {:?}", kinds(frame)));
    }
    Ok(())
}

fn check_position(frame: &Frame, expect: &Value) -> Result<(), String> {
    let derived = &expect["derived"];
    let position = &expect["position"];
    let lat = position["lat"].as_f64().or(derived["lat"].as_f64());
    let lon = position["lon"].as_f64().or(derived["lon"].as_f64());
    let (Some(lat), Some(lon)) = (lat, lon) else {
        return Ok(());
    };
    let fixed = derived["gps_fixed"].as_bool().unwrap_or(true)
        && position["valid"].as_bool().unwrap_or(true);
    if frame.observations.is_empty() {
        return Err("a position frame with no observation".into());
    }
    for o in &frame.observations {
        match (fixed, o.location) {
            (true, Some(l)) if (l.lat - lat).abs() < 1e-5 && (l.lon - lon).abs() < 1e-5 => {}
            (false, None) => {}
            (_, got) => {
                return Err(format!(
                    "location {got:?}, expected {lat},{lon} fixed={fixed}"
                ));
            }
        }
    }
    if let Some(time) = derived["time"].as_str() {
        let want = utc_ms(time).ok_or(format!("bad time {time}"))?;
        for o in &frame.observations {
            eq("device time", o.device_time_ms, Some(want))?;
        }
    }
    if kinds(frame).len() == 1 && kinds(frame)[0] == EventKind::Heartbeat && fixed {
        return Err("a fixed position reported as a heartbeat".into());
    }
    Ok(())
}

fn kinds(frame: &Frame) -> Vec<EventKind> {
    frame.observations.iter().map(|o| o.kind).collect()
}

fn eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// Milliseconds since the epoch of `"YYYY-MM-DD HH:MM:SS"` (UTC).
fn utc_ms(s: &str) -> Option<u64> {
    let n: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [y, m, d, hh, mm, ss] = n[..] else {
        return None;
    };
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000).ok()
}
