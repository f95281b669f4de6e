//! Conformance of the SIA DC-09 codec with the pysiaalarm and fioletoven/dc09 frames of the corpus.

use std::sync::Arc;

use bytes::BytesMut;
use pingantong_protocol::sia_dc09::{
    self, KeyLookup, SiaDc09Codec, crc16, duh, format_timestamp, nak, parse_message,
    parse_timestamp,
};
use pingantong_protocol::{Codec, EventKind, Frame, Integrity, ReplyPlan};
use serde_json::Value;

/// Frames we keep but cannot read, each with the reason SIA_DC09.md gives for it.
const REFUSED: &[(&str, &str)] = &[
    // Encrypted, and the corpus names no key for the account (pysiaalarm: NoAccountError).
    ("case_encrypted", "no key for account AAA"),
    ("case_encrypted_adm", "no key for account 123F"),
    // Osborne-Hoffman keep-alive, not DC-09.
    ("case_oh", "no CRC and length field"),
    // DC-04 text with a literal "<x0A>" and a truncated year (pysiaalarm refuses it too).
    ("case_dc04", "no CRC and length field"),
    ("case_eventformaterror", "no CRC and length field"),
    // A SIA-DCS message with empty data: nothing to act on, answered DUH.
    ("parse_message_test", "no event in SIA-DCS data"),
    // A receiver's NAK: read, never answered.
    ("parse_nak_test", "receivers do not take answers"),
];

/// Receiver clock for frames that carry no timestamp (the fioletoven NAK's own time).
const DEFAULT_NOW: &str = "_16:20:01,09-24-2025";

fn case(row: &Value) -> String {
    if let Some(c) = row["case"].as_str() {
        return c.to_owned();
    }
    let t = row["expect"]["rust_test"].as_str().unwrap_or("");
    t.split(':').next().unwrap_or("").to_owned()
}

/// The key named in the row's expect block (`pysiaalarm_response_with_account_key_K`).
fn named_key(row: &Value) -> Option<Vec<u8>> {
    let expect = row["expect"].as_object()?;
    expect.keys().find_map(|k| {
        k.strip_prefix("pysiaalarm_response_with_account_key_")
            .map(|key| key.as_bytes().to_vec())
    })
}

/// pysiaalarm's "2021-04-11 22:40:48+00:00" → ms since the epoch.
fn pysia_time(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err(format!("bad pysiaalarm timestamp {s}"));
    }
    let dc09 = format!("_{},{}-{}-{}", &s[11..19], &s[5..7], &s[8..10], &s[0..4]);
    parse_timestamp(&dc09).map_err(|e| e.to_string())
}

fn codec(key: Option<Vec<u8>>, now: i64) -> SiaDc09Codec {
    let keys: KeyLookup = Arc::new(move |_: &str| key.clone());
    SiaDc09Codec::new(keys, Arc::new(move || now))
}

/// Decode `wire` followed by the first byte of a next frame: exactly one frame, exactly consumed.
fn decode_one(c: &mut SiaDc09Codec, wire: &[u8]) -> Result<Frame, String> {
    let mut buf = BytesMut::from(wire);
    buf.extend_from_slice(b"\n");
    let frame = c
        .decode(&mut buf)
        .map_err(|e| format!("framing error {e}"))?
        .ok_or("no frame")?;
    if &buf[..] != b"\n" {
        return Err(format!("frame not consumed exactly: {:?} left", &buf[..]));
    }
    if frame.raw.len() != wire.len() {
        return Err(format!(
            "raw is {} bytes, sent {}",
            frame.raw.len(),
            wire.len()
        ));
    }
    Ok(frame)
}

fn ok_reply(f: &Frame) -> Option<&[u8]> {
    match &f.reply {
        ReplyPlan::AfterCommit { ok, .. } => Some(ok),
        _ => None,
    }
}

/// pysiaalarm's answer as the standard writes it: no literal "None" for an absent
/// receiver, no `[K<key>]` (we never send a key back), ACK for RSP.
fn standard_answer(pysia: &str) -> String {
    let inner = pysia.trim_start_matches('\n').trim_end_matches('\r');
    let mut content = inner
        .get(8..)
        .unwrap_or("")
        .replace("None", "")
        .replace("\"RSP\"", "\"ACK\"");
    if let Some(k) = content.find("[K")
        && let Some(end) = content[k..].find(']')
    {
        content.replace_range(k..k + end + 1, "");
    }
    format!(
        "\n{:04X}{:04X}{content}\r",
        crc16(content.as_bytes()),
        content.len()
    )
}

pub fn check(row: &Value) -> Result<(), String> {
    let bytes = crate::frame_bytes(row);
    let case = case(row);
    let expect = &row["expect"];
    let wrapped = if bytes.first() == Some(&b'\n') {
        bytes.clone()
    } else {
        [&b"\n"[..], &bytes, b"\r"].concat()
    };
    let bare = wrapped[1..wrapped.len() - 1].to_vec();
    let key = named_key(row);
    let parsed = &expect["pysiaalarm_3.2.2_parse"];
    let frame_time = match (
        expect["decrypted_content"].as_str(),
        parsed["timestamp"].as_str(),
    ) {
        (Some(d), _) if d.len() >= 20 => {
            Some(parse_timestamp(&d[d.len() - 20..]).map_err(|e| e.to_string())?)
        }
        (_, Some(t)) => Some(pysia_time(t)?),
        _ => None,
    };
    let default_now = parse_timestamp(DEFAULT_NOW).map_err(|e| e.to_string())?;
    let now = frame_time.unwrap_or(default_now);
    let f = decode_one(&mut codec(key.clone(), now), &wrapped)?;

    // CRC and length verdicts against the corpus' own.
    let derived = &expect["derived"];
    let same = |a: &str, b: &str| {
        derived[a]
            .as_str()
            .zip(derived[b].as_str())
            .map(|(x, y)| x == y)
    };
    let crc_ok = derived["crc_ok"]
        .as_bool()
        .or_else(|| same("crc16_arc_field", "crc16_arc_calc"));
    let len_ok = derived["length_ok"]
        .as_bool()
        .or_else(|| same("length_field", "length_calc_hex"));
    let want = match (crc_ok, len_ok) {
        (Some(false), _) | (None, _) => Integrity::BadChecksum,
        (Some(true), Some(false)) => Integrity::BadLength,
        (Some(true), _) => Integrity::Intact,
    };
    if f.integrity != want {
        return Err(format!("integrity {:?}, corpus says {want:?}", f.integrity));
    }

    // Refused frames: kept with the documented reason.
    if let Some((_, reason)) = REFUSED.iter().find(|(c, _)| *c == case) {
        let err = f.parse_error.as_deref().unwrap_or("");
        if !err.contains(reason) {
            return Err(format!("parse error {err:?}, expected {reason:?}"));
        }
        if !f.observations.is_empty() {
            return Err("a refused frame reports observations".into());
        }
        return match case.as_str() {
            "parse_message_test" => {
                let want = duh("0001", None, Some("0"), Some("1234"));
                (ok_reply(&f) == Some(&want[..]))
                    .then_some(())
                    .ok_or(format!("reply {:?}, want DUH", f.reply))
            }
            "parse_nak_test" => {
                // Our own NAK for that instant is this very frame.
                if nak(default_now)[..] != wrapped[..] {
                    return Err("our NAK differs from the standard's".into());
                }
                (f.reply == ReplyPlan::None)
                    .then_some(())
                    .ok_or("a NAK was answered".into())
            }
            _ => (f.reply == ReplyPlan::None)
                .then_some(())
                .ok_or(format!("reply {:?} to a refused frame", f.reply)),
        };
    }
    if let Some(e) = &f.parse_error {
        return Err(format!("unexpected parse error: {e}"));
    }

    // Fields pysiaalarm reads, as our model holds them.
    let m = parse_message(&bare, key.as_deref()).map_err(|e| format!("parse_message: {e}"))?;
    // The header's account, or the data's (`[#006969|…]`) when the header has none.
    let account = m.account.clone().unwrap_or_else(|| {
        let d = m.data.strip_prefix('#').unwrap_or("");
        d.split('|').next().unwrap_or("").to_owned()
    });
    if f.device.as_ref().map(|d| d.as_str()) != Some(account.as_str()) {
        return Err(format!("device {:?}, account {account}", f.device));
    }
    if let Some(a) = parsed["account"].as_str()
        && a != account
    {
        return Err(format!("account {account}, pysiaalarm {a}"));
    }
    if let Some(s) = parsed["sequence"].as_str()
        && (f.serial != s.parse::<u32>().ok() || m.seq_text != s)
    {
        return Err(format!("serial {:?}, pysiaalarm {s}", f.serial));
    }
    let prefixed = |p: &str, v: &Option<String>| v.as_ref().map(|v| format!("{p}{v}"));
    if let Some(r) = parsed.get("receiver")
        && r.as_str().map(str::to_owned) != prefixed("R", &m.receiver)
    {
        return Err(format!("receiver {:?}, pysiaalarm {r}", m.receiver));
    }
    if let Some(l) = parsed["line"].as_str()
        && Some(l.to_owned()) != prefixed("L", &m.line)
    {
        return Err(format!("line {:?}, pysiaalarm {l}", m.line));
    }
    if let Some(t) = parsed["message_type"].as_str()
        && t != m.token
    {
        return Err(format!("token {}, pysiaalarm {t}", m.token));
    }
    if let Some(d) = expect["decrypted_content"].as_str()
        && (!m.encrypted
            || m.timestamp_ms.map(format_timestamp).as_deref() != Some(&d[d.len() - 20..]))
    {
        return Err(format!("decrypted {m:?}, corpus {d}"));
    }
    let obs = f.observations.first().ok_or("no observation")?;
    if obs.device_time_ms.map(|t| t as i64) != frame_time.filter(|_| m.timestamp_ms.is_some()) {
        return Err(format!(
            "device time {:?}, frame {frame_time:?}",
            obs.device_time_ms
        ));
    }
    let contains = |what: &str, v: &Value| match v.as_str() {
        Some(s) if !s.contains('|') && !f.summary.contains(&format!("{what}{s}")) => {
            Err(format!("summary {:?} lacks {what}{s}", f.summary))
        }
        _ => Ok(()),
    };
    match m.token.as_str() {
        "SIA-DCS" => {
            if let Some(code) = parsed["code"].as_str()
                && (obs.code != format!("SIA {code}") || obs.kind != sia_dc09::sia_kind(code))
            {
                return Err(format!(
                    "code {} {:?}, pysiaalarm {code}",
                    obs.code, obs.kind
                ));
            }
            contains("area ", &parsed["ri"])?;
            contains("", &parsed["message"])?;
        }
        "ADM-CID" => {
            let (q, e) = (
                parsed["event_qualifier"].as_str(),
                parsed["event_type"].as_str(),
            );
            let want = format!("CID {}{}", q.unwrap_or("?"), e.unwrap_or("?"));
            if obs.code != want {
                return Err(format!("code {}, pysiaalarm {want}", obs.code));
            }
            contains("group ", &parsed["partition"])?;
            contains("zone ", &parsed["ri"])?;
        }
        "NULL" => {
            if obs.kind != EventKind::Heartbeat {
                return Err(format!("NULL gave {:?}", obs.kind));
            }
        }
        other => return Err(format!("unexpected token {other}")),
    }

    // The reply, per the DC-09 ACK rule.
    let crc_good = f.integrity != Integrity::BadChecksum;
    let pysia = expect
        .as_object()
        .and_then(|o| {
            o.iter()
                .find(|(k, _)| k.starts_with("pysiaalarm_response_with_account_key_"))
        })
        .map(|(_, v)| v);
    if !crc_good {
        // The standard: a CRC error is not acknowledged (pysiaalarm sends a bare "\n\r").
        if f.reply != ReplyPlan::None {
            return Err(format!("bad CRC answered with {:?}", f.reply));
        }
        if let Some(p) = pysia
            && p["type"] != Value::Null
        {
            return Err("corpus answers a bad CRC".into());
        }
    } else {
        let ok = ok_reply(&f).ok_or(format!("no ACK plan: {:?}", f.reply))?;
        if m.encrypted {
            let a = parse_message(ok, key.as_deref()).map_err(|e| format!("our *ACK: {e}"))?;
            let head = format!("\"*ACK\"{}", m.seq_text);
            let pysia_len = pysia
                .and_then(|p| p["bytes"].as_str())
                .and_then(|b| b.get(5..9));
            let ours = String::from_utf8_lossy(ok);
            if !(a.token == "ACK" && a.encrypted && a.data.is_empty() && a.crc_ok && a.length_ok)
                || a.seq_text != m.seq_text
                || a.receiver != m.receiver
                || a.line != m.line
                || a.account != m.account
                || a.timestamp_ms != Some(now / 1000 * 1000)
                || !ours.contains(&head)
                || (pysia_len.is_some() && ours.get(5..9) != pysia_len)
            {
                return Err(format!("encrypted ACK {ours:?} reads as {a:?}"));
            }
        } else {
            let want = match (
                expect["pysiaalarm_ack"].as_str(),
                pysia.and_then(|p| p["bytes"].as_str()),
            ) {
                (Some(exact), _) => exact.to_owned(),
                (None, Some(p)) => standard_answer(p),
                (None, None) => return Err("no expected answer in the corpus".into()),
            };
            if ok != want.as_bytes() {
                return Err(format!(
                    "ACK {:?}, want {want:?}",
                    String::from_utf8_lossy(ok)
                ));
            }
        }
        // Same frame an hour off the receiver clock: NAK if it has a timestamp.
        let far = now + 3_600_000;
        let g = decode_one(&mut codec(key.clone(), far), &wrapped)?;
        let want_far = match m.timestamp_ms {
            Some(_) => nak(far),
            None => bytes::Bytes::copy_from_slice(ok),
        };
        if ok_reply(&g) != Some(&want_far[..]) || g.observations.is_empty() {
            return Err(format!("far clock: {:?}", g.reply));
        }
    }

    // The bare corpus line (no LF) followed by CR decodes to the same frame.
    let bare_cr = [&bare[..], b"\r"].concat();
    let h = decode_one(&mut codec(key, now), &bare_cr)?;
    if h.observations != f.observations || h.serial != f.serial || h.integrity != f.integrity {
        return Err("the frame without its LF decodes differently".into());
    }
    Ok(())
}
