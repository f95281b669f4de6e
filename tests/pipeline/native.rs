//! The native protocol through the whole pipeline.

use std::time::Duration;

use pingantong::store::{NewClient, NewDevice};
use pingantong_protocol::EventKind;
use pingantong_protocol::native::{ACK_DUPLICATE, NakReason, Reply};

use crate::helpers::*;

async fn sos_is_committed_acked_and_offered_to_the_nearest_contracted_carer(
    backend: Backend,
    broker: Broker,
    device_threads: Option<usize>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(backend, broker, dir.path());
    if let Some(n) = device_threads {
        settings.devices.threads = n;
    }
    let app = TestApp::spawn_with(settings, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;

    let (reply, authentic) = dev
        .send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    assert!(
        authentic,
        "an ACK to a known device is signed with its secret"
    );
    let Reply::Ack {
        seq: 1, status: 0, ..
    } = reply
    else {
        panic!("expected a plain ACK for seq 1, got {reply:?}");
    };
    // The ACK means committed: the row is there the moment the ACK is.
    let states = app.db.alarm_states(&city.device, 1).await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].0, "verified");

    let offer = eventually("the carer's offer over MQTT", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    assert_eq!(offer.v, 1);
    assert_eq!(offer.carer_id, city.near_carer);
    assert_ne!(offer.carer_id, city.far_carer);
    assert_ne!(offer.carer_id, city.other_provider_carer);
    assert_eq!(offer.kind, "sos");
    assert_eq!(offer.client_name, "陈秀英");
    assert!(offer.address.contains("北京街"));

    let incidents = app.db.incidents_overview().await.unwrap();
    assert_eq!(incidents.len(), 1);
    let (incident, fold_key, presses, verified) = incidents[0].clone();
    assert_eq!(fold_key, format!("client:{}", city.client_id));
    assert_eq!((presses, verified), (1, true));
    assert_eq!(offer.incident_id, incident);
    let dispatches = app.db.dispatches_overview().await.unwrap();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(dispatches[0].2, city.near_carer);
    assert!(!dispatches[0].3, "the contracted provider, not a fallback");
    let actions = app.db.incident_actions(incident).await.unwrap();
    assert_eq!(actions, ["opened", "carer_offered"]);
    app.stop().await;
}

#[tokio::test]
async fn sos_path_sqlite_embedded_broker() {
    sos_is_committed_acked_and_offered_to_the_nearest_contracted_carer(
        Backend::Sqlite,
        Broker::Embedded,
        None,
    )
    .await;
}

/// `device_threads = 0`: device connections share the server's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sos_path_with_one_runtime_for_everything() {
    sos_is_committed_acked_and_offered_to_the_nearest_contracted_carer(
        Backend::Sqlite,
        Broker::Embedded,
        Some(0),
    )
    .await;
}

#[tokio::test]
async fn sos_path_postgres_mosquitto() {
    sos_is_committed_acked_and_offered_to_the_nearest_contracted_carer(
        Backend::Postgres,
        Broker::Mosquitto,
        None,
    )
    .await;
}

async fn retries_and_repeated_presses(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let first = event(&city.device, 10, EventKind::Sos);
    let (r, _) = dev.send(&first, &city.secret).await;
    assert!(
        matches!(
            r,
            Reply::Ack {
                seq: 10,
                status: 0,
                ..
            }
        ),
        "{r:?}"
    );
    // The same frame again (the device missed the ACK): acknowledged as a duplicate.
    let (r, _) = dev.send(&first, &city.secret).await;
    assert!(
        matches!(
            r,
            Reply::Ack {
                seq: 10,
                status: ACK_DUPLICATE,
                ..
            }
        ),
        "{r:?}"
    );
    // A further press, then a fall, while the incident is open: folded, not new.
    for (seq, kind) in [(11, EventKind::Sos), (12, EventKind::Fall)] {
        let (r, _) = dev
            .send(&event(&city.device, seq, kind), &city.secret)
            .await;
        assert!(matches!(r, Reply::Ack { status: 0, .. }), "{r:?}");
    }
    // A cancel is recorded on the open incident, which stays open.
    let (r, _) = dev
        .send(&event(&city.device, 13, EventKind::Cancel), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { seq: 13, .. }), "{r:?}");
    let incidents = eventually("three presses folded into one incident", || async {
        let i = app.db.incidents_overview().await.unwrap();
        (i.len() == 1 && i[0].2 == 3).then_some(i)
    })
    .await;
    let actions = eventually("the cancel on the timeline", || async {
        let a = app.db.incident_actions(incidents[0].0).await.unwrap();
        a.contains(&"cancel_requested".to_string()).then_some(a)
    })
    .await;
    assert_eq!(actions.iter().filter(|a| *a == "press_folded").count(), 2);
    assert_eq!(
        app.db.alarm_states(&city.device, 10).await.unwrap().len(),
        1
    );
    // One incident, one offer: folded presses do not send more carers.
    assert_eq!(app.db.dispatches_overview().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn retries_and_repeated_presses_sqlite() {
    retries_and_repeated_presses(Backend::Sqlite).await;
}

#[tokio::test]
async fn retries_and_repeated_presses_postgres() {
    retries_and_repeated_presses(Backend::Postgres).await;
}

async fn unverified_senders_reach_an_operator_but_no_carer(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;

    // Unknown device: stored, NAKed (unsigned), incident flagged unverified.
    let stranger = unique("XX").replace('_', "-");
    let (r, authentic) = dev
        .send(&event(&stranger, 1, EventKind::Sos), b"whatever")
        .await;
    assert!(
        matches!(
            r,
            Reply::Nak {
                seq: 1,
                reason: NakReason::UnknownDevice,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(!authentic);
    // Known device, wrong secret: stored, NAKed (signed with the real secret).
    let (r, _) = dev
        .send(&event(&city.device, 5, EventKind::Sos), b"not the secret")
        .await;
    assert!(
        matches!(
            r,
            Reply::Nak {
                seq: 5,
                reason: NakReason::BadTag,
                ..
            }
        ),
        "{r:?}"
    );
    dev.send_raw(&frame(
        &event(&city.device, 6, EventKind::Sos),
        b"not the secret",
    ))
    .await;
    let (r, authentic) = dev.reply(&city.secret).await.unwrap();
    assert!(
        matches!(
            r,
            Reply::Nak {
                seq: 6,
                reason: NakReason::BadTag,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        authentic,
        "a BadTag NAK is signed with the device's real secret"
    );

    assert_eq!(
        app.db.alarm_states(&stranger, 1).await.unwrap()[0].0,
        "unknown_device"
    );
    assert_eq!(
        app.db.alarm_states(&city.device, 5).await.unwrap()[0].0,
        "bad_tag"
    );
    let incidents = eventually("two unverified incidents", || async {
        let i = app.db.incidents_overview().await.unwrap();
        (i.len() == 2).then_some(i)
    })
    .await;
    assert!(
        incidents.iter().all(|i| !i.3),
        "both unverified: {incidents:?}"
    );
    assert!(
        incidents
            .iter()
            .any(|i| i.1 == format!("unverified:{stranger}"))
    );
    // A forged press does not fold into (or open) the resident's real incident.
    assert!(incidents.iter().all(|i| !i.1.starts_with("client:")));
    // Give routing every chance to (wrongly) act, then check it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.db.dispatches_overview().await.unwrap().is_empty());
    assert!(app.carers.offers().is_empty());

    // The real resident pressing now gets their own verified incident and a carer.
    let (r, _) = dev
        .send(&event(&city.device, 7, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { seq: 7, .. }), "{r:?}");
    eventually("an offer for the verified press", || async {
        (app.carers.offers().len() == 1).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn unverified_senders_sqlite() {
    unverified_senders_reach_an_operator_but_no_carer(Backend::Sqlite).await;
}

#[tokio::test]
async fn unverified_senders_postgres() {
    unverified_senders_reach_an_operator_but_no_carer(Backend::Postgres).await;
}

#[tokio::test]
async fn malformed_frames_are_answered_kept_and_do_not_stop_the_server() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;

    // A bad body inside a good header: NAK, and the connection goes on.
    let mut dev = Device::connect(app.native).await;
    dev.send_raw(&[0x50, 0x41, 0x01, 0x01, 0x00, 0x02, 0x01, b' '])
        .await;
    let (r, _) = dev.reply(&city.secret).await.unwrap();
    assert!(
        matches!(
            r,
            Reply::Nak {
                seq: 0,
                reason: NakReason::Malformed,
                ..
            }
        ),
        "{r:?}"
    );
    dev.send_raw(&[0x50, 0x41, 0x07, 0x01, 0x00, 0x00]).await;
    let (r, _) = dev.reply(&city.secret).await.unwrap();
    assert!(
        matches!(
            r,
            Reply::Nak {
                reason: NakReason::UnsupportedVersion,
                ..
            }
        ),
        "{r:?}"
    );
    let (r, _) = dev
        .send(&event(&city.device, 1, EventKind::Heartbeat), &city.secret)
        .await;
    assert!(
        matches!(r, Reply::Ack { seq: 1, .. }),
        "same connection still works: {r:?}"
    );

    // Garbage with no frame boundary: NAK, then the connection is closed.
    let mut junk = Device::connect(app.native).await;
    junk.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    let (r, _) = junk.reply(&city.secret).await.unwrap();
    assert!(
        matches!(
            r,
            Reply::Nak {
                reason: NakReason::Malformed,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        junk.reply(&city.secret).await.is_none(),
        "connection closed after a framing error"
    );

    // An oversized length is refused before anything is buffered.
    let mut big = Device::connect(app.native).await;
    big.send_raw(&[0x50, 0x41, 0x01, 0x01, 0xff, 0xff]).await;
    assert!(matches!(
        big.reply(&city.secret).await,
        Some((Reply::Nak { .. }, _))
    ));

    // Nothing was dropped silently: every rejected input is kept with its reason.
    assert_eq!(app.db.count_rejected_frames().await.unwrap(), 4);
    // And the server still takes alarms.
    let mut dev2 = Device::connect(app.native).await;
    let (r, _) = dev2
        .send(&event(&city.device, 2, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { seq: 2, .. }), "{r:?}");
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_open_nothing_and_low_batteries_are_one_technical_job() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    for seq in 1..=3 {
        let (r, _) = dev
            .send(
                &event(&city.device, seq, EventKind::Heartbeat),
                &city.secret,
            )
            .await;
        assert!(matches!(r, Reply::Ack { .. }), "{r:?}");
    }
    let (r, _) = dev
        .send(&event(&city.device, 4, EventKind::LowBattery), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }), "{r:?}");
    // A verified heartbeat is no row of its own: it is the device's latest
    // report, written within a second of the answer.
    assert_eq!(
        app.db
            .count_alarms(Some(EventKind::Heartbeat))
            .await
            .unwrap(),
        0
    );
    let heard = eventually(
        "the heartbeats written as the device's presence",
        || async { app.db.presence_of(&city.device).await.unwrap() },
    )
    .await;
    assert_eq!(heard.protocol, "native");
    assert!(heard.heard_at > 0);
    // The low battery is a row, and owed to the incident stage.
    assert_eq!(app.db.alarm_states(&city.device, 4).await.unwrap().len(), 1);
    // A low battery is a job for the operator's technical queue; reported
    // again, it is the same job.
    let (r, _) = dev
        .send(&event(&city.device, 5, EventKind::LowBattery), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }), "{r:?}");
    let job = eventually("both low batteries on one job", || async {
        let incidents = app.db.incidents_overview().await.unwrap();
        (incidents.len() == 1 && incidents[0].2 == 2).then(|| incidents[0].clone())
    })
    .await;
    assert_eq!(job.1, format!("technical:{}:low_battery", city.device));
    let summary = app.db.incident_summary(job.0).await.unwrap().unwrap();
    assert_eq!(summary.lane, "technical");
    assert_eq!(summary.kind, "low_battery");
    assert_eq!(summary.state, "queued");
    // Heartbeats never became anyone's job.
    assert_eq!(app.db.incidents_overview().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn no_ack_without_a_commit() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let (r, _) = dev
        .send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }));
    // The database goes away: the device must hear "send again", never an ACK.
    app.db.close().await;
    let (r, _) = dev
        .send(&event(&city.device, 2, EventKind::Sos), &city.secret)
        .await;
    assert!(
        matches!(
            r,
            Reply::Nak {
                seq: 2,
                reason: NakReason::Unavailable,
                ..
            }
        ),
        "{r:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn slow_half_frames_time_out_and_the_cap_refuses_extra_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Embedded, dir.path());
    s.devices.frame_timeout_secs = 1;
    s.devices.max_connections = 2;
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let whole = frame(&event(&city.device, 1, EventKind::Sos), &city.secret);

    let mut slow = Device::connect(app.native).await;
    slow.send_raw(&whole[..10]).await;
    let t = tokio::time::Instant::now();
    assert!(
        slow.reply(&city.secret).await.is_none(),
        "closed, not answered"
    );
    assert!(t.elapsed() >= Duration::from_millis(900));
    eventually("the half frame kept as rejected", || async {
        (app.db.count_rejected_frames().await.unwrap() == 1).then_some(())
    })
    .await;

    let _a = Device::connect(app.native).await;
    let _b = Device::connect(app.native).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = Device::connect(app.native).await;
    third.send_raw(&whole).await;
    assert!(
        third.reply(&city.secret).await.is_none(),
        "over the cap: closed"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_re_provisioned_secret_is_picked_up_without_a_restart() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let (r, _) = dev
        .send(&event(&city.device, 1, EventKind::Heartbeat), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }), "{r:?}");
    // Another process (the console, an import) gives the pendant a new secret.
    let new_secret = b"a brand new secret for the unit!".to_vec();
    app.db
        .upsert_device(&pingantong::store::NewDevice {
            id: city.device.clone(),
            protocol: "native".into(),
            secret: new_secret.clone(),
            client_id: Some(city.client_id),
        })
        .await
        .unwrap();
    let mut seq = 2;
    eventually("the new secret accepted", || {
        seq += 1;
        let e = event(&city.device, seq, EventKind::Heartbeat);
        let secret = new_secret.clone();
        let addr = app.native;
        async move {
            let mut d = Device::connect(addr).await;
            matches!(d.send(&e, &secret).await.0, Reply::Ack { .. }).then_some(())
        }
    })
    .await;
    let (r, _) = dev
        .send(
            &event(&city.device, 100, EventKind::Heartbeat),
            &city.secret,
        )
        .await;
    assert!(
        matches!(
            r,
            Reply::Nak {
                reason: NakReason::BadTag,
                ..
            }
        ),
        "old secret refused: {r:?}"
    );
    app.stop().await;
}

#[derive(Debug, Clone, Copy)]
enum Nobody {
    OnDuty,
    Free,
    CoversTheAddress,
}

/// Whatever keeps every carer away, the alarm is with the operator and the
/// timeline says why no carer was asked.
async fn nobody_to_send(backend: Backend, why: Nobody) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    for carer in [city.near_carer, city.far_carer, city.other_provider_carer] {
        match why {
            Nobody::OnDuty => app.db.set_carer_duty(carer, false).await.unwrap(),
            Nobody::Free => app.db.set_carer_busy(carer, true).await.unwrap(),
            Nobody::CoversTheAddress => {}
        }
    }
    let device = if let Nobody::CoversTheAddress = why {
        // A resident in a district no provider is contracted for.
        let client = app
            .db
            .insert_client(&NewClient {
                name: "黄伯".into(),
                address: "广州市从化区街口街 8号".into(),
                district: "从化区".into(),
                street: "街口街".into(),
                lat: Some(23.548),
                lon: Some(113.586),
                language: "yue".into(),
                medical_notes: String::new(),
                medications: String::new(),
                allergies: String::new(),
                key_safe: String::new(),
                birth_year: Some(1940),
                subsidy_category: None,
            })
            .await
            .unwrap();
        let id = unique("PX").replace('_', "-");
        app.db
            .upsert_device(&NewDevice {
                id: id.clone(),
                protocol: "native".into(),
                secret: city.secret.clone(),
                client_id: Some(client),
            })
            .await
            .unwrap();
        id
    } else {
        city.device.clone()
    };
    let mut dev = Device::connect(app.native).await;
    let (r, _) = dev
        .send(&event(&device, 1, EventKind::Fall), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }));
    let incident = newest_incident(&app.db).await;
    let actions = eventually("the routing decision", || async {
        let a = app.db.incident_actions(incident).await.unwrap();
        (a.len() == 2).then_some(a)
    })
    .await;
    assert_eq!(actions, ["opened", "no_carer_available"], "{why:?}");
    assert!(app.db.dispatches_overview().await.unwrap().is_empty());
    let s = app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(s.state, "queued", "{why:?}: waiting for an operator");
    app.stop().await;
}

#[tokio::test]
async fn no_carer_on_duty_still_leaves_the_incident_with_the_operator() {
    nobody_to_send(Backend::Sqlite, Nobody::OnDuty).await;
    nobody_to_send(Backend::Postgres, Nobody::OnDuty).await;
}

#[tokio::test]
async fn every_carer_busy_still_leaves_the_incident_with_the_operator() {
    nobody_to_send(Backend::Sqlite, Nobody::Free).await;
    nobody_to_send(Backend::Postgres, Nobody::Free).await;
}

#[tokio::test]
async fn an_address_outside_every_contract_still_reaches_an_operator() {
    nobody_to_send(Backend::Sqlite, Nobody::CoversTheAddress).await;
    nobody_to_send(Backend::Postgres, Nobody::CoversTheAddress).await;
}

#[tokio::test]
async fn fallback_provider_when_the_contracted_one_has_nobody() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    app.db.set_carer_duty(city.near_carer, false).await.unwrap();
    app.db.set_carer_duty(city.far_carer, false).await.unwrap();
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let offer = eventually("an offer", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    assert_eq!(offer.carer_id, city.other_provider_carer);
    let d = app.db.dispatches_overview().await.unwrap();
    assert!(d[0].3, "recorded as a fallback");
    app.stop().await;
}

#[tokio::test]
async fn many_pendants_at_once_are_all_acknowledged() {
    // Concurrent connections make the writer batch; every event must still be
    // answered and stored exactly once (positions: heartbeats are no rows).
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut tasks = Vec::new();
    for c in 0..20u32 {
        let (addr, device, secret) = (app.native, city.device.clone(), city.secret.clone());
        tasks.push(tokio::spawn(async move {
            let mut d = Device::connect(addr).await;
            let mut burst = bytes::BytesMut::new();
            for k in 0..10u32 {
                burst.extend_from_slice(&frame(
                    &event(&device, c * 100 + k, EventKind::Position),
                    &secret,
                ));
            }
            d.send_raw(&burst).await;
            let mut acked = 0;
            for _ in 0..10 {
                if let Some((Reply::Ack { .. }, true)) = d.reply(&secret).await {
                    acked += 1;
                }
            }
            acked
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 200);
    assert_eq!(
        app.db
            .count_alarms(Some(EventKind::Position))
            .await
            .unwrap(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Embedded, dir.path());
    s.devices.idle_timeout_secs = 1;
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let (r, _) = dev
        .send(&event(&city.device, 1, EventKind::Heartbeat), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }));
    let t = tokio::time::Instant::now();
    assert!(
        dev.reply(&city.secret).await.is_none(),
        "closed by the server"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    // Idle closing stores nothing: it is not an error.
    assert_eq!(app.db.count_rejected_frames().await.unwrap(), 0);
    app.stop().await;
}

/// Life-safety events have their own queue into every commit: an SOS is
/// answered through a flood of technical events. The latencies are printed
/// for the record (benches/RESULTS.md has the measured comparison), never asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sos_is_answered_through_a_flood_of_technical_events() {
    use pingantong_sim::city::{CitySpec, seed_city};
    use pingantong_sim::fleet::{self, FleetConfig, FleetStats, Line, Pendant};
    use std::sync::Arc;

    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_city(
        &app.db,
        &CitySpec {
            clients: 40,
            carers_per_provider: 1,
            secret_seed: "flood".into(),
            protocol: pingantong_sim::speaker::Mix::native(),
            native_from: None,
        },
    )
    .await
    .unwrap();
    let pendants: Vec<Pendant> = city
        .devices
        .iter()
        .map(|id| Pendant::new(id.clone(), pingantong_sim::derive_secret("flood", id)))
        .collect();
    let report = fleet::run(
        FleetConfig {
            lines: vec![Line::new(
                Arc::new(pingantong_sim::speaker::NativeSpeaker),
                app.native,
            )],
            pendants,
            heartbeat: Duration::from_secs(5),
            alarm_rate: 10.0,
            technical_rate: 2_000.0,
            duration: Duration::from_secs(3),
            retry_after: Duration::from_secs(3),
            grace: Duration::from_secs(15),
        },
        Arc::new(FleetStats::default()),
    )
    .await;
    assert!(report.alarms_sent > 5, "presses were made");
    assert!(
        report.heartbeats_sent > 1_000,
        "the flood happened: {}",
        report.heartbeats_sent
    );
    assert_eq!(report.alarms_lost(), 0, "{:?}", report.unanswered);
    assert_eq!(
        report.heartbeats_acked, report.heartbeats_sent,
        "the flood is stored too"
    );
    let stored = app
        .db
        .count_alarms(Some(EventKind::LowBattery))
        .await
        .unwrap();
    assert!(stored > 1_000, "{stored}");
    let h = &report.alarm_latency_us;
    println!(
        "SOS through {} technical events in 3 s: press->ACK p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        report.heartbeats_sent,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    app.stop().await;
}
