//! A fleet of devices publishing through an MQTT broker (protocol/MQTT.md):
//! press → application ACK latency, retries until acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::time::Instant;

use crate::fleet::{FleetReport, FleetStats, Pendant};

#[derive(Debug, Clone)]
pub struct MqttFleetConfig {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub pendants: Vec<Pendant>,
    pub heartbeat: Duration,
    /// Presses per second across the fleet.
    pub alarm_rate: f64,
    pub duration: Duration,
    pub retry_after: Duration,
    pub grace: Duration,
}

struct Sent {
    first: Instant,
    last: Instant,
    body: String,
    alarm: bool,
}

/// Run every pendant as its own MQTT client until the end, then report.
pub async fn run(cfg: MqttFleetConfig, stats: Arc<FleetStats>) -> FleetReport {
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::new();
    for i in 0..cfg.pendants.len() {
        let (cfg, stats) = (Arc::clone(&cfg), Arc::clone(&stats));
        tasks.push(tokio::spawn(async move { pendant(cfg, i, stats).await }));
    }
    let mut report = FleetReport::empty();
    for t in tasks {
        if let Ok((acked, unanswered, lat)) = t.await {
            report.acked.extend(acked);
            report.unanswered.extend(unanswered);
            report.alarm_latency_us.add(&lat).expect("same bounds");
        }
    }
    report.fill_counts(&stats);
    report
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type PendantOutcome = (
    Vec<(String, u32)>,
    Vec<(String, u32)>,
    hdrhistogram::Histogram<u64>,
);

async fn pendant(
    cfg: Arc<MqttFleetConfig>,
    index: usize,
    stats: Arc<FleetStats>,
) -> PendantOutcome {
    let me = &cfg.pendants[index];
    let mut opts = MqttOptions::new(
        format!("sim-{}-{}", me.id, std::process::id()),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let events = format!("{}/v1/devices/{}/events", cfg.prefix, me.id);
    let acks = format!("{}/v1/devices/{}/ack", cfg.prefix, me.id);
    let rate = cfg.alarm_rate / cfg.pendants.len().max(1) as f64;
    let press_gap = || {
        if rate <= 0.0 {
            return Duration::from_secs(365 * 24 * 3600);
        }
        let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() / rate)
    };
    let start = Instant::now();
    let stop = start + cfg.duration;
    let give_up = stop + cfg.grace;
    let mut next_beat = start + cfg.heartbeat.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut next_press = start + press_gap();
    let mut seq = 0u32;
    let mut sent: HashMap<u32, Sent> = HashMap::new();
    let mut acked = Vec::new();
    let mut latency =
        hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let mut subscribed = false;
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    loop {
        let now = Instant::now();
        if (now >= stop && sent.is_empty()) || now >= give_up {
            break;
        }
        let wake = if subscribed && now < stop {
            next_beat.min(next_press)
        } else {
            give_up
        };
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(acks.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed = true;
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    let Some(s) = v["seq"].as_u64().map(|s| s as u32) else { continue };
                    let status = v["status"].as_str().unwrap_or("");
                    if status == "unavailable" { continue; }
                    let Some(o) = sent.remove(&s) else { continue };
                    let us = o.first.elapsed().as_micros().max(1) as u64;
                    match (o.alarm, status) {
                        (true, "stored" | "duplicate") => {
                            stats.alarms_acked.fetch_add(1, Ordering::Relaxed);
                            let _ = latency.record(us);
                            acked.push((me.id.clone(), s));
                        }
                        (true, _) => { stats.alarms_refused.fetch_add(1, Ordering::Relaxed); }
                        (false, _) => { stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed); }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if subscribed {
                        subscribed = false;
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = tokio::time::sleep_until(wake), if subscribed && now < stop => {
                let alarm = Instant::now() >= next_press;
                let kind = if alarm { next_press += press_gap(); "sos" } else { next_beat += cfg.heartbeat; "heartbeat" };
                seq += 1;
                let body = serde_json::json!({
                    "v": 1, "seq": seq, "kind": kind, "time": unix_ms(), "battery": 80,
                }).to_string();
                if alarm { stats.alarms_sent.fetch_add(1, Ordering::Relaxed); } else { stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed); }
                let t = Instant::now();
                let _ = client.publish(events.clone(), QoS::AtLeastOnce, false, body.clone()).await;
                sent.insert(seq, Sent { first: t, last: t, body, alarm });
            }
            _ = retry.tick() => {
                for o in sent.values_mut() {
                    if o.last.elapsed() >= cfg.retry_after {
                        o.last = Instant::now();
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        let _ = client.try_publish(events.clone(), QoS::AtLeastOnce, false, o.body.clone());
                    }
                }
            }
        }
    }
    if subscribed {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    let unanswered = sent
        .iter()
        .filter(|(_, o)| o.alarm)
        .map(|(s, _)| (me.id.clone(), *s))
        .collect();
    (acked, unanswered, latency)
}
