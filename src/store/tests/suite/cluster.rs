//! The servers sharing a database: instance ids held by leases, and the
//! reports every server can read whichever server heard them.

use pingantong_domain::rules::Rules;
use pingantong_protocol::EventKind;
use pingantong_store::presence::Heard;
use pingantong_store::{Db, NewDevice, ServerRow, now_ms};

#[allow(unused_imports)]
use crate::both_backends;
use crate::incidents::record;

both_backends!(
    an_instance_id_is_held_by_one_running_server,
    every_server_reads_what_the_others_heard
);

fn me(instance: &str, boot: &str, lease_ms: i64) -> ServerRow {
    let now = now_ms();
    ServerRow {
        instance_id: instance.into(),
        boot_id: boot.into(),
        version: "1.0".into(),
        host: "host-1".into(),
        pid: 4242,
        started_at: now,
        renewed_at: now,
        lease_until: now + lease_ms,
        stopped_at: None,
    }
}

async fn an_instance_id_is_held_by_one_running_server(db: &Db) {
    assert_eq!(
        db.join_cluster(&me("a", "boot-1", 10_000)).await.unwrap(),
        None
    );
    // A second process with the same id finds the holder while its lease runs.
    let holder = db
        .join_cluster(&me("a", "boot-2", 10_000))
        .await
        .unwrap()
        .expect("held");
    assert_eq!(
        (holder.boot_id.as_str(), holder.host.as_str(), holder.pid),
        ("boot-1", "host-1", 4242)
    );
    assert!(holder.is_up(now_ms()));
    // The same boot taking it again (a retried start) is itself.
    assert_eq!(
        db.join_cluster(&me("a", "boot-1", 10_000)).await.unwrap(),
        None
    );
    let mut b = me("b", "boot-3", 10_000);
    b.version = "1.1".into();
    assert_eq!(db.join_cluster(&b).await.unwrap(), None);
    assert!(db.renew_lease("a", "boot-1", 10_000).await.unwrap());
    assert!(
        !db.renew_lease("a", "boot-2", 10_000).await.unwrap(),
        "not its lease"
    );
    let servers = db.servers().await.unwrap();
    let now = now_ms();
    assert_eq!(
        servers
            .iter()
            .map(|s| (s.instance_id.as_str(), s.version.as_str(), s.is_up(now)))
            .collect::<Vec<_>>(),
        [("a", "1.0", true), ("b", "1.1", true)]
    );
    // A holder found gone is taken over, unless it renewed since it was read.
    let read = db
        .join_cluster(&me("b", "boot-4", 10_000))
        .await
        .unwrap()
        .unwrap();
    assert!(db.renew_lease("b", "boot-3", 10_000).await.unwrap());
    assert!(
        !db.take_over(&me("b", "boot-4", 10_000), &read)
            .await
            .unwrap(),
        "it renewed"
    );
    let read = db
        .join_cluster(&me("b", "boot-4", 10_000))
        .await
        .unwrap()
        .unwrap();
    assert!(
        db.take_over(&me("b", "boot-4", 10_000), &read)
            .await
            .unwrap()
    );
    assert!(
        !db.renew_lease("b", "boot-3", 10_000).await.unwrap(),
        "replaced"
    );
    // A clean stop frees the id at once; the stopped boot renews nothing.
    db.leave_cluster("a", "boot-1").await.unwrap();
    assert!(!db.servers().await.unwrap()[0].is_up(now_ms()));
    assert!(!db.renew_lease("a", "boot-1", 10_000).await.unwrap());
    assert_eq!(
        db.join_cluster(&me("a", "boot-2", 10_000)).await.unwrap(),
        None
    );
    // A lease that ran out frees it too (a server killed, or cut off).
    assert_eq!(db.join_cluster(&me("c", "boot-5", 1)).await.unwrap(), None);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        db.join_cluster(&me("c", "boot-6", 10_000)).await.unwrap(),
        None
    );
    assert!(
        !db.renew_lease("c", "boot-5", 10_000).await.unwrap(),
        "replaced"
    );
}

async fn every_server_reads_what_the_others_heard(db: &Db) {
    for id in ["PA-1", "PA-2", "PA-3"] {
        db.upsert_device(&NewDevice {
            id: id.into(),
            protocol: "native".into(),
            secret: b"a pendant's secret of 32 bytes..".to_vec(),
            client_id: None,
        })
        .await
        .unwrap();
    }
    let heard = |at| Heard {
        protocol: "native",
        at,
        battery: None,
        location: None,
    };
    db.write_presence(&[
        ("PA-1".into(), heard(1_000)),
        ("PA-2".into(), heard(2_000)),
        ("PA-3".into(), heard(3_000)),
    ])
    .await
    .unwrap();
    assert!(db.retire_device("PA-3", "admin").await.unwrap());
    let mut after: Vec<_> = db
        .presence_after(1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.device_id, r.protocol, r.heard_at))
        .collect();
    after.sort();
    assert_eq!(
        after,
        [("PA-2".to_owned(), "native".to_owned(), 2_000)],
        "after the moment, not retired"
    );
    let last = db
        .last_heard(&["PA-1".into(), "PA-9".into()])
        .await
        .unwrap();
    assert_eq!(
        last.into_iter().collect::<Vec<_>>(),
        [("PA-1".to_owned(), 1_000)]
    );
    assert!(db.last_heard(&[]).await.unwrap().is_empty());

    // Periodic tests: every verified one, in order, and each device's last.
    assert_eq!(db.newest_alarm_id().await.unwrap(), 0, "no alarm yet");
    let rules = Rules::default();
    let mut ids = Vec::new();
    for (seq, device, kind, at) in [
        (1, "PA-1", EventKind::PeriodicTest, 10_000),
        (2, "PA-2", EventKind::Sos, 11_000),
        (3, "PA-1", EventKind::PeriodicTest, 12_000),
        (4, "PA-2", EventKind::PeriodicTest, 13_000),
    ] {
        let out = db
            .insert_alarms(&[record(device, seq, kind, at)], &rules)
            .await
            .unwrap();
        ids.push(match out[..] {
            [pingantong_store::CommitOutcome::Stored(id)] => id,
            ref other => panic!("{other:?}"),
        });
    }
    let mut forged = record("PA-2", 5, EventKind::PeriodicTest, 14_000);
    forged.auth = pingantong_store::AuthStatus::BadTag;
    db.insert_alarms(&[forged], &rules).await.unwrap();
    assert!(
        db.newest_alarm_id().await.unwrap() > ids[3],
        "the forged one after"
    );
    let tests: Vec<_> = db
        .tests_after(ids[0])
        .await
        .unwrap()
        .into_iter()
        .map(|(id, r)| (id, r.device_id, r.heard_at))
        .collect();
    assert_eq!(
        tests,
        [
            (ids[2], "PA-1".to_owned(), 12_000),
            (ids[3], "PA-2".to_owned(), 13_000)
        ],
        "verified tests after the first, not the press, not the forged one"
    );
    let mut last = db
        .last_tests(&["PA-1".into(), "PA-2".into(), "PA-3".into()])
        .await
        .unwrap()
        .into_iter()
        .collect::<Vec<_>>();
    last.sort();
    assert_eq!(
        last,
        [("PA-1".to_owned(), 12_000), ("PA-2".to_owned(), 13_000)]
    );
    assert!(db.last_tests(&[]).await.unwrap().is_empty());
}
