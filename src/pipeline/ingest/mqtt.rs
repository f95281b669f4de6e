//! Device events over MQTT (protocol/MQTT.md): the same pipeline as TCP frames.
//!
//! Events are submitted to the writer as they arrive (so they share commits)
//! and answered in arrival order: first the application-level ACK on the
//! device's `ack` topic, then the MQTT PUBACK that lets the broker forget the
//! message. A PUBACK alone only means the broker has it; ours means it is stored.

use std::sync::Arc;

use rumqttc::{AsyncClient, Publish, QoS};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::IngestContext;
use super::adapters::AdapterConfig;
use pingantong_protocol::{DeviceId, EventKind, Location};
use pingantong_store::writer::PendingCommit;
use pingantong_store::{AlarmRecord, AuthStatus, CommitOutcome, now_ms};
use pingantong_telemetry::events;

pub const PROTOCOL: &str = "mqtt";
/// Largest payload accepted on a device topic.
pub const MAX_PAYLOAD: usize = 4096;

/// A device event as published (schema v1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEvent {
    pub v: u32,
    pub seq: u32,
    pub kind: String,
    /// Device clock, ms since the Unix epoch.
    pub time: Option<u64>,
    pub battery: Option<u8>,
    pub location: Option<WireLocation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireLocation {
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("payload is {0} bytes, the limit is {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("topic {0:?} does not name a valid device id")]
    Topic(String),
    #[error("payload is not a v1 device event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema version {0} is not supported (this server speaks 1)")]
    Version(u32),
    #[error("unknown event kind {0:?}")]
    Kind(String),
    #[error("battery {0} % is out of range")]
    Battery(u8),
    #[error("location {0},{1} is out of range")]
    Location(f64, f64),
}

/// Check a device event: topic, size, schema, ranges.
pub fn parse(
    prefix: &str,
    topic: &str,
    payload: &[u8],
) -> Result<(DeviceId, DeviceEvent, EventKind), EventError> {
    let id = topic
        .strip_prefix(prefix)
        .and_then(|t| {
            t.strip_prefix("/v1/devices/")
                .or_else(|| t.strip_prefix("/v1/quarantine/"))
        })
        .and_then(|t| t.strip_suffix("/events"))
        .ok_or_else(|| EventError::Topic(topic.to_owned()))?;
    let device = DeviceId::parse(id).map_err(|_| EventError::Topic(topic.to_owned()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(EventError::TooLarge(payload.len()));
    }
    let e: DeviceEvent = serde_json::from_slice(payload)?;
    if e.v != 1 {
        return Err(EventError::Version(e.v));
    }
    let kind = EventKind::from_name(&e.kind)
        .filter(|k| !k.is_server_verdict())
        .ok_or_else(|| EventError::Kind(e.kind.clone()))?;
    if let Some(b) = e.battery
        && b > 100
    {
        return Err(EventError::Battery(b));
    }
    if let Some(l) = &e.location
        && (!(-90.0..=90.0).contains(&l.lat) || !(-180.0..=180.0).contains(&l.lon))
    {
        return Err(EventError::Location(l.lat, l.lon));
    }
    Ok((device, e, kind))
}

/// Whether `topic` is the quarantine's: a client without credentials.
pub fn is_quarantine(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|t| t.starts_with("/v1/quarantine/"))
}

/// What is owed to one message once its commit is known.
struct Owed {
    publish: Publish,
    ack_topic: Option<String>,
    seq: Option<u32>,
    verified: bool,
    fate: Fate,
}

/// What happens to one message.
enum Fate {
    /// Being stored; the record is kept to submit again if the commit fails.
    Committing(PendingCommit, Box<AlarmRecord>),
    /// Refused for good (kept in rejected_frames): the broker may forget it.
    Rejected(&'static str),
    /// Reports nothing (a Shelly status): the broker may forget it.
    Nothing,
    /// The server is stopping: leave the message with the broker, which
    /// delivers it again to this session when the server returns.
    Leave,
}

/// Wait until the directory answers: without it the sender cannot be judged,
/// and the message must neither be lost nor left unacknowledged (that would
/// stall the broker's in-flight window).
async fn device_auth(ctx: &IngestContext, id: &str, protocol: &str) -> AuthStatus {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match ctx.directory.device(id).await {
            Ok(Some(row)) if row.protocol == protocol => return AuthStatus::Verified,
            Ok(_) => return AuthStatus::UnknownDevice,
            Err(e) => {
                events::StageFailed {
                    stage: "mqtt_directory",
                    error: &e,
                }
                .emit();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

async fn submit(ctx: &IngestContext, record: AlarmRecord) -> Fate {
    match ctx.writer.submit(record.clone()).await {
        Ok(p) => Fate::Committing(p, Box::new(record)),
        Err(_) => Fate::Leave,
    }
}

/// Consume device events until the link closes.
pub async fn run(
    mut incoming: mpsc::Receiver<Publish>,
    ctx: Arc<IngestContext>,
    client: AsyncClient,
    prefix: String,
    instance: String,
) {
    let (owed_tx, owed_rx) = mpsc::channel::<Owed>(4096);
    let answering = tokio::spawn(answer(owed_rx, Arc::clone(&ctx), client));
    while let Some(publish) = incoming.recv().await {
        let owed = take(&ctx, &prefix, &instance, publish).await;
        if owed_tx.send(owed).await.is_err() {
            break;
        }
    }
    drop(owed_tx);
    let _ = answering.await;
}

/// Consume adapter messages (Zigbee2MQTT, Tasmota, Shelly) until the link closes.
/// They get no application ACK (those devices would not understand one); the
/// broker's copy is released after the commit as for every event.
pub async fn run_adapters(
    mut incoming: mpsc::Receiver<Publish>,
    ctx: Arc<IngestContext>,
    client: AsyncClient,
    adapters: Vec<AdapterConfig>,
    instance: String,
) {
    let (owed_tx, owed_rx) = mpsc::channel::<Owed>(4096);
    let answering = tokio::spawn(answer(owed_rx, Arc::clone(&ctx), client));
    while let Some(publish) = incoming.recv().await {
        let owed = take_adapter(&ctx, &adapters, &instance, publish).await;
        if owed_tx.send(owed).await.is_err() {
            break;
        }
    }
    drop(owed_tx);
    let _ = answering.await;
}

async fn take_adapter(
    ctx: &IngestContext,
    adapters: &[AdapterConfig],
    instance: &str,
    publish: Publish,
) -> Owed {
    let peer = format!("mqtt:{instance}");
    let refuse = |fate: Fate| Owed {
        publish: publish.clone(),
        ack_topic: None,
        seq: None,
        verified: false,
        fate,
    };
    let Some(row) = adapters.iter().find(|a| a.matches(&publish.topic)) else {
        return refuse(Fate::Rejected("no_adapter"));
    };
    let mapped = match row.map(&publish.topic, &publish.payload) {
        Ok(Some(m)) => m,
        Ok(None) => return refuse(Fate::Nothing),
        Err(e) => {
            let addr: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
            events::FrameRejected {
                protocol: row.kind.protocol(),
                peer: &addr,
                reason: "malformed",
                detail: &e,
            }
            .emit();
            let _ = ctx
                .db
                .insert_rejected_frame(
                    row.kind.protocol(),
                    &peer,
                    &format!("malformed: {e}"),
                    &publish.payload,
                )
                .await;
            return refuse(Fate::Rejected("malformed"));
        }
    };
    let auth = device_auth(ctx, &row.device, row.kind.protocol()).await;
    let now = now_ms();
    let record = AlarmRecord {
        received_at: now,
        protocol: row.kind.protocol(),
        peer,
        device_id: row.device.clone(),
        seq: -1,
        kind: mapped.kind,
        device_time: None,
        battery: mapped.battery.map(i64::from),
        location: None,
        auth,
        raw: publish.payload.to_vec(),
        decoded: serde_json::json!({"code": mapped.code, "kind": mapped.kind.name()}).to_string(),
        // These devices number nothing, so a press cannot be told from a
        // redelivered copy: every receipt is kept. A copy redelivered after a
        // crash folds into the same incident; a lost press could not be undone.
        dedup_key: format!(
            "{}:{}:{now}:{}",
            row.kind.protocol(),
            row.device,
            publish.pkid
        ),
        retry_window_ms: None,
    };
    Owed {
        fate: submit(ctx, record).await,
        publish,
        ack_topic: None,
        seq: None,
        verified: auth == AuthStatus::Verified,
    }
}

async fn take(ctx: &IngestContext, prefix: &str, instance: &str, publish: Publish) -> Owed {
    // Where it came from: the quarantine is told apart in the alarm log.
    let peer = if is_quarantine(prefix, &publish.topic) {
        format!("mqtt-quarantine:{instance}")
    } else {
        format!("mqtt:{instance}")
    };
    let (device, event, kind) = match parse(prefix, &publish.topic, &publish.payload) {
        Ok(x) => x,
        Err(e) => {
            let reason = match e {
                EventError::TooLarge(_) => "too_long",
                EventError::Topic(_) => "bad_device_id",
                _ => "malformed",
            };
            let addr: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
            events::FrameRejected {
                protocol: PROTOCOL,
                peer: &addr,
                reason,
                detail: &e,
            }
            .emit();
            let mut raw = publish.topic.as_bytes().to_vec();
            raw.push(b' ');
            raw.extend_from_slice(&publish.payload[..publish.payload.len().min(MAX_PAYLOAD)]);
            let _ = ctx
                .db
                .insert_rejected_frame(PROTOCOL, &peer, &format!("{reason}: {e}"), &raw)
                .await;
            // A device that named itself in the topic still hears why.
            let ack_topic = publish
                .topic
                .strip_suffix("/events")
                .map(|t| format!("{t}/ack"));
            let seq = serde_json::from_slice::<serde_json::Value>(&publish.payload)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .map(|s| s as u32);
            return Owed {
                publish,
                ack_topic,
                seq,
                verified: false,
                fate: Fate::Rejected(reason),
            };
        }
    };
    // A client in quarantine proved nothing: whichever id it names, its
    // events are kept and shown, never trusted (an SOS still reaches an
    // operator). Naming a provisioned device without its credential is a
    // bad signature; naming none, an unknown device.
    let quarantined = is_quarantine(prefix, &publish.topic);
    let auth = match device_auth(ctx, device.as_str(), PROTOCOL).await {
        AuthStatus::Verified if quarantined => AuthStatus::BadTag,
        auth => auth,
    };
    if auth != AuthStatus::Verified {
        events::UnverifiedEvent {
            protocol: PROTOCOL,
            device: device.as_str(),
            auth: auth.as_str(),
            kind: &event.kind,
        }
        .emit();
    }
    let (dedup_key, window) = dedup_of(
        device.as_str(),
        event.seq,
        &publish.payload,
        event.time.is_some(),
    );
    let record = AlarmRecord {
        received_at: now_ms(),
        protocol: PROTOCOL,
        peer,
        device_id: device.as_str().to_owned(),
        seq: i64::from(event.seq),
        kind,
        device_time: event.time.map(|t| t as i64),
        battery: event.battery.map(i64::from),
        location: event.location.as_ref().map(|l| Location {
            lat: l.lat,
            lon: l.lon,
            accuracy_m: l.accuracy_m,
        }),
        auth,
        raw: publish.payload.to_vec(),
        decoded: String::from_utf8_lossy(&publish.payload).into_owned(),
        dedup_key,
        retry_window_ms: Some(window),
    };
    let home = if quarantined { "quarantine" } else { "devices" };
    Owed {
        ack_topic: Some(format!("{prefix}/v1/{home}/{device}/ack")),
        seq: Some(event.seq),
        verified: auth == AuthStatus::Verified,
        fate: submit(ctx, record).await,
        publish,
    }
}

/// What makes two MQTT device events one (protocol/DEDUP.md): the device, its
/// `seq` and the payload — a retry publishes the same payload, a reused `seq`
/// with another event does not — within the retry window, a day when the
/// payload carries the device's `time` of the event.
pub fn dedup_of(device: &str, seq: u32, payload: &[u8], timed: bool) -> (String, i64) {
    let digest: String = Sha256::digest(payload)[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (
        format!("mqtt:{device}:{seq}:{digest}"),
        super::retry_window(timed),
    )
}

/// Answer in arrival order: MQTT wants PUBACKs in the order of the PUBLISHes.
/// A failed commit is submitted again (with backoff) until it holds: the
/// message is neither lost nor left unacknowledged.
async fn answer(mut owed: mpsc::Receiver<Owed>, ctx: Arc<IngestContext>, client: AsyncClient) {
    while let Some(o) = owed.recv().await {
        let (status, reason) = match o.fate {
            Fate::Committing(mut pending, record) => {
                let mut backoff = std::time::Duration::from_millis(100);
                let outcome = loop {
                    match pending.wait().await {
                        Ok(outcome) => break Some(outcome),
                        Err(_) => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                            match ctx.writer.submit((*record).clone()).await {
                                Ok(p) => pending = p,
                                Err(_) => break None,
                            }
                        }
                    }
                };
                match outcome {
                    // A heartbeat is kept as the device's latest report.
                    Some(CommitOutcome::Stored(_) | CommitOutcome::Noted) => ("stored", None),
                    Some(CommitOutcome::Duplicate) => ("duplicate", None),
                    // Stopping: the broker keeps the message for our session.
                    None => continue,
                }
            }
            Fate::Rejected(reason) => ("rejected", Some(reason)),
            Fate::Nothing => {
                let _ = client.ack(&o.publish).await;
                continue;
            }
            Fate::Leave => continue,
        };
        if let Some(topic) = o.ack_topic {
            let body = serde_json::json!({
                "v": 1,
                "seq": o.seq,
                "status": status,
                "verified": o.verified,
                "reason": reason,
                "server_time": now_ms(),
            });
            let _ = client
                .publish(topic, QoS::AtLeastOnce, false, body.to_string())
                .await;
        }
        let _ = client.ack(&o.publish).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_topic_schema_and_ranges() {
        let ok = br#"{"v":1,"seq":3,"kind":"sos","time":1764000000000,"battery":50,"location":{"lat":23.1,"lon":113.2}}"#;
        let (d, e, k) = parse("pat", "pat/v1/devices/GW-1.a/events", ok).unwrap();
        assert_eq!((d.as_str(), e.seq, k), ("GW-1.a", 3, EventKind::Sos));
        let bad = |topic: &str, body: &[u8]| parse("pat", topic, body).unwrap_err().to_string();
        assert!(bad("pat/v1/devices/a b/events", ok).contains("device id"));
        assert!(bad("other/v1/devices/x/events", ok).contains("topic"));
        assert!(
            bad(
                "pat/v1/devices/x/events",
                br#"{"v":2,"seq":1,"kind":"sos"}"#
            )
            .contains("version 2")
        );
        assert!(
            bad(
                "pat/v1/devices/x/events",
                br#"{"v":1,"seq":1,"kind":"boom"}"#
            )
            .contains("boom")
        );
        // Only the server's supervision says a device is offline or back.
        for verdict in ["offline", "back_online"] {
            let body = format!(r#"{{"v":1,"seq":1,"kind":"{verdict}"}}"#);
            assert!(bad("pat/v1/devices/x/events", body.as_bytes()).contains(verdict));
        }
        assert!(
            bad(
                "pat/v1/devices/x/events",
                br#"{"v":1,"seq":1,"kind":"sos","battery":101}"#
            )
            .contains("101")
        );
        assert!(
            bad(
                "pat/v1/devices/x/events",
                br#"{"v":1,"seq":1,"kind":"sos","extra":1}"#
            )
            .contains("extra")
        );
        assert!(
            bad(
                "pat/v1/devices/x/events",
                br#"{"v":1,"seq":1,"kind":"sos","location":{"lat":91,"lon":0}}"#
            )
            .contains("91")
        );
        assert!(bad("pat/v1/devices/x/events", &[b' '; 5000]).contains("5000"));
    }
}
