//! Encryption at rest: what the database holds of residents' health, their
//! devices' positions and frames is sealed; the server reads it back; keys
//! rotate and rewrap; a wrong key stops the server at start.

use pingantong::domain::Action;
use pingantong::store::{Db, Transition};
use pingantong::vault::MasterKey;
use pingantong_protocol::EventKind;
use serde_json::json;

use crate::helpers::*;

/// Every value of `sql` (one text column), as stored.
async fn texts(db: &Db, sql: &'static str) -> Vec<String> {
    match db {
        Db::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_all(read).await.unwrap(),
        Db::Postgres(p, _) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
    }
}

async fn blobs(db: &Db, sql: &'static str) -> Vec<Vec<u8>> {
    match db {
        Db::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_all(read).await.unwrap(),
        Db::Postgres(p, _) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
    }
}

/// Run `sql`, with `$1` the frame `OLD-FRAME` where it names one.
async fn exec(db: &Db, sql: &'static str) {
    let frame = sql.contains("$1").then(|| b"OLD-FRAME".to_vec());
    match db {
        Db::Sqlite { write, .. } => {
            let q = sqlx::query(sql);
            let q = match frame {
                Some(f) => q.bind(f),
                None => q,
            };
            q.execute(write).await.unwrap();
        }
        Db::Postgres(p, _) => {
            let q = sqlx::query(sql);
            let q = match frame {
                Some(f) => q.bind(f),
                None => q,
            };
            q.execute(p).await.unwrap();
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn health_and_positions_are_sealed_and_read_back(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let sos = event(&city.device, 1, EventKind::Sos);
    let sent = frame(&sos, &city.secret);
    dev.send(&sos, &city.secret).await;

    // As stored: no health text, no coordinates, no frame bytes in clear.
    let health = texts(
        &app.db,
        "SELECT medical_notes || '|' || medications || '|' || allergies || '|' || key_safe \
         FROM clients",
    )
    .await;
    assert_eq!(health.len(), 1);
    for clear in ["高血压", "华法林", "青霉素", "4711"] {
        assert!(!health[0].contains(clear), "{clear} in {}", health[0]);
    }
    assert_eq!(health[0].matches("pat1:").count(), 4, "{}", health[0]);
    let positions = texts(
        &app.db,
        "SELECT COALESCE(position, 'none') || '|' || COALESCE(CAST(lat AS TEXT), 'null') \
         FROM alarms",
    )
    .await;
    assert_eq!(positions.len(), 1);
    assert!(positions[0].starts_with("pat1:"), "{}", positions[0]);
    assert!(
        positions[0].ends_with("|null"),
        "no plain latitude: {}",
        positions[0]
    );
    assert!(!positions[0].contains("23.1291"));
    let decoded = texts(&app.db, "SELECT decoded FROM alarms").await;
    assert!(decoded[0].starts_with("pat1:") && !decoded[0].contains("23.1291"));
    let raw = blobs(&app.db, "SELECT raw FROM alarms").await;
    assert!(
        !contains(&raw[0], &sent[..]),
        "the frame is not kept as received"
    );
    assert!(!contains(&raw[0], city.device.as_bytes()));

    // The presence row, written within a second, is sealed too.
    let presence = eventually("the device's presence written", || async {
        texts(
            &app.db,
            "SELECT position FROM device_presence WHERE position IS NOT NULL",
        )
        .await
        .into_iter()
        .next()
    })
    .await;
    assert!(presence.starts_with("pat1:") && !presence.contains("23.1291"));

    // Read back through the server: the operator's views and the carer's job.
    let log = app
        .db
        .alarm_log(&pingantong::store::AlarmLogQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (log[0].lat, log[0].lon, log[0].accuracy_m),
        (Some(23.1291), Some(113.2644), Some(15))
    );
    assert_eq!(log[0].raw, sent.to_vec(), "the frame as received");
    assert!(log[0].decoded.contains("23.1291"), "{}", log[0].decoded);
    let profile = app
        .db
        .client_profile(city.client_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            profile.medical_notes.as_str(),
            profile.allergies.as_str(),
            profile.key_safe.as_str()
        ),
        ("高血压；房颤", "青霉素", "4711")
    );
    let devices = app.db.client_devices(city.client_id).await.unwrap();
    assert_eq!(devices[0].lat, Some(23.1291));
    let incident = newest_incident(&app.db).await;
    assert_eq!(
        app.db.incident_position(incident).await.unwrap(),
        Some((23.1291, 113.2644))
    );
    let offer = eventually("the carer's offer", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    assert_eq!(offer.incident_id, incident);

    // A hand-off's summary (health, position) is sealed and read back.
    let handoff = app
        .db
        .record_handoff(incident, "120", "GZ120-1", "user:op")
        .await
        .unwrap();
    assert_eq!(handoff.summary["allergies"], "青霉素");
    let stored = texts(&app.db, "SELECT summary FROM handoffs").await;
    assert!(stored[0].starts_with("pat1:") && !stored[0].contains("青霉素"));
    let back = app.db.handoffs_of(incident).await.unwrap();
    assert_eq!(
        back[0].summary["last_known_position"],
        json!({"lat": 23.1291, "lon": 113.2644})
    );

    // Bytes that could not be parsed are kept sealed as well.
    app.db
        .insert_rejected_frame("native", "127.0.0.1:9", "test", b"PT-SECRET-BYTES")
        .await
        .unwrap();
    let rejected = blobs(&app.db, "SELECT raw FROM rejected_frames").await;
    assert!(!contains(&rejected[0], b"PT-SECRET-BYTES"));
    app.stop().await;
}

#[tokio::test]
async fn health_and_positions_are_sealed_and_read_back_sqlite() {
    health_and_positions_are_sealed_and_read_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn health_and_positions_are_sealed_and_read_back_postgres() {
    health_and_positions_are_sealed_and_read_back(Backend::Postgres).await;
}

async fn plain_rows_are_sealed_and_keys_rotate_and_rewrap(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(backend, Broker::Embedded, dir.path());
    let db = Db::connect(&settings.store_config(2).unwrap())
        .await
        .unwrap();
    let city = seed_small_city(&db).await;
    // Rows as a server before encryption wrote them: plain text, plain
    // coordinates (in the old columns), a plain frame.
    exec(
        &db,
        "UPDATE clients SET medical_notes = '糖尿病', medications = '二甲双胍', key_safe = '1234'",
    )
    .await;
    exec(
        &db,
        "INSERT INTO alarms (received_at, protocol, peer, device_id, seq, kind, lat, lon, \
         accuracy_m, auth, raw, decoded, dedup_key) VALUES (1, 'native', 'p', 'OLD-1', 1, 'sos', \
         23.5, 113.5, 9, 'verified', $1, '{\"lat\":23.5}', 'old-1')",
    )
    .await;
    exec(
        &db,
        "INSERT INTO device_presence (device_id, protocol, heard_at, lat, lon) \
         VALUES ('OLD-1', 'native', 1, 23.5, 113.5)",
    )
    .await;
    // Read as they are until sealed.
    let p = db.client_profile(city.client_id).await.unwrap().unwrap();
    assert_eq!(p.medical_notes, "糖尿病");
    assert_eq!(
        db.presence_of("OLD-1").await.unwrap().unwrap().lat,
        Some(23.5)
    );
    assert!(
        db.reseal_owed().await.unwrap(),
        "the first key has sealed nothing yet"
    );

    let first = db.reseal().await.unwrap();
    assert!(first.resealed >= 6, "{first:?}");
    assert!(!db.reseal_owed().await.unwrap());
    let health = texts(
        &db,
        "SELECT medical_notes || medications || key_safe FROM clients",
    )
    .await;
    assert!(!health[0].contains("糖尿病") && !health[0].contains("1234"));
    let old = texts(
        &db,
        "SELECT COALESCE(position, 'none') || '|' || COALESCE(CAST(lat AS TEXT), 'null') || \
         decoded FROM alarms WHERE device_id = 'OLD-1'",
    )
    .await;
    assert!(old[0].starts_with("pat1:") && old[0].contains("|null") && !old[0].contains("23.5"));
    let raw = blobs(&db, "SELECT raw FROM alarms WHERE device_id = 'OLD-1'").await;
    assert!(!contains(&raw[0], b"OLD-FRAME"));
    let pres = texts(
        &db,
        "SELECT position || COALESCE(CAST(lat AS TEXT), 'null') FROM device_presence \
         WHERE device_id = 'OLD-1'",
    )
    .await;
    assert!(
        pres[0].ends_with("null") && !pres[0].contains("23.5"),
        "{}",
        pres[0]
    );
    assert_eq!(
        db.presence_of("OLD-1").await.unwrap().unwrap().lat,
        Some(23.5)
    );
    let log = db
        .alarm_log(&pingantong::store::AlarmLogQuery {
            device_id: Some("OLD-1"),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((log[0].lat, log[0].accuracy_m), (Some(23.5), Some(9)));
    assert_eq!(log[0].raw, b"OLD-FRAME");

    // Rotation (no server running): a new key seals everything, the old is gone.
    let before = db.data_keys().await.unwrap();
    assert_eq!(before.len(), 1);
    let second = db.rotate_data_key("cli:test", true).await.unwrap();
    let report = db.reseal().await.unwrap();
    assert_eq!(
        (report.current, report.retired.clone()),
        (second, vec![before[0].id])
    );
    let keys = db.data_keys().await.unwrap();
    assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![second]);
    let health = texts(&db, "SELECT medical_notes FROM clients").await;
    assert!(
        health[0].starts_with(&format!("pat1:{second}:")),
        "{}",
        health[0]
    );
    let p = db.client_profile(city.client_id).await.unwrap().unwrap();
    assert_eq!(
        (p.medical_notes.as_str(), p.key_safe.as_str()),
        ("糖尿病", "1234")
    );
    let audit = db.verify_audit_chain().await.unwrap();
    assert!(audit.is_ok(), "{audit:?}");

    // Rewrap under a new master key: the old one no longer opens the store,
    // the new one does, and every value reads as before.
    let new = MasterKey::from_secret(&pingantong::config::Secret::new("b".repeat(64))).unwrap();
    assert_eq!(db.rewrap_data_keys(&new, "cli:test").await.unwrap(), 1);
    db.close().await;
    let err = Db::connect(&settings.store_config(2).unwrap())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("data_key") && text.contains("does not open"),
        "{text}"
    );
    let mut cfg = settings.store_config(2).unwrap();
    cfg.master_key = std::sync::Arc::new(new);
    let db = Db::connect(&cfg).await.unwrap();
    let p = db.client_profile(city.client_id).await.unwrap().unwrap();
    assert_eq!(p.medications, "二甲双胍");
    db.close().await;
}

#[tokio::test]
async fn plain_rows_are_sealed_and_keys_rotate_and_rewrap_sqlite() {
    plain_rows_are_sealed_and_keys_rotate_and_rewrap(Backend::Sqlite).await;
}

#[tokio::test]
async fn plain_rows_are_sealed_and_keys_rotate_and_rewrap_postgres() {
    plain_rows_are_sealed_and_keys_rotate_and_rewrap(Backend::Postgres).await;
}

/// A running server takes up a key added beside it (the command line, another
/// server), seals with it once it is active, and re-seals what it holds.
#[tokio::test]
async fn a_running_server_takes_up_a_rotation() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    eventually("the first key's pass done", || async {
        (!app.db.reseal_owed().await.unwrap()).then_some(())
    })
    .await;
    // Another handle on the same database, as the command line would open it.
    let cli = Db::connect(&app.settings.store_config(2).unwrap())
        .await
        .unwrap();
    let added = cli.rotate_data_key("cli:test", false).await.unwrap();
    cli.close().await;
    let keys = app.db.data_keys().await.unwrap();
    let k = keys.iter().find(|k| k.id == added).unwrap();
    assert_eq!(
        k.active_from - k.created_at,
        pingantong::store::ACTIVATE_AFTER_MS
    );
    eventually_for(
        "the server holds the key, then seals under it and retires the old",
        std::time::Duration::from_secs(60),
        || async {
            let health = texts(&app.db, "SELECT medical_notes FROM clients").await;
            let keys = app.db.data_keys().await.unwrap();
            (health[0].starts_with(&format!("pat1:{added}:")) && keys.len() == 1).then_some(())
        },
    )
    .await;
    let p = app
        .db
        .client_profile(city.client_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.medical_notes, "高血压；房颤");
    app.stop().await;
}

/// Wait until the anchor task has sealed every timeline step (steps are
/// sealed once a few seconds old).
async fn every_step_sealed(db: &Db) {
    eventually_for(
        "every timeline step sealed",
        std::time::Duration::from_secs(30),
        || async {
            let n = texts(
                db,
                "SELECT CAST(COUNT(*) AS TEXT) FROM incident_events WHERE sealed_by IS NULL",
            )
            .await;
            (n[0] == "0").then_some(())
        },
    )
    .await;
}

fn step<'a>(incident_id: i64, action: Action, detail: &'a str) -> Transition<'a> {
    Transition {
        incident_id,
        action,
        actor: "operator:wang",
        detail,
        outcome: (action == Action::Close).then_some("assisted_at_home"),
        merged_into: None,
        take_over: false,
    }
}

async fn retention_purges_old_records_and_the_chain_still_verifies(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let closed = newest_incident(&app.db).await;
    app.db
        .transition(&step(closed, Action::Claim, ""))
        .await
        .unwrap();
    app.db
        .record_handoff(closed, "120", "GZ120-7", "operator:wang")
        .await
        .unwrap();
    for a in [Action::Resolve, Action::Close] {
        app.db
            .transition(&step(closed, a, "called, fine"))
            .await
            .unwrap();
    }
    // A second press later opens a second incident, left open.
    dev.send(&event(&city.device, 2, EventKind::Sos), &city.secret)
        .await;
    let open = eventually("a second incident", || async {
        let id = newest_incident(&app.db).await;
        (id != closed).then_some(id)
    })
    .await;
    // Everything sealed into the chain before the purge (the anchor task
    // seals steps a few seconds old).
    every_step_sealed(&app.db).await;
    let steps_before = app.db.incident_actions(closed).await.unwrap().len();
    assert!(steps_before >= 4);

    // Nothing is old yet: a purge now changes nothing.
    let policy = app.settings.retention_policy();
    assert_eq!(
        (
            policy.frames_days,
            policy.positions_days,
            policy.closed_incidents_days
        ),
        (180, 180, 1825),
        "the defaults README states"
    );
    let mut cursor = pingantong::store::PurgeCursor::default();
    let now = pingantong::store::now_ms();
    let none = app
        .db
        .purge_expired(&policy, now, &mut cursor)
        .await
        .unwrap();
    assert_eq!(none, pingantong::store::PurgeReport::default());

    // Six years on: frames emptied, positions gone, the closed incident's
    // timeline purged; the open one and every incident's figures stay.
    let later = now + 6 * 365 * 86_400_000;
    let mut cursor = pingantong::store::PurgeCursor::default();
    let report = app
        .db
        .purge_expired(&policy, later, &mut cursor)
        .await
        .unwrap();
    assert_eq!((report.frames, report.incidents), (2, 1), "{report:?}");
    assert!(
        report.positions >= 2 && report.steps as usize == steps_before,
        "{report:?}"
    );
    let raw = blobs(&app.db, "SELECT raw FROM alarms").await;
    assert!(raw.iter().all(|r| r.is_empty()));
    let left = texts(
        &app.db,
        "SELECT COALESCE(position, 'none') || decoded FROM alarms",
    )
    .await;
    assert!(left.iter().all(|l| l == "none{}"), "{left:?}");
    let presence = app.db.presence_of(&city.device).await.unwrap().unwrap();
    assert_eq!((presence.lat, presence.lon), (None, None));
    assert!(app.db.incident_actions(closed).await.unwrap().is_empty());
    assert!(app.db.handoffs_of(closed).await.unwrap().is_empty());
    assert!(!app.db.incident_actions(open).await.unwrap().is_empty());
    let overview = app.db.incidents_overview().await.unwrap();
    assert_eq!(overview.len(), 2, "the figures stay");
    let audit = app.db.verify_audit_chain().await.unwrap();
    assert!(audit.is_ok(), "the chain still verifies: {audit:?}");
    let purges = texts(
        &app.db,
        "SELECT detail FROM audit_log WHERE action = 'timeline_purged'",
    )
    .await;
    assert_eq!(purges.len(), 1);
    assert!(
        purges[0].starts_with("retires ") && purges[0].contains("of 1 incidents"),
        "{}",
        purges[0]
    );
    // Done once: a second purge finds nothing.
    let again = app
        .db
        .purge_expired(&policy, later, &mut cursor)
        .await
        .unwrap();
    assert_eq!(again, pingantong::store::PurgeReport::default());

    // A surviving step altered after the purge is still found, under the
    // purge's seal.
    exec(&app.db, "UPDATE incident_events SET detail = 'edited' WHERE id = (SELECT MIN(id) FROM incident_events)").await;
    let audit = app.db.verify_audit_chain().await.unwrap();
    assert!(
        matches!(audit.broken, Some(ref b) if b.fault == pingantong::store::ChainFault::TimelineAltered),
        "{audit:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn retention_purges_old_records_and_the_chain_still_verifies_sqlite() {
    retention_purges_old_records_and_the_chain_still_verifies(Backend::Sqlite).await;
}

#[tokio::test]
async fn retention_purges_old_records_and_the_chain_still_verifies_postgres() {
    retention_purges_old_records_and_the_chain_still_verifies(Backend::Postgres).await;
}

/// A step edited before the purge is not hidden by it: the purge refuses.
#[tokio::test]
async fn retention_never_purges_over_an_altered_timeline() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let id = newest_incident(&app.db).await;
    for a in [Action::Claim, Action::Resolve, Action::Close] {
        app.db.transition(&step(id, a, "")).await.unwrap();
    }
    every_step_sealed(&app.db).await;
    exec(
        &app.db,
        "UPDATE incident_events SET detail = 'rewritten' WHERE action = 'close'",
    )
    .await;
    let later = pingantong::store::now_ms() + 6 * 365 * 86_400_000;
    let err = app
        .db
        .purge_expired(
            &app.settings.retention_policy(),
            later,
            &mut Default::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not hold"), "{err}");
    assert!(
        !app.db.incident_actions(id).await.unwrap().is_empty(),
        "nothing purged"
    );
    app.stop().await;
}

/// A later purge takes steps an earlier purge sealed: it retires that purge
/// in turn, and the chain still verifies.
#[tokio::test]
async fn a_purge_retires_an_earlier_purge_and_the_chain_verifies() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let first = newest_incident(&app.db).await;
    for a in [Action::Claim, Action::Resolve, Action::Close] {
        app.db.transition(&step(first, a, "")).await.unwrap();
    }
    dev.send(&event(&city.device, 2, EventKind::Sos), &city.secret)
        .await;
    let second = eventually("a second incident", || async {
        let id = newest_incident(&app.db).await;
        (id != first).then_some(id)
    })
    .await;
    app.db
        .transition(&step(second, Action::Claim, ""))
        .await
        .unwrap();
    every_step_sealed(&app.db).await;
    let policy = app.settings.retention_policy();
    let year = 365 * 86_400_000;
    let now = pingantong::store::now_ms();
    // Six years on, the first is past its period; the second is still open.
    let r = app
        .db
        .purge_expired(&policy, now + 6 * year, &mut Default::default())
        .await
        .unwrap();
    assert_eq!(r.incidents, 1, "{r:?}");
    assert!(!app.db.incident_actions(second).await.unwrap().is_empty());
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    // The second closes; six years after that it goes too.
    for a in [Action::Resolve, Action::Close] {
        app.db.transition(&step(second, a, "")).await.unwrap();
    }
    every_step_sealed(&app.db).await;
    let r = app
        .db
        .purge_expired(&policy, now + 12 * year, &mut Default::default())
        .await
        .unwrap();
    assert_eq!(r.incidents, 1, "{r:?}");
    let purges = texts(
        &app.db,
        "SELECT CAST(id AS TEXT) || ' ' || detail FROM audit_log \
         WHERE action = 'timeline_purged' ORDER BY id",
    )
    .await;
    assert_eq!(purges.len(), 2, "{purges:?}");
    let first_purge = purges[0].split(' ').next().unwrap();
    let retires = purges[1].split("; ").next().unwrap();
    assert!(
        retires
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start()
            .strip_prefix("retires ")
            .unwrap()
            .split(',')
            .any(|s| s == first_purge),
        "the second purge retires the first: {purges:?}"
    );
    let audit = app.db.verify_audit_chain().await.unwrap();
    assert!(audit.is_ok(), "{audit:?}");
    app.stop().await;
}
