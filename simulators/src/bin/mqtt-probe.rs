//! mqtt-probe: how long from a device's SOS published on the broker to the
//! carer's offer arriving, for any dispatcher that follows protocol/MQTT.md
//! (our server, or a peer fed the same load). One press at a time
//! (`--presses`), or open-loop at a fixed rate (`--rate`, `--secs`).
//!
//! Offers name the client, not the device, so a press is matched to its offer
//! by the client's name and address, read from the `--clients` file (the
//! profiles the dispatcher was provisioned with; see benches/mqtt-peers.sh).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Time SOS events published as devices to the carers' offers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Broker host:port (loopback only).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    #[arg(long, default_value = "pingantong")]
    mqtt_prefix: String,
    /// JSON file `{"clients": {"<device id>": {"name": …, "address": …}, …}}`:
    /// who each device belongs to, to recognise its offer.
    #[arg(long)]
    clients: PathBuf,
    /// Number of the first device to press with (`GW000001` is 1); each press
    /// uses the next device, so no press folds into an open incident.
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// Latency mode: this many presses, one at a time.
    #[arg(long, default_value_t = 0)]
    presses: usize,
    /// Presses before the timed ones, not recorded (fresh connections, cold caches).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Pause after one press's offer before the next press.
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
    /// How long to wait for one press's offer in latency mode.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Throughput mode: presses per second, open loop (not waiting for offers).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Throughput mode: seconds of pressing.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Throughput mode: how long to wait for offers after the last press.
    #[arg(long, default_value_t = 15)]
    grace_secs: u64,
    #[arg(long)]
    json: bool,
}

/// Who a device belongs to, as an offer names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    name: String,
    address: String,
}

/// The devices a probe may press with, and the client each one's offer names.
struct Directory {
    /// Device numbers and ids in press order, each with its client.
    devices: Vec<(usize, String, ClientKey)>,
}

impl Directory {
    /// Devices from `first` on, skipping any whose client cannot be told apart
    /// from another's (same name and address).
    fn load(path: &PathBuf, first: usize) -> Self {
        let text = std::fs::read_to_string(path).expect("read --clients");
        let v: serde_json::Value = serde_json::from_str(&text).expect("--clients is JSON");
        let map = v["clients"].as_object().expect("a `clients` object");
        let mut seen: HashMap<ClientKey, usize> = HashMap::new();
        for c in map.values() {
            *seen.entry(key_of(c)).or_default() += 1;
        }
        let mut devices = Vec::new();
        for n in first..first + map.len() {
            let id = pingantong_sim::speaker::device_id("mqtt", n);
            if let Some(c) = map.get(&id) {
                let key = key_of(c);
                if seen[&key] == 1 {
                    devices.push((n, id, key));
                }
            }
        }
        Self { devices }
    }
}

fn key_of(v: &serde_json::Value) -> ClientKey {
    ClientKey {
        name: v["client_name"]
            .as_str()
            .or(v["name"].as_str())
            .unwrap_or_default()
            .to_owned(),
        address: v["address"].as_str().unwrap_or_default().to_owned(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// An MQTT client with no-delay on its socket and room for an open-loop burst.
fn client(id: String, at: SocketAddr) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(id, at.ip().to_string(), at.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(u16::MAX);
    if let Some((user, pass)) = pingantong_sim::login_from_env() {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 65_536);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

/// Keep a client's connection going; report each completed (re)subscription
/// and, when `offers` is given, every message received with its arrival time.
fn drive(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    filter: Option<String>,
    ready: mpsc::Sender<()>,
    offers: Option<mpsc::UnboundedSender<(ClientKey, Instant)>>,
) {
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &filter {
                    Some(f) => {
                        let _ = client.subscribe(f.clone(), QoS::AtLeastOnce).await;
                    }
                    None => {
                        let _ = ready.try_send(());
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    if let (Some(tx), Ok(v)) = (
                        &offers,
                        serde_json::from_slice::<serde_json::Value>(&p.payload),
                    ) {
                        let _ = tx.send((key_of(&v), at));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

fn sos(seq: u32) -> String {
    serde_json::json!({"v": 1, "seq": seq, "kind": "sos", "time": unix_ms(), "battery": 80})
        .to_string()
}

/// What one run measured.
struct Outcome {
    latency: Histogram<u64>,
    sent: usize,
    offers: usize,
    /// Offers for a press already answered (a second carer asked, a resend).
    repeats: usize,
    /// Offers naming no press of this run.
    strangers: usize,
    /// Presses the probe's own client could not queue (its queue was full).
    not_sent: usize,
    offers_per_sec: Option<f64>,
    send_secs: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = Args::parse();
    if !a.mqtt.ip().is_loopback() {
        eprintln!("mqtt-probe only targets loopback addresses");
        std::process::exit(2);
    }
    if (a.presses == 0) == (a.rate <= 0.0) {
        eprintln!("give either --presses (latency) or --rate (throughput)");
        std::process::exit(2);
    }
    let dir = Directory::load(&a.clients, a.first);
    let wanted = if a.presses > 0 {
        a.warmup + a.presses
    } else {
        (a.rate * a.secs as f64).ceil() as usize
    };
    if dir.devices.len() < wanted {
        eprintln!(
            "--clients has {} usable devices from {}; this run needs {wanted}",
            dir.devices.len(),
            a.first
        );
        std::process::exit(2);
    }

    let me = std::process::id();
    let (ready_tx, mut ready) = mpsc::channel::<()>(4);
    let (offer_tx, mut heard) = mpsc::unbounded_channel();
    let (carers, carers_loop) = client(format!("mqtt-probe-carers-{me}"), a.mqtt);
    drive(
        carers,
        carers_loop,
        Some(format!("{}/v1/carers/+/dispatch", a.mqtt_prefix)),
        ready_tx.clone(),
        Some(offer_tx),
    );
    let (gateway, gateway_loop) = client(format!("mqtt-probe-gateway-{me}"), a.mqtt);
    drive(gateway.clone(), gateway_loop, None, ready_tx, None);
    for what in ["connected and subscribed", "connected"] {
        tokio::time::timeout(Duration::from_secs(10), ready.recv())
            .await
            .unwrap_or_else(|_| panic!("broker: not {what} within 10 s"));
    }

    let devices = &dir.devices[..wanted];
    let by_key: HashMap<&ClientKey, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, (_, _, k))| (k, i))
        .collect();
    let topic = |i: usize| format!("{}/v1/devices/{}/events", a.mqtt_prefix, devices[i].1);
    let mut sent_at: Vec<Option<Instant>> = vec![None; wanted];
    let mut answered: HashSet<usize> = HashSet::new();
    let mut out = Outcome {
        latency: hist(),
        sent: 0,
        offers: 0,
        repeats: 0,
        strangers: 0,
        not_sent: 0,
        offers_per_sec: None,
        send_secs: 0.0,
    };
    // Credit one heard offer to its press: the press and its latency, the
    // first time that press is answered.
    let mut credit = |key: &ClientKey,
                      at: Instant,
                      sent_at: &[Option<Instant>],
                      out: &mut Outcome|
     -> Option<(usize, u64)> {
        let Some((i, t)) = by_key.get(key).and_then(|&i| Some((i, sent_at[i]?))) else {
            out.strangers += 1;
            return None;
        };
        if !answered.insert(i) {
            out.repeats += 1;
            return None;
        }
        Some((i, (at - t).as_micros().max(1) as u64))
    };

    if a.presses > 0 {
        for i in 0..wanted {
            let warm = i < a.warmup;
            let t = Instant::now();
            sent_at[i] = Some(t);
            gateway
                .publish(topic(i), QoS::AtLeastOnce, false, sos(1))
                .await
                .expect("gateway client running");
            out.sent += usize::from(!warm);
            let deadline = t + Duration::from_millis(a.timeout_ms);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some((key, at))) = tokio::time::timeout(left, heard.recv()).await else {
                    break;
                };
                if let Some((j, us)) = credit(&key, at, &sent_at, &mut out)
                    && j == i
                {
                    if !warm {
                        out.offers += 1;
                        let _ = out.latency.record(us);
                    }
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(a.pause_ms)).await;
        }
    } else {
        // Open loop: press i is due at start + i / rate, and its latency is
        // counted from then, even if the probe itself fell behind.
        let start = Instant::now() + Duration::from_millis(50);
        let due = |i: usize| start + Duration::from_secs_f64(i as f64 / a.rate);
        let mut next = 0;
        let mut last_heard = start;
        let mut give_up = due(wanted) + Duration::from_secs(a.grace_secs);
        while (next < wanted || out.offers < out.sent) && Instant::now() < give_up {
            let wake = if next < wanted { due(next) } else { give_up };
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(wake) => {
                    // Every press already due goes out now, stamped with its due time.
                    let before = next;
                    while next < wanted && due(next) <= Instant::now() {
                        sent_at[next] = Some(due(next));
                        match gateway.try_publish(topic(next), QoS::AtLeastOnce, false, sos(1)) {
                            Ok(()) => out.sent += 1,
                            Err(_) => out.not_sent += 1,
                        }
                        next += 1;
                    }
                    if before < wanted && next == wanted {
                        out.send_secs = (Instant::now() - start).as_secs_f64();
                        give_up = Instant::now() + Duration::from_secs(a.grace_secs);
                    }
                }
                got = heard.recv() => {
                    let Some((key, at)) = got else { break };
                    if let Some((_, us)) = credit(&key, at, &sent_at, &mut out) {
                        out.offers += 1;
                        let _ = out.latency.record(us);
                        last_heard = at;
                    }
                }
            }
        }
        let span = (last_heard - start).as_secs_f64();
        out.offers_per_sec = Some(if span > 0.0 {
            out.offers as f64 / span
        } else {
            0.0
        });
    }

    let h = &out.latency;
    let report = serde_json::json!({
        "mode": if a.presses > 0 { "latency" } else { "throughput" },
        "latency_ms": {
            "n": h.len(), "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99), "max": ms(h, 1.0),
        },
        "sent": out.sent,
        "offers": out.offers,
        "missed": out.sent - out.offers,
        "repeat_offers": out.repeats,
        "unmatched_offers": out.strangers,
        "not_sent": out.not_sent,
        "offers_per_sec": out.offers_per_sec,
        "target_rate": if a.rate > 0.0 { Some(a.rate) } else { None },
        // The device number a following run should start from.
        "next_first": devices[wanted - 1].0 + 1,
        "send_secs": if a.rate > 0.0 { Some(out.send_secs) } else { None },
    });
    if a.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    }
}
