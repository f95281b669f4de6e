//! console-probe: how long until a press is seen. One native pendant at a
//! time presses SOS; the probe times the device's ACK, the incident appearing
//! on the operators' live feed, and the offer reaching the carers' MQTT topic.
//! Run it beside a `pendant-sim` fleet to measure under load.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use hdrhistogram::Histogram;
use pingantong_protocol::native::{self, Reply};
use pingantong_protocol::{AlarmEvent, DeviceId, EventKind, Location};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Time presses from the device to the console and to the carer.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Server's native listener (loopback only).
    #[arg(long)]
    native: SocketAddr,
    /// Server's HTTP base, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    http: String,
    /// Broker host:port for the carers' offers.
    #[arg(long)]
    mqtt: SocketAddr,
    #[arg(long, default_value = "pingantong")]
    mqtt_prefix: String,
    /// A console account (operator or supervisor); password in PAT_PROBE_PASSWORD.
    #[arg(long)]
    user: String,
    #[arg(long, env = "PAT_PROBE_PASSWORD", hide_env_values = true)]
    password: String,
    #[arg(long, env = "PAT_SECRET_SEED", default_value = "demo")]
    secret_seed: String,
    /// Index of the first seeded pendant to press with (each press uses the next one).
    #[arg(long)]
    first: usize,
    #[arg(long, default_value_t = 200)]
    presses: usize,
    /// Pause between one press being seen everywhere and the next press.
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
    /// How long to wait for a press to be seen on the feed and offered before
    /// counting it missed.
    #[arg(long, default_value_t = 5.0)]
    wait_secs: f64,
    #[arg(long)]
    json: bool,
}

/// What the probe hears: a feed line or an offer, and when.
enum Heard {
    Opened { device: String, incident: i64 },
    Offer { incident: i64 },
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let loopback = a.native.ip().is_loopback()
        && a.mqtt.ip().is_loopback()
        && (a.http.starts_with("http://127.") || a.http.starts_with("http://[::1]"));
    if !loopback {
        eprintln!("console-probe only targets loopback addresses");
        std::process::exit(2);
    }
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/api/v1/session", a.http))
        .json(&serde_json::json!({"username": a.user, "password": a.password}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("log-in")
        .json()
        .await
        .expect("log-in answer");
    let token = login["token"].as_str().expect("a token").to_owned();

    let (tx, mut heard) = mpsc::unbounded_channel::<(Heard, Instant)>();
    // The live feed, as the console reads it.
    let mut feed = http
        .get(format!("{}/api/v1/feed", a.http))
        .bearer_auth(&token)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("the live feed");
    let feed_tx = tx.clone();
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Ok(Some(chunk)) = feed.chunk().await {
            let at = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                    continue;
                };
                if v["action"] == "opened"
                    && let (Some(device), Some(incident)) =
                        (v["device_id"].as_str(), v["incident_id"].as_i64())
                {
                    let _ = feed_tx.send((
                        Heard::Opened {
                            device: device.to_owned(),
                            incident,
                        },
                        at,
                    ));
                }
            }
        }
    });
    // The carers' phones.
    let mut opts = MqttOptions::new(
        format!("console-probe-{}", std::process::id()),
        a.mqtt.ip().to_string(),
        a.mqtt.port(),
    );
    opts.set_keep_alive(Duration::from_secs(15));
    if let Some((user, pass)) = pingantong_sim::login_from_env() {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let filter = format!("{}/v1/carers/+/dispatch", a.mqtt_prefix);
    let (subscribed_tx, mut subscribed) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtMostOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        && let Some(incident) = v["incident_id"].as_i64()
                    {
                        let _ = tx.send((Heard::Offer { incident }, at));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
        .await
        .expect("subscribed to the carers' offers");

    let (mut ack, mut console, mut offer) = (hist(), hist(), hist());
    let mut missed_console = 0;
    let mut missed_offer = 0;
    for i in 0..a.presses {
        let id = pingantong_sim::device_id("PA", a.first + i);
        let secret = pingantong_sim::derive_secret(&a.secret_seed, &id);
        let event = AlarmEvent {
            device: DeviceId::parse(&id).expect("a seeded id"),
            seq: 1,
            kind: EventKind::Sos,
            device_time_ms: None,
            battery_pct: Some(80),
            location: Some(Location {
                lat: 23.13,
                lon: 113.26,
                accuracy_m: Some(20),
            }),
        };
        let mut frame = BytesMut::new();
        native::encode_event(&event, &secret, &mut frame);
        let mut conn = TcpStream::connect(a.native).await.expect("connect");
        conn.set_nodelay(true).expect("nodelay");
        let pressed = Instant::now();
        conn.write_all(&frame).await.expect("send");
        let mut buf = BytesMut::new();
        loop {
            if let Some(raw) = native::split_frame(&mut buf).expect("a reply frame") {
                let (reply, _) = Reply::parse(&raw, &secret).expect("a reply");
                assert!(matches!(reply, Reply::Ack { .. }), "{id}: {reply:?}");
                ack.record(pressed.elapsed().as_micros() as u64).ok();
                break;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read_buf(&mut buf))
                .await
                .expect("an ACK within 10 s")
                .expect("read");
            assert!(n > 0, "closed before the ACK");
        }
        // Wait for both sightings of this press (other presses may interleave).
        let deadline = pressed + Duration::from_secs_f64(a.wait_secs);
        let mut incident = None;
        let (mut seen_console, mut seen_offer) = (false, false);
        let mut early_offers: Vec<(i64, Instant)> = Vec::new();
        while !(seen_console && seen_offer) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some((h, at))) = tokio::time::timeout(left, heard.recv()).await else {
                break;
            };
            match h {
                Heard::Opened {
                    device,
                    incident: n,
                } if device == id => {
                    console.record((at - pressed).as_micros() as u64).ok();
                    seen_console = true;
                    incident = Some(n);
                    if let Some((_, at)) = early_offers.iter().find(|(i, _)| *i == n) {
                        offer.record((*at - pressed).as_micros() as u64).ok();
                        seen_offer = true;
                    }
                }
                Heard::Offer { incident: n } if Some(n) == incident => {
                    offer.record((at - pressed).as_micros() as u64).ok();
                    seen_offer = true;
                }
                // The offer can arrive before the feed line: keep it.
                Heard::Offer { incident: n } if incident.is_none() => early_offers.push((n, at)),
                _ => {}
            }
        }
        if !(seen_console && seen_offer) {
            eprintln!(
                "console-probe: {id} pressed; within {} s: on the feed {seen_console} (incident {incident:?}), offered {seen_offer}",
                a.wait_secs
            );
        }
        missed_console += usize::from(!seen_console);
        missed_offer += usize::from(!seen_offer);
        tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
    }
    let line = |h: &Histogram<u64>| {
        serde_json::json!({
            "n": h.len(), "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99), "max": ms(h, 1.0),
        })
    };
    let out = serde_json::json!({
        "presses": a.presses,
        "ack_ms": line(&ack),
        "console_ms": line(&console),
        "offer_ms": line(&offer),
        "missed_console": missed_console,
        "missed_offer": missed_offer,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    }
    if missed_console > 0 {
        std::process::exit(1);
    }
}
