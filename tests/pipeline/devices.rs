//! Third-party device protocols end to end: frame in → committed → reply out → incident.

use std::time::Duration;

use bytes::Bytes;
use pingantong::store::NewDevice;
use pingantong_protocol::{DeviceId, EventKind, Location, eview, gt06, h02, watch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::helpers::*;

const HOME: Location = Location {
    lat: 23.1291,
    lon: 113.2644,
    accuracy_m: None,
};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Give the small city's resident a device of `protocol` with this id.
async fn provision(app: &TestApp, city: &City, protocol: &str, id: &str) {
    app.db
        .upsert_device(&NewDevice {
            id: id.into(),
            protocol: protocol.into(),
            secret: Vec::new(),
            client_id: Some(city.client_id),
        })
        .await
        .unwrap();
}

/// Send `frame`, then read until `want` bytes have come back.
async fn exchange(s: &mut TcpStream, frame: &[u8], want: usize) -> Vec<u8> {
    s.write_all(frame).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < want {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// The SOS reached the resident's incident and the nearest carer's phone.
async fn sos_reached_the_carer(app: &TestApp, city: &City, device: &str) {
    let offer = eventually("the carer's offer", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    assert_eq!(offer.carer_id, city.near_carer);
    let incidents = app.db.incidents_overview().await.unwrap();
    // One incident for the person; a low battery reported with the alarm is
    // a technical job of its own, never folded into the call for help.
    let (person, technical): (Vec<_>, Vec<_>) = incidents
        .iter()
        .partition(|i| !i.1.starts_with("technical:"));
    assert_eq!(person.len(), 1, "{incidents:?}");
    assert_eq!(person[0].1, format!("client:{}", city.client_id));
    assert!(person[0].3, "verified: the device is provisioned");
    for t in technical {
        assert!(t.1.starts_with(&format!("technical:{device}:")), "{t:?}");
    }
    assert!(
        app.db.count_alarms(Some(EventKind::Sos)).await.unwrap() >= 1,
        "{device}"
    );
}

#[tokio::test]
async fn gt06_login_then_sos() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let imei = "864717003283581";
    provision(&app, &city, "gt06", imei).await;
    let mut s = TcpStream::connect(app.addrs.gt06).await.unwrap();
    // The corpus's login frame and the reply a real device expects.
    let login = hex::decode("78780d01086471700328358100093f040d0a").unwrap();
    let reply = exchange(&mut s, &login, 10).await;
    assert_eq!(hex::encode(reply), "78780501000955940d0a");
    let alarm = gt06::encode_alarm(EventKind::Sos, Some(HOME), now_ms(), 0x0102).unwrap();
    let reply = exchange(&mut s, &alarm, 10).await;
    assert_eq!(reply, gt06::ack(0x16, 0x0102, false).to_vec());
    // The ACK went out after the commit: the row is there already.
    let stored = app.db.alarm_states(imei, 0x0102).await.unwrap();
    assert_eq!(stored[0].0, "verified");
    sos_reached_the_carer(&app, &city, imei).await;
    app.stop().await;
}

#[tokio::test]
async fn gt06_unknown_imei_is_answered_and_its_sos_is_unverified() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let mut s = TcpStream::connect(app.addrs.gt06).await.unwrap();
    let login = gt06::encode_login("359710049999999", 1).unwrap();
    let reply = exchange(&mut s, &login, 10).await;
    assert_eq!(reply, gt06::ack(0x01, 1, false).to_vec());
    let alarm = gt06::encode_alarm(EventKind::Sos, None, now_ms(), 2).unwrap();
    exchange(&mut s, &alarm, 10).await;
    let incidents = eventually("the unverified incident", || async {
        let i = app.db.incidents_overview().await.unwrap();
        (!i.is_empty()).then_some(i)
    })
    .await;
    assert_eq!(incidents[0].1, "unverified:359710049999999");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.carers.offers().is_empty(), "never offered to a carer");
    app.stop().await;
}

#[tokio::test]
async fn watch_alarm_and_link_keep_alive() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let id = "9059011020";
    provision(&app, &city, "watch", id).await;
    let mut s = TcpStream::connect(app.addrs.watch).await.unwrap();
    let lk = watch::encode_lk("SG", id, Some(80));
    let want = b"[SG*9059011020*0002*LK]";
    assert_eq!(exchange(&mut s, &lk, want.len()).await, want);
    // SOS (bit 16) and low battery (bit 0) in one status word: both are kept.
    let al = watch::encode_alarm("SG", id, (1 << 16) | 1, Some(HOME), now_ms(), 9);
    let want = b"[SG*9059011020*0002*AL]";
    assert_eq!(exchange(&mut s, &al, want.len()).await, want);
    assert_eq!(
        app.db
            .count_alarms(Some(EventKind::LowBattery))
            .await
            .unwrap(),
        1
    );
    sos_reached_the_carer(&app, &city, id).await;
    app.stop().await;
}

#[tokio::test]
async fn h02_over_tcp_and_udp() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let id = "4970105243";
    provision(&app, &city, "h02", id).await;
    let device = DeviceId::parse(id).unwrap();
    // TCP: a heartbeat, echoed.
    let mut s = TcpStream::connect(app.addrs.h02).await.unwrap();
    let hb = h02::encode_heartbeat(&device, Some(90));
    let reply = exchange(&mut s, &hb, 10).await;
    assert!(
        reply.starts_with(b"*HQ,4970105243,HTBT"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // UDP: an SOS position, answered to the sender after the commit.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let v1 = h02::encode_v1(&device, now_ms(), HOME, &[EventKind::Sos]);
    udp.send_to(&v1, app.addrs.h02_udp).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), udp.recv_from(&mut buf))
        .await
        .expect("a UDP reply")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(reply.starts_with("*HQ,4970105243,V4,V1,"), "{reply}");
    sos_reached_the_carer(&app, &city, id).await;
    app.stop().await;
}

#[tokio::test]
async fn eview_sos_is_acked_after_the_commit() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let imei = "863921039996080";
    provision(&app, &city, "eview", imei).await;
    let device = DeviceId::parse(imei).unwrap();
    let mut s = TcpStream::connect(app.addrs.eview).await.unwrap();
    let frame = eview::encode_alarm(&device, 0x1e, EventKind::Sos, Some(HOME), Some(70));
    let ack: Bytes = eview::ack(0x1e);
    assert_eq!(exchange(&mut s, &frame, ack.len()).await, ack.to_vec());
    sos_reached_the_carer(&app, &city, imei).await;
    app.stop().await;
}

#[tokio::test]
async fn garbage_on_a_device_port_is_kept_and_the_server_carries_on() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let mut s = TcpStream::connect(app.addrs.gt06).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // Not a GT06 device: the connection is closed, the bytes are kept.
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    eventually("the rejected bytes kept", || async {
        (app.db.count_rejected_frames().await.unwrap() >= 1).then_some(())
    })
    .await;
    let mut again = TcpStream::connect(app.addrs.gt06).await.unwrap();
    let login = gt06::encode_login("864717003283581", 9).unwrap();
    assert_eq!(
        exchange(&mut again, &login, 10).await,
        gt06::ack(0x01, 9, false).to_vec()
    );
    app.stop().await;
}

async fn read_dc09(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a DC-09 answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn sia_dc09_plain_and_encrypted_over_tcp_and_udp() {
    use pingantong_protocol::sia_dc09::{self, Payload};
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let key = b"0123456789ABCDEF".to_vec();
    // Provisioned after start: the directory's sweep brings the key into memory.
    app.db
        .upsert_device(&NewDevice {
            id: "4F21".into(),
            protocol: "sia_dc09".into(),
            secret: key.clone(),
            client_id: Some(city.client_id),
        })
        .await
        .unwrap();
    let now = now_ms() as i64;
    // Contact ID 101 (personal emergency), encrypted with the account's key.
    let cid = sia_dc09::encode_message(
        "4F21",
        7,
        Some("12"),
        Some("3"),
        Payload::AdmCid("#4F21|1101 01 015"),
        Some(&key),
        Some(now),
    )
    .unwrap();
    let mut s = TcpStream::connect(app.addrs.dc09).await.unwrap();
    let answer = eventually(
        "the encrypted message answered once the key is known",
        || {
            let (cid, addr) = (cid.clone(), app.addrs.dc09);
            async move {
                let mut s = TcpStream::connect(addr).await.ok()?;
                s.write_all(&cid).await.ok()?;
                let mut buf = [0u8; 256];
                let n = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                (n > 0).then(|| buf[..n].to_vec())
            }
        },
    )
    .await;
    let msg = sia_dc09::parse_message(&answer, Some(&key)).unwrap();
    assert_eq!(
        (msg.token.as_str(), msg.encrypted, msg.seq_text.as_str()),
        ("ACK", true, "0007")
    );
    sos_reached_the_carer(&app, &city, "4F21").await;

    // The panel repeats the message with a new timestamp (it missed our ACK): stored once.
    let again = sia_dc09::encode_message(
        "4F21",
        7,
        Some("12"),
        Some("3"),
        Payload::AdmCid("#4F21|1101 01 015"),
        Some(&key),
        Some(now + 1000),
    )
    .unwrap();
    s.write_all(&again).await.unwrap();
    read_dc09(&mut s).await;
    assert_eq!(app.db.alarm_states("4F21", 7).await.unwrap().len(), 1);

    // A link test over UDP: answered with a plain ACK to the sender.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let null = sia_dc09::encode_message("4F21", 8, None, Some("0"), Payload::Null, None, Some(now))
        .unwrap();
    udp.send_to(&null, app.addrs.dc09_udp).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), udp.recv_from(&mut buf))
        .await
        .expect("a UDP answer")
        .unwrap();
    assert_eq!(
        sia_dc09::parse_message(&buf[..n], None).unwrap().token,
        "ACK"
    );

    // A clock far off: NAK with the receiver's time, and the event still kept.
    let stale = sia_dc09::encode_message(
        "4F21",
        9,
        None,
        Some("0"),
        Payload::SiaDcs("#4F21|Nri1/YT01"),
        None,
        Some(now - 3_600_000),
    )
    .unwrap();
    s.write_all(&stale).await.unwrap();
    let nak = read_dc09(&mut s).await;
    assert_eq!(sia_dc09::parse_message(&nak, None).unwrap().token, "NAK");
    assert_eq!(app.db.alarm_states("4F21", 9).await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_sos_with_a_bad_checksum_reaches_an_operator_but_no_carer() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let imei = "864717003283581";
    provision(&app, &city, "gt06", imei).await;
    let mut s = TcpStream::connect(app.addrs.gt06).await.unwrap();
    exchange(&mut s, &gt06::encode_login(imei, 1).unwrap(), 10).await;
    let mut alarm = gt06::encode_alarm(EventKind::Sos, Some(HOME), now_ms(), 2)
        .unwrap()
        .to_vec();
    let crc_at = alarm.len() - 4;
    alarm[crc_at] ^= 0xff;
    // Answered as usual (the device must not keep resending), stored, flagged.
    assert_eq!(
        exchange(&mut s, &alarm, 10).await,
        gt06::ack(0x16, 2, false).to_vec()
    );
    assert_eq!(app.db.alarm_states(imei, 2).await.unwrap()[0].0, "bad_tag");
    let incidents = eventually("the incident", || async {
        let i = app.db.incidents_overview().await.unwrap();
        (!i.is_empty()).then_some(i)
    })
    .await;
    assert_eq!(incidents[0].1, format!("unverified:{imei}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.carers.offers().is_empty());
    app.stop().await;
}

/// A small fleet of each protocol through the simulator: every press answered, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleets_of_every_protocol_lose_nothing() {
    use pingantong_sim::city::{CitySpec, seed_city};
    use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
    use pingantong_sim::speaker;
    use std::sync::Arc;

    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    for (protocol, addr) in [
        ("native", app.native),
        ("gt06", app.addrs.gt06),
        ("watch", app.addrs.watch),
        ("h02", app.addrs.h02),
        ("eview", app.addrs.eview),
        ("dc09", app.addrs.dc09),
        ("dc09-plain", app.addrs.dc09),
    ] {
        let seed = format!("fleet-{protocol}");
        let city = seed_city(
            &app.db,
            &CitySpec {
                clients: 8,
                carers_per_provider: 1,
                secret_seed: seed.clone(),
                protocol: pingantong_sim::speaker::Mix::parse(protocol).unwrap(),
                native_from: None,
            },
        )
        .await
        .unwrap();
        // DC-09 keys reach the receiver with the directory's next sweep.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pendants = city
            .devices
            .iter()
            .map(|id| Pendant::new(id.clone(), pingantong_sim::derive_secret(&seed, id)))
            .collect();
        let report = fleet::run(
            FleetConfig {
                lines: vec![Line::new(speaker::by_name(protocol).unwrap(), addr)],
                pendants,
                heartbeat: Duration::from_millis(300),
                alarm_rate: 8.0,
                technical_rate: 0.0,
                duration: Duration::from_secs(1),
                retry_after: Duration::from_secs(2),
                grace: Duration::from_secs(10),
            },
            Arc::new(FleetStats::default()),
        )
        .await;
        assert!(report.alarms_sent > 0, "{protocol}: no presses");
        assert_eq!(
            report.alarms_lost(),
            0,
            "{protocol}: {:?}",
            report.unanswered
        );
        assert_eq!(report.alarms_acked, report.alarms_sent, "{protocol}");
        assert!(
            report.heartbeats_acked > 0,
            "{protocol}: no heartbeat answered"
        );
    }
    app.stop().await;
}

/// One fleet of native, GT06 and MQTT pendants through a power cut: every protocol's presses
/// answered, every pendant back and its "power restored" report stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_of_tcp_and_mqtt_pendants_rides_out_a_power_cut() {
    use pingantong_sim::city::{CitySpec, seed_city};
    use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
    use pingantong_sim::mqtt_fleet::MqttFleetConfig;
    use pingantong_sim::record::Recorder;
    use pingantong_sim::scenario::{Plan, ScenarioFile};
    use pingantong_sim::speaker::{self, Mix};
    use std::sync::Arc;

    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let seed = "mixed-fleet";
    let mix = Mix::parse("native:2,gt06:1,mqtt:1").unwrap();
    let city = seed_city(
        &app.db,
        &CitySpec {
            clients: 12,
            carers_per_provider: 1,
            secret_seed: seed.into(),
            protocol: mix.clone(),
            native_from: None,
        },
    )
    .await
    .unwrap();
    let tcp = ["native", "gt06"];
    let (mut tcp_fleet, mut mqtt_fleet) = (Vec::new(), Vec::new());
    for (i, id) in city.devices.iter().enumerate() {
        let secret = pingantong_sim::derive_secret(seed, id);
        match tcp.iter().position(|p| *p == mix.protocol_of(i + 1)) {
            Some(line) => tcp_fleet.push(Pendant {
                id: id.clone(),
                secret,
                line,
            }),
            None => mqtt_fleet.push(Pendant::new(id.clone(), secret)),
        }
    }
    assert_eq!((tcp_fleet.len(), mqtt_fleet.len()), (9, 3));
    let scenario = ScenarioFile::parse(
        r#"
        [[phase]]
        name = "calm"
        secs = 1
        alarm_rate = 12
        [[phase]]
        name = "power cut"
        secs = 1.5
        alarm_rate = 12
        disconnect = true
        reconnect_within_secs = 0.5
        report_on_reconnect = "power_restored"
        "#,
    )
    .unwrap();
    let plan = Plan {
        phases: scenario.phases().unwrap(),
        persistent: tcp_fleet.len(),
        source_spread: 0,
        per_report_sockets: 16,
    };
    let recorder = Arc::new(
        Recorder::new(&plan, tokio::time::Instant::now())
            .expecting_ready(12)
            .with_lines(["native".into(), "gt06".into(), "mqtt".into()]),
    );
    let (host, port) = broker_of(&app);
    let mqtt_ids: Vec<String> = mqtt_fleet.iter().map(|p| p.id.clone()).collect();
    let passwords = app.device_passwords(&mqtt_ids).await;
    let report = fleet::run_mixed(
        Some(FleetConfig {
            lines: vec![
                Line::new(speaker::by_name("native").unwrap(), app.native),
                Line::new(speaker::by_name("gt06").unwrap(), app.addrs.gt06),
            ],
            pendants: tcp_fleet,
            heartbeat: Duration::from_millis(300),
            alarm_rate: 0.0,
            technical_rate: 0.0,
            duration: Duration::ZERO,
            retry_after: Duration::from_secs(2),
            grace: Duration::from_secs(10),
        }),
        Some(MqttFleetConfig {
            host,
            port,
            prefix: app.settings.mqtt.topic_prefix.clone(),
            pendants: mqtt_fleet,
            heartbeat: Duration::from_millis(300),
            alarm_rate: 0.0,
            duration: Duration::ZERO,
            retry_after: Duration::from_secs(2),
            grace: Duration::from_secs(10),
            line: 2,
            passwords,
        }),
        plan,
        Arc::new(FleetStats::default()),
        Arc::clone(&recorder),
    )
    .await;
    assert_eq!(report.alarms_lost(), 0, "{:?}", report.unanswered);
    assert_eq!(report.alarms_acked, report.alarms_sent);
    let s = recorder.summary(0, Duration::from_millis(2_500));
    for p in ["native", "gt06", "mqtt"] {
        let line = &s["by_protocol"][p];
        assert!(line["alarms_sent"].as_u64().unwrap() > 0, "{p}: {line}");
        assert_eq!(line["alarms_acked"], line["alarms_sent"], "{p}");
    }
    assert_eq!(s["connect"]["pendants"], 12, "{}", s["connect"]);
    assert_eq!(s["storm"]["disconnected"], 12, "{}", s["storm"]);
    assert_eq!(s["storm"]["reconnected"], 12, "{}", s["storm"]);
    assert_eq!(s["storm"]["reports_acked"], 12, "{}", s["storm"]);
    // The MQTT pendants' reports are stored as theirs, verified.
    for id in city.devices.iter().filter(|d| d.starts_with("GW")) {
        let restored = app
            .db
            .alarm_log(&pingantong::store::AlarmLogQuery {
                device_id: Some(id),
                kind: Some("power_restored"),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(restored.len(), 1, "{id}");
        assert_eq!(restored[0].auth, "verified", "{id}");
    }
    app.stop().await;
}

/// The Python interpreter with the independent DC-09 transmitters installed
/// (`ops/test.sh` makes it: tests/peers/dc09/requirements.txt).
fn dc09_peers_python() -> std::path::PathBuf {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers/dc09/bin/python");
    let python = std::env::var_os("PAT_DC09_PEERS_PYTHON").map_or(venv, Into::into);
    assert!(
        python.exists(),
        "{} is missing: the DC-09 transmitters from PyPI are installed by ops/test.sh \
         (python3 -m venv target/peers/dc09 && target/peers/dc09/bin/pip install -r \
         tests/peers/dc09/requirements.txt)",
        python.display()
    );
    python
}

async fn dc09_from_independent_transmitters(backend: Backend) {
    use pingantong_protocol::sia_dc09::{self, Payload};
    let python = dc09_peers_python();
    // DC-09 over TLS too, with a certificate for `localhost`.
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, tls_key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&tls_key, made.signing_key.serialize_pem()).unwrap();
    let mut settings = test_settings(backend, Broker::Embedded, dir.path());
    settings.http.tls_cert = Some(cert.clone());
    settings.http.tls_key = Some(tls_key);
    settings.devices.dc09_tls_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn_with(settings, Some(dir)).await;
    let tls_port = app.addrs.dc09_tls.expect("a DC-09 TLS listener").port();
    let city = seed_small_city(&app.db).await;
    let key = b"Kq7#pL2!xZ9$mN4w".to_vec();
    let (enc, plain) = ("A1B2C3", "5E6F");
    for (id, secret) in [(enc, key.clone()), (plain, Vec::new())] {
        app.db
            .upsert_device(&NewDevice {
                id: id.into(),
                protocol: "sia_dc09".into(),
                secret,
                client_id: Some(city.client_id),
            })
            .await
            .unwrap();
    }
    // Wait until the directory's sweep has brought the key into memory.
    let probe = sia_dc09::encode_message(
        enc,
        1,
        None,
        Some("0"),
        Payload::Null,
        Some(&key),
        Some(now_ms() as i64),
    )
    .unwrap();
    eventually("the account's key known", || {
        let (probe, addr) = (probe.clone(), app.addrs.dc09);
        async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(&probe).await.ok()?;
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            (n > 0).then_some(())
        }
    })
    .await;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/dc09/transmit.py");
    let hex_key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            "127.0.0.1".to_owned(),
            app.addrs.dc09.port().to_string(),
            app.addrs.dc09_udp.port().to_string(),
            hex_key,
            enc.into(),
            plain.into(),
            tls_port.to_string(),
            cert.display().to_string(),
        ])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the transmitters finish within 3 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "transmit.py failed: {stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40, "every message reported: {lines:#?}");
    assert_eq!(
        lines.iter().filter(|l| l["transport"] == "tls").count(),
        2,
        "two over TLS"
    );
    // Every answer, as each library itself reads it, is what the standard
    // says: ACK, NAK for a clock an hour off, DUH for a type we do not process.
    for l in &lines {
        assert_eq!(l["answer"], l["expect"], "{l}\n{stderr}");
        assert!(l.get("error").is_none(), "{l}");
        if l["rcvr"].is_number() {
            assert_eq!(
                (&l["answer_rcvr"], &l["answer_pref"]),
                (&l["rcvr"], &l["pref"]),
                "{l}"
            );
        }
    }
    let answers = |a: &str| lines.iter().filter(|l| l["answer"] == a).count();
    assert_eq!((answers("ACK"), answers("NAK"), answers("DUH")), (38, 1, 1));
    // Pads the standard allows and the old receiver refused were among them.
    for lib in ["siadc09", "my-dc09-spt"] {
        assert!(
            lines
                .iter()
                .any(|l| l["impl"] == lib && l["binary_pad"] == true),
            "{lib} sent no pad outside printable ASCII: the test proves nothing"
        );
    }
    // Each alarm stored once, in an incident; a reused sequence number with
    // another event stored as that event; a retransmission stored once.
    for l in &lines {
        let data = l["data"].as_str().unwrap_or("");
        let seq = l["seq"].as_i64().unwrap();
        let account = l["account"].as_str().unwrap();
        if l["token"] == "NULL" || l["expect"] != "ACK" || seq == 3010 || seq == 3020 {
            continue;
        }
        let rows = eventually("the alarm in an incident", || async {
            let rows = app.db.alarm_states(account, seq).await.unwrap();
            rows.iter().all(|r| r.2.is_some()).then_some(rows)
        })
        .await;
        assert_eq!(rows.len(), 1, "{account} seq {seq} {data}: {rows:?}");
        assert_eq!(rows[0].0, "verified", "{l}");
    }
    assert_eq!(app.db.alarm_states(enc, 3010).await.unwrap().len(), 2);
    assert_eq!(app.db.alarm_states(enc, 3020).await.unwrap().len(), 1);
    // A NAKed alarm is still kept (its panel will send it again, corrected).
    assert_eq!(app.db.alarm_states(enc, 3040).await.unwrap().len(), 1);
    // Plain text on the TLS port is not served: no ACK, nothing stored.
    let plain_probe = sia_dc09::encode_message(
        plain,
        4100,
        None,
        Some("0"),
        Payload::Null,
        None,
        Some(now_ms() as i64),
    )
    .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    s.write_all(&plain_probe).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("ACK"),
        "a plain frame on the TLS port got {got:?}"
    );
    assert!(app.db.alarm_states(plain, 4100).await.unwrap().is_empty());
    sos_reached_the_carer(&app, &city, enc).await;
    app.stop().await;
}

#[tokio::test]
async fn dc09_from_independent_transmitters_sqlite() {
    dc09_from_independent_transmitters(Backend::Sqlite).await;
}

#[tokio::test]
async fn dc09_from_independent_transmitters_postgres() {
    dc09_from_independent_transmitters(Backend::Postgres).await;
}
