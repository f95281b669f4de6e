//! alarms: what devices send, stored once each (group commit's insert and
//! its duplicates), found again by the recovery sweep and the alarm log,
//! frames that could not be parsed, devices' latest reports, and the
//! connection itself (checkpoints, planner statistics, closing).

use std::sync::Arc;
use std::time::Duration;

use pingantong_domain::rules::Rules;
use pingantong_protocol::{EventKind, Location};
use pingantong_store::presence::Heard;
use pingantong_store::secret::Secret;
use pingantong_store::vault::{Field, MasterKey};
use pingantong_store::{
    AlarmLogQuery, AuthStatus, CommitOutcome, Db, StageWork, StoreConfig, StoreError,
};
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)]
use crate::both_backends;
use crate::incidents::{AT, a_resident, opened, press, record, store};

both_backends!(
    a_batch_is_stored_once_and_its_retries_are_duplicates,
    a_retry_is_a_duplicate_only_within_its_window,
    the_sweep_finds_what_the_stage_has_not_handled,
    the_alarm_log_reads_newest_first_and_opened,
    a_devices_latest_report_is_kept_and_never_goes_back,
    a_device_named_twice_in_one_presence_write_keeps_its_latest_report,
    the_connection_answers_checkpoints_and_closes,
    planner_statistics_are_refreshed_where_they_are_stale,
);

fn at(lat: f64, lon: f64) -> Option<Location> {
    Some(Location {
        lat,
        lon,
        accuracy_m: Some(20),
    })
}

/// The bytes a column holds at rest, read past the store.
async fn raw_at_rest(db: &Db, alarm_id: i64) -> Vec<u8> {
    let sql = "SELECT raw FROM alarms WHERE id = $1";
    match db {
        Db::Sqlite { read, .. } => sqlx::query_scalar(sql).bind(alarm_id).fetch_one(read).await,
        Db::Postgres(p, _) => sqlx::query_scalar(sql).bind(alarm_id).fetch_one(p).await,
    }
    .unwrap()
}

async fn a_batch_is_stored_once_and_its_retries_are_duplicates(db: &Db) {
    let rules = Rules::default();
    assert!(db.insert_alarms(&[], &rules).await.unwrap().is_empty());
    let (_, device) = a_resident(db, "陈秀英", "越秀区", "北京街").await;
    let sos = record(&device, 1, EventKind::Sos, AT);
    let mut position = record(&device, 2, EventKind::Position, AT + 1);
    position.location = at(23.13, 113.26);
    let mut stranger = record("PA-STRANGER", 1, EventKind::Heartbeat, AT + 2);
    stranger.auth = AuthStatus::UnknownDevice;
    stranger.peer = "10.9.9.9:1".into();
    // The SOS sent twice in the same batch.
    let batch = [sos.clone(), position, stranger, sos];
    let out = db.insert_alarms(&batch, &rules).await.unwrap();
    let ids: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            CommitOutcome::Stored(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 3, "{out:?}");
    assert_eq!(out[3], CommitOutcome::Duplicate);
    // The whole batch again: nothing new.
    assert_eq!(
        db.insert_alarms(&batch, &rules).await.unwrap(),
        [CommitOutcome::Duplicate; 4]
    );
    assert_eq!(db.count_alarms(None).await.unwrap(), 3);
    assert_eq!(db.count_alarms(Some(EventKind::Sos)).await.unwrap(), 1);
    assert_eq!(
        db.count_alarms(Some(EventKind::Heartbeat)).await.unwrap(),
        1
    );
    assert_eq!(db.count_alarms(Some(EventKind::Fall)).await.unwrap(), 0);
    assert!(db.alarm_stored(&device, 1).await.unwrap());
    assert!(db.alarm_stored("PA-STRANGER", 1).await.unwrap());
    assert!(!db.alarm_stored(&device, 3).await.unwrap());
    assert!(!db.alarm_stored("PA-STRANGER", 2).await.unwrap());
    assert_eq!(
        db.alarms_by_peer().await.unwrap(),
        [
            ("10.1.2.3:40000".to_owned(), 2),
            ("10.9.9.9:1".to_owned(), 1)
        ]
    );
    // An SOS waits for the incident stage; a position and a heartbeat are
    // complete once stored.
    assert_eq!(
        db.alarm_states(&device, 1).await.unwrap(),
        [("verified".to_owned(), false, None)]
    );
    assert_eq!(
        db.alarm_states(&device, 2).await.unwrap(),
        [("verified".to_owned(), true, None)]
    );
    assert_eq!(
        db.alarm_states("PA-STRANGER", 1).await.unwrap(),
        [("unknown_device".to_owned(), true, None)]
    );
    assert!(db.alarm_states(&device, 3).await.unwrap().is_empty());
    // The frame is sealed at rest: the bytes received are not in the table.
    let at_rest = raw_at_rest(db, ids[0]).await;
    assert_ne!(at_rest, batch[0].raw);
    assert!(!at_rest.is_empty());

    // Frames that could not be parsed are kept, sealed, and counted.
    assert_eq!(db.count_rejected_frames().await.unwrap(), 0);
    db.insert_rejected_frame("native", "10.9.9.9:2", "bad length", b"\x01\x02garbage")
        .await
        .unwrap();
    db.insert_rejected_frame("sia-dc09", "10.9.9.9:3", "bad crc", b"\n0000\"SIA-DCS\"")
        .await
        .unwrap();
    assert_eq!(db.count_rejected_frames().await.unwrap(), 2);
    // Neither is an alarm.
    assert_eq!(db.count_alarms(None).await.unwrap(), 3);
}

async fn a_retry_is_a_duplicate_only_within_its_window(db: &Db) {
    let rules = Rules::default();
    let window = 10_000;
    // AT is a multiple of the window: slots start at AT, AT + 10 s …
    assert_eq!(AT % window, 0);
    let copy = |received_at: i64| {
        let mut r = record("PA-W", 7, EventKind::Fall, received_at);
        r.dedup_key = "PA-W:7:fall".into();
        r.retry_window_ms = Some(window);
        r
    };
    let first = db.insert_alarms(&[copy(AT + 8_000)], &rules).await.unwrap();
    assert!(matches!(first[..], [CommitOutcome::Stored(_)]));
    // 4 s later, over the slot's edge: a retry.
    assert_eq!(
        db.insert_alarms(&[copy(AT + 12_000)], &rules)
            .await
            .unwrap(),
        [CommitOutcome::Duplicate]
    );
    // In the first's own slot: a retry.
    assert_eq!(
        db.insert_alarms(&[copy(AT + 9_999)], &rules).await.unwrap(),
        [CommitOutcome::Duplicate]
    );
    // A window after the first: the same words are a new event …
    let later = db
        .insert_alarms(&[copy(AT + 18_001)], &rules)
        .await
        .unwrap();
    assert!(matches!(later[..], [CommitOutcome::Stored(_)]), "{later:?}");
    // … whose own retries are recognised, also in the same batch.
    assert_eq!(
        db.insert_alarms(&[copy(AT + 19_000), copy(AT + 27_000)], &rules)
            .await
            .unwrap(),
        [CommitOutcome::Duplicate, CommitOutcome::Duplicate]
    );
    assert_eq!(db.alarm_states("PA-W", 7).await.unwrap().len(), 2);
    assert_eq!(db.count_alarms(Some(EventKind::Fall)).await.unwrap(), 2);
}

async fn the_sweep_finds_what_the_stage_has_not_handled(db: &Db) {
    let (client, device) = a_resident(db, "陈秀英", "越秀区", "北京街").await;
    let sos = store(db, record(&device, 1, EventKind::Sos, AT)).await;
    let low = store(db, record(&device, 2, EventKind::LowBattery, AT + 1)).await;
    let _position = store(db, record(&device, 3, EventKind::Position, AT + 2)).await;
    let mut f = record(&device, 4, EventKind::Fall, AT + 3);
    f.location = at(23.1400, 113.2700);
    let fall = store(db, f).await;
    let mut beat = record("PA-STRANGER", 1, EventKind::Heartbeat, AT + 4);
    beat.auth = AuthStatus::UnknownDevice;
    store(db, beat).await;

    let owed = db.unprocessed_alarms(0, 100, None).await.unwrap();
    let seen: Vec<(i64, &str, &str, &str, i64)> = owed
        .iter()
        .map(|a| {
            (
                a.id,
                a.kind.as_str(),
                a.auth.as_str(),
                a.device_id.as_str(),
                a.received_at,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (sos, "sos", "verified", device.as_str(), AT),
            (low, "low_battery", "verified", device.as_str(), AT + 1),
            (fall, "fall", "verified", device.as_str(), AT + 3)
        ]
    );
    // The position is opened from its seal.
    assert_eq!(owed[2].at, Some((23.1400, 113.2700)));
    assert_eq!(owed[0].at, None);
    // Only the life-safety kinds, when asked; paged by id.
    let kinds = ["sos".to_owned(), "fall".to_owned(), "medical".to_owned()];
    let urgent: Vec<i64> = db
        .unprocessed_alarms(0, 100, Some(&kinds))
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(urgent, [sos, fall]);
    let page: Vec<i64> = db
        .unprocessed_alarms(sos, 1, None)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(page, [low]);

    // Handled by the stage: no longer owed.
    db.apply_stage_work(&[StageWork::Processed { alarm_id: low }], &[])
        .await
        .unwrap();
    let left: Vec<i64> = db
        .unprocessed_alarms(0, 100, None)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(left, [sos, fall]);
    let key = format!("client:{client}");
    let done = db
        .apply_stage_work(
            &[
                StageWork::Incident {
                    incident: press(sos, &key, client, &device, "sos"),
                    route: None,
                },
                StageWork::Incident {
                    incident: press(fall, &key, client, &device, "fall"),
                    route: None,
                },
            ],
            &[],
        )
        .await
        .unwrap();
    let incident = opened(&done[0]);
    assert!(
        db.unprocessed_alarms(0, 100, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.alarm_states(&device, 4).await.unwrap(),
        [("verified".to_owned(), true, Some(incident))]
    );
}

async fn the_alarm_log_reads_newest_first_and_opened(db: &Db) {
    let (client, device) = a_resident(db, "陈秀英", "越秀区", "北京街").await;
    let mut sos = record(&device, 1, EventKind::Sos, AT);
    sos.location = at(23.1291, 113.2644);
    let sos_raw = sos.raw.clone();
    let sos_decoded = sos.decoded.clone();
    let a1 = store(db, sos).await;
    let a2 = store(db, record(&device, 2, EventKind::Position, AT + 1)).await;
    let a3 = store(db, record(&device, 3, EventKind::LowBattery, AT + 2)).await;
    let mut beat = record("PA-STRANGER", 9, EventKind::Heartbeat, AT + 3);
    beat.auth = AuthStatus::BadTag;
    let a4 = store(db, beat).await;
    let incident = {
        let key = format!("client:{client}");
        let done = db
            .apply_stage_work(
                &[StageWork::Incident {
                    incident: press(a1, &key, client, &device, "sos"),
                    route: None,
                }],
                &[],
            )
            .await
            .unwrap();
        opened(&done[0])
    };

    let all = db
        .alarm_log(&AlarmLogQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids, [a4, a3, a2, a1]);
    let first = &all[3];
    assert_eq!(
        (
            first.device_id.as_str(),
            first.seq,
            first.kind.as_str(),
            first.protocol.as_str(),
            first.peer.as_str(),
            first.auth.as_str()
        ),
        (
            device.as_str(),
            1,
            "sos",
            "native",
            "10.1.2.3:40000",
            "verified"
        )
    );
    // Opened as read: the bytes as received, the decoding, the position.
    assert_eq!(first.raw, sos_raw);
    assert_eq!(first.decoded, sos_decoded);
    assert_eq!(
        (first.lat, first.lon, first.accuracy_m),
        (Some(23.1291), Some(113.2644), Some(20))
    );
    assert_eq!(
        (first.received_at, first.device_time, first.battery),
        (AT, Some(AT - 40), Some(80))
    );
    assert_eq!(first.incident_id, Some(incident));
    assert!(first.processed_at.is_some());
    assert_eq!(all[0].auth, "bad_tag");
    assert_eq!((all[1].lat, all[1].lon), (None, None));

    let only = |device_id, kind, before, limit| AlarmLogQuery {
        device_id,
        kind,
        before,
        limit,
    };
    let ids =
        |rows: Vec<pingantong_store::AlarmLogRow>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(db
            .alarm_log(&only(Some("PA-STRANGER"), None, None, 100))
            .await
            .unwrap()),
        [a4]
    );
    assert_eq!(
        ids(db
            .alarm_log(&only(Some(&device), Some("low_battery"), None, 100))
            .await
            .unwrap()),
        [a3]
    );
    assert_eq!(
        ids(db
            .alarm_log(&only(None, None, Some(a3), 100))
            .await
            .unwrap()),
        [a2, a1]
    );
    assert_eq!(
        ids(db
            .alarm_log(&only(Some(&device), None, None, 2))
            .await
            .unwrap()),
        [a3, a2]
    );
    // A limit under one still reads one row.
    assert_eq!(
        ids(db.alarm_log(&only(None, None, None, 0)).await.unwrap()),
        [a4]
    );
    assert!(
        db.alarm_log(&only(Some("PA-NOBODY"), None, None, 100))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_devices_latest_report_is_kept_and_never_goes_back(db: &Db) {
    let heard = |at: i64, battery: Option<i64>, location: Option<Location>| Heard {
        protocol: "native",
        at,
        battery,
        location,
    };
    assert_eq!(db.presence_of("PA-1").await.unwrap(), None);
    db.write_presence(&[
        ("PA-1".into(), heard(AT, Some(80), at(23.10, 113.20))),
        ("PA-2".into(), heard(AT, Some(30), None)),
    ])
    .await
    .unwrap();
    let one = db.presence_of("PA-1").await.unwrap().unwrap();
    assert_eq!(
        (
            one.device_id.as_str(),
            one.protocol.as_str(),
            one.heard_at,
            one.battery,
            one.lat,
            one.lon
        ),
        ("PA-1", "native", AT, Some(80), Some(23.10), Some(113.20))
    );
    let two = db.presence_of("PA-2").await.unwrap().unwrap();
    assert_eq!((two.battery, two.lat, two.lon), (Some(30), None, None));

    // A later report without battery or position keeps what was known.
    db.write_presence(&[(
        "PA-1".into(),
        Heard {
            protocol: "gt06",
            ..heard(AT + 30_000, None, None)
        },
    )])
    .await
    .unwrap();
    let one = db.presence_of("PA-1").await.unwrap().unwrap();
    assert_eq!(
        (one.protocol.as_str(), one.heard_at, one.battery, one.lat),
        ("gt06", AT + 30_000, Some(80), Some(23.10))
    );
    // An older report written late changes nothing.
    db.write_presence(&[("PA-1".into(), heard(AT + 10_000, Some(5), at(1.0, 2.0)))])
        .await
        .unwrap();
    assert_eq!(db.presence_of("PA-1").await.unwrap().unwrap(), one);
    // A newer position replaces the old.
    db.write_presence(&[(
        "PA-1".into(),
        heard(AT + 60_000, Some(79), at(23.11, 113.21)),
    )])
    .await
    .unwrap();
    let one = db.presence_of("PA-1").await.unwrap().unwrap();
    assert_eq!(
        (one.heard_at, one.battery, one.lat, one.lon),
        (AT + 60_000, Some(79), Some(23.11), Some(113.21))
    );
    db.write_presence(&[]).await.unwrap();
    assert_eq!(db.presence_of("PA-3").await.unwrap(), None);
}

async fn the_connection_answers_checkpoints_and_closes(db: &Db) {
    let sqlite = matches!(db, Db::Sqlite { .. });
    assert_eq!(db.backend(), if sqlite { "sqlite" } else { "postgres" });
    db.ping().await.unwrap();
    db.probe_writable().await.unwrap();
    // The first data key was made as the database was opened: sealing works.
    let vault = db.vault();
    let key = vault.current_id().expect("a current data key");
    let sealed = vault.seal_text(Field::MedicalNotes, "糖尿病").unwrap();
    assert!(sealed.contains(&format!("{key}:")), "{sealed}");
    assert!(!sealed.contains("糖尿病"));
    assert_eq!(
        vault.open_text(Field::MedicalNotes, &sealed).unwrap(),
        "糖尿病"
    );

    // SQLite checkpoints from a connection of its own, which stops on shutdown;
    // PostgreSQL has nothing to checkpoint.
    let stop = CancellationToken::new();
    let task = db
        .spawn_checkpointer(Duration::from_millis(5), stop.clone())
        .await
        .unwrap();
    assert_eq!(task.is_some(), sqlite);
    if let Db::Sqlite { write, .. } = db {
        let (pages,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(write)
            .await
            .unwrap();
        assert_eq!(pages, 0, "the writer no longer checkpoints in its commits");
    }
    // Writes go on beside it.
    let (_, device) = a_resident(db, "陈秀英", "越秀区", "北京街").await;
    for seq in 0..20 {
        store(db, record(&device, seq, EventKind::Position, AT + seq)).await;
    }
    stop.cancel();
    if let Some(task) = task {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the checkpointer stops on shutdown")
            .unwrap();
    }
    assert_eq!(db.count_alarms(None).await.unwrap(), 20);

    // What is not a database, or not a schema name, is refused.
    let master = Arc::new(MasterKey::from_secret(&Secret::new("7".repeat(64))).unwrap());
    let config = |url: &str, schema: Option<&str>| StoreConfig {
        url: url.into(),
        schema: schema.map(Into::into),
        max_connections: 2,
        master_key: master.clone(),
    };
    assert!(matches!(
        Db::connect(&config("mysql://localhost/test", None)).await,
        Err(StoreError::UnsupportedUrl(u)) if u == "mysql://localhost/test"
    ));
    assert!(matches!(
        Db::connect(&config(
            crate::common::POSTGRES_URL,
            Some("Robert'); DROP TABLE x;--")
        ))
        .await,
        Err(StoreError::BadSchema(_))
    ));

    // Closed: nothing answers any more.
    db.close().await;
    assert!(db.ping().await.is_err());
    assert!(db.probe_writable().await.is_err());
}

async fn planner_statistics_are_refreshed_where_they_are_stale(db: &Db) {
    // Over 64 KiB of frames kept, in a table never analyzed.
    let frame = vec![0x42u8; 1_500];
    for n in 0..80 {
        db.insert_rejected_frame("native", &format!("10.0.0.{n}:1"), "bad length", &frame)
            .await
            .unwrap();
    }
    let refreshed = db.refresh_statistics().await.unwrap();
    let Db::Postgres(pool, _) = db else {
        // SQLite plans by its indexes without statistics.
        assert!(refreshed.is_empty(), "{refreshed:?}");
        return;
    };
    assert!(
        refreshed.iter().any(|t| t == "rejected_frames"),
        "{refreshed:?}"
    );
    // Small tables are left alone.
    assert!(!refreshed.iter().any(|t| t == "incidents"), "{refreshed:?}");
    let analyzed: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(EXTRACT(EPOCH FROM last_analyze) AS BIGINT) FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND relname = 'rejected_frames'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(analyzed.is_some(), "rejected_frames was not analyzed");
    // Fresh now: not analyzed again.
    let again = db.refresh_statistics().await.unwrap();
    assert!(!again.iter().any(|t| t == "rejected_frames"), "{again:?}");
}

/// The writer names each device once per write, but the function takes any
/// list: a device named twice is its latest report, on either backend (as
/// `mark_used` does for the same case).
async fn a_device_named_twice_in_one_presence_write_keeps_its_latest_report(db: &Db) {
    let heard = |at: i64, battery: i64| Heard {
        protocol: "native",
        at,
        battery: Some(battery),
        location: None,
    };
    let written = db
        .write_presence(&[
            ("PA-1".into(), heard(AT + 2_000, 70)),
            ("PA-2".into(), heard(AT, 50)),
            ("PA-1".into(), heard(AT + 1_000, 90)),
        ])
        .await;
    assert!(written.is_ok(), "{written:?}");
    let one = db.presence_of("PA-1").await.unwrap().unwrap();
    assert_eq!((one.heard_at, one.battery), (AT + 2_000, Some(70)));
    assert_eq!(
        db.presence_of("PA-2").await.unwrap().unwrap().battery,
        Some(50)
    );
}
