//! The whole path on embedded defaults, with a simulated city, fleet and
//! carers, ending in a summary that counts every alarm.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pingantong_protocol::EventKind;
use pingantong_sim::carer::{self, CarerStats};
use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use pingantong::api::auth::hash_password;
use pingantong::domain::Role;
use pingantong::store::{Db, NewUser};
use pingantong::{Application, Settings};
use pingantong_sim::city::{CitySpec, seed_city};

/// The demo's console accounts: an operator, a supervisor and one carer.
pub const DEMO_OPERATOR: &str = "demo";
pub const DEMO_SUPERVISOR: &str = "demo.supervisor";
pub const DEMO_CARER: &str = "demo.carer";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    pub clients: usize,
    pub alarm_rate: f64,
    pub heartbeat: Duration,
    pub json: bool,
    /// Where the data goes; `None`: a temporary directory removed at the end.
    pub data_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub duration_s: f64,
    pub clients: usize,
    pub carers: usize,
    pub alarms_sent: u64,
    pub alarms_acknowledged: u64,
    pub alarms_stored: i64,
    /// Sent but never acknowledged, or acknowledged but not in the database.
    pub alarms_lost: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acknowledged: u64,
    pub incidents_opened: i64,
    /// Offers received by the simulated carers over MQTT (distinct dispatches).
    pub dispatched: usize,
    pub dispatches_recorded: i64,
    /// Carers' replies over MQTT: accepted, declined (re-offered), arrived, completed.
    pub carers_accepted: u64,
    pub carers_declined: u64,
    pub carers_arrived: u64,
    pub carers_completed: u64,
    pub ack_latency_ms: Percentiles,
    pub database: String,
    pub mqtt: String,
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    let tmp = tempfile::tempdir()?;
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let broker_port_free = std::net::TcpListener::bind(("127.0.0.1", 11883)).is_ok();
    let mut settings = Settings {
        data_dir: data_dir.clone(),
        ..Settings::default().on_free_loopback_ports()
    };
    // The documented broker port when it is free, so a newcomer can watch it.
    settings.mqtt.embedded_addr = ([127, 0, 0, 1], if broker_port_free { 11883 } else { 0 }).into();
    settings.stages.recovery_sweep_ms = 1_000;
    settings.stages.cache_refresh_ms = 1_000;
    let app = Application::build(settings.clone()).await?;
    let native: SocketAddr = app.native_addr();
    let mqtt = app.mqtt().clone();
    let db = app.db().clone();
    let spec = CitySpec {
        clients: opts.clients,
        carers_per_provider: 8,
        secret_seed: format!("demo-{}", std::process::id()),
        protocol: pingantong_sim::speaker::Mix::native(),
        native_from: None,
    };
    let city = seed_city(&db, &spec).await?;
    let console = format!("http://{}/", app.addrs().http);
    let password = demo_password();
    add_demo_accounts(&db, &password, city.carer_ids.first().copied()).await?;

    // The simulated phones answer for every carer through one client, so
    // they need a server's credential on the broker.
    let carer_login = app
        .mqtt_login(
            &pingantong::mqtt::acl::Principal::Server("demo-carers".into()),
            "system:demo",
        )
        .await?;
    let carer_stats = Arc::new(CarerStats::default());
    let carers = carer::spawn(
        &mqtt.host,
        mqtt.port,
        &settings.mqtt.topic_prefix,
        "demo-carers",
        Arc::clone(&carer_stats),
        Some(carer::Behaviour {
            accept_after: Duration::from_millis(800),
            arrive_after: Duration::from_secs(3),
            complete_after: Duration::from_secs(2),
            decline_every: 6,
        }),
        Some(carer_login),
    );
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let wait_sub = Instant::now();
    while !carer_stats.subscribed.load(Ordering::Acquire)
        && wait_sub.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // First, so it is seen: where to watch the run from a browser.
    let login = format!(
        "  console: {console}  login: {DEMO_OPERATOR} / {password}   \
         (also {DEMO_SUPERVISOR} and {DEMO_CARER}, same password)"
    );
    if opts.json {
        // Standard output carries only the JSON summary.
        eprintln!("{login}");
    } else {
        println!("{login}");
    }
    if !opts.json {
        println!(
            "Ping An Tong demo — {} clients in 6 Guangzhou districts, {} providers, {} carers",
            city.clients, city.providers, city.carers
        );
        println!(
            "  native pendants: {native}   MQTT broker (embedded): {}   data: {}",
            mqtt.url(),
            data_dir.display()
        );
        println!(
            "  {} pendants, {:.1} presses/s, heartbeat every {:?}, for {:?} (Ctrl-C ends early)",
            city.clients, opts.alarm_rate, opts.heartbeat, opts.duration
        );
    }
    let pendants: Vec<Pendant> = city
        .devices
        .iter()
        .map(|id| {
            Pendant::new(
                id.clone(),
                pingantong_sim::derive_secret(&spec.secret_seed, id),
            )
        })
        .collect();
    let fleet_stats = Arc::new(FleetStats::default());
    let started = Instant::now();
    let mut fleet = tokio::spawn(fleet::run(
        FleetConfig {
            lines: vec![Line::new(
                Arc::new(pingantong_sim::speaker::NativeSpeaker),
                native,
            )],
            pendants,
            heartbeat: opts.heartbeat,
            alarm_rate: opts.alarm_rate,
            technical_rate: 0.0,
            duration: opts.duration,
            retry_after: Duration::from_secs(3),
            grace: Duration::from_secs(10),
        },
        Arc::clone(&fleet_stats),
    ));
    let progress = {
        let (f, c, json) = (
            Arc::clone(&fleet_stats),
            Arc::clone(&carer_stats),
            opts.json,
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !json {
                    eprint!(
                        "\r  {:>4.0}s  pendants online {:>5}  presses {:>5}  acked {:>5}  heartbeats {:>6}  offers to carers {:>5}",
                        started.elapsed().as_secs_f64(),
                        f.connected.load(Ordering::Relaxed),
                        f.alarms_sent.load(Ordering::Relaxed),
                        f.alarms_acked.load(Ordering::Relaxed),
                        f.heartbeats_acked.load(Ordering::Relaxed),
                        c.offers.load(Ordering::Relaxed),
                    );
                }
            }
        })
    };
    let report = tokio::select! {
        r = &mut fleet => r?,
        _ = tokio::signal::ctrl_c() => {
            // End early, but still wait for every answer owed and summarise.
            fleet_stats.stop();
            fleet.await?
        }
    };
    progress.abort();
    if !opts.json {
        eprintln!();
    }
    // Give the incident stage and the broker a moment to deliver the last offers.
    let (_, _, mut recorded) = db.incident_counts().await?;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5) {
        let (_, _, d) = db.incident_counts().await?;
        if d == recorded && carer_stats.distinct_dispatches() as i64 >= d {
            break;
        }
        recorded = d;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = db.count_alarms(Some(EventKind::Sos)).await?
        + db.count_alarms(Some(EventKind::Fall)).await?;
    let (incidents, _, dispatches) = db.incident_counts().await?;
    let r = report;
    let mut missing = 0;
    for (device, seq) in &r.acked {
        if !db.alarm_stored(device, i64::from(*seq)).await? {
            missing += 1;
        }
    }
    let h = &r.alarm_latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let summary = DemoSummary {
        duration_s: started.elapsed().as_secs_f64(),
        clients: city.clients,
        carers: city.carers,
        alarms_sent: r.alarms_sent,
        alarms_acknowledged: r.alarms_acked,
        alarms_stored: stored,
        alarms_lost: r.alarms_lost() + missing,
        heartbeats_sent: r.heartbeats_sent,
        heartbeats_acknowledged: r.heartbeats_acked,
        incidents_opened: incidents,
        dispatched: carer_stats.distinct_dispatches(),
        dispatches_recorded: dispatches,
        carers_accepted: carer_stats.accepted.load(Ordering::Relaxed),
        carers_declined: carer_stats.declined.load(Ordering::Relaxed),
        carers_arrived: carer_stats.arrived.load(Ordering::Relaxed),
        carers_completed: carer_stats.completed.load(Ordering::Relaxed),
        ack_latency_ms: Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
        },
        database: db.backend().into(),
        mqtt: mqtt.url(),
    };
    carers.abort();
    shutdown.cancel();
    let _ = server.await;
    Ok(summary)
}

/// A fresh password for the demo's accounts: 12 letters and digits, none
/// that look alike.
fn demo_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The operator, supervisor and carer accounts the printed log-in opens.
async fn add_demo_accounts(db: &Db, password: &str, carer: Option<i64>) -> anyhow::Result<()> {
    let hash = hash_password(password)?;
    let mut accounts = vec![
        (DEMO_OPERATOR, Role::Operator, None),
        (DEMO_SUPERVISOR, Role::Supervisor, None),
    ];
    if let Some(id) = carer {
        accounts.push((DEMO_CARER, Role::Carer, Some(id)));
    }
    for (username, role, carer_id) in accounts {
        db.add_user(
            &NewUser {
                username,
                password_hash: &hash,
                role,
                carer_id,
                provider_id: None,
            },
            "demo",
        )
        .await?;
    }
    Ok(())
}

/// The summary as people read it.
pub fn print(s: &DemoSummary) {
    println!(
        "Summary ({:.1} s, {} on {}):",
        s.duration_s, s.database, s.mqtt
    );
    println!("  alarms sent          {:>7}", s.alarms_sent);
    println!(
        "  acknowledged         {:>7}   (stored in the database: {})",
        s.alarms_acknowledged, s.alarms_stored
    );
    println!(
        "  incidents opened     {:>7}   (further presses fold into the open incident)",
        s.incidents_opened
    );
    println!(
        "  dispatched to carers {:>7}   (offers received over MQTT; recorded: {})",
        s.dispatched, s.dispatches_recorded
    );
    println!(
        "  carers               {:>7} accepted, {} declined (offered to the next), {} arrived, {} completed",
        s.carers_accepted, s.carers_declined, s.carers_arrived, s.carers_completed
    );
    println!("  lost                 {:>7}", s.alarms_lost);
    println!(
        "  heartbeats           {:>7} sent, {} acknowledged",
        s.heartbeats_sent, s.heartbeats_acknowledged
    );
    println!(
        "  press -> ACK         p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        s.ack_latency_ms.p50, s.ack_latency_ms.p90, s.ack_latency_ms.p99, s.ack_latency_ms.max
    );
}
