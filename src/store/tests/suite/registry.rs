//! registry: clients and their contacts, devices, providers and carers, as
//! the pipeline seeds and reads them and as staff keep them (audited, one at
//! a time or imported); what supervision reads of devices.
//!
//! Also the builders the other areas of this crate's suite share: a client,
//! a device, an alarm, an incident opened by the stage, statements run as is.

use pingantong_domain::NoticeRoute;
use std::sync::atomic::{AtomicI64, Ordering};

use pingantong_domain::rules::Rules;
use pingantong_domain::{Action, Cascade, State};
use pingantong_protocol::{EventKind, Location};
use pingantong_store::{
    AlarmRecord, AuditRecord, AuthStatus, ClientEntry, ClientImportRow, ClientQuery, ClientRef,
    CommitOutcome, ContactEntry, Db, DeviceEntry, DeviceQuery, DeviceUpdate, EditError,
    IMPORT_CHUNK, IncidentOutcome, NewCarer, NewClient, NewContact, NewDevice, NewIncident,
    NewProvider, StageDone, StageWork, Transition, now_ms,
};

#[allow(unused_imports)]
use crate::both_backends;

// ---------------------------------------------------------------- builders

/// A client of 越秀区, 北京街, with every health field filled in.
pub(crate) fn a_new_client(name: &str) -> NewClient {
    NewClient {
        name: name.into(),
        address: "广州市越秀区北京街 12号 301室".into(),
        district: "越秀区".into(),
        street: "北京街".into(),
        lat: Some(23.1291),
        lon: Some(113.2644),
        language: "yue".into(),
        medical_notes: "高血压；房颤".into(),
        medications: "华法林 3mg".into(),
        allergies: "青霉素".into(),
        key_safe: "4711".into(),
        birth_year: Some(1938),
        subsidy_category: Some("living_alone".into()),
    }
}

/// A client inserted as the pipeline's seeding does it; their id.
pub(crate) async fn a_client(db: &Db, name: &str) -> i64 {
    db.insert_client(&a_new_client(name)).await.unwrap()
}

/// A native device of `client` (or of nobody) with a secret.
pub(crate) async fn a_device(db: &Db, id: &str, client: Option<i64>) {
    db.upsert_device(&NewDevice {
        id: id.into(),
        protocol: "native".into(),
        secret: b"test secret for this pendant....".to_vec(),
        client_id: client,
    })
    .await
    .unwrap();
}

/// A provider covering all of 越秀区; its id.
pub(crate) async fn a_provider(db: &Db, name: &str) -> i64 {
    db.insert_provider(&NewProvider {
        name: name.into(),
        service_types: "home_visit".into(),
        capacity: 10,
        coverage: vec![("越秀区".into(), None)],
        rank: 0,
    })
    .await
    .unwrap()
}

/// A carer of `provider`, on duty; their id.
pub(crate) async fn a_carer(db: &Db, provider: i64) -> i64 {
    db.insert_carer(&NewCarer {
        provider_id: provider,
        name: "王芳".into(),
        phone: "13900000001".into(),
        lat: 23.13,
        lon: 113.265,
        on_duty: true,
    })
    .await
    .unwrap()
}

/// One verified event of `device`, stored as received at `received_at`,
/// reported at `at` when given; the alarm's id.
pub(crate) async fn an_alarm(
    db: &Db,
    device: &str,
    kind: EventKind,
    received_at: i64,
    at: Option<(f64, f64)>,
) -> i64 {
    static SEQ: AtomicI64 = AtomicI64::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let record = AlarmRecord {
        received_at,
        protocol: "native",
        peer: "127.0.0.1:40000".into(),
        device_id: device.into(),
        seq,
        kind,
        device_time: Some(received_at - 5),
        battery: Some(80),
        location: at.map(|(lat, lon)| Location {
            lat,
            lon,
            accuracy_m: Some(12),
        }),
        auth: AuthStatus::Verified,
        raw: format!("FRAME {device} {seq}").into_bytes(),
        decoded: format!("{{\"device\":\"{device}\",\"seq\":{seq}}}"),
        dedup_key: format!("{device}/{seq}"),
        retry_window_ms: None,
    };
    match db
        .insert_alarms(&[record], &Rules::default())
        .await
        .unwrap()[..]
    {
        [CommitOutcome::Stored(id)] => id,
        ref other => panic!("the alarm was not stored: {other:?}"),
    }
}

/// The incident the stage opens for `alarm` under `fold_key` (not routed);
/// with `notify`, the family cascade starts; its id.
pub(crate) async fn open_incident(
    db: &Db,
    alarm: i64,
    fold_key: &str,
    client: Option<i64>,
    device: &str,
    kind: &str,
    notify: bool,
) -> i64 {
    let lane = if kind == "sos" {
        "life_safety"
    } else {
        "technical"
    };
    let work = [StageWork::Incident {
        incident: NewIncident {
            alarm_id: alarm,
            fold_key,
            client_id: client,
            device_id: device,
            kind,
            lane,
            verified: true,
            offer: false,
            advise: None,
            notify: notify.then_some(Cascade::UntilReached),
            notify_at: now_ms(),
            claim_due_at: now_ms() + 60_000,
        },
        route: None,
    }];
    match &db.apply_stage_work(&work, &[]).await.unwrap()[..] {
        [
            StageDone::Incident {
                outcome: IncidentOutcome::Opened(id),
                ..
            },
        ] => *id,
        other => panic!("no incident opened: {other:?}"),
    }
}

/// An operator's step on an incident (closing with an outcome); the state after.
pub(crate) async fn step(db: &Db, incident: i64, action: Action) -> State {
    db.transition(&Transition {
        incident_id: incident,
        action,
        actor: "operator:wang",
        detail: "called, fine",
        outcome: (action == Action::Close).then_some("assisted_at_home"),
        merged_into: None,
        take_over: false,
    })
    .await
    .unwrap()
}

/// Run a statement as it is (what an intruder or an old server would write).
pub(crate) async fn exec(db: &Db, sql: &str) -> u64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite { write, .. } => sqlx::query(sql)
            .execute(write)
            .await
            .map(|r| r.rows_affected()),
        Db::Postgres(p, _) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
    }
    .unwrap()
}

/// The one integer `sql` selects (cast to BIGINT on both backends).
pub(crate) async fn int(db: &Db, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_one(read).await,
        Db::Postgres(p, _) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap()
}

/// The text values `sql` selects, in its order.
pub(crate) async fn texts(db: &Db, sql: &str) -> Vec<String> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_all(read).await,
        Db::Postgres(p, _) => sqlx::query_scalar(sql).fetch_all(p).await,
    }
    .unwrap()
}

/// The audit entries about `subject`, oldest first.
pub(crate) async fn audit_of(db: &Db, subject: &str) -> Vec<AuditRecord> {
    let mut v = db.audit_trail(Some(subject), 10_000).await.unwrap();
    v.reverse();
    v
}

/// The number of audit entries.
pub(crate) async fn audit_len(db: &Db) -> i64 {
    db.audit_head().await.unwrap().map_or(0, |h| h.0)
}

/// A time in ms strictly later than `t`, once the clock has passed it (at
/// most a millisecond's wait): what is written from now on is dated after `t`.
pub(crate) async fn after(t: i64) -> i64 {
    while now_ms() <= t {
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
    now_ms()
}

fn contact(name: &str, phone: &str, notify: Option<(&str, &str)>) -> ContactEntry {
    ContactEntry {
        id: None,
        name: name.into(),
        relation: "family".into(),
        phone: pingantong_domain::Phone::parse(phone).expect("a valid test number"),
        notify: notify.map(|(c, a)| NoticeRoute::parse(c, a).expect("a valid test route")),
    }
}

fn entry(name: &str, external_ref: Option<&str>) -> ClientEntry {
    ClientEntry {
        client: a_new_client(name),
        external_ref: external_ref.map(str::to_owned),
    }
}

fn conflict<T: std::fmt::Debug>(r: Result<T, EditError>) -> String {
    match r {
        Err(EditError::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn all_clients() -> ClientQuery<'static> {
    ClientQuery {
        limit: 1000,
        ..Default::default()
    }
}

fn all_devices(include_retired: bool) -> DeviceQuery<'static> {
    DeviceQuery {
        include_retired,
        limit: 1000,
        ..Default::default()
    }
}

// ------------------------------------------------------------------- tests

both_backends!(
    a_client_is_created_read_changed_and_audited,
    the_client_list_filters_and_pages,
    contacts_are_replaced_in_order_keeping_their_ids,
    seeded_clients_read_back_as_profiles_and_go_away,
    devices_are_provisioned_changed_and_retired,
    the_pipeline_upserts_devices_and_reads_what_changed,
    supervision_watches_heard_devices_and_remembers_offline_ones,
    providers_and_carers_are_registered_listed_and_put_on_duty,
    imports_go_row_by_row,
);

async fn a_client_is_created_read_changed_and_audited(db: &Db) {
    let contacts = [
        contact("陈伟", "13800000001", Some(("email", "son@example.cn"))),
        contact("李阿姨", "13800000002", None),
    ];
    let first = entry("陈秀英", Some("GZ-YX-0001"));
    let id = db
        .create_client(&first, &contacts, "user:li")
        .await
        .unwrap();

    let rec = db.client_record(id).await.unwrap().unwrap();
    assert_eq!(rec.id, id);
    assert_eq!(rec.external_ref.as_deref(), Some("GZ-YX-0001"));
    assert_eq!(
        (
            rec.name.as_str(),
            rec.district.as_str(),
            rec.street.as_str()
        ),
        ("陈秀英", "越秀区", "北京街")
    );
    assert_eq!((rec.lat, rec.lon), (Some(23.1291), Some(113.2644)));
    assert_eq!(
        (
            rec.medical_notes.as_str(),
            rec.medications.as_str(),
            rec.allergies.as_str(),
            rec.key_safe.as_str()
        ),
        ("高血压；房颤", "华法林 3mg", "青霉素", "4711"),
        "health fields are opened when read"
    );
    assert_eq!(rec.birth_year, Some(1938));
    assert_eq!(rec.subsidy_category.as_deref(), Some("living_alone"));
    assert_eq!(rec.away_until, None);
    let listed: Vec<_> = rec
        .contacts
        .iter()
        .map(|c| {
            (
                c.position,
                c.name.as_str(),
                c.notify_channel.as_deref(),
                c.notify_address.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (1, "陈伟", Some("email"), "son@example.cn"),
            (2, "李阿姨", None, "")
        ]
    );
    assert_eq!(db.contacts_of(id).await.unwrap(), rec.contacts);
    let trail = audit_of(db, &format!("client:{id}")).await;
    assert_eq!(trail.len(), 1);
    assert_eq!(
        (trail[0].actor.as_str(), trail[0].action.as_str()),
        ("user:li", "client_created")
    );

    // A second client with the same register reference is refused; nothing written.
    let entries = audit_len(db).await;
    let m = conflict(
        db.create_client(&entry("李伟", Some("GZ-YX-0001")), &[], "user:li")
            .await,
    );
    assert!(
        m.contains("external_ref") && m.contains(&id.to_string()),
        "{m}"
    );
    assert_eq!(db.clients_page(&all_clients()).await.unwrap().len(), 1);
    assert_eq!(audit_len(db).await, entries);

    // A change: the audit names the fields changed, never their values.
    let mut changed = first.clone();
    changed.client.address = "广州市越秀区北京街 14号".into();
    changed.client.medical_notes = "高血压".into();
    changed.client.key_safe = "0815".into();
    db.update_client(id, &changed, "user:zhao").await.unwrap();
    let rec = db.client_record(id).await.unwrap().unwrap();
    assert_eq!(
        (
            rec.address.as_str(),
            rec.medical_notes.as_str(),
            rec.key_safe.as_str(),
            rec.medications.as_str()
        ),
        ("广州市越秀区北京街 14号", "高血压", "0815", "华法林 3mg")
    );
    assert_eq!(rec.contacts.len(), 2, "contacts are not touched");
    let last = audit_of(db, &format!("client:{id}")).await.pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.detail.as_str()
        ),
        (
            "user:zhao",
            "client_updated",
            "changed address, medical_notes, key_safe"
        )
    );
    assert!(!last.detail.contains("0815"));
    db.update_client(id, &changed, "user:zhao").await.unwrap();
    let last = audit_of(db, &format!("client:{id}")).await.pop().unwrap();
    assert_eq!(last.detail, "nothing changed");

    // Another client may not take the first one's reference; unchanged.
    let other = db
        .create_client(&entry("李伟", Some("GZ-YX-0002")), &[], "user:li")
        .await
        .unwrap();
    let entries = audit_len(db).await;
    let m = conflict(
        db.update_client(other, &entry("李伟", Some("GZ-YX-0001")), "user:li")
            .await,
    );
    assert!(m.contains("external_ref"), "{m}");
    let rec = db.client_record(other).await.unwrap().unwrap();
    assert_eq!(rec.external_ref.as_deref(), Some("GZ-YX-0002"));
    assert_eq!(audit_len(db).await, entries);

    // Nobody there.
    let missing = other + 100;
    assert!(matches!(
        db.update_client(missing, &changed, "user:li").await,
        Err(EditError::NotFound("client"))
    ));
    assert_eq!(db.client_record(missing).await.unwrap(), None);
    assert!(db.contacts_of(missing).await.unwrap().is_empty());
    assert_eq!(audit_len(db).await, entries);
}

async fn the_client_list_filters_and_pages(db: &Db) {
    let mut ids = Vec::new();
    for (name, district, street, reference, phone) in [
        (
            "Chen Xiuying",
            "越秀区",
            "北京街",
            Some("GZ-1"),
            "13800000011",
        ),
        ("Li Wei", "越秀区", "光塔街", None, "13800138000"),
        ("Wang Fang", "天河区", "石牌街", Some("GZ-3"), "13800000033"),
        ("Zhang 100%", "天河区", "石牌街", None, "13800000044"),
    ] {
        let mut e = entry(name, reference);
        e.client.district = district.into();
        e.client.street = street.into();
        ids.push(
            db.create_client(&e, &[contact("family", phone, None)], "user:li")
                .await
                .unwrap(),
        );
    }
    let page = |q: ClientQuery<'static>| async move {
        db.clients_page(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(all_clients()).await, ids);
    assert_eq!(
        page(ClientQuery {
            district: Some("越秀区"),
            ..all_clients()
        })
        .await,
        ids[..2]
    );
    assert_eq!(
        page(ClientQuery {
            district: Some("天河区"),
            street: Some("石牌街"),
            ..all_clients()
        })
        .await,
        ids[2..]
    );
    // Text: name (letters folded), reference, a contact's phone; taken literally.
    for (text, want) in [
        ("chen", vec![ids[0]]),
        ("gz-3", vec![ids[2]]),
        ("13800138", vec![ids[1]]),
        ("100%", vec![ids[3]]),
        ("%", vec![ids[3]]),
        ("nobody", vec![]),
    ] {
        assert_eq!(
            page(ClientQuery {
                text: Some(text),
                ..all_clients()
            })
            .await,
            want,
            "{text}"
        );
    }
    // Pages in id order.
    assert_eq!(
        page(ClientQuery {
            limit: 2,
            ..Default::default()
        })
        .await,
        ids[..2]
    );
    assert_eq!(
        page(ClientQuery {
            after: ids[1],
            limit: 2,
            ..Default::default()
        })
        .await,
        ids[2..]
    );
    assert_eq!(
        page(ClientQuery::default()).await,
        ids[..1],
        "a limit below one lists one"
    );
    let row = db.clients_page(&all_clients()).await.unwrap().remove(2);
    assert_eq!(
        (
            row.name.as_str(),
            row.external_ref.as_deref(),
            row.street.as_str()
        ),
        ("Wang Fang", Some("GZ-3"), "石牌街")
    );
}

async fn contacts_are_replaced_in_order_keeping_their_ids(db: &Db) {
    let client = db
        .create_client(
            &entry("陈秀英", None),
            &[
                contact("A", "13800000001", Some(("mqtt", ""))),
                contact("B", "13800000002", None),
                contact("C", "13800000003", Some(("email", "c@example.cn"))),
            ],
            "user:li",
        )
        .await
        .unwrap();
    let before = db.contacts_of(client).await.unwrap();
    let [a, b, c] = [before[0].id, before[1].id, before[2].id];

    // An incident whose family cascade reaches A and C: they have notices.
    a_device(db, "PT-1", Some(client)).await;
    let alarm = an_alarm(db, "PT-1", EventKind::Sos, now_ms(), None).await;
    let incident = open_incident(
        db,
        alarm,
        &format!("client:{client}"),
        Some(client),
        "PT-1",
        "sos",
        true,
    )
    .await;
    let notices = db.notifications_of(incident).await.unwrap();
    assert_eq!(
        notices.iter().map(|n| n.contact_id).collect::<Vec<_>>(),
        vec![a, c]
    );

    // C first (its phone changed), a new D, then B; A is left out.
    let mut keep_c = contact("C", "13900000003", Some(("email", "c@example.cn")));
    keep_c.id = Some(c);
    let mut keep_b = contact("B", "13800000002", None);
    keep_b.id = Some(b);
    let list = db
        .replace_contacts(
            client,
            &[keep_c, contact("D", "13800000004", None), keep_b.clone()],
            "user:li",
        )
        .await
        .unwrap();
    let shown: Vec<_> = list
        .iter()
        .map(|k| (k.position, k.name.as_str(), k.phone.as_str()))
        .collect();
    assert_eq!(
        shown,
        vec![
            (1, "C", "13900000003"),
            (2, "D", "13800000004"),
            (3, "B", "13800000002")
        ]
    );
    assert_eq!(
        (list[0].id, list[2].id),
        (c, b),
        "kept contacts keep their ids"
    );
    let d = list[1].id;
    assert!(![a, b, c].contains(&d));
    assert_eq!(db.contacts_of(client).await.unwrap(), list);
    let last = audit_of(db, &format!("client:{client}"))
        .await
        .pop()
        .unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.as_str()),
        (
            "contacts_replaced",
            "3 contacts: 2 kept, 1 added, 1 removed"
        )
    );
    // A was sent a notice: kept for that history, off the list, out of searches.
    assert_eq!(
        int(db, &format!("SELECT COUNT(*) FROM contacts WHERE id = {a} AND removed_at IS NOT NULL AND position = -{a} AND notify_channel IS NULL")).await,
        1
    );
    assert_eq!(
        db.notifications_of(incident).await.unwrap()[0].contact_id,
        a
    );
    let search = ClientQuery {
        text: Some("13800000001"),
        ..all_clients()
    };
    assert!(db.clients_page(&search).await.unwrap().is_empty());
    let profile = db.client_profile(client).await.unwrap().unwrap();
    assert_eq!(
        profile
            .contacts
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        vec!["C", "D", "B"]
    );

    // B had none: leaving it out deletes it.
    let mut keep_d = contact("D", "13800000004", None);
    keep_d.id = Some(d);
    let list = db
        .replace_contacts(client, std::slice::from_ref(&keep_d), "user:li")
        .await
        .unwrap();
    assert_eq!(
        list.iter().map(|k| (k.id, k.position)).collect::<Vec<_>>(),
        vec![(d, 1)]
    );
    assert_eq!(
        int(db, &format!("SELECT COUNT(*) FROM contacts WHERE id = {b}")).await,
        0
    );

    // Refused, and the list stays as it was: a contact taken off, one of
    // another client, one listed twice, a client who is not there.
    let other = db
        .create_client(
            &entry("李伟", None),
            &[contact("E", "13800000005", None)],
            "user:li",
        )
        .await
        .unwrap();
    let e = db.contacts_of(other).await.unwrap()[0].id;
    let entries = audit_len(db).await;
    for foreign in [a, e] {
        let mut k = contact("X", "13800000006", None);
        k.id = Some(foreign);
        let m = conflict(db.replace_contacts(client, &[k], "user:li").await);
        assert!(m.contains("is not a contact"), "{m}");
    }
    let m = conflict(
        db.replace_contacts(client, &[keep_d.clone(), keep_d.clone()], "user:li")
            .await,
    );
    assert!(m.contains("listed twice"), "{m}");
    assert!(matches!(
        db.replace_contacts(other + 100, &[], "user:li").await,
        Err(EditError::NotFound("client"))
    ));
    assert_eq!(db.contacts_of(client).await.unwrap(), list);
    assert_eq!(db.contacts_of(other).await.unwrap()[0].id, e);
    assert_eq!(audit_len(db).await, entries);
}

async fn seeded_clients_read_back_as_profiles_and_go_away(db: &Db) {
    let a = a_client(db, "陈秀英").await;
    let b = a_client(db, "李伟").await;
    // Inserted out of order, read in order.
    for (position, name) in [(2, "邻居"), (1, "儿子")] {
        db.insert_contact(&NewContact {
            client_id: a,
            position,
            name: name.into(),
            relation: "family".into(),
            phone: format!("1380000000{position}"),
            notify: Some(("webhook".into(), "https://example.cn/hook".into())),
        })
        .await
        .unwrap();
    }
    let profile = db.client_profile(a).await.unwrap().unwrap();
    assert_eq!(profile.id, a);
    assert_eq!(profile.name, "陈秀英");
    assert_eq!(
        (profile.medical_notes.as_str(), profile.key_safe.as_str()),
        ("高血压；房颤", "4711")
    );
    assert_eq!(
        profile
            .contacts
            .iter()
            .map(|c| (c.position, c.name.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "儿子"), (2, "邻居")]
    );
    // The same position twice is refused.
    assert!(
        db.insert_contact(&NewContact {
            client_id: a,
            position: 1,
            name: "again".into(),
            relation: "family".into(),
            phone: String::new(),
            notify: None,
        })
        .await
        .is_err()
    );
    assert!(db.client_profile(b + 100).await.unwrap().is_none());

    let mut many = db.client_profiles(&[b, a, b + 100]).await.unwrap();
    many.sort_by_key(|p| p.id);
    assert_eq!(many.len(), 2, "the unknown id is left out");
    assert_eq!(many[0], profile);
    assert_eq!((many[1].id, many[1].contacts.len()), (b, 0));
    assert!(db.client_profiles(&[]).await.unwrap().is_empty());

    // Away and back: plain, then audited.
    let mark = after(now_ms()).await;
    assert!(db.clients_changed_since(mark).await.unwrap().is_empty());
    let until = mark + 7 * 86_400_000;
    db.set_client_away(a, Some(until)).await.unwrap();
    assert_eq!(
        db.client_profile(a).await.unwrap().unwrap().away_until,
        Some(until)
    );
    assert_eq!(db.clients_changed_since(mark).await.unwrap(), vec![a]);
    db.set_client_away(a, None).await.unwrap();
    assert_eq!(
        db.client_profile(a).await.unwrap().unwrap().away_until,
        None
    );

    db.set_client_away_audited(b, Some(until), "user:li")
        .await
        .unwrap();
    assert_eq!(
        db.client_record(b).await.unwrap().unwrap().away_until,
        Some(until)
    );
    db.set_client_away_audited(b, None, "user:zhao")
        .await
        .unwrap();
    assert_eq!(db.client_record(b).await.unwrap().unwrap().away_until, None);
    let trail: Vec<_> = audit_of(db, &format!("client:{b}"))
        .await
        .into_iter()
        .map(|e| (e.actor, e.action, e.detail))
        .collect();
    assert_eq!(
        trail,
        vec![
            (
                "user:li".to_owned(),
                "client_away".to_owned(),
                format!("away until {until}")
            ),
            (
                "user:zhao".to_owned(),
                "client_away".to_owned(),
                "at home".to_owned()
            ),
        ]
    );
    let mut changed = db.clients_changed_since(mark).await.unwrap();
    changed.sort();
    assert_eq!(changed, vec![a, b]);
    let entries = audit_len(db).await;
    assert!(matches!(
        db.set_client_away_audited(b + 100, None, "user:li").await,
        Err(EditError::NotFound("client"))
    ));
    assert_eq!(audit_len(db).await, entries);
}

async fn devices_are_provisioned_changed_and_retired(db: &Db) {
    let a = db
        .create_client(&entry("陈秀英", Some("GZ-9")), &[], "user:li")
        .await
        .unwrap();
    let b = a_client(db, "李伟").await;
    let device = |id: &str, client: ClientRef, secret: &[u8]| DeviceEntry {
        id: id.into(),
        protocol: "native".into(),
        secret: secret.to_vec(),
        client,
        heartbeat_secs: Some(3600),
    };
    db.provision_device(&device("D1", ClientRef::Id(a), b"k1"), "user:li")
        .await
        .unwrap();
    db.provision_device(
        &device("D2", ClientRef::External("GZ-9".into()), b"k2"),
        "user:li",
    )
    .await
    .unwrap();
    let mut stock = device("D3", ClientRef::Nobody, b"");
    stock.protocol = "gt06".into();
    stock.heartbeat_secs = None;
    db.provision_device(&stock, "user:li").await.unwrap();

    let d1 = db.device_listing("D1").await.unwrap().unwrap();
    assert_eq!(
        (
            d1.protocol.as_str(),
            d1.client_id,
            d1.retired,
            d1.heartbeat_secs,
            d1.has_key,
            d1.heard_at,
            d1.used_at
        ),
        ("native", Some(a), false, Some(3600), true, None, None)
    );
    assert_eq!(
        db.device_listing("D2").await.unwrap().unwrap().client_id,
        Some(a)
    );
    let d3 = db.device_listing("D3").await.unwrap().unwrap();
    assert_eq!((d3.client_id, d3.has_key), (None, false));
    assert_eq!(db.device("D1").await.unwrap().unwrap().secret, b"k1");
    assert_eq!(
        audit_of(db, "device:D2").await[0].detail,
        format!("native, client {a}")
    );

    // Refused, nothing written: provisioned already, a client who is not there.
    let entries = audit_len(db).await;
    let m = conflict(
        db.provision_device(&device("D1", ClientRef::Nobody, b"x"), "user:li")
            .await,
    );
    assert!(m.contains("already provisioned"), "{m}");
    let m = conflict(
        db.provision_device(
            &device("D4", ClientRef::External("GZ-0".into()), b"x"),
            "user:li",
        )
        .await,
    );
    assert!(m.contains("client_ref"), "{m}");
    let m = conflict(
        db.provision_device(&device("D4", ClientRef::Id(b + 100), b"x"), "user:li")
            .await,
    );
    assert!(m.contains("client_id"), "{m}");
    assert_eq!(db.device_listing("D4").await.unwrap(), None);
    assert_eq!(db.device("D1").await.unwrap().unwrap().secret, b"k1");
    assert_eq!(audit_len(db).await, entries);

    // Listed by client, by protocol, page by page.
    let ids = |rows: Vec<pingantong_store::DeviceListRow>| {
        rows.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(db
            .devices_page(&DeviceQuery {
                client_id: Some(a),
                ..all_devices(false)
            })
            .await
            .unwrap()),
        vec!["D1", "D2"]
    );
    assert_eq!(
        ids(db
            .devices_page(&DeviceQuery {
                protocol: Some("gt06"),
                ..all_devices(false)
            })
            .await
            .unwrap()),
        vec!["D3"]
    );
    assert_eq!(
        ids(db
            .devices_page(&DeviceQuery {
                after: "D1",
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()),
        vec!["D2"]
    );

    // A change: another client, the protocol's heartbeat, a new secret.
    db.update_device(
        "D1",
        &DeviceUpdate {
            protocol: "native".into(),
            client_id: Some(b),
            heartbeat_secs: None,
            secret: Some(b"k1-new".to_vec()),
        },
        "user:zhao",
    )
    .await
    .unwrap();
    let row = db.device("D1").await.unwrap().unwrap();
    assert_eq!(
        (row.client_id, row.heartbeat_secs, row.secret.as_slice()),
        (Some(b), None, &b"k1-new"[..])
    );
    let last = audit_of(db, "device:D1").await.pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.as_str()),
        (
            "device_updated",
            format!("client {b}, heartbeat of the protocol, new secret").as_str()
        )
    );
    // Without a secret the old one stays; to nobody.
    db.update_device(
        "D1",
        &DeviceUpdate {
            protocol: "native".into(),
            client_id: None,
            heartbeat_secs: Some(600),
            secret: None,
        },
        "user:zhao",
    )
    .await
    .unwrap();
    let row = db.device("D1").await.unwrap().unwrap();
    assert_eq!(
        (row.client_id, row.heartbeat_secs, row.secret.as_slice()),
        (None, Some(600), &b"k1-new"[..])
    );
    // Refused: another protocol, a client who is not there, no such device.
    let entries = audit_len(db).await;
    let change = |protocol: &str, client_id| DeviceUpdate {
        protocol: protocol.into(),
        client_id,
        heartbeat_secs: Some(1),
        secret: Some(b"stolen".to_vec()),
    };
    let m = conflict(
        db.update_device("D1", &change("gt06", None), "user:li")
            .await,
    );
    assert!(m.contains("speaks native"), "{m}");
    let m = conflict(
        db.update_device("D1", &change("native", Some(b + 100)), "user:li")
            .await,
    );
    assert!(m.contains("client_id"), "{m}");
    assert!(matches!(
        db.update_device("D9", &change("native", None), "user:li")
            .await,
        Err(EditError::NotFound("device"))
    ));
    let row = db.device("D1").await.unwrap().unwrap();
    assert_eq!(
        (row.heartbeat_secs, row.secret.as_slice()),
        (Some(600), &b"k1-new"[..])
    );
    assert_eq!(audit_len(db).await, entries);

    // Retired: once (a second time changes and writes nothing), then listed
    // only when asked, no longer changed, provisioned again afresh.
    db.mark_heard(&["D2".to_owned()], 1_000).await.unwrap();
    assert_eq!(
        db.device_listing("D2").await.unwrap().unwrap().heard_at,
        Some(1_000)
    );
    assert!(db.retire_device("D2", "user:li").await.unwrap());
    let entries = audit_len(db).await;
    assert!(!db.retire_device("D2", "user:li").await.unwrap());
    assert_eq!(audit_len(db).await, entries);
    assert!(matches!(
        db.retire_device("D9", "user:li").await,
        Err(EditError::NotFound("device"))
    ));
    assert!(db.device("D2").await.unwrap().unwrap().retired);
    assert_eq!(
        ids(db.devices_page(&all_devices(false)).await.unwrap()),
        vec!["D1", "D3"]
    );
    assert_eq!(
        ids(db.devices_page(&all_devices(true)).await.unwrap()),
        vec!["D1", "D2", "D3"]
    );
    let m = conflict(
        db.update_device("D2", &change("native", None), "user:li")
            .await,
    );
    assert!(m.contains("retired"), "{m}");
    db.provision_device(&device("D2", ClientRef::Id(b), b"k2-new"), "user:zhao")
        .await
        .unwrap();
    let d2 = db.device_listing("D2").await.unwrap().unwrap();
    assert_eq!(
        (d2.retired, d2.client_id, d2.heard_at),
        (false, Some(b), None),
        "provisioned again: not heard from yet"
    );
    assert_eq!(db.device("D2").await.unwrap().unwrap().secret, b"k2-new");
    let actions: Vec<_> = audit_of(db, "device:D2")
        .await
        .into_iter()
        .map(|e| (e.action, e.detail))
        .collect();
    assert_eq!(
        actions,
        vec![
            (
                "device_provisioned".to_owned(),
                format!("native, client {a}")
            ),
            ("device_retired".to_owned(), String::new()),
            (
                "device_provisioned".to_owned(),
                format!("native, provisioned again, client {b}")
            ),
        ]
    );
}

async fn the_pipeline_upserts_devices_and_reads_what_changed(db: &Db) {
    let a = a_client(db, "陈秀英").await;
    a_device(db, "PT-1", Some(a)).await;
    a_device(db, "PT-2", None).await;
    let row = db.device("PT-1").await.unwrap().unwrap();
    assert_eq!(
        (
            row.protocol.as_str(),
            row.client_id,
            row.retired,
            row.heartbeat_secs
        ),
        ("native", Some(a), false, None)
    );
    assert_eq!(row.secret, b"test secret for this pendant....");
    assert_eq!(db.device("PT-9").await.unwrap(), None);
    let mut all: Vec<_> = db
        .all_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.client_id))
        .collect();
    all.sort();
    assert_eq!(
        all,
        vec![("PT-1".to_owned(), Some(a)), ("PT-2".to_owned(), None)]
    );

    // Changes from `mark` on: an upsert (re-provisioning, even a retired
    // device), a heartbeat interval.
    let mark = after(now_ms()).await;
    assert!(db.devices_changed_since(mark).await.unwrap().is_empty());
    assert!(db.retire_device("PT-1", "user:li").await.unwrap());
    db.upsert_device(&NewDevice {
        id: "PT-1".into(),
        protocol: "native".into(),
        secret: b"another secret".to_vec(),
        client_id: None,
    })
    .await
    .unwrap();
    let row = db.device("PT-1").await.unwrap().unwrap();
    assert_eq!(
        (row.retired, row.client_id, row.secret.as_slice()),
        (false, None, &b"another secret"[..])
    );
    let changed = db.devices_changed_since(mark).await.unwrap();
    assert_eq!(changed, vec![row.clone()]);
    assert!(changed[0].updated_at >= mark);

    db.set_device_heartbeat("PT-2", Some(120)).await.unwrap();
    assert_eq!(
        db.device("PT-2").await.unwrap().unwrap().heartbeat_secs,
        Some(120)
    );
    let mut changed: Vec<_> = db
        .devices_changed_since(mark)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    changed.sort();
    assert_eq!(changed, vec!["PT-1", "PT-2"]);
    db.set_device_heartbeat("PT-2", None).await.unwrap();
    assert_eq!(
        db.device("PT-2").await.unwrap().unwrap().heartbeat_secs,
        None
    );
}

async fn supervision_watches_heard_devices_and_remembers_offline_ones(db: &Db) {
    let a = a_client(db, "陈秀英").await;
    let mut heard = Vec::new();
    for id in ["PT-1", "PT-2", "PT-3"] {
        a_device(db, id, Some(a)).await;
    }
    // Beyond one statement's chunk: devices first heard together.
    for n in 0..130 {
        let id = format!("CITY-{n:03}");
        a_device(db, &id, None).await;
        heard.push(id);
    }
    assert!(
        db.watched_devices().await.unwrap().is_empty(),
        "none heard from yet"
    );

    db.mark_heard(&["PT-1".to_owned(), "PT-3".to_owned()], 1_000)
        .await
        .unwrap();
    db.mark_heard(&["PT-1".to_owned(), "PT-2".to_owned()], 2_000)
        .await
        .unwrap();
    db.mark_heard(&heard, 3_000).await.unwrap();
    let heard_at =
        |id: &'static str| async move { db.device_listing(id).await.unwrap().unwrap().heard_at };
    assert_eq!(
        heard_at("PT-1").await,
        Some(1_000),
        "the first report stays"
    );
    assert_eq!(heard_at("PT-2").await, Some(2_000));
    assert_eq!(heard_at("CITY-129").await, Some(3_000));
    let mut watched = db.watched_devices().await.unwrap();
    watched.sort();
    assert_eq!(watched.len(), 133);
    assert_eq!(watched[0], ("CITY-000".to_owned(), "native".to_owned()));
    assert!(db.retire_device("PT-3", "user:li").await.unwrap());
    let watched = db.watched_devices().await.unwrap();
    assert_eq!(watched.len(), 132);
    assert!(
        !watched.iter().any(|(id, _)| id == "PT-3"),
        "a retired device is not watched"
    );

    // An offline job open for PT-1 (not for PT-2's low battery): still
    // offline after a restart, until it is cleared.
    assert!(db.devices_offline().await.unwrap().is_empty());
    let silent = an_alarm(db, "PT-1", EventKind::Offline, now_ms(), None).await;
    open_incident(
        db,
        silent,
        "technical:PT-1:offline",
        Some(a),
        "PT-1",
        "offline",
        false,
    )
    .await;
    let weak = an_alarm(db, "PT-2", EventKind::LowBattery, now_ms(), None).await;
    open_incident(
        db,
        weak,
        "technical:PT-2:low_battery",
        Some(a),
        "PT-2",
        "low_battery",
        false,
    )
    .await;
    assert_eq!(db.devices_offline().await.unwrap(), vec!["PT-1"]);
    let back = an_alarm(db, "PT-1", EventKind::BackOnline, now_ms(), None).await;
    let done = db
        .apply_stage_work(
            &[StageWork::Clear {
                alarm_id: back,
                fold_key: "technical:PT-1:offline",
                detail: "back online",
            }],
            &[],
        )
        .await
        .unwrap();
    assert!(
        matches!(done[..], [StageDone::Cleared(Some(_))]),
        "{done:?}"
    );
    assert!(db.devices_offline().await.unwrap().is_empty());
}

async fn providers_and_carers_are_registered_listed_and_put_on_duty(db: &Db) {
    let p1 = a_provider(db, "越秀区颐康中心").await;
    let p2 = db
        .create_provider(
            &NewProvider {
                name: "天河应急援助队".into(),
                service_types: "emergency_response,home_visit".into(),
                capacity: 4,
                coverage: vec![
                    ("天河区".into(), Some("石牌街".into())),
                    ("天河区".into(), None),
                ],
                rank: 2,
            },
            "user:li",
        )
        .await
        .unwrap();
    assert_eq!(
        audit_of(db, &format!("provider:{p2}")).await[0].detail,
        "2 areas, rank 2"
    );
    let listed = db.providers_list().await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![p1, p2]
    );
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].capacity,
            listed[0].coverage.len()
        ),
        ("越秀区颐康中心", 10, 1)
    );
    let record = db.provider_record(p2).await.unwrap().unwrap();
    assert_eq!(record, listed[1]);
    assert_eq!(
        (record.service_types.as_str(), record.capacity),
        ("emergency_response,home_visit", 4)
    );
    let areas: Vec<_> = record
        .coverage
        .iter()
        .map(|a| {
            (
                a.provider_id,
                a.district.as_str(),
                a.street.as_deref(),
                a.rank,
            )
        })
        .collect();
    let mut want = vec![(p2, "天河区", None, 2), (p2, "天河区", Some("石牌街"), 2)];
    // NULL sorts first on SQLite, last on PostgreSQL: the set is what counts.
    let mut got = areas.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(db.provider_record(p2 + 100).await.unwrap(), None);

    let c1 = a_carer(db, p1).await;
    let c2 = db
        .create_carer(
            &NewCarer {
                provider_id: p2,
                name: "赵强".into(),
                phone: "13900000002".into(),
                lat: 23.14,
                lon: 113.33,
                on_duty: false,
            },
            "user:li",
        )
        .await
        .unwrap();
    assert_eq!(
        audit_of(db, &format!("carer:{c2}")).await[0].detail,
        format!("provider {p2}")
    );
    let entries = audit_len(db).await;
    let m = conflict(
        db.create_carer(
            &NewCarer {
                provider_id: p2 + 100,
                name: "nobody's".into(),
                phone: String::new(),
                lat: 0.0,
                lon: 0.0,
                on_duty: true,
            },
            "user:li",
        )
        .await,
    );
    assert!(m.contains("provider_id"), "{m}");
    assert!(
        db.insert_carer(&NewCarer {
            provider_id: p2 + 100,
            name: "nobody's".into(),
            phone: String::new(),
            lat: 0.0,
            lon: 0.0,
            on_duty: true,
        })
        .await
        .is_err(),
        "a carer of no provider"
    );
    assert_eq!(audit_len(db).await, entries);
    let carers = db.carers_list(None).await.unwrap();
    assert_eq!(
        carers.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![c1, c2]
    );
    assert_eq!(
        db.carers_list(Some(p2)).await.unwrap(),
        vec![carers[1].clone()]
    );
    let one = db.carer_listing(c1).await.unwrap().unwrap();
    assert_eq!(
        (
            one.provider_id,
            one.name.as_str(),
            one.phone.as_str(),
            one.lat,
            one.on_duty,
            one.busy
        ),
        (p1, "王芳", "13900000001", 23.13, true, false)
    );
    assert_eq!(db.carer_listing(c2 + 100).await.unwrap(), None);

    // The carer's own switches, then an operator's, audited.
    db.set_carer_duty(c1, false).await.unwrap();
    db.set_carer_busy(c1, true).await.unwrap();
    let one = db.carer_listing(c1).await.unwrap().unwrap();
    assert_eq!((one.on_duty, one.busy), (false, true));
    db.set_carer_busy(c1, false).await.unwrap();
    assert!(!db.carer_listing(c1).await.unwrap().unwrap().busy);
    db.set_carer_duty_audited(c2, true, true, "user:zhao")
        .await
        .unwrap();
    let two = db.carer_listing(c2).await.unwrap().unwrap();
    assert_eq!((two.on_duty, two.busy), (true, true));
    let last = audit_of(db, &format!("carer:{c2}")).await.pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.detail.as_str()
        ),
        ("user:zhao", "carer_duty", "on duty, busy")
    );
    let entries = audit_len(db).await;
    assert!(matches!(
        db.set_carer_duty_audited(c2 + 100, true, false, "user:zhao")
            .await,
        Err(EditError::NotFound("carer"))
    ));
    assert_eq!(audit_len(db).await, entries);
}

async fn imports_go_row_by_row(db: &Db) {
    let mut bad_category = entry("王芳", None);
    bad_category.client.subsidy_category = Some("no such category".into());
    let rows: Vec<ClientImportRow> = vec![
        (
            2,
            entry("陈秀英", Some("R-1")),
            vec![contact("陈伟", "13800000001", Some(("mqtt", "")))],
        ),
        (3, entry("李伟", Some("R-1")), vec![]),
        (4, bad_category, vec![]),
        (5, entry("张丽", None), vec![]),
    ];
    let (outcomes, failure) = db.import_clients(&rows, "user:li").await;
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(outcomes.len(), 4);
    let first = *outcomes[0].as_ref().unwrap();
    let last = *outcomes[3].as_ref().unwrap();
    assert!(outcomes[1].as_ref().unwrap_err().contains("external_ref"));
    assert!(
        outcomes[2]
            .as_ref()
            .unwrap_err()
            .contains("refused by the database"),
        "{outcomes:?}"
    );
    let imported: Vec<_> = db
        .clients_page(&all_clients())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    assert_eq!(
        imported,
        vec![(first, "陈秀英".to_owned()), (last, "张丽".to_owned())]
    );
    assert_eq!(db.contacts_of(first).await.unwrap()[0].name, "陈伟");
    assert_eq!(
        audit_of(db, &format!("client:{first}")).await[0].detail,
        "import row 2"
    );
    assert_eq!(
        audit_of(db, &format!("client:{last}")).await[0].detail,
        "import row 5"
    );

    // More rows than a chunk: one by the reference, one to nobody known, one
    // twice; every other imported.
    let n = IMPORT_CHUNK + 5;
    let rows: Vec<(u64, DeviceEntry)> = (0..n)
        .map(|i| {
            let (id, client) = match i {
                0 => ("IMP-000".to_owned(), ClientRef::External("R-1".into())),
                7 => ("IMP-007".to_owned(), ClientRef::External("R-404".into())),
                // The same id as row 1.
                103 => ("IMP-001".to_owned(), ClientRef::Nobody),
                _ => (format!("IMP-{i:03}"), ClientRef::Nobody),
            };
            (
                i as u64 + 2,
                DeviceEntry {
                    id,
                    protocol: "native".into(),
                    secret: vec![i as u8 + 1],
                    client,
                    heartbeat_secs: None,
                },
            )
        })
        .collect();
    let entries = audit_len(db).await;
    let (outcomes, failure) = db.import_devices(&rows, "user:li").await;
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(outcomes.len(), n);
    assert_eq!(outcomes[0].as_deref(), Ok("IMP-000"));
    assert_eq!(outcomes[104].as_deref(), Ok("IMP-104"));
    assert!(outcomes[7].as_ref().unwrap_err().contains("R-404"));
    assert!(
        outcomes[103]
            .as_ref()
            .unwrap_err()
            .contains("already provisioned")
    );
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), n - 2);
    let devices = db.devices_page(&all_devices(true)).await.unwrap();
    assert_eq!(devices.len(), n - 2);
    assert_eq!(
        db.device_listing("IMP-000")
            .await
            .unwrap()
            .unwrap()
            .client_id,
        Some(first)
    );
    assert_eq!(db.device("IMP-001").await.unwrap().unwrap().secret, vec![2]);
    assert_eq!(db.device_listing("IMP-007").await.unwrap(), None);
    assert_eq!(audit_len(db).await, entries + (n as i64 - 2));
    assert_eq!(
        audit_of(db, "device:IMP-104").await[0].detail,
        "native, no client, import row 106"
    );
}
