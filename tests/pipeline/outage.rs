//! The database away for a while, pendants of every protocol (and a gateway
//! over MQTT) pressing SOS once and never resending: nothing read is dropped.
//!
//! PostgreSQL is taken away by a proxy of the test's own between the server
//! and the shared PostgreSQL, which cuts every connection and closes new ones
//! as soon as they open (as a stopped server does) — the shared server itself
//! is never touched.
//! SQLite is taken away by a second connection holding the write lock (as a
//! backup tool or the CLI beside the server can), which outlasts the server's
//! 10 s busy time-out. The outage lasts `PAT_OUTAGE_SECS` (default 12 s; the
//! issue's 60 s works too, slowly): longer than PostgreSQL's 5 s pool wait
//! and SQLite's 10 s busy time-out, so commits fail outright and are held,
//! not merely slow.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pingantong::store::{Db, NewDevice};
use pingantong_protocol::native::{NakReason, Reply};
use pingantong_protocol::sia_dc09::{self, Payload};
use pingantong_protocol::{DeviceId, EventKind, Location, eview, gt06, h02, watch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch as state;

use crate::helpers::*;

const HOME: Location = Location {
    lat: 23.1291,
    lon: 113.2644,
    accuracy_m: None,
};

fn outage_lasts() -> Duration {
    let secs = std::env::var("PAT_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    Duration::from_secs(secs)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A TCP proxy to PostgreSQL that can play a stopped server: every
/// connection cut, new ones closed as soon as they are accepted.
struct DbProxy {
    addr: SocketAddr,
    down: state::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = target.to_owned();
        let (down, watching) = state::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = watching.clone();
                if *cut.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Self { addr, down, task }
    }

    fn cut(&self) {
        self.down.send_replace(true);
    }

    fn restore(&self) {
        self.down.send_replace(false);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the database is taken away and given back.
enum Outage {
    Proxy(DbProxy),
    /// A connection of the test's own; it holds the write lock while `Some`.
    Lock(String, Option<sqlx::SqliteConnection>),
}

impl Outage {
    async fn begin(&mut self) {
        match self {
            Outage::Proxy(p) => p.cut(),
            Outage::Lock(url, conn) => {
                use sqlx::Connection;
                let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                *conn = Some(c);
            }
        }
    }

    async fn end(&mut self) {
        match self {
            Outage::Proxy(p) => p.restore(),
            Outage::Lock(_, conn) => {
                let mut c = conn.take().unwrap();
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}

async fn provision(db: &Db, client_id: i64, protocol: &str, id: &str) {
    db.upsert_device(&NewDevice {
        id: id.into(),
        protocol: protocol.into(),
        secret: Vec::new(),
        client_id: Some(client_id),
    })
    .await
    .unwrap();
}

/// SOS rows stored for this device.
async fn sos_stored(db: &Db, device: &str) -> i64 {
    let q = "SELECT COUNT(*) FROM alarms WHERE device_id = $1 AND kind = 'sos'";
    match db {
        Db::Sqlite { read, .. } => sqlx::query_scalar(q).bind(device).fetch_one(read).await,
        Db::Postgres(p, _) => sqlx::query_scalar(q).bind(device).fetch_one(p).await,
    }
    .unwrap()
}

/// Read until `want` bytes have come, or until `within` has passed.
async fn read_within(s: &mut TcpStream, want: usize, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < want {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

/// One DC-09 answer (it ends with CR), or what came within `within`.
async fn read_dc09(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !got.ends_with(b"\r") {
        let mut buf = [0u8; 256];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

async fn udp_answer(s: &UdpSocket, within: Duration) -> Vec<u8> {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(within, s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

/// Readiness as a balancer sees it: the time it took, the status, the body.
async fn readiness(app: &TestApp) -> (Duration, u16, String) {
    let started = Instant::now();
    let (code, body) = http_get(app.addrs.http, "/readyz").await;
    (started.elapsed(), code, body)
}

/// A server's settings, its database seen past the outage, the outage
/// ready to begin, and the small city provisioned before the server starts
/// (as a city is: every device is in the directory's memory).
struct Rig {
    settings: pingantong::Settings,
    dir: tempfile::TempDir,
    outage: Outage,
    /// Reads past the proxy: what is stored can be read during the outage.
    check: Db,
    city: City,
}

async fn rig(backend: Backend) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(backend, Broker::Embedded, dir.path());
    let direct = settings.store_config(2).unwrap();
    let outage = match backend {
        Backend::Postgres => {
            let proxy = DbProxy::start("127.0.0.1:5432").await;
            settings.database.url = Some(format!("postgres://postgres@{}/test", proxy.addr));
            Outage::Proxy(proxy)
        }
        Backend::Sqlite => Outage::Lock(direct.url.clone(), None),
    };
    let check = Db::connect(&direct).await.unwrap();
    let city = seed_small_city(&check).await;
    Rig {
        settings,
        dir,
        outage,
        check,
        city,
    }
}

async fn pendants_of_every_protocol_outlast_the_database(backend: Backend) {
    let Rig {
        settings: s,
        dir,
        mut outage,
        check,
        city,
    } = rig(backend).await;
    let c = city.client_id;
    let (imei, watch_id, h02_id, h02_udp_id) =
        ("864717003283581", "9059011020", "4970105243", "4970105244");
    let eview_id = "863921039996080";
    provision(&check, c, "gt06", imei).await;
    provision(&check, c, "watch", watch_id).await;
    provision(&check, c, "h02", h02_id).await;
    provision(&check, c, "h02", h02_udp_id).await;
    provision(&check, c, "eview", eview_id).await;
    provision(&check, c, "sia_dc09", "4F21").await;
    provision(&check, c, "sia_dc09", "4F22").await;
    let gateway = unique("GW").replace('_', "-");
    provision(&check, c, "mqtt", &gateway).await;
    let app = TestApp::spawn_with(s, Some(dir)).await;
    // A stranger's pendant: the directory must be read, and it is away too.
    let stranger = unique("PX").replace('_', "-");

    // Connected before the outage, as pendants are; the GT06 logged in.
    let mut native = Device::connect(app.native).await;
    let mut unknown = Device::connect(app.native).await;
    let mut gt06 = TcpStream::connect(app.addrs.gt06).await.unwrap();
    let login = gt06::encode_login(imei, 1).unwrap();
    gt06.write_all(&login).await.unwrap();
    assert_eq!(
        read_within(&mut gt06, 10, Duration::from_secs(10)).await,
        gt06::ack(0x01, 1, false).to_vec()
    );
    let mut watch = TcpStream::connect(app.addrs.watch).await.unwrap();
    let mut h02 = TcpStream::connect(app.addrs.h02).await.unwrap();
    let mut eview = TcpStream::connect(app.addrs.eview).await.unwrap();
    let mut dc09 = TcpStream::connect(app.addrs.dc09).await.unwrap();
    let h02_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dc09_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let acks = format!("{prefix}/v1/devices/{gateway}/ack");
    let status = format!("{prefix}/v1/server/{}/status", app.settings.instance_id);
    let mqtt = MqttProbe::connect(&host, port, &[acks.clone(), status.clone()]).await;
    eventually("the server's retained status", || async {
        let online = mqtt.on(&status).iter().any(|s| s["status"] == "online");
        online.then_some(())
    })
    .await;
    let (_, code, _) = readiness(&app).await;
    assert_eq!(code, 200, "ready before the outage");

    outage.begin().await;
    let began = Instant::now();
    // Every pendant presses SOS once, and never sends it again.
    native
        .send_raw(&frame(
            &event(&city.device, 41, EventKind::Sos),
            &city.secret,
        ))
        .await;
    unknown
        .send_raw(&frame(&event(&stranger, 42, EventKind::Sos), b"no key"))
        .await;
    gt06.write_all(&gt06::encode_alarm(EventKind::Sos, Some(HOME), now_ms(), 0x0102).unwrap())
        .await
        .unwrap();
    watch
        .write_all(&watch::encode_alarm(
            "SG",
            watch_id,
            1 << 16,
            Some(HOME),
            now_ms(),
            80,
        ))
        .await
        .unwrap();
    let h02_device = DeviceId::parse(h02_id).unwrap();
    h02.write_all(&h02::encode_v1(
        &h02_device,
        now_ms(),
        HOME,
        &[EventKind::Sos],
    ))
    .await
    .unwrap();
    let h02_udp_device = DeviceId::parse(h02_udp_id).unwrap();
    let v1 = h02::encode_v1(&h02_udp_device, now_ms(), HOME, &[EventKind::Sos]);
    h02_udp.send_to(&v1, app.addrs.h02_udp).await.unwrap();
    let eview_device = DeviceId::parse(eview_id).unwrap();
    let eview_sos = eview::encode_alarm(&eview_device, 0x1e, EventKind::Sos, Some(HOME), None);
    eview.write_all(&eview_sos).await.unwrap();
    let cid = |account: &str| {
        let data = format!("#{account}|1101 01 015");
        sia_dc09::encode_message(
            account,
            7,
            None,
            Some("0"),
            Payload::AdmCid(&data),
            None,
            Some(now_ms() as i64),
        )
        .unwrap()
    };
    dc09.write_all(&cid("4F21")).await.unwrap();
    let sos = serde_json::json!({"v": 1, "seq": 43, "kind": "sos", "time": now_ms()});
    mqtt.publish(&format!("{prefix}/v1/devices/{gateway}/events"), sos)
        .await;
    dc09_udp
        .send_to(&cid("4F22"), app.addrs.dc09_udp)
        .await
        .unwrap();

    // Readiness says which part is down, and says it within a second of
    // being asked, however long the database takes not to answer.
    let mut said_down = None;
    for _ in 0..20 {
        let (took, code, body) = readiness(&app).await;
        assert!(took < Duration::from_secs(1), "/readyz took {took:?}");
        if code == 503 {
            assert!(body.contains(r#""database":"down""#), "{body}");
            said_down = Some(began.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said_down = said_down.expect("/readyz answered 503 during the outage");
    assert!(
        said_down < Duration::from_secs(3),
        "503 after {said_down:?}"
    );

    // DC-09 is told at once that its message cannot be processed now, so the
    // panel may report over its backup path.
    let duh = sia_dc09::parse_message(&read_dc09(&mut dc09, Duration::from_secs(5)).await, None)
        .expect("a DC-09 answer during the outage");
    assert_eq!((duh.token.as_str(), duh.seq_text.as_str()), ("DUH", "0007"));
    let duh = udp_answer(&dc09_udp, Duration::from_secs(5)).await;
    let duh = sia_dc09::parse_message(&duh, None).expect("a DC-09 answer over UDP");
    assert_eq!((duh.token.as_str(), duh.seq_text.as_str()), ("DUH", "0007"));

    // Nothing else is answered while nothing can be stored: an answer means stored.
    let rest = outage_lasts().saturating_sub(began.elapsed());
    tokio::time::sleep(rest.saturating_sub(Duration::from_millis(500))).await;
    for (name, s) in [
        ("gt06", &mut gt06),
        ("watch", &mut watch),
        ("h02", &mut h02),
        ("eview", &mut eview),
        ("native", &mut native.stream),
    ] {
        let early = read_within(s, 1, Duration::from_millis(50)).await;
        assert!(
            early.is_empty(),
            "{name} answered during the outage: {early:?}"
        );
    }
    assert!(mqtt.on(&acks).is_empty(), "MQTT answered during the outage");
    let (_, code, body) = readiness(&app).await;
    assert_eq!(code, 503, "still down: {body}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    outage.end().await;

    // The database returns: every pendant is answered, none having resent.
    let (reply, verified) = native.reply(&city.secret).await.expect("native answered");
    assert!(matches!(reply, Reply::Ack { seq: 41, .. }), "{reply:?}");
    assert!(verified);
    let (reply, _) = unknown.reply(b"no key").await.expect("stranger answered");
    assert!(
        matches!(
            reply,
            Reply::Nak {
                seq: 42,
                reason: NakReason::UnknownDevice,
                ..
            }
        ),
        "{reply:?}"
    );
    let wait = Duration::from_secs(15);
    assert_eq!(
        read_within(&mut gt06, 10, wait).await,
        gt06::ack(0x16, 0x0102, false).to_vec()
    );
    let want = b"[SG*9059011020*0002*AL]";
    assert_eq!(read_within(&mut watch, want.len(), wait).await, want);
    let got = read_within(&mut h02, 20, wait).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("*HQ,4970105243,V4,V1,"), "{got}");
    let got = udp_answer(&h02_udp, wait).await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("*HQ,4970105244,V4,V1,"), "{got}");
    let ack = eview::ack(0x1e);
    assert_eq!(read_within(&mut eview, ack.len(), wait).await, ack.to_vec());

    let ack = eventually_for("the MQTT ACK", wait, || async {
        mqtt.on(&acks).into_iter().next()
    })
    .await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["status"].as_str()),
        (Some(43), Some("stored"))
    );

    // Each stored once, the DUHed DC-09 messages included.
    for device in [
        city.device.as_str(),
        stranger.as_str(),
        imei,
        watch_id,
        h02_id,
        h02_udp_id,
        eview_id,
        "4F21",
        "4F22",
        gateway.as_str(),
    ] {
        let n = eventually_for("stored", wait, || async {
            let n = sos_stored(&check, device).await;
            (n > 0).then_some(n)
        })
        .await;
        assert_eq!(n, 1, "{device}: stored {n} times");
    }
    let (code, body) = eventually("ready again", || async {
        let (_, code, body) = readiness(&app).await;
        (code == 200).then_some((code, body))
    })
    .await;
    assert!(body.contains(r#""held":0"#), "{code} {body}");
    let (_, metrics) = http_get(app.addrs.http, "/metrics").await;
    for name in ["pat_database_up", "pat_store_held_records"] {
        assert!(metrics.contains(name), "{name} missing");
    }
    app.stop().await;
    check.close().await;
}

#[tokio::test]
async fn sqlite_locked_away_nothing_read_is_dropped() {
    pendants_of_every_protocol_outlast_the_database(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_away_nothing_read_is_dropped() {
    pendants_of_every_protocol_outlast_the_database(Backend::Postgres).await;
}

/// A stop while the database is away ends (within the drain and a commit
/// attempt), and what was held is given up honestly: the pendant is told to
/// send again, and nothing was stored behind its back.
async fn a_stop_during_an_outage_ends_and_the_pendant_is_told_to_resend(backend: Backend) {
    let mut rig = rig(backend).await;
    let app = TestApp::spawn_with(rig.settings, Some(rig.dir)).await;
    let mut native = Device::connect(app.native).await;
    // Started: a server whose database is away while it starts gives up.
    eventually("ready", || async {
        (readiness(&app).await.1 == 200).then_some(())
    })
    .await;
    rig.outage.begin().await;
    let sos = frame(
        &event(&rig.city.device, 51, EventKind::Sos),
        &rig.city.secret,
    );
    native.send_raw(&sos).await;
    eventually("/readyz says the database is down", || async {
        let (_, code, body) = readiness(&app).await;
        (code == 503 && body.contains(r#""database":"down""#)).then_some(())
    })
    .await;
    let answer =
        tokio::spawn(
            async move { read_within(&mut native.stream, 1, Duration::from_secs(30)).await },
        );
    // The drain's 10 s; then the writer gives up at once, but on SQLite
    // the other stages' statements queued on the one write connection each
    // wait out the 10 s busy time-out before the database can close (about
    // 30 s in all here).
    app.stop_within(Duration::from_secs(45)).await;
    let answer = answer.await.unwrap();
    let mut buf = bytes::BytesMut::from(&answer[..]);
    let raw = pingantong_protocol::native::split_frame(&mut buf)
        .unwrap()
        .expect("an answer before the connection closed");
    let (reply, _) = Reply::parse(&raw, &rig.city.secret).unwrap();
    assert!(
        matches!(
            reply,
            Reply::Nak {
                seq: 51,
                reason: NakReason::Unavailable,
                ..
            }
        ),
        "{reply:?}"
    );
    rig.outage.end().await;
    assert_eq!(sos_stored(&rig.check, &rig.city.device).await, 0);
    rig.check.close().await;
}

#[tokio::test]
async fn sqlite_a_stop_during_an_outage_ends() {
    a_stop_during_an_outage_ends_and_the_pendant_is_told_to_resend(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_stop_during_an_outage_ends() {
    a_stop_during_an_outage_ends_and_the_pendant_is_told_to_resend(Backend::Postgres).await;
}
