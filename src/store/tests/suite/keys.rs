//! keys: the tamper-evident audit log and the incident timelines sealed into
//! it; the data keys of encryption at rest (rotated, re-sealed, rewrapped);
//! retention; a resident's export of what is held about them.

use std::sync::Arc;

use pingantong_domain::{Action, State};
use pingantong_protocol::EventKind;
use pingantong_store::audit::entry_hash;
use pingantong_store::secret::Secret;
use pingantong_store::vault::{MasterKey, Vault, VaultError};
use pingantong_store::{
    ACTIVATE_AFTER_MS, AlarmLogQuery, AuditEntry, AuditReport, ChainBreak, ChainFault, Db,
    DeviceUpdate, KeysHeld, PurgeCursor, PurgeReport, ResealReport, RetentionPolicy, StoreError,
    now_ms,
};

#[allow(unused_imports)]
use crate::both_backends;
use crate::registry::{
    a_client, a_device, an_alarm, audit_len, audit_of, exec, open_incident, step, texts,
};

const DAY_MS: i64 = 86_400_000;
const HOME: (f64, f64) = (23.1291, 113.2644);

/// Another handle on the same database, holding its data keys afresh under
/// `master`: a server started beside this one.
fn twin(db: &Db, master: Arc<MasterKey>) -> Db {
    let vault = Arc::new(Vault::default());
    vault.set_master(master);
    match db {
        Db::Sqlite { read, write, .. } => Db::Sqlite {
            read: read.clone(),
            write: write.clone(),
            vault,
        },
        Db::Postgres(p, _) => Db::Postgres(p.clone(), vault),
    }
}

/// The four sealed health fields of every client, as stored, in id order.
async fn stored_health(db: &Db) -> Vec<String> {
    texts(
        db,
        "SELECT medical_notes || '|' || medications || '|' || allergies || '|' || key_safe \
         FROM clients ORDER BY id",
    )
    .await
}

/// The default periods (`retention` in the settings): frames and positions
/// 180 days, closed incidents five years.
fn policy() -> RetentionPolicy {
    RetentionPolicy {
        frames_days: 180,
        positions_days: 180,
        closed_incidents_days: 1825,
    }
}

/// A client with a pendant whose press opened an incident, handled and
/// closed: (client, alarm, incident).
async fn a_closed_incident(db: &Db, device: &str) -> (i64, i64, i64) {
    let client = a_client(db, "陈秀英").await;
    a_device(db, device, Some(client)).await;
    let alarm = an_alarm(db, device, EventKind::Sos, now_ms(), Some(HOME)).await;
    let incident = open_incident(
        db,
        alarm,
        &format!("client:{client}"),
        Some(client),
        device,
        "sos",
        false,
    )
    .await;
    for (action, to) in [
        (Action::Claim, State::Claimed),
        (Action::Resolve, State::Resolved),
        (Action::Close, State::Closed),
    ] {
        assert_eq!(step(db, incident, action).await, to);
    }
    (client, alarm, incident)
}

both_backends!(
    the_audit_log_is_a_hash_chain_that_shows_an_edit,
    timeline_steps_are_sealed_into_the_chain,
    data_keys_rotate_and_every_value_is_resealed_under_the_new_one,
    rewrapped_data_keys_open_under_the_new_master_key_only,
    retention_purges_what_is_past_its_period,
    a_purge_never_hides_an_edited_timeline,
    a_purged_frame_stays_purged_through_a_key_rotation,
    a_resident_export_holds_their_records_and_nobody_elses,
    an_export_holds_no_events_of_a_devices_former_resident,
);

async fn the_audit_log_is_a_hash_chain_that_shows_an_edit(db: &Db) {
    assert_eq!(db.audit_head().await.unwrap(), None);
    assert_eq!(
        db.verify_audit_chain().await.unwrap(),
        AuditReport {
            entries: 0,
            broken: None
        }
    );
    let entries = [
        AuditEntry {
            actor: "user:li",
            action: "login",
            subject: "user:li",
            detail: "session ab12cd34",
        },
        AuditEntry {
            actor: "user:li",
            action: "client_viewed",
            subject: "client:7",
            detail: "",
        },
        AuditEntry {
            actor: "cli:root",
            action: "user_added",
            subject: "user:zhao",
            detail: "role operator",
        },
    ];
    let mut ids = Vec::new();
    for e in entries {
        ids.push(db.audit(e).await.unwrap());
    }
    assert_eq!(ids, vec![1, 2, 3]);

    // Read back newest first, each hash chained onto the one before.
    let trail = db.audit_trail(None, 10).await.unwrap();
    assert_eq!(
        trail.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    let mut prev = [0u8; 32];
    for (record, e) in trail.iter().rev().zip(&entries) {
        assert_eq!(
            (
                record.actor.as_str(),
                record.action.as_str(),
                record.subject.as_str(),
                record.detail.as_str()
            ),
            (e.actor, e.action, e.subject, e.detail)
        );
        let want = entry_hash(&prev, record.id, record.at, e);
        assert_eq!(
            db.audit_entry_hash(record.id).await.unwrap(),
            Some(want.to_vec())
        );
        prev = want;
    }
    assert_eq!(db.audit_head().await.unwrap(), Some((3, 3, prev.to_vec())));
    assert_eq!(db.audit_entry_hash(4).await.unwrap(), None);
    let ids = |records: Vec<pingantong_store::AuditRecord>| {
        records.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(db.audit_trail(Some("client:7"), 10).await.unwrap()),
        vec![2]
    );
    assert_eq!(ids(db.audit_trail(None, 2).await.unwrap()), vec![3, 2]);
    assert_eq!(
        ids(db.audit_trail(None, 0).await.unwrap()),
        vec![3],
        "a limit below one lists one"
    );
    assert!(
        db.audit_trail(Some("client:8"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.verify_audit_chain().await.unwrap(),
        AuditReport {
            entries: 3,
            broken: None
        }
    );

    // An entry edited: the chain breaks there, and heals when it is put back.
    exec(
        db,
        "UPDATE audit_log SET detail = 'session 00000000' WHERE id = 1",
    )
    .await;
    assert_eq!(
        db.verify_audit_chain().await.unwrap(),
        AuditReport {
            entries: 1,
            broken: Some(ChainBreak {
                id: 1,
                fault: ChainFault::HashMismatch
            })
        }
    );
    exec(
        db,
        "UPDATE audit_log SET detail = 'session ab12cd34' WHERE id = 1",
    )
    .await;
    assert!(db.verify_audit_chain().await.unwrap().is_ok());

    // An entry removed: the next one no longer links.
    exec(db, "DELETE FROM audit_log WHERE id = 2").await;
    assert_eq!(
        db.verify_audit_chain().await.unwrap(),
        AuditReport {
            entries: 2,
            broken: Some(ChainBreak {
                id: 3,
                fault: ChainFault::PrevHashMismatch
            })
        }
    );
    // The log goes on after its newest entry; the head counts what is there.
    let next = db
        .audit(AuditEntry {
            actor: "system",
            action: "timeline_sealed",
            subject: "timeline",
            detail: "0 steps",
        })
        .await
        .unwrap();
    assert_eq!(next, 4);
    let head = db.audit_head().await.unwrap().unwrap();
    assert_eq!((head.0, head.1), (3, 4));
    assert_eq!(Some(head.2), db.audit_entry_hash(4).await.unwrap());
}

async fn timeline_steps_are_sealed_into_the_chain(db: &Db) {
    let client = a_client(db, "陈秀英").await;
    a_device(db, "PT-1", Some(client)).await;
    let alarm = an_alarm(db, "PT-1", EventKind::Sos, now_ms(), None).await;
    let incident = open_incident(
        db,
        alarm,
        &format!("client:{client}"),
        Some(client),
        "PT-1",
        "sos",
        false,
    )
    .await;
    assert_eq!(step(db, incident, Action::Claim).await, State::Claimed);
    assert_eq!(step(db, incident, Action::Resolve).await, State::Resolved);
    let steps = db.timeline(incident).await.unwrap();
    let n = steps.len();
    assert!(n >= 3, "{steps:?}");

    // Only steps written before `before`, each once.
    assert_eq!(db.seal_timeline(steps[0].at).await.unwrap(), 0);
    let before = steps[n - 1].at + 1;
    assert_eq!(db.seal_timeline(before).await.unwrap(), n);
    assert_eq!(db.seal_timeline(before).await.unwrap(), 0, "sealed once");
    let seal = db.audit_trail(Some("timeline"), 1).await.unwrap().remove(0);
    assert_eq!(
        (seal.actor.as_str(), seal.action.as_str()),
        ("system", "timeline_sealed")
    );
    let head = format!("{n} steps {}..{} sha256 ", steps[0].id, steps[n - 1].id);
    assert!(seal.detail.starts_with(&head), "{}", seal.detail);
    assert_eq!(seal.detail.len(), head.len() + 64);
    let report = db.verify_audit_chain().await.unwrap();
    assert_eq!(report.entries as i64, audit_len(db).await);
    assert!(report.is_ok(), "{report:?}");

    // A step written later goes under the next seal.
    assert_eq!(step(db, incident, Action::Close).await, State::Closed);
    let close = db.timeline(incident).await.unwrap().pop().unwrap();
    assert_eq!(close.action, "close");
    assert_eq!(db.seal_timeline(close.at + 1).await.unwrap(), 1);
    let second = db.audit_trail(Some("timeline"), 1).await.unwrap().remove(0);
    assert!(
        second
            .detail
            .starts_with(&format!("1 steps {0}..{0} ", close.id))
    );
    assert!(db.verify_audit_chain().await.unwrap().is_ok());

    // A sealed step edited: the chain breaks at its seal; put back, it holds.
    let claim = &steps[1];
    exec(
        db,
        &format!(
            "UPDATE incident_events SET detail = 'never called' WHERE id = {}",
            claim.id
        ),
    )
    .await;
    assert_eq!(
        db.verify_audit_chain().await.unwrap().broken,
        Some(ChainBreak {
            id: seal.id,
            fault: ChainFault::TimelineAltered
        })
    );
    exec(
        db,
        &format!(
            "UPDATE incident_events SET detail = '{}' WHERE id = {}",
            claim.detail, claim.id
        ),
    )
    .await;
    assert!(db.verify_audit_chain().await.unwrap().is_ok());
    // A step taken out from under its seal: the same.
    exec(
        db,
        &format!(
            "UPDATE incident_events SET sealed_by = NULL WHERE id = {}",
            close.id
        ),
    )
    .await;
    assert_eq!(
        db.verify_audit_chain().await.unwrap().broken,
        Some(ChainBreak {
            id: second.id,
            fault: ChainFault::TimelineAltered
        })
    );
}

async fn data_keys_rotate_and_every_value_is_resealed_under_the_new_one(db: &Db) {
    let fingerprint = db.vault().master().unwrap().fingerprint().to_owned();
    let keys = db.data_keys().await.unwrap();
    assert_eq!(keys.len(), 1, "the first start makes the first key");
    let k1 = keys[0].id;
    assert_eq!(keys[0].master, fingerprint);
    assert_eq!(
        keys[0].active_from, keys[0].created_at,
        "the first seals at once"
    );
    assert_eq!(keys[0].sealed_all_at, None);
    assert_eq!(db.vault().current_id(), Some(k1));
    assert_eq!(
        db.refresh_vault().await.unwrap(),
        KeysHeld {
            count: 1,
            reseal_owed: true
        }
    );
    assert!(db.reseal_owed().await.unwrap());

    let a = a_client(db, "陈秀英").await;
    let stored = stored_health(db).await;
    assert_eq!(
        stored[0].matches(&format!("pat1:{k1}:")).count(),
        4,
        "{}",
        stored[0]
    );
    assert!(!stored[0].contains("高血压") && !stored[0].contains("4711"));
    // A value left plain from before encryption reads as it is until sealed.
    exec(
        db,
        &format!("UPDATE clients SET allergies = '花粉' WHERE id = {a}"),
    )
    .await;
    assert_eq!(
        db.client_profile(a).await.unwrap().unwrap().allergies,
        "花粉"
    );
    assert_eq!(
        db.reseal().await.unwrap(),
        ResealReport {
            current: k1,
            resealed: 1,
            retired: vec![]
        }
    );
    assert!(!db.reseal_owed().await.unwrap());
    assert!(db.data_keys().await.unwrap()[0].sealed_all_at.is_some());
    let stored = stored_health(db).await;
    assert_eq!(stored[0].matches(&format!("pat1:{k1}:")).count(), 4);
    assert!(!stored[0].contains("花粉"));
    assert_eq!(
        db.client_profile(a).await.unwrap().unwrap().allergies,
        "花粉"
    );

    // Added while servers run: held at once, sealing only once every server
    // can have learnt it.
    let k2 = db.rotate_data_key("cli:root", false).await.unwrap();
    assert!(k2 > k1);
    let keys = db.data_keys().await.unwrap();
    assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![k1, k2]);
    assert_eq!(keys[1].active_from - keys[1].created_at, ACTIVATE_AFTER_MS);
    assert!(db.vault().holds(k2));
    assert_eq!(db.vault().current_id(), Some(k1));
    let b = a_client(db, "李伟").await;
    assert_eq!(
        stored_health(db).await[1]
            .matches(&format!("pat1:{k1}:"))
            .count(),
        4,
        "still sealed under the key every server holds"
    );
    assert_eq!(
        db.refresh_vault().await.unwrap(),
        KeysHeld {
            count: 2,
            reseal_owed: false
        }
    );
    let rotated = audit_of(db, &format!("data_key:{k2}")).await;
    assert_eq!(
        (
            rotated[0].actor.as_str(),
            rotated[0].action.as_str(),
            rotated[0].detail.clone()
        ),
        (
            "cli:root",
            "data_key_rotated",
            format!("master key {fingerprint}")
        )
    );

    // Added with no server running: current at once; the pass re-seals every
    // value under it and retires the older keys.
    let k3 = db.rotate_data_key("cli:root", true).await.unwrap();
    assert_eq!(db.vault().current_id(), Some(k3));
    assert!(db.data_keys().await.unwrap()[2].active_from <= now_ms());
    assert!(db.reseal_owed().await.unwrap());
    assert_eq!(
        db.reseal().await.unwrap(),
        ResealReport {
            current: k3,
            resealed: 8,
            retired: vec![k1, k2]
        }
    );
    let keys = db.data_keys().await.unwrap();
    assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![k3]);
    assert!(keys[0].sealed_all_at.is_some());
    assert!(!db.vault().holds(k1) && !db.vault().holds(k2));
    for stored in stored_health(db).await {
        assert_eq!(
            stored.matches(&format!("pat1:{k3}:")).count(),
            4,
            "{stored}"
        );
    }
    let (pa, pb) = (
        db.client_profile(a).await.unwrap().unwrap(),
        db.client_profile(b).await.unwrap().unwrap(),
    );
    assert_eq!(
        (pa.allergies.as_str(), pa.key_safe.as_str()),
        ("花粉", "4711")
    );
    assert_eq!(pb.medical_notes, "高血压；房颤");
    assert!(!db.reseal_owed().await.unwrap());
    assert_eq!(
        db.reseal().await.unwrap(),
        ResealReport {
            current: k3,
            resealed: 0,
            retired: vec![]
        },
        "nothing left to do"
    );
    assert!(db.verify_audit_chain().await.unwrap().is_ok());
}

async fn rewrapped_data_keys_open_under_the_new_master_key_only(db: &Db) {
    let a = a_client(db, "陈秀英").await;
    let k2 = db.rotate_data_key("cli:root", true).await.unwrap();
    let b = a_client(db, "李伟").await;
    let old = db.vault().master().unwrap();
    let new = Arc::new(MasterKey::from_secret(&Secret::new("b".repeat(64))).unwrap());
    assert_ne!(old.fingerprint(), new.fingerprint());

    assert_eq!(db.rewrap_data_keys(&new, "cli:root").await.unwrap(), 2);
    let keys = db.data_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter().all(|k| k.master == new.fingerprint()),
        "{keys:?}"
    );
    let last = audit_of(db, "data_keys").await.pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.clone()),
        (
            "data_keys_rewrapped",
            format!(
                "2 data keys, master key {} replaced by {}",
                old.fingerprint(),
                new.fingerprint()
            )
        )
    );

    // A server still given the old master key cannot open the keys…
    match twin(db, old.clone()).refresh_vault().await {
        Err(StoreError::Vault(VaultError::WrongMasterKey(_, fp))) => {
            assert_eq!(fp, old.fingerprint())
        }
        other => panic!("the old master key still opens the store: {other:?}"),
    }
    // …one given the new one holds both and reads every value.
    let fresh = twin(db, new.clone());
    assert_eq!(fresh.refresh_vault().await.unwrap().count, 2);
    assert_eq!(fresh.vault().current_id(), Some(k2));
    for id in [a, b] {
        let p = fresh.client_profile(id).await.unwrap().unwrap();
        assert_eq!(
            (p.medical_notes.as_str(), p.key_safe.as_str()),
            ("高血压；房颤", "4711")
        );
    }
    // Values change not at all, and this handle reads on with the keys it holds.
    assert_eq!(
        db.client_profile(a).await.unwrap().unwrap().allergies,
        "青霉素"
    );
}

async fn retention_purges_what_is_past_its_period(db: &Db) {
    let (client, first, closed) = a_closed_incident(db, "PT-1").await;
    // A second press, later, opens a second incident, left open.
    let second = an_alarm(db, "PT-1", EventKind::Sos, now_ms(), Some(HOME)).await;
    let open = open_incident(
        db,
        second,
        &format!("client:{client}"),
        Some(client),
        "PT-1",
        "sos",
        false,
    )
    .await;
    db.insert_rejected_frame("native", "127.0.0.1:9", "bad tag", b"PT-GARBAGE")
        .await
        .unwrap();
    let closed_steps = db.timeline(closed).await.unwrap().len() as u64;
    let open_steps = db.incident_actions(open).await.unwrap();
    assert!(closed_steps >= 4 && !open_steps.is_empty());
    assert!(db.seal_timeline(now_ms() + 1).await.unwrap() as u64 > closed_steps);

    // Nothing is old yet; a policy of zeros keeps everything for ever.
    let now = now_ms();
    assert_eq!(
        db.purge_expired(&policy(), now, &mut PurgeCursor::default())
            .await
            .unwrap(),
        PurgeReport::default()
    );
    let forever = RetentionPolicy {
        frames_days: 0,
        positions_days: 0,
        closed_incidents_days: 0,
    };
    assert_eq!(
        db.purge_expired(
            &forever,
            now + 100 * 365 * DAY_MS,
            &mut PurgeCursor::default()
        )
        .await
        .unwrap(),
        PurgeReport::default()
    );
    assert_eq!(db.count_rejected_frames().await.unwrap(), 1);

    // Six years on.
    let later = now + 6 * 365 * DAY_MS;
    let mut cursor = PurgeCursor::default();
    assert_eq!(
        db.purge_expired(&policy(), later, &mut cursor)
            .await
            .unwrap(),
        PurgeReport {
            frames: 2,
            rejected_frames: 1,
            positions: 2,
            incidents: 1,
            steps: closed_steps
        }
    );
    // Frames emptied, positions gone; what the reports count stays.
    let log = db
        .alarm_log(&AlarmLogQuery {
            device_id: Some("PT-1"),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        log.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![second, first]
    );
    for l in &log {
        assert!(l.raw.is_empty() && l.decoded == "{}", "{l:?}");
        assert_eq!((l.lat, l.lon, l.accuracy_m), (None, None, None));
        assert_eq!((l.kind.as_str(), l.device_id.as_str()), ("sos", "PT-1"));
    }
    assert_eq!(db.count_rejected_frames().await.unwrap(), 0);
    // The closed incident keeps its row, not its timeline; the open one all.
    assert!(db.incident_actions(closed).await.unwrap().is_empty());
    assert_eq!(
        db.incident_state(closed).await.unwrap(),
        Some(State::Closed)
    );
    assert_eq!(db.incident_actions(open).await.unwrap(), open_steps);
    // The chain verifies, the purge said what it retired.
    assert!(db.verify_audit_chain().await.unwrap().is_ok());
    let purge = db.audit_trail(Some("timeline"), 1).await.unwrap().remove(0);
    assert_eq!(purge.action, "timeline_purged");
    assert!(
        purge.detail.starts_with("retires ")
            && purge
                .detail
                .contains(&format!("purged {closed_steps} steps of 1 incidents; ")),
        "{}",
        purge.detail
    );

    // Done once: again, from where it stopped or from the start, nothing.
    for mut cursor in [cursor, PurgeCursor::default()] {
        assert_eq!(
            db.purge_expired(&policy(), later, &mut cursor)
                .await
                .unwrap(),
            PurgeReport::default()
        );
    }
}

async fn a_purge_never_hides_an_edited_timeline(db: &Db) {
    let (_, alarm, closed) = a_closed_incident(db, "PT-1").await;
    let steps = db.incident_actions(closed).await.unwrap();
    db.seal_timeline(now_ms() + 1).await.unwrap();
    exec(
        db,
        "UPDATE incident_events SET detail = 'rewritten' WHERE action = 'close'",
    )
    .await;
    let only_incidents = RetentionPolicy {
        frames_days: 0,
        positions_days: 0,
        closed_incidents_days: 1825,
    };
    let later = now_ms() + 6 * 365 * DAY_MS;
    match db
        .purge_expired(&only_incidents, later, &mut PurgeCursor::default())
        .await
    {
        Err(StoreError::CommitFailed(m)) => assert!(m.contains("does not hold"), "{m}"),
        other => panic!("purged over an edited timeline: {other:?}"),
    }
    assert_eq!(
        db.incident_actions(closed).await.unwrap(),
        steps,
        "nothing purged"
    );
    assert_eq!(
        db.audit_trail(Some("timeline"), 1).await.unwrap()[0].action,
        "timeline_sealed"
    );
    assert_eq!(
        db.verify_audit_chain()
            .await
            .unwrap()
            .broken
            .map(|b| b.fault),
        Some(ChainFault::TimelineAltered)
    );
    let log = db
        .alarm_log(&AlarmLogQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log[0].id, alarm);
    assert!(!log[0].raw.is_empty());
}

async fn a_purged_frame_stays_purged_through_a_key_rotation(db: &Db) {
    let (_, alarm, _) = a_closed_incident(db, "PT-1").await;
    let frames_only = RetentionPolicy {
        frames_days: 180,
        positions_days: 0,
        closed_incidents_days: 0,
    };
    let later = now_ms() + 365 * DAY_MS;
    let r = db
        .purge_expired(&frames_only, later, &mut PurgeCursor::default())
        .await
        .unwrap();
    assert_eq!(r.frames, 1);
    // The data key rotates and everything is re-sealed under the new one…
    db.rotate_data_key("cli:root", true).await.unwrap();
    db.reseal().await.unwrap();
    let log = db
        .alarm_log(&AlarmLogQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log[0].id, alarm);
    assert!(log[0].raw.is_empty() && log[0].decoded == "{}");
    // …and the next purge (a restart: a fresh cursor) has no frame left to empty.
    let again = db
        .purge_expired(&frames_only, later, &mut PurgeCursor::default())
        .await
        .unwrap();
    assert_eq!(
        again.frames, 0,
        "the emptied frame of alarm {alarm} is counted and emptied again: \
         re-sealing turned its decoded '{{}}' into a sealed value"
    );
}

async fn a_resident_export_holds_their_records_and_nobody_elses(db: &Db) {
    let a = a_client(db, "陈秀英").await;
    let b = a_client(db, "李伟").await;
    a_device(db, "PT-A", Some(a)).await;
    a_device(db, "PT-B", Some(b)).await;
    let press = an_alarm(db, "PT-A", EventKind::Sos, now_ms(), Some(HOME)).await;
    let incident = open_incident(
        db,
        press,
        &format!("client:{a}"),
        Some(a),
        "PT-A",
        "sos",
        false,
    )
    .await;
    step(db, incident, Action::Claim).await;
    let test = an_alarm(db, "PT-A", EventKind::PeriodicTest, now_ms(), None).await;
    let other = an_alarm(db, "PT-B", EventKind::Sos, now_ms(), None).await;
    let other_incident = open_incident(
        db,
        other,
        &format!("client:{b}"),
        Some(b),
        "PT-B",
        "sos",
        false,
    )
    .await;
    let subject = format!("client:{a}");
    assert!(
        db.record_wellbeing_check(
            a,
            "operator:wang",
            "well",
            "fine today",
            &AuditEntry {
                actor: "user:wang",
                action: "wellbeing_check",
                subject: &subject,
                detail: "well",
            },
        )
        .await
        .unwrap()
    );
    db.set_client_away_audited(a, Some(now_ms() + DAY_MS), "user:li")
        .await
        .unwrap();

    let x = db.resident_export(a).await.unwrap();
    assert_eq!(
        x.alarms.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![press, test]
    );
    let e = &x.alarms[0];
    assert_eq!(
        (
            e.device_id.as_str(),
            e.protocol.as_str(),
            e.kind.as_str(),
            e.auth.as_str(),
            e.battery,
            e.incident_id
        ),
        (
            "PT-A",
            "native",
            "sos",
            "verified",
            Some(80),
            Some(incident)
        )
    );
    assert_eq!(
        (e.lat, e.lon),
        (Some(HOME.0), Some(HOME.1)),
        "opened when exported"
    );
    assert_eq!(
        (x.alarms[1].kind.as_str(), x.alarms[1].lat),
        ("periodic_test", None)
    );
    assert_eq!(x.incidents.len(), 1);
    let i = &x.incidents[0];
    assert_eq!(
        (
            i.id,
            i.kind.as_str(),
            i.lane.as_str(),
            i.state.as_str(),
            i.closed_at
        ),
        (incident, "sos", "life_safety", "claimed", None)
    );
    assert_eq!(
        x.timeline
            .iter()
            .map(|s| s.action.clone())
            .collect::<Vec<_>>(),
        db.incident_actions(incident).await.unwrap()
    );
    assert!(x.timeline.iter().all(|s| s.incident_id == incident));
    assert_eq!(x.wellbeing_checks.len(), 1);
    let c = &x.wellbeing_checks[0];
    assert_eq!(
        (c.operator.as_str(), c.outcome.as_str(), c.note.as_str()),
        ("operator:wang", "well", "fine today")
    );
    assert_eq!(
        x.access_log
            .iter()
            .map(|r| (r.actor.as_str(), r.action.as_str()))
            .collect::<Vec<_>>(),
        vec![("user:wang", "wellbeing_check"), ("user:li", "client_away")]
    );
    assert_eq!(x.access_log, audit_of(db, &subject).await);

    // The other resident's export holds only theirs.
    let y = db.resident_export(b).await.unwrap();
    assert_eq!(
        y.alarms.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![other]
    );
    assert_eq!(
        y.incidents.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![other_incident]
    );
    assert!(y.timeline.iter().all(|s| s.incident_id == other_incident) && !y.timeline.is_empty());
    assert!(y.wellbeing_checks.is_empty() && y.access_log.is_empty());
    // Nobody: nothing.
    let z = db.resident_export(b + 100).await.unwrap();
    assert!(
        z.alarms.is_empty()
            && z.incidents.is_empty()
            && z.timeline.is_empty()
            && z.wellbeing_checks.is_empty()
            && z.access_log.is_empty()
    );
}

async fn an_export_holds_no_events_of_a_devices_former_resident(db: &Db) {
    // A's pendant: A pressed it at home.
    let a = a_client(db, "陈秀英").await;
    let b = a_client(db, "李伟").await;
    a_device(db, "PT-1", Some(a)).await;
    let press = an_alarm(db, "PT-1", EventKind::Sos, now_ms(), Some(HOME)).await;
    let incident = open_incident(
        db,
        press,
        &format!("client:{a}"),
        Some(a),
        "PT-1",
        "sos",
        false,
    )
    .await;
    assert_eq!(db.resident_export(a).await.unwrap().alarms[0].id, press);
    assert!(db.resident_export(b).await.unwrap().alarms.is_empty());
    // The pendant goes to B (A moved into care).
    db.update_device(
        "PT-1",
        &DeviceUpdate {
            protocol: "native".into(),
            client_id: Some(b),
            heartbeat_secs: None,
            secret: None,
        },
        "user:li",
    )
    .await
    .unwrap();
    let of_a = db.resident_export(a).await.unwrap();
    assert_eq!(
        of_a.alarms.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![press]
    );
    assert_eq!(of_a.incidents[0].id, incident);
    let of_b = db.resident_export(b).await.unwrap();
    let leaked: Vec<_> = of_b
        .alarms
        .iter()
        .map(|e| (e.id, e.kind.as_str(), e.lat, e.lon, e.incident_id))
        .collect();
    assert!(
        leaked.is_empty(),
        "B's export holds A's alarm (A's press and where A was, from A's incident): {leaked:?}"
    );
}
