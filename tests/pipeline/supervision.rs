//! Device supervision: silence past a device's allowance is an "offline"
//! technical job, its next report closes it; away clients are not chased;
//! the state survives a restart. Time is moved by hand ([`ManualClock`]).

use std::sync::Arc;
use std::time::Duration;

use pingantong::store::Db;
use pingantong_protocol::EventKind;
use pingantong_sim::city::{CitySpec, seed_city};
use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
use pingantong_sim::speaker;

use crate::helpers::*;

/// Devices of every protocol report every 60 s; offline after 2 missed + 30 s = 150 s.
fn supervised(backend: Backend, dir: &std::path::Path) -> pingantong::Settings {
    let mut s = test_settings(backend, Broker::Embedded, dir);
    supervise(&mut s, 60, 2, 30, 100);
    s
}

/// The device's offline job: (incident id, state, outcome).
async fn offline_job(db: &Db, device: &str) -> Option<(i64, String, Option<String>)> {
    let key = format!("technical:{device}:offline");
    for (id, fold_key, _, _) in db.incidents_overview().await.unwrap() {
        if fold_key == key {
            let s = db.incident_summary(id).await.unwrap().unwrap();
            assert_eq!(s.lane, "technical");
            assert_eq!(s.kind, "offline");
            return Some((id, s.state.as_str().to_owned(), s.outcome));
        }
    }
    None
}

async fn heartbeat(app: &TestApp, city: &City, seq: u32) {
    let mut dev = Device::connect(app.native).await;
    dev.send(
        &event(&city.device, seq, EventKind::Heartbeat),
        &city.secret,
    )
    .await;
}

async fn watched(db: &Db, device: &str) {
    eventually("the device watched", || async {
        db.watched_devices()
            .await
            .unwrap()
            .iter()
            .any(|(id, _)| id == device)
            .then_some(())
    })
    .await;
}

async fn silence_goes_offline_and_a_report_closes_it(backend: Backend) {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = supervised(backend, dir.path());
    let app = TestApp::spawn_with_clock(s.clone(), None, &clock).await;
    let city = seed_small_city(&app.db).await;
    heartbeat(&app, &city, 1).await;
    watched(&app.db, &city.device).await;

    clock.advance(Duration::from_secs(100));
    heartbeat(&app, &city, 2).await;
    // 100 + 149 s: within the allowance counted from the last report.
    clock.advance(Duration::from_secs(148));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        offline_job(&app.db, &city.device).await.is_none(),
        "not yet"
    );
    clock.advance(Duration::from_secs(3));
    let (job, state, _) = eventually("the offline job", || async {
        offline_job(&app.db, &city.device).await
    })
    .await;
    assert_eq!(state, "queued");
    // Once, however long the silence lasts.
    clock.advance(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        app.db.count_alarms(Some(EventKind::Offline)).await.unwrap(),
        1
    );
    app.stop().await;

    // Still offline across a restart; the next report closes the job.
    let back = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    clock.advance(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        back.db
            .count_alarms(Some(EventKind::Offline))
            .await
            .unwrap(),
        1,
        "no second alarm for a device already offline"
    );
    heartbeat(&back, &city, 3).await;
    let (_, state, outcome) = eventually("the job cleared", || async {
        offline_job(&back.db, &city.device)
            .await
            .filter(|j| j.1 == "cancelled")
    })
    .await;
    assert_eq!(state, "cancelled");
    assert_eq!(outcome.as_deref(), Some("cleared"));
    assert!(
        back.db
            .incident_actions(job)
            .await
            .unwrap()
            .contains(&"cleared".to_owned())
    );
    assert_eq!(
        back.db
            .count_alarms(Some(EventKind::BackOnline))
            .await
            .unwrap(),
        1
    );
    back.stop().await;
}

#[tokio::test]
async fn silence_goes_offline_and_a_report_closes_it_sqlite() {
    silence_goes_offline_and_a_report_closes_it(Backend::Sqlite).await;
}

#[tokio::test]
async fn silence_goes_offline_and_a_report_closes_it_postgres() {
    silence_goes_offline_and_a_report_closes_it(Backend::Postgres).await;
}

#[tokio::test]
async fn away_clients_and_slower_devices_are_not_chased() {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let app =
        TestApp::spawn_with_clock(supervised(Backend::Sqlite, dir.path()), Some(dir), &clock).await;
    let city = seed_small_city(&app.db).await;
    heartbeat(&app, &city, 1).await;
    watched(&app.db, &city.device).await;
    // In hospital for a day.
    let until = clock.now() + 24 * 3600 * 1000;
    app.db
        .set_client_away(city.client_id, Some(until))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the profile cache's sweep
    clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(offline_job(&app.db, &city.device).await.is_none(), "away");
    // Back home, still silent: now it is chased.
    clock.advance(Duration::from_secs(24 * 3600));
    eventually("the offline job after the absence", || async {
        offline_job(&app.db, &city.device).await
    })
    .await;

    // A device set to report every 10 minutes gets 2 x 600 + 30 s.
    let slow = seed_small_city(&app.db).await;
    app.db
        .set_device_heartbeat(&slow.device, Some(600))
        .await
        .unwrap();
    heartbeat(&app, &slow, 1).await;
    watched(&app.db, &slow.device).await;
    clock.advance(Duration::from_secs(1000));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(offline_job(&app.db, &slow.device).await.is_none());
    clock.advance(Duration::from_secs(240));
    eventually("the slow device offline", || async {
        offline_job(&app.db, &slow.device).await
    })
    .await;
    app.stop().await;
}

/// Every device protocol's heartbeats keep its devices online; silence takes
/// them offline and the next heartbeat brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocols_heartbeats_are_supervised() {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let app =
        TestApp::spawn_with_clock(supervised(Backend::Sqlite, dir.path()), Some(dir), &clock).await;
    let protocols = [
        ("native", app.native),
        ("gt06", app.addrs.gt06),
        ("watch", app.addrs.watch),
        ("h02", app.addrs.h02),
        ("eview", app.addrs.eview),
        ("dc09", app.addrs.dc09),
    ];
    let mut fleets = Vec::new();
    for (protocol, addr) in protocols {
        let seed = format!("supervised-{protocol}");
        let city = seed_city(
            &app.db,
            &CitySpec {
                clients: 2,
                carers_per_provider: 1,
                secret_seed: seed.clone(),
                protocol: pingantong_sim::speaker::Mix::parse(protocol).unwrap(),
                native_from: None,
            },
        )
        .await
        .unwrap();
        let pendants: Vec<Pendant> = city
            .devices
            .iter()
            .map(|id| Pendant::new(id.clone(), pingantong_sim::derive_secret(&seed, id)))
            .collect();
        fleets.push((protocol, addr, pendants));
    }
    // DC-09 keys reach the receiver with the directory's next sweep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beat = |addr, protocol: &str, pendants: &Vec<Pendant>| {
        fleet::run(
            FleetConfig {
                lines: vec![Line::new(speaker::by_name(protocol).unwrap(), addr)],
                pendants: pendants.clone(),
                heartbeat: Duration::from_millis(200),
                alarm_rate: 0.0,
                technical_rate: 0.0,
                duration: Duration::from_millis(600),
                retry_after: Duration::from_secs(2),
                grace: Duration::from_secs(5),
            },
            Arc::new(FleetStats::default()),
        )
    };
    for (protocol, addr, pendants) in &fleets {
        let report = beat(*addr, protocol, pendants).await;
        assert!(report.heartbeats_sent > 0, "{protocol}: no heartbeats");
    }
    let all: Vec<String> = fleets
        .iter()
        .flat_map(|f| f.2.iter().map(|p| p.id.clone()))
        .collect();
    for id in &all {
        watched(&app.db, id).await;
    }
    clock.advance(Duration::from_secs(151));
    for id in &all {
        eventually("offline", || async { offline_job(&app.db, id).await }).await;
    }
    for (protocol, addr, pendants) in &fleets {
        beat(*addr, protocol, pendants).await;
    }
    for id in &all {
        eventually("back online", || async {
            offline_job(&app.db, id)
                .await
                .filter(|j| j.1 == "cancelled")
        })
        .await;
    }
    app.stop().await;
}

/// Supervision writes a city's first reports and uses a chunk of devices at
/// a time: each device keeps its first report and its latest use, however
/// the marks are ordered, repeated or split over chunks.
#[tokio::test]
async fn marks_of_many_devices_keep_first_reports_and_latest_uses() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn(backend, Broker::Embedded).await;
        // More than one chunk's worth.
        let ids: Vec<String> = (0..150).map(|_| unique("MK").replace('_', "-")).collect();
        for id in &ids {
            app.db
                .upsert_device(&pingantong::store::NewDevice {
                    id: id.clone(),
                    protocol: "native".into(),
                    secret: Vec::new(),
                    client_id: None,
                })
                .await
                .unwrap();
        }
        let used: Vec<(String, i64)> = ids[..140]
            .iter()
            .enumerate()
            .map(|(n, id)| (id.clone(), 1_000 + n as i64))
            .collect();
        app.db.mark_used(&used).await.unwrap();
        // Later marks: a newer use, an older one (a delayed frame), and one
        // device twice in a chunk, the newer first.
        app.db
            .mark_used(&[
                (ids[0].clone(), 5_000),
                (ids[1].clone(), 10),
                (ids[2].clone(), 7_000),
                (ids[2].clone(), 6_000),
            ])
            .await
            .unwrap();
        app.db.mark_heard(&ids[..130], 50).await.unwrap();
        app.db.mark_heard(&ids[120..], 60).await.unwrap();
        for (n, id) in ids.iter().enumerate() {
            let row = app.db.device_listing(id).await.unwrap().unwrap();
            let used = match n {
                0 => Some(5_000),
                2 => Some(7_000),
                n if n < 140 => Some(1_000 + n as i64),
                _ => None,
            };
            assert_eq!(row.used_at, used, "{backend:?}: device {n}'s last use");
            let heard = if n < 130 { 50 } else { 60 };
            assert_eq!(
                row.heard_at,
                Some(heard),
                "{backend:?}: device {n}'s first report"
            );
        }
        app.stop().await;
    }
}

/// The wellbeing work list: a resident whose pendant is only ever heard
/// beating, never pressed or tested, is on it until someone calls.
#[tokio::test]
async fn residents_whose_devices_go_unused_are_called() {
    unused_devices_are_called(Backend::Sqlite).await;
    unused_devices_are_called(Backend::Postgres).await;
}

async fn unused_devices_are_called(backend: Backend) {
    use pingantong::domain::Role;
    use reqwest::StatusCode;
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let s = {
        let mut s = test_settings(backend, Broker::Embedded, dir.path());
        s.supervision.tick_ms = 100;
        s
    };
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let pressed = seed_small_city(&app.db).await;
    let silent = seed_small_city(&app.db).await;
    let away = seed_small_city(&app.db).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    let api = Api::of(&app);
    let op = api.token("op.li").await;
    let mut dev = Device::connect(app.native).await;
    dev.send(
        &event(&pressed.device, 1, EventKind::PeriodicTest),
        &pressed.secret,
    )
    .await;
    dev.send(
        &event(&silent.device, 1, EventKind::Heartbeat),
        &silent.secret,
    )
    .await;
    app.db
        .set_client_away(
            away.client_id,
            Some(pingantong::store::now_ms() + 86_400_000),
        )
        .await
        .unwrap();

    let listed = |rows: &serde_json::Value| -> Vec<i64> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["client_id"].as_i64().unwrap())
            .collect()
    };
    let rows = eventually("the test recorded as a use", || async {
        let (status, rows) = api.get("/api/v1/wellbeing?hours=1", Some(&op)).await;
        assert_eq!(status, StatusCode::OK, "{rows}");
        (!listed(&rows).contains(&pressed.client_id)).then_some(rows)
    })
    .await;
    assert_eq!(listed(&rows), vec![silent.client_id], "{rows}");
    assert!(rows[0]["last_used_at"].is_null(), "never used");

    let check = format!("/api/v1/clients/{}/wellbeing-checks", silent.client_id);
    let (status, body) = api.post(&check, &op, json!({"outcome": "fine"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("needs_help"),
        "{body}"
    );
    let (status, _) = api
        .post(
            "/api/v1/clients/999999/wellbeing-checks",
            &op,
            json!({"outcome": "well"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .post(
            &check,
            &op,
            json!({"outcome": "well", "note": "在家，按钮会用"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, rows) = api.get("/api/v1/wellbeing?hours=1", Some(&op)).await;
    assert!(listed(&rows).is_empty(), "called: off the list {rows}");
    let trail = app
        .db
        .audit_trail(Some(&format!("client:{}", silent.client_id)), 10)
        .await
        .unwrap();
    assert_eq!(trail[0].action, "wellbeing_check");
    assert_eq!(trail[0].detail, "well");
    app.stop().await;
}

/// A device that sends periodic tests and misses one raises "missed test";
/// its next test closes the job.
#[tokio::test]
async fn a_missed_periodic_test_is_a_technical_job_until_the_next_test() {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = {
        let mut s = supervised(Backend::Sqlite, dir.path());
        s.supervision.periodic_test_hours = 1;
        s
    };
    let app = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    let city = seed_small_city(&app.db).await;
    let job = || async {
        let key = format!("technical:{}:missed_test", city.device);
        for (id, fold_key, _, _) in app.db.incidents_overview().await.unwrap() {
            if fold_key == key {
                return Some(app.db.incident_summary(id).await.unwrap().unwrap());
            }
        }
        None
    };
    let mut dev = Device::connect(app.native).await;
    dev.send(
        &event(&city.device, 1, EventKind::PeriodicTest),
        &city.secret,
    )
    .await;
    watched(&app.db, &city.device).await;
    // Heartbeats alone do not count as a test.
    clock.advance(Duration::from_secs(1800));
    heartbeat(&app, &city, 2).await;
    clock.advance(Duration::from_secs(1800 + 29));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(job().await.is_none(), "not before 1 h + 30 s");
    clock.advance(Duration::from_secs(3));
    let missed = eventually("the missed-test job", || async { job().await }).await;
    assert_eq!(missed.lane, "technical");
    assert_eq!(missed.state, "queued");
    let mut dev = Device::connect(app.native).await;
    dev.send(
        &event(&city.device, 3, EventKind::PeriodicTest),
        &city.secret,
    )
    .await;
    let cleared = eventually("the job cleared by the test", || async {
        job().await.filter(|j| j.state == "cancelled")
    })
    .await;
    assert_eq!(cleared.outcome.as_deref(), Some("cleared"));
    app.stop().await;
}

/// A device retired after it was heard from is not chased for its silence.
#[tokio::test]
async fn a_retired_device_is_not_chased() {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let app =
        TestApp::spawn_with_clock(supervised(Backend::Sqlite, dir.path()), Some(dir), &clock).await;
    let kept = seed_small_city(&app.db).await;
    let retired = seed_small_city(&app.db).await;
    for city in [&kept, &retired] {
        heartbeat(&app, city, 1).await;
        watched(&app.db, &city.device).await;
    }
    assert!(app.db.retire_device(&retired.device, "test").await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await; // the directory's sweep
    clock.advance(Duration::from_secs(200));
    // The one still in service goes offline; by then the retired one would have too.
    eventually("the kept device offline", || async {
        offline_job(&app.db, &kept.device).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(offline_job(&app.db, &retired.device).await.is_none());
    app.stop().await;
}
