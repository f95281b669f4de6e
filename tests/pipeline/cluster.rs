//! Two servers on one PostgreSQL: a pendant beating on one is never taken
//! for silent by the other; a silence is raised once; a server's devices are
//! taken up by the other when it stops; an instance id is held by one
//! running server only.

use std::sync::Arc;
use std::time::Duration;

use pingantong::Settings;
use pingantong::app::{AppError, Application};
use pingantong::cluster::owner;
use pingantong::store::{Db, secret::Secret};
use pingantong_protocol::EventKind;

use crate::helpers::*;

/// Three seconds of silence allowed (1 s beats, two missed, 1 s grace),
/// looked at ten times a second; a one-second lease.
fn clustered(dir: &std::path::Path, instance: &str, schema: &str) -> Settings {
    let mut s = test_settings(Backend::Postgres, Broker::Embedded, dir);
    s.database.schema = Some(schema.to_owned());
    s.instance_id = instance.to_owned();
    s.keys.data_key = Some(Secret::new("a data key shared by every server, 32+ chars"));
    supervise(&mut s, 1, 2, 1, 100);
    s.stages.server_lease_ms = 1_000;
    s
}

async fn beat(app: &TestApp, city: &City, seq: u32) {
    let mut dev = Device::connect(app.native).await;
    let (reply, _) = dev
        .send(
            &event(&city.device, seq, EventKind::Heartbeat),
            &city.secret,
        )
        .await;
    assert!(
        matches!(reply, pingantong_protocol::native::Reply::Ack { .. }),
        "{reply:?}"
    );
}

async fn offline_alarms(db: &Db) -> i64 {
    db.count_alarms(Some(EventKind::Offline)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_supervision_without_false_or_double_alarms() {
    let schema = unique("t");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name_a = format!("a-{schema}");
    let a = TestApp::spawn_with(clustered(dir_a.path(), &name_a, &schema), None).await;
    let first = seed_small_city(&a.db).await;
    // The second server is the one that looks after the first pendant: a
    // server that kept deadlines in its own memory would raise it offline.
    let name_b = (0..)
        .map(|i| format!("b{i}-{schema}"))
        .find(|b| owner(&[name_a.clone(), b.clone()], &first.device) == Some(b.as_str()))
        .unwrap();
    beat(&a, &first, 1).await;
    eventually_for(
        "the pendant known as heard",
        Duration::from_secs(30),
        || async {
            a.db.watched_devices()
                .await
                .unwrap()
                .iter()
                .any(|(id, _)| *id == first.device)
                .then_some(())
        },
    )
    .await;
    let b = TestApp::spawn_with(clustered(dir_b.path(), &name_b, &schema), None).await;
    let (status, body) = http_get(b.addrs.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["lease"], "held");
    assert_eq!(ready["servers"].as_array().unwrap().len(), 2, "{body}");

    // Seven seconds of beats on the first server, twice the allowance.
    for seq in 2..16 {
        beat(&a, &first, seq).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        offline_alarms(&a.db).await,
        0,
        "a pendant beating on one server was taken for silent by the other"
    );

    // Silence: raised once, however many servers watch it.
    eventually_for("the silence raised", Duration::from_secs(30), || async {
        (offline_alarms(&a.db).await >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(offline_alarms(&a.db).await, 1, "raised twice");

    // A pendant first heard after the second server started, only ever on
    // the first: when the first stops, the second takes it up.
    let second = seed_small_city(&a.db).await;
    for seq in 1..4 {
        beat(&a, &second, seq).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    a.stop().await;
    let servers = b.db.servers().await.unwrap();
    let now = pingantong::store::now_ms();
    assert!(
        servers
            .iter()
            .all(|s| s.is_up(now) == (s.instance_id == name_b)),
        "the stopped server left at once: {servers:?}"
    );
    eventually_for(
        "the stopped server's pendant raised by the other",
        Duration::from_secs(30),
        || async { (offline_alarms(&b.db).await >= 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(offline_alarms(&b.db).await, 2, "raised twice");

    // A second process with a running server's instance id is refused.
    let dir_twin = tempfile::tempdir().unwrap();
    let twin = clustered(dir_twin.path(), &name_b, &schema);
    match Application::build(twin).await {
        Err(e @ AppError::Cluster(_)) => {
            let why = e.to_string();
            assert!(
                why.contains(&name_b) && why.contains("instance_id"),
                "{why}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second server ran with a running server's instance id"),
    }
    // The refused process took nothing: the running server keeps its lease.
    let (status, body) = http_get(b.addrs.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    b.stop().await;
    drop((dir_a, dir_b));
}

/// Debian's HAProxy on a loopback port in front of the servers' native
/// listeners: the PROXY protocol (v2) to each, health checks on each one's
/// `/readyz`, a connection to a dead server sent to another. Stopped when
/// dropped.
struct Haproxy {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(servers: &[(std::net::SocketAddr, std::net::SocketAddr)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut backends = String::new();
        for (i, (native, http)) in servers.iter().enumerate() {
            backends.push_str(&format!(
                "    server s{i} {native} send-proxy-v2 check port {}\n",
                http.port()
            ));
        }
        let cfg = format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    \
             timeout server 30s\n    retries 3\n    option redispatch\n\
             frontend native\n    bind 127.0.0.1:{port}\n    default_backend servers\n\
             backend servers\n    balance roundrobin\n    option httpchk GET /readyz\n    \
             http-check expect status 200\n    default-server inter 200ms fall 1 rise 1\n{backends}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (Debian's package; ops/test.sh installs it)");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        eventually("haproxy listening", || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        // Every server checked up once (checks every 200 ms, one to rise).
        tokio::time::sleep(Duration::from_millis(800)).await;
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A press through the balancer, answered; the device's own address.
async fn press_through(lb: &Haproxy, city: &City, seq: u32) -> std::net::SocketAddr {
    let mut dev = Device::connect(lb.addr).await;
    let me = dev.stream.local_addr().unwrap();
    let (reply, authentic) = dev
        .send(&event(&city.device, seq, EventKind::Sos), &city.secret)
        .await;
    assert!(
        authentic && matches!(reply, pingantong_protocol::native::Reply::Ack { .. }),
        "{reply:?}"
    );
    me
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_a_live_server_through_haproxy() {
    let schema = unique("t");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let behind = |dir: &std::path::Path, name: &str| {
        let mut s = clustered(dir, name, &schema);
        s.devices.proxy_protocol = true;
        s
    };
    let a = TestApp::spawn_with(behind(dir_a.path(), &format!("a-{schema}")), None).await;
    let b = TestApp::spawn_with(behind(dir_b.path(), &format!("b-{schema}")), None).await;
    let city = seed_small_city(&a.db).await;
    let lb = Haproxy::start(&[(a.native, a.addrs.http), (b.native, b.addrs.http)]).await;

    // Presses through the balancer, spread over both servers: each answered
    // after its commit, and kept with the device's address, not the balancer's.
    let mut devices = Vec::new();
    for seq in 1..=4 {
        devices.push(press_through(&lb, &city, seq).await.to_string());
    }
    let log =
        a.db.alarm_log(&pingantong::store::AlarmLogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut peers: Vec<String> = log.iter().map(|r| r.peer.clone()).collect();
    peers.sort();
    devices.sort();
    assert_eq!(peers, devices, "each alarm kept with its device's address");

    // A device that reaches a listener directly, past the balancer, is not heard.
    let mut direct = Device::connect(a.native).await;
    direct
        .send_raw(&frame(
            &event(&city.device, 90, EventKind::Sos),
            &city.secret,
        ))
        .await;
    assert!(
        direct.reply(&city.secret).await.is_none(),
        "closed unanswered"
    );

    // One server stops: the balancer sees it at its next check, and every
    // press after reaches the other.
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for seq in 5..=8 {
        press_through(&lb, &city, seq).await;
    }
    assert_eq!(
        b.db.count_alarms(Some(EventKind::Sos)).await.unwrap(),
        8,
        "every press answered is stored, none besides"
    );
    drop(lb);
    b.stop().await;
    drop((dir_a, dir_b));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kill -9` of one of two server processes behind HAProxy while a fleet
/// presses and beats through it: every press answered is stored once, the
/// pendants are answered by the other server, and no pendant beating all
/// along is raised offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_loses_nothing_and_raises_no_false_alarm() {
    use pingantong_sim::fleet::FleetStats;
    use std::sync::atomic::Ordering::Relaxed;

    const SEED: &str = "cluster-kill";
    const DATA_KEY: &str = "a data key every server of this test shares, 32+";
    let schema = unique("crash");
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&pingantong::store::StoreConfig {
        url: POSTGRES_URL.into(),
        schema: Some(schema.clone()),
        max_connections: 2,
        master_key: Arc::new(
            pingantong::vault::MasterKey::configured_or_kept(
                Some(&Secret::new(DATA_KEY)),
                dir.path(),
            )
            .unwrap(),
        ),
    })
    .await
    .unwrap();
    let (_, pendants) = crate::crash::native_city(&db, SEED).await;
    // Behind the balancer; a 1 s lease; 6 s of silence allowed.
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        "[devices]\nproxy_protocol = true\n\n[stages]\nserver_lease_ms = 1000\n\n\
         [supervision]\nheartbeat_default_secs = 2\nheartbeat_missed = 2\n\
         heartbeat_grace_secs = 2\ntick_ms = 100\nheartbeat_secs = { native = 2 }\n",
    )
    .unwrap();
    let mut servers = Vec::new();
    let mut ends = Vec::new();
    for name in ["a", "b"] {
        let (native, http) = (free_port(), free_port());
        let data = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--config",
            &config.display().to_string(),
            "--instance-id",
            &format!("{name}-{schema}"),
            "--database-url",
            POSTGRES_URL,
            "--database-schema",
            &schema,
            "--data-dir",
            &data.path().display().to_string(),
            "--data-key",
            DATA_KEY,
            "--native-addr",
            &format!("127.0.0.1:{native}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--embedded-mqtt-addr",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        for flag in [
            "--gt06-addr",
            "--watch-addr",
            "--h02-addr",
            "--eview-addr",
            "--dc09-addr",
        ] {
            args.extend([flag.into(), "127.0.0.1:0".into()]);
        }
        servers.push((crate::crash::start_server(&args).await, data));
        ends.push((
            std::net::SocketAddr::from(([127, 0, 0, 1], native)),
            std::net::SocketAddr::from(([127, 0, 0, 1], http)),
        ));
    }
    let lb = Haproxy::start(&ends).await;

    let stats = Arc::new(FleetStats::default());
    let beating = Duration::from_secs(6);
    let started = pingantong::store::now_ms();
    let fleet = crate::crash::burst(lb.addr, pendants, 100.0, beating, &stats);
    eventually("alarms flowing", || async {
        (stats.alarms_acked.load(Relaxed) >= 50).then_some(())
    })
    .await;
    servers[0].0.kill().await.unwrap();
    let acked_before_kill = stats.alarms_acked.load(Relaxed);
    let report = fleet.await.unwrap();

    assert!(
        report.reconnects >= 1,
        "the pendants on the killed server noticed"
    );
    assert!(
        report.alarms_acked > acked_before_kill,
        "answered by the other server after the kill"
    );
    crate::crash::every_answer_stored_once(&db, &report).await;
    // No pendant beating through the failover was taken for silent (they
    // fall silent once the fleet stops, which is not counted).
    let stopped_beating = started + beating.as_millis() as i64;
    let offline = db
        .alarm_log(&pingantong::store::AlarmLogQuery {
            kind: Some("offline"),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let false_alarms: Vec<_> = offline
        .iter()
        .filter(|r| r.received_at <= stopped_beating)
        .map(|r| r.device_id.clone())
        .collect();
    assert!(
        false_alarms.is_empty(),
        "raised offline while beating: {false_alarms:?}"
    );
    drop(lb);
    servers[1].0.kill().await.unwrap();
}
