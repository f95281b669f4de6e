//! What makes two frames the same event, for every device protocol: events
//! with arbitrary counters (reused, restarted, wrapped) and retransmissions
//! at arbitrary delays go through each protocol's codec, the server's dedup
//! key and the store, on SQLite and PostgreSQL. Every distinct event is stored
//! once, every retransmission within its window is a duplicate, wherever the
//! window's slot edges fall (protocol/DEDUP.md).

use std::sync::Arc;

use crate::helpers::store_config;
use pingantong::ingest::device::dedup_of;
use pingantong::rules::Rules;
use pingantong::store::{AlarmRecord, AuthStatus, CommitOutcome, Db};
use pingantong_protocol::sia_dc09::{self, KeyLookup, Payload};
use pingantong_protocol::{
    AlarmEvent, Codec, DeviceId, EventKind, Frame, Location, eview, gt06, h02, native, watch,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::helpers::{Backend, POSTGRES_URL, unique};

const KEY: &[u8] = b"0123456789abcdef";
/// 2026-01-01 00:00:00 UTC.
const T0: i64 = 1_767_225_600_000;
const RETRY_MS: i64 = 120_000;
const TIMED_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Proto {
    /// Ping An Tong's own pendant protocol: signed frames.
    Native,
    Gt06,
    Watch,
    H02,
    Eview,
    Dc09Plain,
    Dc09Encrypted,
    /// MQTT devices (gateways, app pendants): JSON events with `seq` and `time`.
    Mqtt,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Native => "native",
            Proto::Gt06 => "gt06",
            Proto::Watch => "watch",
            Proto::H02 => "h02",
            Proto::Eview => "eview",
            Proto::Dc09Plain | Proto::Dc09Encrypted => "sia_dc09",
            Proto::Mqtt => "mqtt",
        }
    }

    /// The event carries the device's own time of it.
    fn timed(self) -> bool {
        matches!(
            self,
            Proto::Native | Proto::Gt06 | Proto::Watch | Proto::H02 | Proto::Mqtt
        )
    }

    /// The frame carries a counter of its own.
    fn counted(self) -> bool {
        matches!(
            self,
            Proto::Native
                | Proto::Gt06
                | Proto::Eview
                | Proto::Dc09Plain
                | Proto::Dc09Encrypted
                | Proto::Mqtt
        )
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A new event: what it says (one of three), the device's counter (a few
    /// values only, so counters are reused as after a restart or a wrap).
    New {
        content: u8,
        counter: u16,
        gap_ms: i64,
    },
    /// The device sends an earlier event again (it missed our answer).
    Retry { of: usize, gap_ms: i64 },
}

/// Gaps around both windows' edges, and short ones.
fn gap() -> impl Strategy<Value = i64> {
    prop_oneof![
        1_000i64..4_000,
        100_000i64..140_000,
        TIMED_MS - 200_000..TIMED_MS + 200_000,
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, 0u16..3, gap()).prop_map(|(content, counter, gap_ms)| Step::New { content, counter, gap_ms }),
        2 => (any::<prop::sample::Index>(), gap()).prop_map(|(of, gap_ms)| Step::Retry { of: of.index(1 << 16), gap_ms }),
    ]
}

/// One step made concrete: when, and the event it carries.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: i64,
    content: u8,
    counter: u16,
    /// When the event happened (the original's time for a retry).
    event_at: i64,
}

fn location(content: u8) -> Location {
    Location {
        lat: 23.1 + f64::from(content) / 1000.0,
        lon: 113.2,
        accuracy_m: None,
    }
}

/// The frame a device of `proto` sends for `s`, decoded by the server's codec.
fn frame_of(proto: Proto, device: &str, s: &Sent) -> Frame {
    let kinds = [EventKind::Sos, EventKind::Fall, EventKind::LowBattery];
    let kind = kinds[usize::from(s.content)];
    let at = s.at;
    let (mut codec, wire): (Box<dyn Codec>, Vec<bytes::Bytes>) = match proto {
        Proto::Native => {
            let event = AlarmEvent {
                device: DeviceId::parse(device).unwrap(),
                seq: u32::from(s.counter),
                kind,
                device_time_ms: Some(s.event_at as u64),
                battery_pct: Some(80),
                location: Some(location(s.content)),
            };
            let mut frame = bytes::BytesMut::new();
            native::encode_event(&event, KEY, &mut frame);
            (Box::new(native::NativeCodec), vec![frame.freeze()])
        }
        Proto::Mqtt => unreachable!("MQTT events are not frames (see `records`)"),
        Proto::Gt06 => {
            let mut codec = gt06::Gt06Codec::new(Arc::new(move || at));
            let login = gt06::encode_login(device, 1).unwrap();
            let mut buf = bytes::BytesMut::from(&login[..]);
            codec.decode(&mut buf).unwrap().unwrap();
            let alarm = gt06::encode_alarm(
                kind,
                Some(location(s.content)),
                s.event_at as u64,
                s.counter,
            )
            .unwrap();
            (Box::new(codec), vec![alarm])
        }
        Proto::Watch => {
            let bits = [1u32 << 16, 1 << 21, 1 << 17][usize::from(s.content)];
            let alarm = watch::encode_alarm(
                "3G",
                device,
                bits,
                Some(location(s.content)),
                s.event_at as u64,
                80,
            );
            (Box::new(watch::WatchCodec::new()), vec![alarm])
        }
        Proto::H02 => {
            let kinds = [[EventKind::Sos], [EventKind::PowerCut], [EventKind::Sos]];
            let id = DeviceId::parse(device).unwrap();
            let v1 = h02::encode_v1(
                &id,
                s.event_at as u64,
                location(s.content),
                &kinds[usize::from(s.content)],
            );
            (Box::new(h02::H02Codec::new()), vec![v1])
        }
        Proto::Eview => {
            let id = DeviceId::parse(device).unwrap();
            let alarm = eview::encode_alarm(&id, s.counter, kind, Some(location(s.content)), None);
            (Box::new(eview::EviewCodec::new()), vec![alarm])
        }
        Proto::Dc09Plain | Proto::Dc09Encrypted => {
            let code = ["1101 01 001", "1100 01 001", "1602 00 000"][usize::from(s.content)];
            let data = format!("#{device}|{code}");
            let key = (proto == Proto::Dc09Encrypted).then_some(KEY);
            // Stamped when sent: a retransmission carries a new time (and pad).
            let msg = sia_dc09::encode_message(
                device,
                s.counter,
                None,
                Some("0"),
                Payload::AdmCid(&data),
                key,
                Some(at),
            )
            .unwrap();
            let keys: KeyLookup = Arc::new(|_: &str| Some(KEY.to_vec()));
            let codec = sia_dc09::SiaDc09Codec::new(keys, Arc::new(move || at));
            (Box::new(codec), vec![msg])
        }
    };
    let mut buf = bytes::BytesMut::from(&wire[0][..]);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.parse_error, None, "{proto:?} {s:?}");
    assert!(!frame.observations.is_empty(), "{proto:?} {s:?}");
    frame
}

fn records(proto: Proto, device: &str, s: &Sent) -> Vec<AlarmRecord> {
    if proto == Proto::Mqtt {
        // As a gateway publishes it (protocol/MQTT.md); a retry publishes it again.
        let kind = ["sos", "fall", "low_battery"][usize::from(s.content)];
        let payload = serde_json::json!({
            "v": 1, "seq": s.counter, "kind": kind, "time": s.event_at,
            "location": {"lat": location(s.content).lat, "lon": location(s.content).lon},
        })
        .to_string();
        let (key, window) = pingantong::ingest::mqtt::dedup_of(
            device,
            u32::from(s.counter),
            payload.as_bytes(),
            true,
        );
        return vec![AlarmRecord {
            received_at: s.at,
            protocol: "mqtt",
            peer: "mqtt:test".into(),
            device_id: device.into(),
            seq: i64::from(s.counter),
            kind: [EventKind::Sos, EventKind::Fall, EventKind::LowBattery][usize::from(s.content)],
            device_time: Some(s.event_at),
            battery: None,
            location: Some(location(s.content)),
            auth: AuthStatus::Verified,
            raw: payload.clone().into_bytes(),
            decoded: payload,
            dedup_key: key,
            retry_window_ms: Some(window),
        }];
    }
    let frame = frame_of(proto, device, s);
    let (key, window) = dedup_of(proto.name(), device, &frame);
    frame
        .observations
        .iter()
        .enumerate()
        .map(|(i, o)| AlarmRecord {
            received_at: s.at,
            protocol: proto.name(),
            peer: "127.0.0.1:1".into(),
            device_id: device.into(),
            seq: frame.serial.map_or(-1, i64::from),
            kind: o.kind,
            device_time: o.device_time_ms.map(|t| t as i64),
            battery: None,
            location: o.location,
            auth: AuthStatus::Verified,
            raw: frame.raw.to_vec(),
            decoded: "{}".into(),
            dedup_key: format!("{key}:{i}"),
            retry_window_ms: Some(window),
        })
        .collect()
}

/// What the protocol can tell apart: content, and the counter and event
/// time (to the second) where the frame carries them.
type Identity = (u8, Option<u16>, Option<i64>);

fn identity(proto: Proto, s: &Sent) -> Identity {
    (
        s.content,
        proto.counted().then_some(s.counter),
        // The codecs carry device time to the second.
        proto.timed().then_some(s.event_at / 1000),
    )
}

fn device_id(proto: Proto) -> String {
    let n: u64 = rand::random::<u64>() % 1_000_000_000;
    match proto {
        Proto::Native => format!("PA{n:09}"),
        Proto::Gt06 | Proto::Eview => format!("86{n:013}"),
        Proto::Watch | Proto::H02 => format!("7{n:09}"),
        Proto::Dc09Plain | Proto::Dc09Encrypted => format!("D{n:08X}"),
        Proto::Mqtt => format!("GW{n:09}"),
    }
}

async fn run_case(db: &Db, rules: &Rules, proto: Proto, offset: i64, steps: &[Step], batch: usize) {
    let device = device_id(proto);
    let mut t = T0 + offset;
    let mut sent: Vec<Sent> = Vec::new();
    let mut news: Vec<usize> = Vec::new();
    for st in steps {
        let s = match st {
            Step::New {
                content,
                counter,
                gap_ms,
            } => {
                t += gap_ms;
                news.push(sent.len());
                Sent {
                    at: t,
                    content: *content,
                    counter: *counter,
                    event_at: t,
                }
            }
            Step::Retry { of, gap_ms } => {
                t += gap_ms;
                let Some(&orig) = news.get(of % news.len().max(1)) else {
                    continue;
                };
                Sent {
                    at: t,
                    ..sent[orig]
                }
            }
        };
        sent.push(s);
    }
    // The model: a copy is a duplicate when a stored copy of the same event is
    // younger than the window; otherwise it is stored.
    let window = if proto.timed() { TIMED_MS } else { RETRY_MS };
    let mut stored: Vec<(i64, Identity)> = Vec::new();
    let expected: Vec<bool> = sent
        .iter()
        .map(|s| {
            let id = identity(proto, s);
            let dup = stored
                .iter()
                .any(|(at, other)| *other == id && s.at - at < window);
            if !dup {
                stored.push((s.at, id));
            }
            !dup
        })
        .collect();
    // The server: several devices' frames share a commit, so steps go to the
    // store in batches.
    let mut got = Vec::new();
    for chunk in sent.chunks(batch) {
        let recs: Vec<Vec<AlarmRecord>> =
            chunk.iter().map(|s| records(proto, &device, s)).collect();
        let flat: Vec<AlarmRecord> = recs.iter().flatten().cloned().collect();
        let outcomes = db.insert_alarms(&flat, rules).await.unwrap();
        let mut i = 0;
        for r in &recs {
            let first = outcomes[i];
            assert!(
                outcomes[i..i + r.len()]
                    .iter()
                    .all(|o| std::mem::discriminant(o) == std::mem::discriminant(&first)),
                "a frame's observations are stored together"
            );
            got.push(matches!(first, CommitOutcome::Stored(_)));
            i += r.len();
        }
    }
    assert_eq!(
        got, expected,
        "{proto:?} stored (true) or duplicate (false) per frame; sent {sent:#?}"
    );
}

/// A runner with a fixed seed (CI runs the same cases every time) and a
/// bounded shrink (each case talks to a database).
fn runner(cases: u32, seed: u8) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 32,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

fn cases() -> u32 {
    std::env::var("PAT_DEDUP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

async fn connect(backend: Backend) -> (Db, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let cfg = store_config(
                format!("sqlite://{}/dedup.db", dir.path().display()),
                None,
                dir.path(),
            );
            (Db::connect(&cfg).await.unwrap(), Some(dir))
        }
        Backend::Postgres => {
            let dir = tempfile::tempdir().unwrap();
            let cfg = store_config(POSTGRES_URL.into(), Some(unique("t")), dir.path());
            (Db::connect(&cfg).await.unwrap(), Some(dir))
        }
    }
}

fn every_protocol(backend: Backend) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (db, _dir) = rt.block_on(connect(backend));
    let rules = Rules::default();
    for proto in [
        Proto::Native,
        Proto::Gt06,
        Proto::Watch,
        Proto::H02,
        Proto::Eview,
        Proto::Dc09Plain,
        Proto::Dc09Encrypted,
        Proto::Mqtt,
    ] {
        let mut runner = runner(cases(), 7);
        let strategy = (0..TIMED_MS, prop::collection::vec(step(), 1..20), 1usize..4);
        runner
            .run(&strategy, |(offset, steps, batch)| {
                rt.block_on(run_case(&db, &rules, proto, offset, &steps, batch));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
    }
}

#[test]
fn every_distinct_event_once_sqlite() {
    every_protocol(Backend::Sqlite);
}

#[test]
fn every_distinct_event_once_postgres() {
    every_protocol(Backend::Postgres);
}

/// Over real sockets to a running server: each frame's answer, read back,
/// finds its event already committed (an ACK means stored), a retry answered
/// and not stored again, a reused counter with another event stored.
mod over_the_wire {
    use std::time::Duration;

    use pingantong::store::NewDevice;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::helpers::{Broker, TestApp, seed_small_city};

    fn wall_clock() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    /// Read one answer: protocols end theirs differently.
    async fn answer(proto: Proto, s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let done = |g: &[u8]| match proto {
            Proto::Gt06 => g.ends_with(b"\r\n"),
            Proto::Watch => g.ends_with(b"]"),
            Proto::Native => {
                pingantong_protocol::native::split_frame(&mut bytes::BytesMut::from(g))
                    .ok()
                    .flatten()
                    .is_some()
            }
            Proto::Eview => g.len() >= 11,
            _ => g.ends_with(b"\r"),
        };
        while !done(&got) {
            let Ok(n) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await else {
                panic!("{proto:?}: no answer within 5 s (got {got:?})");
            };
            let n = n.unwrap();
            assert!(n > 0, "{proto:?}: closed after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn wire(proto: Proto, device: &str, s: &Sent) -> bytes::Bytes {
        let kinds = [EventKind::Sos, EventKind::Fall, EventKind::PowerCut];
        let kind = kinds[usize::from(s.content)];
        match proto {
            Proto::Gt06 => gt06::encode_alarm(
                kind,
                Some(location(s.content)),
                s.event_at as u64,
                s.counter,
            )
            .unwrap(),
            Proto::Watch => {
                let bits = [1u32 << 16, 1 << 21, 1 << 20][usize::from(s.content)];
                watch::encode_alarm(
                    "3G",
                    device,
                    bits,
                    Some(location(s.content)),
                    s.event_at as u64,
                    80,
                )
            }
            Proto::Eview => {
                let id = DeviceId::parse(device).unwrap();
                eview::encode_alarm(&id, s.counter, kind, Some(location(s.content)), None)
            }
            Proto::Dc09Plain | Proto::Dc09Encrypted => {
                let code = ["1101 01 001", "1100 01 001", "1101 01 009"][usize::from(s.content)];
                let data = format!("#{device}|{code}");
                let key = (proto == Proto::Dc09Encrypted).then_some(KEY);
                let now = wall_clock();
                sia_dc09::encode_message(
                    device,
                    s.counter,
                    None,
                    Some("0"),
                    Payload::AdmCid(&data),
                    key,
                    Some(now),
                )
                .unwrap()
            }
            Proto::Native => {
                let event = pingantong_protocol::AlarmEvent {
                    device: DeviceId::parse(device).unwrap(),
                    seq: u32::from(s.counter),
                    kind,
                    device_time_ms: Some(s.event_at as u64),
                    battery_pct: Some(70),
                    location: Some(location(s.content)),
                };
                let mut b = bytes::BytesMut::new();
                pingantong_protocol::native::encode_event(&event, KEY, &mut b);
                b.freeze()
            }
            Proto::H02 | Proto::Mqtt => unreachable!("not over TCP here"),
        }
    }

    async fn run(app: &TestApp, proto: Proto, device: &str, steps: &[Step]) {
        let mut s = TcpStream::connect(match proto {
            Proto::Native => app.addrs.native,
            Proto::Gt06 => app.addrs.gt06,
            Proto::Watch => app.addrs.watch,
            Proto::Eview => app.addrs.eview,
            _ => app.addrs.dc09,
        })
        .await
        .unwrap();
        if proto == Proto::Gt06 {
            s.write_all(&gt06::encode_login(device, 1).unwrap())
                .await
                .unwrap();
            answer(proto, &mut s).await;
        }
        if proto == Proto::Dc09Encrypted {
            // Provisioned while the server runs: wait for the directory's sweep
            // to bring the key (an unknown key is never answered).
            crate::helpers::eventually("the account's key known", || async {
                let probe = sia_dc09::encode_message(
                    device,
                    9999,
                    None,
                    Some("0"),
                    Payload::Null,
                    Some(KEY),
                    Some(wall_clock()),
                )
                .unwrap();
                let mut p = TcpStream::connect(app.addrs.dc09).await.ok()?;
                p.write_all(&probe).await.ok()?;
                let mut buf = [0u8; 256];
                let n = tokio::time::timeout(Duration::from_millis(300), p.read(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                (n > 0).then_some(())
            })
            .await;
        }
        let mut sent: Vec<Sent> = Vec::new();
        let mut news = Vec::new();
        // Whatever the real clock says, all copies here are within their window:
        // a copy of a stored event is a retry, anything else is new.
        let mut stored: Vec<Identity> = Vec::new();
        let mut t = T0;
        for st in steps {
            t += 1_000;
            let snt = match st {
                Step::New {
                    content, counter, ..
                } => {
                    news.push(sent.len());
                    Sent {
                        at: t,
                        content: *content,
                        counter: *counter,
                        event_at: t,
                    }
                }
                Step::Retry { of, .. } => match news.get(of % news.len().max(1)) {
                    Some(&orig) => sent[orig],
                    None => continue,
                },
            };
            sent.push(snt);
            let id = identity(proto, &snt);
            let fresh = !stored.contains(&id);
            if fresh {
                stored.push(id);
            }
            s.write_all(&wire(proto, device, &snt)).await.unwrap();
            answer(proto, &mut s).await;
            // Read at once, no waiting: the answer came after the commit.
            let seq = if proto.counted() {
                i64::from(snt.counter)
            } else {
                -1
            };
            let rows = app.db.alarm_states(device, seq).await.unwrap().len();
            let want = stored
                .iter()
                .filter(|(_, counter, _)| counter.map_or(-1, i64::from) == seq)
                .count();
            assert_eq!(
                rows, want,
                "{proto:?} after {snt:?} (fresh: {fresh}); sent {sent:#?}"
            );
        }
    }

    fn every_protocol(backend: Backend) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let app = rt.block_on(TestApp::spawn(backend, Broker::Embedded));
        let city = rt.block_on(seed_small_city(&app.db));
        for proto in [
            Proto::Native,
            Proto::Gt06,
            Proto::Watch,
            Proto::Eview,
            Proto::Dc09Plain,
            Proto::Dc09Encrypted,
        ] {
            let mut runner = runner(cases().min(8), 11);
            runner
                .run(&prop::collection::vec(step(), 1..12), |steps| {
                    rt.block_on(async {
                        let device = device_id(proto);
                        app.db
                            .upsert_device(&NewDevice {
                                id: device.clone(),
                                protocol: proto.name().into(),
                                secret: if matches!(proto, Proto::Dc09Encrypted | Proto::Native) {
                                    KEY.to_vec()
                                } else {
                                    Vec::new()
                                },
                                client_id: Some(city.client_id),
                            })
                            .await
                            .unwrap();
                        run(&app, proto, &device, &steps).await;
                    });
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
        }
        rt.block_on(app.stop());
    }

    #[test]
    fn every_answer_follows_its_commit_sqlite() {
        every_protocol(Backend::Sqlite);
    }

    #[test]
    fn every_answer_follows_its_commit_postgres() {
        every_protocol(Backend::Postgres);
    }
}
