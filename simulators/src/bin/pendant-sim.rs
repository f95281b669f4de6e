//! pendant-sim: a fleet of pendants against a running server, from a handful to a city.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use pingantong_sim::derive_secret;
use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Pendant};
use pingantong_sim::record::Recorder;
use pingantong_sim::scenario::{ConnectionMode, Plan, ScenarioFile};
use pingantong_sim::source;
use tokio::time::Instant;

/// Simulate N pendants and report press → ACK latency. Exits with status 1 if any alarm went
/// unacknowledged.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Server's listener for the protocol (loopback only).
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    /// Pendants in the fleet [default: the scenario's, else 100].
    #[arg(long)]
    pendants: Option<usize>,
    /// Number of the first pendant (ids `first` … `first + pendants - 1`), so several processes
    /// can share one provisioned fleet without overlapping.
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// What the pendants speak: native, gt06, watch, h02, eview, dc09 (encrypted), dc09-plain.
    /// Device ids take that protocol's form, as `pingantong seed --protocol` provisions them
    /// [default: the scenario's, else native].
    #[arg(long)]
    protocol: Option<String>,
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
    /// Seconds between heartbeats (per report: between reports) [default: the scenario's, else 30].
    #[arg(long)]
    heartbeat_secs: Option<f64>,
    /// `persistent`: every pendant holds a connection; `per-report`: connect, send, wait for the
    /// ACK, close [default: the scenario's, else persistent].
    #[arg(long, value_enum)]
    connections: Option<ConnectionMode>,
    /// A mixed fleet: the first N pendants hold connections, the rest report per connection.
    #[arg(long)]
    persistent: Option<usize>,
    /// Spread source addresses over N loopback addresses (127.0.0.2 …; 0: 127.0.0.1 only)
    /// [default: one per 5,000 pendants above 10,000 pendants, else 0].
    #[arg(long)]
    source_spread: Option<usize>,
    /// A TOML scenario: fleet defaults and phases (benches/README.md). Rates then come from it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Presses per second across the fleet, without a scenario [default: 5].
    #[arg(long)]
    alarm_rate: Option<f64>,
    /// Seconds of pressing and reporting, without a scenario [default: 10].
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Technical events (low battery) per second across the fleet, sent as a flood while the
    /// presses are timed (TCP transport), without a scenario [default: 0].
    #[arg(long)]
    technical_rate: Option<f64>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the result, with the timeline, phases, connect and storm figures, to this JSON file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("pendant-sim: {msg}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    if !a.addr.ip().is_loopback() {
        fail("only targets loopback addresses (127.0.0.0/8, ::1)");
    }
    let file = match &a.scenario {
        Some(path) => {
            if a.alarm_rate.is_some() || a.duration_secs.is_some() || a.technical_rate.is_some() {
                fail("with --scenario, rates and durations come from its phases");
            }
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
            ScenarioFile::parse(&text).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())))
        }
        None => ScenarioFile::default(),
    };
    let pendants = a.pendants.or(file.pendants).unwrap_or(100);
    let protocol = a
        .protocol
        .clone()
        .or(file.protocol.clone())
        .unwrap_or_else(|| "native".into());
    let heartbeat = a.heartbeat_secs.or(file.heartbeat_secs).unwrap_or(30.0);
    if !(heartbeat.is_finite() && heartbeat > 0.0) {
        fail("the heartbeat must be a positive number of seconds");
    }
    if a.first == 0 {
        fail("--first counts from 1");
    }
    if a.transport == "mqtt" {
        if a.scenario.is_some() || a.out.is_some() {
            fail("--scenario and --out work over TCP only");
        }
        return run_mqtt(&a, pendants, heartbeat).await;
    }
    let phases = if a.scenario.is_some() {
        file.phases().unwrap_or_else(|e| fail(e))
    } else {
        let duration = a.duration_secs.unwrap_or(10.0);
        if !(duration.is_finite() && duration > 0.0) {
            fail("--duration-secs must be positive");
        }
        Plan::single(
            Duration::from_secs_f64(duration),
            a.alarm_rate.unwrap_or(5.0),
            a.technical_rate.unwrap_or(0.0),
            pendants,
        )
        .phases
    };
    let mode = a
        .connections
        .or(file.connections)
        .unwrap_or(ConnectionMode::Persistent);
    let persistent = match (a.persistent.or(file.persistent), mode) {
        (Some(n), _) => n.min(pendants),
        (None, ConnectionMode::Persistent) => pendants,
        (None, ConnectionMode::PerReport) => 0,
    };
    let limit = source::raise_file_limit()
        .unwrap_or_else(|e| fail(format!("reading the open-file limit: {e}")));
    if let Err(msg) = source::check_file_limit(persistent, limit) {
        fail(msg);
    }
    let plan = Plan {
        phases,
        persistent,
        source_spread: a.source_spread.unwrap_or(source::default_spread(pendants)),
        // Whatever the held connections leave, up to 4,096 at once.
        per_report_sockets: (limit - source::SPARE_FILES - persistent as u64).clamp(1, 4096)
            as usize,
    };

    let Some(speaker) = pingantong_sim::speaker::by_name(&protocol) else {
        fail(format!(
            "unknown protocol {protocol:?} (native, gt06, watch, h02, eview, dc09, dc09-plain)"
        ));
    };
    let fleet: Vec<Pendant> = (a.first..a.first + pendants)
        .map(|n| {
            let id = pingantong_sim::speaker::device_id(&protocol, n);
            Pendant {
                secret: derive_secret(&a.secret_seed, &id),
                id,
            }
        })
        .collect();
    let total = plan.total();
    let cfg = FleetConfig {
        addr: a.addr,
        speaker,
        pendants: fleet,
        heartbeat: Duration::from_secs_f64(heartbeat),
        alarm_rate: 0.0,
        technical_rate: 0.0,
        duration: total,
        retry_after: Duration::from_secs(3),
        grace: Duration::from_secs(15),
    };
    let stats = Arc::new(FleetStats::default());
    let recorder = Arc::new(Recorder::new(&plan, Instant::now()));
    let progress = tokio::spawn(progress(
        Arc::clone(&stats),
        Arc::clone(&recorder),
        plan.clone(),
    ));
    let stop = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stats.stop();
            }
        })
    };
    let r = fleet::run_plan(cfg, plan, Arc::clone(&stats), Arc::clone(&recorder)).await;
    progress.abort();
    let _ = progress.await;
    stop.abort();
    let sending = recorder.start().elapsed().min(total);
    let mut summary = summarise(&a, pendants, &r);
    if let Some(path) = &a.out {
        let extra = recorder.summary(r.alarms_acked + r.heartbeats_acked, sending);
        if let (Some(s), Some(e)) = (summary.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
            s.insert("persistent".into(), persistent.into());
            s.insert("first".into(), a.first.into());
            s.insert("protocol".into(), protocol.clone().into());
        }
        let text = serde_json::to_string_pretty(&summary).expect("JSON values serialise");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("pendant-sim: writing {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    if r.alarms_lost() > 0 {
        std::process::exit(1);
    }
}

/// A bar on a terminal; a plain line every ten seconds otherwise.
async fn progress(stats: Arc<FleetStats>, rec: Arc<Recorder>, plan: Plan) {
    let total = plan.total().as_secs().max(1);
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:24}] {pos:>4}/{len}s {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut tick = tokio::time::interval_at(
        rec.start() + Duration::from_millis(500),
        Duration::from_millis(500),
    );
    for n in 1u64.. {
        tick.tick().await;
        let t = rec.start().elapsed();
        let phase = if t < plan.total() {
            plan.phases[plan.phase_at(t)].name.as_str()
        } else {
            "draining"
        };
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let msg = format!(
            "connected {:>6}  alarms {} sent {} acked  frames/s {}",
            get(&stats.connected),
            get(&stats.alarms_sent),
            get(&stats.alarms_acked),
            rec.last_second().map(|s| s.frames_acked).unwrap_or(0),
        );
        if tty {
            bar.set_prefix(phase.to_owned());
            bar.set_position(t.as_secs().min(total));
            bar.set_message(msg);
        } else if n % 20 == 0 {
            eprintln!("{:>5}s/{total}s {phase}: {msg}", t.as_secs());
        }
    }
}

async fn run_mqtt(a: &Args, pendants: usize, heartbeat: f64) {
    let Some((host, port)) = a
        .mqtt_url
        .strip_prefix("mqtt://")
        .and_then(|r| r.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
    else {
        fail("--mqtt-url must look like mqtt://127.0.0.1:1883");
    };
    let fleet = (a.first..a.first + pendants)
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
        pendants: fleet,
        heartbeat: Duration::from_secs_f64(heartbeat),
        alarm_rate: a.alarm_rate.unwrap_or(5.0),
        duration: Duration::from_secs_f64(a.duration_secs.unwrap_or(10.0)),
        retry_after: Duration::from_secs(3),
        grace: Duration::from_secs(15),
    };
    let r = pingantong_sim::mqtt_fleet::run(cfg, Arc::new(FleetStats::default())).await;
    summarise(a, pendants, &r);
    if r.alarms_lost() > 0 {
        std::process::exit(1);
    }
}

/// Print the result (`--json`: one object) and return that object.
fn summarise(a: &Args, pendants: usize, r: &fleet::FleetReport) -> serde_json::Value {
    let h = &r.alarm_latency_us;
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let summary = serde_json::json!({
        "pendants": pendants,
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
    summary
}
