//! pendant-sim: a fleet of native pendants against a running server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use pingantong_sim::derive_secret;
use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Pendant};

/// Simulate N pendants over the native protocol and report press → ACK latency.
/// Exits with status 1 if any alarm went unacknowledged.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Server's native listener (loopback only).
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    #[arg(long, default_value_t = 100)]
    pendants: usize,
    /// What the pendants speak: native, gt06, watch, h02, eview, dc09 (encrypted), dc09-plain.
    /// Device ids take that protocol's form, as `pingantong seed --protocol` provisions them.
    #[arg(long, default_value = "native")]
    protocol: String,
    /// `tcp`: each pendant connects to --addr; `mqtt`: each publishes through the broker
    /// (protocol/MQTT.md) as a device provisioned by `pingantong seed --protocol mqtt`.
    #[arg(long, default_value = "tcp")]
    transport: String,
    #[arg(long, default_value = "mqtt://127.0.0.1:11883")]
    mqtt_url: String,
    #[arg(long, default_value = "pingantong")]
    mqtt_prefix: String,
    /// Seed the server was provisioned with (`pingantong seed --secret-seed`).
    #[arg(long, env = "PAT_SECRET_SEED", default_value = "demo")]
    secret_seed: String,
    #[arg(long, default_value_t = 30.0)]
    heartbeat_secs: f64,
    /// Presses per second across the fleet.
    #[arg(long, default_value_t = 5.0)]
    alarm_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Technical events (low battery) per second across the fleet, sent as a flood
    /// while the presses are timed (TCP transport).
    #[arg(long, default_value_t = 0.0)]
    technical_rate: f64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    if !a.addr.ip().is_loopback() {
        eprintln!("pendant-sim only targets loopback addresses (127.0.0.0/8, ::1)");
        std::process::exit(2);
    }
    if a.transport == "mqtt" {
        return run_mqtt(a).await;
    }
    let Some(speaker) = pingantong_sim::speaker::by_name(&a.protocol) else {
        eprintln!(
            "unknown --protocol {:?} (native, gt06, watch, h02, eview, dc09, dc09-plain)",
            a.protocol
        );
        std::process::exit(2);
    };
    let pendants = (1..=a.pendants)
        .map(|n| {
            let id = pingantong_sim::speaker::device_id(&a.protocol, n);
            Pendant {
                secret: derive_secret(&a.secret_seed, &id),
                id,
            }
        })
        .collect();
    let cfg = FleetConfig {
        addr: a.addr,
        speaker,
        pendants,
        heartbeat: Duration::from_secs_f64(a.heartbeat_secs),
        alarm_rate: a.alarm_rate,
        technical_rate: a.technical_rate,
        duration: Duration::from_secs_f64(a.duration_secs),
        retry_after: Duration::from_secs(3),
        grace: Duration::from_secs(15),
    };
    let stats = Arc::new(FleetStats::default());
    let progress = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprint!(
                    "\rconnected {:>6}  alarms {:>6} sent {:>6} acked  heartbeats {:>7} sent {:>7} acked",
                    stats.connected.load(Ordering::Relaxed),
                    stats.alarms_sent.load(Ordering::Relaxed),
                    stats.alarms_acked.load(Ordering::Relaxed),
                    stats.heartbeats_sent.load(Ordering::Relaxed),
                    stats.heartbeats_acked.load(Ordering::Relaxed),
                );
            }
        })
    };
    let r = fleet::run(cfg, stats).await;
    progress.abort();
    eprintln!();
    summarise(&a, &r);
}

async fn run_mqtt(a: Args) {
    let Some((host, port)) = a
        .mqtt_url
        .strip_prefix("mqtt://")
        .and_then(|r| r.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
    else {
        eprintln!("--mqtt-url must look like mqtt://127.0.0.1:1883");
        std::process::exit(2);
    };
    let pendants = (1..=a.pendants)
        .map(|n| {
            let id = pingantong_sim::speaker::device_id("mqtt", n);
            Pendant {
                secret: derive_secret(&a.secret_seed, &id),
                id,
            }
        })
        .collect();
    let cfg = pingantong_sim::mqtt_fleet::MqttFleetConfig {
        host,
        port,
        prefix: a.mqtt_prefix.clone(),
        pendants,
        heartbeat: Duration::from_secs_f64(a.heartbeat_secs),
        alarm_rate: a.alarm_rate,
        duration: Duration::from_secs_f64(a.duration_secs),
        retry_after: Duration::from_secs(3),
        grace: Duration::from_secs(15),
    };
    let r = pingantong_sim::mqtt_fleet::run(cfg, Arc::new(FleetStats::default())).await;
    summarise(&a, &r);
}

fn summarise(a: &Args, r: &fleet::FleetReport) {
    let h = &r.alarm_latency_us;
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let summary = serde_json::json!({
        "pendants": a.pendants,
        "alarms_sent": r.alarms_sent,
        "alarms_acked": r.alarms_acked,
        "alarms_refused": r.alarms_refused,
        "alarms_lost": r.alarms_lost(),
        "heartbeats_sent": r.heartbeats_sent,
        "heartbeats_acked": r.heartbeats_acked,
        "retries": r.retries,
        "reconnects": r.reconnects,
        "ack_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max() as f64 / 1000.0},
        "heartbeat_ack_ms": {"p50": r.heartbeat_latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                              "p99": r.heartbeat_latency_us.value_at_quantile(0.99) as f64 / 1000.0},
    });
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "alarms: {} sent, {} acked, {} refused, {} lost; heartbeats: {} sent, {} acked; {} retries, {} reconnects",
            r.alarms_sent,
            r.alarms_acked,
            r.alarms_refused,
            r.alarms_lost(),
            r.heartbeats_sent,
            r.heartbeats_acked,
            r.retries,
            r.reconnects
        );
        println!(
            "press -> ACK ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1000.0
        );
    }
    if r.alarms_lost() > 0 {
        std::process::exit(1);
    }
}
