//! H02 conformance: Traccar's H02 test frames decode to the same positions, battery and alarms.

use bytes::BytesMut;
use pingantong_protocol::h02::H02Codec;
use pingantong_protocol::{Codec, EventKind, Frame};
use serde_json::Value;

fn alarm_kinds(f: &Frame) -> Vec<EventKind> {
    f.observations
        .iter()
        .map(|o| o.kind)
        .filter(|k| !matches!(k, EventKind::Position | EventKind::Heartbeat))
        .collect()
}

pub fn check(row: &Value) -> Result<(), String> {
    let bytes = crate::frame_bytes(row);
    let mut buf = BytesMut::from(&bytes[..]);
    let f = H02Codec::new()
        .decode(&mut buf)
        .map_err(|e| format!("framing error: {e}"))?
        .ok_or("no whole frame")?;
    if !buf.is_empty() {
        return Err(format!("{} bytes left after the frame", buf.len()));
    }
    if let Some(e) = &f.parse_error {
        return Err(format!("parse error: {e}"));
    }
    if f.device.is_none() {
        return Err("no device id".into());
    }
    let expect = &row["expect"];
    match expect["traccar_check"].as_str() {
        Some("verifyNull") if !f.observations.is_empty() => {
            return Err(format!(
                "Traccar reports nothing, we report {:?}",
                f.observations
            ));
        }
        Some("verifyPosition") if !f.observations.iter().any(|o| o.kind == EventKind::Position) => {
            return Err("no position observation".into());
        }
        _ => {}
    }
    if let Some(b) = expect["attribute"]["batteryLevel"].as_str() {
        let want: u8 = b.parse().map_err(|_| "bad corpus battery")?;
        if !f.observations.iter().any(|o| o.battery_pct == Some(want)) {
            return Err(format!("battery {want} not reported"));
        }
    }
    if let Some(s) = expect["attribute"]["status"].as_str() {
        let hex = s
            .trim_start_matches("0x")
            .trim_end_matches('L')
            .to_uppercase();
        if !f.observations.iter().any(|o| o.code.contains(&hex)) {
            return Err(format!("status {hex} not kept"));
        }
    }
    let pos = &expect["position"];
    if let (Some(lat), Some(lon)) = (pos["lat"].as_f64(), pos["lon"].as_f64()) {
        let l = f
            .observations
            .iter()
            .find_map(|o| o.location)
            .ok_or("no location")?;
        if (l.lat - lat).abs() > 1e-5 || (l.lon - lon).abs() > 1e-5 {
            return Err(format!("location {},{} != {lat},{lon}", l.lat, l.lon));
        }
    }
    if let Some(t) = pos["time_utc"].as_str() {
        let ms = utc_ms(t).ok_or("bad corpus time")?;
        if !f.observations.iter().any(|o| o.device_time_ms == Some(ms)) {
            return Err(format!("device time {t} not reported"));
        }
    }
    let derived = &expect["derived"];
    if derived.get("alarm_first_match_per_traccar").is_some() {
        let alarms = alarm_kinds(&f);
        match derived["alarm_first_match_per_traccar"].as_str() {
            None if !alarms.is_empty() => return Err(format!("unexpected alarms {alarms:?}")),
            Some("powerCut") if !alarms.contains(&EventKind::PowerCut) => {
                return Err(format!("power cut missing from {alarms:?}"));
            }
            Some("sos") if !alarms.contains(&EventKind::Sos) => {
                return Err(format!("SOS missing from {alarms:?}"));
            }
            _ => {}
        }
    }
    if let Some(n) = derived["frame_len"].as_u64()
        && f.raw.len() as u64 != n
    {
        return Err(format!("frame cut at {} bytes, {n} expected", f.raw.len()));
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) to ms since the epoch.
fn utc_ms(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (proleptic Gregorian).
    let y = y - i64::from(mo <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from((days * 86_400 + h * 3600 + mi * 60 + s) * 1000).ok()
}
