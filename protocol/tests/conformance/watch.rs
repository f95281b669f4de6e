//! Watch protocol conformance: each real frame decodes to what Traccar's tests and the corpus' derived fields say.

use bytes::BytesMut;
use pingantong_protocol::watch::{GEOFENCE_ENTER, GEOFENCE_EXIT, UNSPECIFIED_ALARM, WatchCodec};
use pingantong_protocol::{Codec, EventKind, Integrity, ReplyPlan};
use serde_json::Value;

/// The kind a corpus alarm name (`"bit16:sos"`, Traccar's names) maps to.
fn kind_of(alarm: &str) -> Result<EventKind, String> {
    let name = alarm.rsplit(':').next().unwrap_or(alarm);
    Ok(match name {
        "sos" => EventKind::Sos,
        "removing" => EventKind::RemovedFromWrist,
        "fallDown" => EventKind::Fall,
        "lowBattery" => EventKind::LowBattery,
        "powerCut" => EventKind::PowerCut,
        "geofenceExit" => GEOFENCE_EXIT,
        "geofenceEnter" => GEOFENCE_ENTER,
        "general" => UNSPECIFIED_ALARM,
        other => return Err(format!("corpus alarm {other:?} has no mapping")),
    })
}

fn sorted(mut kinds: Vec<EventKind>) -> Vec<EventKind> {
    kinds.sort_by_key(|k| k.name());
    kinds.dedup();
    kinds
}

pub fn check(row: &Value) -> Result<(), String> {
    let bytes = crate::frame_bytes(row);
    // A byte of a next frame after it proves the frame is consumed exactly.
    let mut buf = BytesMut::from(&bytes[..]);
    buf.extend_from_slice(b"[");
    let frame = WatchCodec::new()
        .decode(&mut buf)
        .map_err(|e| format!("framing error: {e}"))?
        .ok_or("no whole frame")?;
    if &buf[..] != b"[" {
        return Err(format!("{} bytes left instead of 1", buf.len()));
    }
    if frame.raw[..] != bytes[..] {
        return Err("raw bytes differ from the frame".into());
    }
    if let Some(e) = &frame.parse_error {
        return Err(format!("parse error: {e}"));
    }
    let expect = &row["expect"];
    let d = &expect["derived"];

    let id = d["device_id"]
        .as_str()
        .ok_or("corpus row has no device_id")?;
    if frame.device.as_ref().map(|d| d.as_str()) != Some(id) {
        return Err(format!("device {:?}, expected {id}", frame.device));
    }
    let serial = match d["index"].as_str() {
        Some(i) => Some(u32::from_str_radix(i, 16).map_err(|e| e.to_string())?),
        None => None,
    };
    if frame.serial != serial {
        return Err(format!("serial {:?}, expected {serial:?}", frame.serial));
    }
    if let Some(ok) = d["length_ok"].as_bool() {
        let want = if ok {
            Integrity::Intact
        } else {
            Integrity::BadLength
        };
        if frame.integrity != want {
            return Err(format!(
                "integrity {:?}, expected {want:?}",
                frame.integrity
            ));
        }
    }

    let ty = d["content_type"].as_str().unwrap_or("");
    let alarm_frame = ty.starts_with("AL");
    let kinds: Vec<EventKind> = frame.observations.iter().map(|o| o.kind).collect();
    if let Some(bits) = d["status_alarm_bits"].as_array() {
        let mut want = bits
            .iter()
            .map(|b| kind_of(b.as_str().unwrap_or("")))
            .collect::<Result<Vec<_>, _>>()?;
        // Our policy (WATCH.md): an AL naming no known alarm is still an alarm.
        if alarm_frame && want.is_empty() {
            want.push(UNSPECIFIED_ALARM);
        }
        if !alarm_frame {
            want.push(EventKind::Position);
        }
        if sorted(kinds.clone()) != sorted(want.clone()) {
            return Err(format!("kinds {kinds:?}, expected {want:?}"));
        }
        if kinds.len() != sorted(kinds.clone()).len() {
            return Err(format!("one kind reported twice: {kinds:?}"));
        }
    }
    if let Some(b) = d["battery_pct"].as_str() {
        let want: u8 = b.parse().map_err(|_| format!("corpus battery {b:?}"))?;
        if let Some(o) = frame
            .observations
            .iter()
            .find(|o| o.battery_pct != Some(want))
        {
            return Err(format!("battery {:?}, expected {want}", o.battery_pct));
        }
    }
    if let Some(valid) = d["gps_valid"].as_bool() {
        if frame.observations.is_empty() {
            return Err("no observation to carry the position".into());
        }
        if let Some(o) = frame
            .observations
            .iter()
            .find(|o| o.location.is_some() != valid || o.device_time_ms.is_none())
        {
            return Err(format!(
                "observation {o:?}: location present must be {valid}, with a device time"
            ));
        }
    }
    if let Some(values) = d["lk_values"].as_array() {
        if kinds != [EventKind::Heartbeat] {
            return Err(format!("LK gave {kinds:?}, expected one heartbeat"));
        }
        let want = values
            .get(2)
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<u8>().ok());
        if frame.observations[0].battery_pct != want {
            return Err(format!(
                "LK battery {:?}, expected {want:?}",
                frame.observations[0].battery_pct
            ));
        }
    }

    // Traccar's own assertions, where they map to our model.
    if let Some(attrs) = expect["attribute"].as_object() {
        for (key, value) in attrs {
            let value = value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            match key.as_str() {
                "alarm" => {
                    let want = kind_of(&value)?;
                    if !kinds.contains(&want) {
                        return Err(format!("Traccar alarm {value}: got {kinds:?}"));
                    }
                }
                // Health readings are not events: they are kept in the summary.
                "bloodOxygen" | "temp1" | "heartRate" => {
                    if !frame.summary.contains(&value) {
                        return Err(format!("{key} {value} not in summary {:?}", frame.summary));
                    }
                }
                other => return Err(format!("unmapped Traccar attribute {other}")),
            }
        }
    }
    if let Some(pos) = expect["position"].as_object() {
        let loc = frame
            .observations
            .first()
            .and_then(|o| o.location)
            .ok_or("Traccar expects a position, we have no location")?;
        for (key, value) in pos {
            let want = value
                .as_f64()
                .ok_or(format!("position {key} not a number"))?;
            let got = match key.as_str() {
                "latitude" => loc.lat,
                "longitude" => loc.lon,
                _ => continue,
            };
            if (got - want).abs() > 1e-5 {
                return Err(format!("{key} {got}, expected {want}"));
            }
        }
    }
    match expect["traccar_check"].as_str() {
        Some("verifyPosition") if frame.observations.is_empty() => {
            return Err("Traccar decodes a position, we report nothing".into());
        }
        _ => {}
    }

    let Some(reply) = expect.get("server_reply_per_traccar") else {
        return Ok(());
    };
    match (reply.as_str(), &frame.reply) {
        (Some(want), ReplyPlan::AfterCommit { ok, failed: None }) if ok[..] == *want.as_bytes() => {
        }
        (None, ReplyPlan::None) if reply.is_null() => {}
        (want, got) => return Err(format!("reply {got:?}, Traccar sends {want:?}")),
    }
    Ok(())
}
