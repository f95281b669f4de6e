//! SIGKILL in the middle of a burst: every acknowledged alarm survives, and
//! retried frames open no second incident.

use std::sync::Arc;
use std::time::Duration;

use pingantong::store::Db;
use pingantong_protocol::EventKind;
use pingantong_sim::city::{CitySpec, seed_city};
use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

const SEED: &str = "crash-test";

/// Twenty residents with native pendants keyed from `seed`, and those pendants.
pub(crate) async fn native_city(db: &Db, seed: &str) -> (usize, Vec<Pendant>) {
    let city = seed_city(
        db,
        &CitySpec {
            clients: 20,
            carers_per_provider: 2,
            secret_seed: seed.into(),
            protocol: pingantong_sim::speaker::Mix::native(),
            native_from: None,
        },
    )
    .await
    .unwrap();
    let pendants = city
        .devices
        .iter()
        .map(|id| Pendant::new(id.clone(), pingantong_sim::derive_secret(seed, id)))
        .collect();
    (city.devices.len(), pendants)
}

/// The pendants press `rate` times a second between them and beat every
/// 200 ms through `addr` for `duration`, resending a press unanswered
/// after 500 ms, and wait up to 20 s for the last answers.
pub(crate) fn burst(
    addr: std::net::SocketAddr,
    pendants: Vec<Pendant>,
    rate: f64,
    duration: Duration,
    stats: &Arc<FleetStats>,
) -> tokio::task::JoinHandle<fleet::FleetReport> {
    tokio::spawn(fleet::run(
        FleetConfig {
            lines: vec![Line::new(
                Arc::new(pingantong_sim::speaker::NativeSpeaker),
                addr,
            )],
            pendants,
            heartbeat: Duration::from_millis(200),
            alarm_rate: rate,
            technical_rate: 0.0,
            duration,
            retry_after: Duration::from_millis(500),
            grace: Duration::from_secs(20),
        },
        Arc::clone(stats),
    ))
}

/// Every press the pendants saw answered is stored exactly once and nothing
/// besides, and each is handled once: it opened an incident or folded into
/// one, never two incidents for one frame.
pub(crate) async fn every_answer_stored_once(db: &Db, report: &fleet::FleetReport) {
    assert_eq!(
        report.alarms_lost(),
        0,
        "unanswered: {:?}",
        report.unanswered
    );
    for (device, seq) in &report.acked {
        let copies = db.alarm_states(device, i64::from(*seq)).await.unwrap();
        assert_eq!(copies.len(), 1, "{device} seq {seq}: {copies:?}");
    }
    let alarms = db.count_alarms(Some(EventKind::Sos)).await.unwrap()
        + db.count_alarms(Some(EventKind::Fall)).await.unwrap();
    assert_eq!(alarms as u64, report.alarms_acked, "stored = answered");
    eventually("every alarm handled", || async {
        let owed = db.unprocessed_alarms(0, 1, None).await.unwrap();
        let incidents = db.incidents_overview().await.unwrap();
        let presses: i64 = incidents.iter().map(|i| i.2).sum();
        (owed.is_empty() && presses == alarms).then_some(())
    })
    .await;
}

pub(crate) async fn start_server(args: &[String]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pingantong"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("pingantong serving: native=") {
                return;
            }
        }
        panic!("server exited before saying where it listens");
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("server prints where it listens within 30 s");
    child
}

async fn crash_in_the_middle_of_a_burst(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let schema = unique("crash");
    let (url, schema_arg) = match backend {
        Backend::Sqlite => (format!("sqlite://{}/crash.db", dir.path().display()), None),
        Backend::Postgres => (POSTGRES_URL.to_owned(), Some(schema.clone())),
    };
    let db = Db::connect(&store_config(url.clone(), schema_arg.clone(), dir.path()))
        .await
        .unwrap();
    let (residents, pendants) = native_city(&db, SEED).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let native = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--database-url".to_string(),
        url,
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--native-addr".into(),
        native.clone(),
        "--embedded-mqtt-addr".into(),
        "127.0.0.1:0".into(),
    ];
    for flag in [
        "--http-addr",
        "--gt06-addr",
        "--watch-addr",
        "--h02-addr",
        "--eview-addr",
        "--dc09-addr",
    ] {
        args.extend([flag.into(), "127.0.0.1:0".into()]);
    }
    if let Some(s) = schema_arg {
        args.extend(["--database-schema".into(), s]);
    }
    let mut server = start_server(&args).await;

    let stats = Arc::new(FleetStats::default());
    let fleet = burst(
        native.parse().unwrap(),
        pendants,
        150.0,
        Duration::from_secs(4),
        &stats,
    );
    // Kill the server once alarms are flowing, hard: no shutdown, no flush.
    eventually("alarms flowing", || async {
        (stats
            .alarms_acked
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 50)
            .then_some(())
    })
    .await;
    server.kill().await.unwrap();
    let acked_before_kill = stats
        .alarms_acked
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = start_server(&args).await;
    let report = fleet.await.unwrap();

    assert!(report.reconnects >= 1, "the fleet noticed the crash");
    assert!(
        report.alarms_acked > acked_before_kill,
        "alarms acknowledged after the restart too"
    );
    every_answer_stored_once(&db, &report).await;
    let incidents = db.incidents_overview().await.unwrap();
    assert!(
        incidents.len() <= residents,
        "one open incident per person at most"
    );
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sqlite() {
    crash_in_the_middle_of_a_burst(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres() {
    crash_in_the_middle_of_a_burst(Backend::Postgres).await;
}
