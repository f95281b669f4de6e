//! Eview Minifinder2 conformance: header fields, CRC, alarms, positions and the exact ACK bytes.

use bytes::BytesMut;
use pingantong_protocol::eview::{EviewCodec, Header};
use pingantong_protocol::{Codec, EventKind, Integrity, ReplyPlan};
use serde_json::Value;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn check(row: &Value) -> Result<(), String> {
    let bytes = crate::frame_bytes(row);
    let mut buf = BytesMut::from(&bytes[..]);
    let f = EviewCodec::new()
        .decode(&mut buf)
        .map_err(|e| format!("framing error: {e}"))?
        .ok_or("no whole frame")?;
    if !buf.is_empty() {
        return Err(format!("{} bytes left after the frame", buf.len()));
    }
    if let Some(e) = &f.parse_error {
        return Err(format!("parse error: {e}"));
    }
    let h = Header::parse(&f.raw).ok_or("no header")?;
    let d = &row["expect"]["derived"];
    let flags = format!("0x{:02x}", h.flags);
    if d["flags"].as_str() != Some(flags.as_str()) {
        return Err(format!("flags {flags}"));
    }
    if d["ack_requested_bit4"].as_bool() != Some(h.ack_requested()) {
        return Err("ack-requested bit".into());
    }
    if d["body_len"].as_u64() != Some(u64::from(h.body_len)) {
        return Err(format!("body length {}", h.body_len));
    }
    let intact = f.integrity == Integrity::Intact;
    if d["crc_xmodem_ok"].as_bool() != Some(intact) {
        return Err(format!("integrity {:?}", f.integrity));
    }
    if d["sequence"].as_u64() != f.serial.map(u64::from) {
        return Err(format!("sequence {:?}", f.serial));
    }
    let cmd = h.command.map(|c| format!("0x{c:02x}"));
    if d["command"].as_str() != cmd.as_deref() {
        return Err(format!("command {cmd:?}"));
    }
    let reply = match &f.reply {
        ReplyPlan::AfterCommit { ok, .. } => Some(hex(ok)),
        ReplyPlan::None | ReplyPlan::Judged => None,
    };
    let want = row["expect"]["server_reply_per_traccar"].as_str();
    if reply.as_deref() != want {
        return Err(format!("reply {reply:?}, Traccar sends {want:?}"));
    }
    let attr = &row["expect"]["attribute"];
    if attr["bark"].as_str() == Some("true")
        && !f
            .observations
            .iter()
            .any(|o| o.kind == EventKind::Other(0x5F) && o.code.contains("bit 31"))
    {
        return Err("bark alarm bit 31 not reported".into());
    }
    if attr["result"].as_str() == Some("0") && f.summary != "response result 0" {
        return Err(format!("summary {:?}", f.summary));
    }
    // The captured EV05 frame: Traccar's log gives the position to 5 decimals.
    if let Some(log) = row["expect"]["traccar_log"].as_str() {
        let l = f
            .observations
            .iter()
            .find_map(|o| o.location)
            .ok_or("no location")?;
        let want = format!("lat {:.5}, lon {:.5}", l.lat, l.lon);
        if !log.contains(&want) {
            return Err(format!("{want} not in {log:?}"));
        }
        if !log.contains(f.device.as_ref().map_or("-", |d| d.as_str())) {
            return Err("IMEI differs from the log".into());
        }
    }
    Ok(())
}
