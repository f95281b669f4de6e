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
use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
use pingantong_sim::mqtt_fleet::MqttFleetConfig;
use pingantong_sim::record::Recorder;
use pingantong_sim::scenario::{ConnectionMode, Plan, ScenarioFile};
use pingantong_sim::source;
use pingantong_sim::speaker::Mix;
use tokio::time::Instant;

/// Simulate N pendants and report press → ACK latency. Exits with status 1 if any alarm went
/// unacknowledged.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server's listener, `HOST:PORT` or `PROTOCOL=HOST:PORT` for one protocol of a mix;
    /// repeat for several (loopback only) [default: each protocol's default port on 127.0.0.1].
    #[arg(long)]
    addr: Vec<String>,
    /// Pendants in the fleet [default: the scenario's, else 100].
    #[arg(long)]
    pendants: Option<usize>,
    /// Number of the first pendant (ids `first` … `first + pendants - 1`), so several processes
    /// can share one provisioned fleet without overlapping.
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// What the pendants speak: native, gt06, watch, h02, eview, dc09 (encrypted), dc09-plain,
    /// or mqtt (each publishes through the broker, protocol/MQTT.md); a mix shares the fleet out,
    /// e.g. `native:3,gt06:1,mqtt:1`. Device ids take their protocol's form, as
    /// `pingantong-demo seed --protocol` (the same mix) provisions them
    /// [default: the scenario's, else native].
    #[arg(long)]
    protocol: Option<String>,
    /// The broker the mqtt pendants publish through.
    #[arg(long, default_value = "mqtt://127.0.0.1:11883")]
    mqtt_url: String,
    #[arg(long, default_value = "pingantong")]
    mqtt_prefix: String,
    /// The MQTT pendants' passwords, one `<device id> <password>` per line, as
    /// `pingantong-demo seed` writes them; without it they connect without
    /// credentials (quarantine: stored unverified).
    #[arg(long)]
    mqtt_credentials: Option<PathBuf>,
    /// Seed the server was provisioned with (`pingantong-demo seed --secret-seed`).
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
    /// presses are timed, without a scenario [default: 0].
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
    let mix = a
        .protocol
        .clone()
        .or(file.protocol.clone())
        .unwrap_or_else(|| "native".into());
    let mix = Mix::parse(&mix).unwrap_or_else(|e| fail(format!("--protocol: {e}")));
    let heartbeat = a.heartbeat_secs.or(file.heartbeat_secs).unwrap_or(30.0);
    if !(heartbeat.is_finite() && heartbeat > 0.0) {
        fail("the heartbeat must be a positive number of seconds");
    }
    if a.first == 0 {
        fail("--first counts from 1");
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

    // One line per TCP protocol of the mix, in its order; the mqtt pendants' presses are told
    // under the line after them.
    let tcp_protocols: Vec<&str> = mix.protocols().filter(|p| *p != "mqtt").collect();
    let addrs = Addrs::parse(&a.addr, &tcp_protocols).unwrap_or_else(|e| fail(e));
    let lines: Vec<Line> = tcp_protocols
        .iter()
        .map(|p| {
            let speaker = pingantong_sim::speaker::by_name(p).expect("the mix checked its names");
            Line::new(speaker, addrs.for_protocol(p))
        })
        .collect();
    let mut tcp_fleet = Vec::new();
    let mut mqtt_fleet = Vec::new();
    for n in a.first..a.first + pendants {
        let id = mix.device_id(n);
        let secret = derive_secret(&a.secret_seed, &id);
        match tcp_protocols.iter().position(|p| *p == mix.protocol_of(n)) {
            Some(line) => tcp_fleet.push(Pendant { id, secret, line }),
            None => mqtt_fleet.push(Pendant::new(id, secret)),
        }
    }

    let mode = a
        .connections
        .or(file.connections)
        .unwrap_or(ConnectionMode::Persistent);
    let persistent = match (a.persistent.or(file.persistent), mode) {
        (Some(n), _) => n.min(tcp_fleet.len()),
        (None, ConnectionMode::Persistent) => tcp_fleet.len(),
        (None, ConnectionMode::PerReport) => 0,
    };
    let holding = persistent + mqtt_fleet.len();
    let limit = source::raise_file_limit()
        .unwrap_or_else(|e| fail(format!("reading the open-file limit: {e}")));
    if let Err(msg) = source::check_file_limit(holding, limit) {
        fail(msg);
    }
    let plan = Plan {
        phases,
        persistent,
        source_spread: a.source_spread.unwrap_or(source::default_spread(pendants)),
        // Whatever the held connections leave, up to 4,096 at once.
        per_report_sockets: (limit - source::SPARE_FILES - holding as u64).clamp(1, 4096) as usize,
    };
    let total = plan.total();
    let tcp = (!tcp_fleet.is_empty()).then(|| FleetConfig {
        lines,
        pendants: tcp_fleet,
        heartbeat: Duration::from_secs_f64(heartbeat),
        alarm_rate: 0.0,
        technical_rate: 0.0,
        duration: total,
        retry_after: Duration::from_secs(3),
        grace: Duration::from_secs(15),
    });
    let passwords: std::collections::HashMap<String, String> = match &a.mqtt_credentials {
        Some(path) => std::fs::read_to_string(path)
            .unwrap_or_else(|e| fail(format!("--mqtt-credentials {}: {e}", path.display())))
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, pass)| (id.to_owned(), pass.trim().to_owned()))
            .collect(),
        None => Default::default(),
    };
    let mqtt = (!mqtt_fleet.is_empty()).then(|| {
        let (host, port) = broker(&a.mqtt_url);
        MqttFleetConfig {
            host,
            port,
            prefix: a.mqtt_prefix.clone(),
            pendants: mqtt_fleet,
            heartbeat: Duration::from_secs_f64(heartbeat),
            alarm_rate: 0.0,
            duration: total,
            retry_after: Duration::from_secs(3),
            grace: Duration::from_secs(15),
            line: tcp_protocols.len(),
            passwords: passwords.clone(),
        }
    });
    let names = tcp_protocols
        .iter()
        .map(|p| p.to_string())
        .chain(mqtt.as_ref().map(|_| "mqtt".to_string()));
    let stats = Arc::new(FleetStats::default());
    let recorder = Arc::new(
        Recorder::new(&plan, Instant::now())
            .expecting_ready(holding as u64)
            .with_lines(names),
    );
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
    let r = fleet::run_mixed(tcp, mqtt, plan, Arc::clone(&stats), Arc::clone(&recorder)).await;
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
            s.insert("protocol".into(), mix.to_string().into());
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

/// Where each TCP protocol's listener is.
struct Addrs {
    named: Vec<(String, SocketAddr)>,
    bare: Option<SocketAddr>,
}

impl Addrs {
    fn parse(given: &[String], protocols: &[&str]) -> Result<Self, String> {
        let mut out = Addrs {
            named: Vec::new(),
            bare: None,
        };
        for g in given {
            let (name, addr) = match g.split_once('=') {
                Some((n, a)) => (Some(n.trim()), a),
                None => (None, g.as_str()),
            };
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|e| format!("--addr {g:?}: {e}"))?;
            if !addr.ip().is_loopback() {
                return Err("only targets loopback addresses (127.0.0.0/8, ::1)".into());
            }
            match name {
                Some(n) if protocols.contains(&n) => out.named.push((n.to_owned(), addr)),
                Some(n) => {
                    return Err(format!(
                        "--addr {g:?}: {n:?} is not a TCP protocol of the fleet"
                    ));
                }
                None if protocols.len() > 1 => {
                    return Err(format!(
                        "--addr {g:?}: the fleet speaks {}; name the protocol (gt06=HOST:PORT)",
                        protocols.join(", ")
                    ));
                }
                None => out.bare = Some(addr),
            }
        }
        Ok(out)
    }

    fn for_protocol(&self, protocol: &str) -> SocketAddr {
        self.named
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, a)| *a)
            .or(self.bare)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port(protocol))))
    }
}

/// The server's default listener port for a protocol (`pingantong serve`).
fn default_port(protocol: &str) -> u16 {
    match protocol {
        "gt06" => 5023,
        "watch" => 5093,
        "h02" => 5013,
        "eview" => 5250,
        "dc09" | "dc09-plain" | "sia_dc09" => 5070,
        _ => 7700,
    }
}

fn broker(url: &str) -> (String, u16) {
    let Some((host, port)) = url
        .strip_prefix("mqtt://")
        .and_then(|r| r.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
    else {
        fail("--mqtt-url must look like mqtt://127.0.0.1:1883");
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        fail("only targets loopback brokers (127.0.0.0/8, ::1, localhost)");
    }
    (host, port)
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
