//! console: what operators and carers read — the queue, the timeline and its
//! live feed, notes, an incident's dispatches, a carer's jobs, a resident's
//! devices — and the service-level figures' rows, with the history import.

use pingantong_domain::{Action, State};
use pingantong_protocol::{EventKind, Location};
use pingantong_store::presence::Heard;
use pingantong_store::{
    AuditEntry, AuthStatus, CarerAnswer, Db, ImportError, ImportedDispatch, ImportedEvent,
    ImportedIncident, NewDevice, NewDispatch, QueueFilter, Transition,
};

#[allow(unused_imports)]
use crate::both_backends;
use crate::incidents::{
    AT, DISTRICT, STREET, a_job, a_provider, a_resident, a_strangers_sos, a_town, an_sos, offer_to,
    record, step, store,
};

both_backends!(
    the_queue_puts_calls_for_help_first_and_filters,
    the_timeline_feed_follows_every_incident_and_takes_notes,
    a_carer_sees_their_jobs_and_the_health_details_once_accepted,
    a_residents_devices_show_their_latest_report,
    service_figures_are_read_from_imported_history,
    an_invalid_import_writes_nothing,
);

fn ids<T>(rows: &[T], id: impl Fn(&T) -> i64) -> Vec<i64> {
    rows.iter().map(id).collect()
}

async fn the_queue_puts_calls_for_help_first_and_filters(db: &Db) {
    let t = a_town(db).await;
    // A technical job first, then two calls for help.
    let job = a_job(db, t.client, &t.device, EventKind::LowBattery, 1).await;
    let sos = an_sos(db, t.client, &t.device, 2).await;
    let (unknown, _) = a_strangers_sos(db, AT, true).await;

    let open = QueueFilter {
        open_only: true,
        limit: 100,
        ..Default::default()
    };
    let q = db.queue(&open).await.unwrap();
    assert_eq!(ids(&q, |r| r.id), [sos, unknown, job]);
    let first = &q[0];
    assert_eq!(
        (
            first.kind.as_str(),
            first.lane.as_str(),
            first.state.as_str(),
            first.verified,
            first.press_count,
            first.device_id.as_str(),
            first.client_id,
            first.client_name.as_deref(),
            first.district.as_deref(),
            first.street.as_deref()
        ),
        (
            "sos",
            "life_safety",
            "queued",
            true,
            1,
            t.device.as_str(),
            Some(t.client),
            Some("陈秀英"),
            Some(DISTRICT),
            Some(STREET)
        )
    );
    assert!(first.last_press_at >= first.opened_at);
    assert_eq!(
        (q[1].client_id, q[1].client_name.clone(), q[1].verified),
        (None, None, false)
    );
    let technical = QueueFilter {
        lane: Some("technical"),
        ..open
    };
    assert_eq!(ids(&db.queue(&technical).await.unwrap(), |r| r.id), [job]);
    assert_eq!(
        ids(
            &db.queue(&QueueFilter { limit: 1, ..open }).await.unwrap(),
            |r| r.id
        ),
        [sos]
    );

    // Resolved: off the open queue, on the list waiting to be closed.
    step(db, sos, Action::Claim, "operator:wang").await.unwrap();
    let q = db.queue(&open).await.unwrap();
    assert_eq!(q[0].claimed_by.as_deref(), Some("operator:wang"));
    assert_eq!(q[0].state, "claimed");
    step(db, sos, Action::Resolve, "operator:wang")
        .await
        .unwrap();
    assert_eq!(
        ids(&db.queue(&open).await.unwrap(), |r| r.id),
        [unknown, job]
    );
    let resolved = QueueFilter {
        state: Some("resolved"),
        ..open
    };
    assert_eq!(ids(&db.queue(&resolved).await.unwrap(), |r| r.id), [sos]);
    let everything = QueueFilter {
        open_only: false,
        ..open
    };
    assert_eq!(
        ids(&db.queue(&everything).await.unwrap(), |r| r.id),
        [sos, unknown, job]
    );
    let none = QueueFilter {
        state: Some("closed"),
        ..open
    };
    assert!(db.queue(&none).await.unwrap().is_empty());
}

async fn the_timeline_feed_follows_every_incident_and_takes_notes(db: &Db) {
    assert_eq!(db.last_timeline_id().await.unwrap(), 0);
    assert!(db.timeline_since(0, 100).await.unwrap().is_empty());
    let t = a_town(db).await;
    let a = an_sos(db, t.client, &t.device, 1).await;
    step(db, a, Action::Claim, "operator:wang").await.unwrap();
    let b = a_job(db, t.client, &t.device, EventKind::Tamper, 2).await;

    let of_a = db.timeline(a).await.unwrap();
    assert_eq!(of_a.len(), 2);
    assert_eq!(
        (
            of_a[0].incident_id,
            of_a[0].actor.as_str(),
            of_a[0].action.as_str(),
            of_a[0].to_state.as_deref(),
            of_a[0].kind.as_str(),
            of_a[0].lane.as_str(),
            of_a[0].device_id.as_str()
        ),
        (
            a,
            "system",
            "opened",
            Some("queued"),
            "sos",
            "life_safety",
            t.device.as_str()
        )
    );
    assert_eq!(
        (of_a[1].from_state.as_deref(), of_a[1].to_state.as_deref()),
        (Some("queued"), Some("claimed"))
    );
    let of_b = db.timeline(b).await.unwrap();
    assert_eq!(
        (of_b.len(), of_b[0].lane.as_str(), of_b[0].kind.as_str()),
        (1, "technical", "tamper")
    );

    // The feed: every incident's steps in order, from where the reader is.
    let all = db.timeline_since(0, 100).await.unwrap();
    assert_eq!(ids(&all, |e| e.id), [of_a[0].id, of_a[1].id, of_b[0].id]);
    assert_eq!(db.last_timeline_id().await.unwrap(), of_b[0].id);
    assert_eq!(db.timeline_since(of_a[0].id, 1).await.unwrap(), of_a[1..]);
    assert!(db.timeline_since(of_b[0].id, 100).await.unwrap().is_empty());
    // Rows by id: only those there.
    let rows = db
        .timeline_rows(&[of_b[0].id, of_a[0].id, of_b[0].id + 1_000])
        .await
        .unwrap();
    assert_eq!(rows, [of_a[0].clone(), of_b[0].clone()]);
    assert!(db.timeline_rows(&[]).await.unwrap().is_empty());

    // A note: on the timeline and in the audit, in one go.
    let subject = format!("incident:{a}");
    let audit = AuditEntry {
        actor: "user:wang",
        action: "incident_note",
        subject: &subject,
        detail: "daughter on her way",
    };
    let before = db.last_timeline_id().await.unwrap();
    assert!(
        db.add_note(a, "operator:wang", "daughter on her way", &audit)
            .await
            .unwrap()
    );
    let note = db.timeline_since(before, 100).await.unwrap();
    assert_eq!(note.len(), 1);
    assert_eq!(
        (
            note[0].incident_id,
            note[0].actor.as_str(),
            note[0].action.as_str(),
            note[0].detail.as_str(),
            note[0].to_state.as_deref()
        ),
        (a, "operator:wang", "note", "daughter on her way", None)
    );
    assert_eq!(db.last_timeline_id().await.unwrap(), note[0].id);
    let trail = db.audit_trail(Some(&subject), 10).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(
        (trail[0].actor.as_str(), trail[0].action.as_str()),
        ("user:wang", "incident_note")
    );
    // No such incident: no line, no audit entry.
    let entries = db.audit_trail(None, 1_000).await.unwrap().len();
    assert!(
        !db.add_note(b + 100, "operator:wang", "lost", &audit)
            .await
            .unwrap()
    );
    assert_eq!(db.last_timeline_id().await.unwrap(), note[0].id);
    assert_eq!(db.audit_trail(None, 1_000).await.unwrap().len(), entries);
    assert!(db.timeline(b + 100).await.unwrap().is_empty());
}

async fn a_carer_sees_their_jobs_and_the_health_details_once_accepted(db: &Db) {
    let t = a_town(db).await;
    let id = an_sos(db, t.client, &t.device, 1).await;
    let d1 = db
        .record_route(id, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .unwrap();
    let backup = a_provider(db, "应急援助队", DISTRICT, 9).await;
    let other = crate::incidents::a_carer(db, backup, "赵护工", crate::incidents::FAR).await;
    let fallback = NewDispatch {
        fallback: true,
        distance_m: None,
        ..offer_to(other, backup)
    };
    let d2 = db
        .add_offer(
            id,
            &fallback,
            AT + 90_000,
            "operator:wang",
            "closest to hand",
        )
        .await
        .unwrap();

    let of = db.dispatches_of(id).await.unwrap();
    type Seen<'a> = (i64, i64, &'a str, i64, &'a str, &'a str, Option<f64>, bool);
    let seen: Vec<Seen> = of
        .iter()
        .map(|d| {
            (
                d.id,
                d.carer_id,
                d.carer_name.as_str(),
                d.provider_id,
                d.provider_name.as_str(),
                d.state.as_str(),
                d.distance_m,
                d.fallback,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                d1,
                t.near,
                "李护工",
                t.provider,
                "越秀区颐康中心",
                "offered",
                Some(150.0),
                false
            ),
            (
                d2,
                other,
                "赵护工",
                backup,
                "应急援助队",
                "offered",
                None,
                true
            )
        ]
    );
    assert!(
        of.iter()
            .all(|d| d.incident_id == id && d.updated_at >= d.offered_at)
    );
    assert!(db.dispatches_of(id + 100).await.unwrap().is_empty());

    // Offered: where to go, but not the resident's health nor the key safe.
    let jobs = db.carer_jobs(t.near).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(
        (
            j.dispatch_id,
            j.incident_id,
            j.state.as_str(),
            j.kind.as_str(),
            j.client_id,
            j.client_name.as_str(),
            j.distance_m
        ),
        (d1, id, "offered", "sos", t.client, "陈秀英", Some(150.0))
    );
    assert!(j.address.contains(STREET));
    assert_eq!(
        (
            j.medical_notes.as_str(),
            j.medications.as_str(),
            j.allergies.as_str(),
            j.key_safe.as_str()
        ),
        ("", "", "", "")
    );
    assert!(db.carer_jobs(t.far).await.unwrap().is_empty());

    // Accepted: all of it, opened from its seals.
    db.apply_carer_answer(d1, t.near, CarerAnswer::Accept, "")
        .await
        .unwrap();
    let j = db.carer_jobs(t.near).await.unwrap().remove(0);
    assert_eq!(
        (
            j.state.as_str(),
            j.medical_notes.as_str(),
            j.medications.as_str(),
            j.allergies.as_str(),
            j.key_safe.as_str()
        ),
        ("accepted", "高血压；房颤", "华法林 3mg", "青霉素", "4711")
    );
    assert_eq!(db.dispatches_of(id).await.unwrap()[0].state, "accepted");

    // Taken back: still listed as withdrawn, the details hidden again.
    let cancel = Transition {
        incident_id: id,
        action: Action::Cancel,
        actor: "operator:wang",
        detail: "",
        outcome: Some("test"),
        merged_into: None,
        take_over: false,
    };
    assert_eq!(db.transition(&cancel).await.unwrap(), State::Cancelled);
    for carer in [t.near, other] {
        let jobs = db.carer_jobs(carer).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (jobs[0].state.as_str(), jobs[0].key_safe.as_str()),
            ("withdrawn", "")
        );
    }

    // A job done is off the list; the newest comes first.
    let next = an_sos(db, t.client, &t.device, 2).await;
    let d3 = db
        .record_route(next, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&db.carer_jobs(t.near).await.unwrap(), |j| j.dispatch_id),
        [d3, d1]
    );
    for answer in [
        CarerAnswer::Accept,
        CarerAnswer::Arrived,
        CarerAnswer::Completed,
    ] {
        db.apply_carer_answer(d3, t.near, answer, "").await.unwrap();
    }
    assert_eq!(
        ids(&db.carer_jobs(t.near).await.unwrap(), |j| j.dispatch_id),
        [d1]
    );
}

async fn a_residents_devices_show_their_latest_report(db: &Db) {
    let (client, pendant) = a_resident(db, "陈秀英", DISTRICT, STREET).await;
    let watch = format!("WT-{client}");
    db.upsert_device(&NewDevice {
        id: watch.clone(),
        protocol: "watch".into(),
        secret: b"a watch's secret of 32 bytes....".to_vec(),
        client_id: Some(client),
    })
    .await
    .unwrap();
    let status = |rows: Vec<pingantong_store::DeviceStatus>| {
        rows.into_iter()
            .map(|d| (d.id, d.protocol, d.last_seen_at, d.battery, d.lat, d.lon))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status(db.client_devices(client).await.unwrap()),
        [
            (pendant.clone(), "native".to_owned(), None, None, None, None),
            (watch.clone(), "watch".to_owned(), None, None, None, None)
        ]
    );
    assert!(db.client_devices(client + 100).await.unwrap().is_empty());

    // Its presence, as written.
    let home = Location {
        lat: 23.1291,
        lon: 113.2644,
        accuracy_m: Some(30),
    };
    db.write_presence(&[(
        pendant.clone(),
        Heard {
            protocol: "native",
            at: AT + 100,
            battery: Some(60),
            location: Some(home),
        },
    )])
    .await
    .unwrap();
    let pendant_row = |rows: Vec<pingantong_store::DeviceStatus>| {
        let d = rows.into_iter().find(|d| d.id == pendant).unwrap();
        (d.last_seen_at, d.battery, d.lat, d.lon)
    };
    assert_eq!(
        pendant_row(db.client_devices(client).await.unwrap()),
        (Some(AT + 100), Some(60), Some(home.lat), Some(home.lon))
    );

    // A press newer than the presence: its own battery and position.
    let mut sos = record(&pendant, 1, EventKind::Sos, AT + 200);
    sos.battery = Some(55);
    sos.location = Some(Location {
        lat: 23.1400,
        lon: 113.2700,
        accuracy_m: None,
    });
    store(db, sos).await;
    assert_eq!(
        pendant_row(db.client_devices(client).await.unwrap()),
        (Some(AT + 200), Some(55), Some(23.1400), Some(113.2700))
    );
    // A newer presence without a position: its time and battery, the
    // position it knew before.
    db.write_presence(&[(
        pendant.clone(),
        Heard {
            protocol: "native",
            at: AT + 300,
            battery: Some(50),
            location: None,
        },
    )])
    .await
    .unwrap();
    assert_eq!(
        pendant_row(db.client_devices(client).await.unwrap()),
        (Some(AT + 300), Some(50), Some(home.lat), Some(home.lon))
    );
    // The server's verdicts and forged frames are not the device speaking.
    let mut offline = record(&pendant, 2, EventKind::Offline, AT + 400);
    offline.battery = Some(1);
    store(db, offline).await;
    let mut forged = record(&pendant, 3, EventKind::Sos, AT + 500);
    forged.auth = AuthStatus::BadTag;
    forged.battery = Some(2);
    store(db, forged).await;
    assert_eq!(
        pendant_row(db.client_devices(client).await.unwrap()),
        (Some(AT + 300), Some(50), Some(home.lat), Some(home.lon))
    );
    // The watch was never heard.
    let rows = db.client_devices(client).await.unwrap();
    assert_eq!(rows[1].id, watch);
    assert_eq!(rows[1].last_seen_at, None);
}

fn event(
    at: i64,
    actor: &str,
    action: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> ImportedEvent {
    ImportedEvent {
        at,
        actor: actor.into(),
        action: action.into(),
        from_state: from.map(Into::into),
        to_state: to.map(Into::into),
        detail: String::new(),
    }
}

/// A call for help handled start to finish in another system.
fn handled(
    source_ref: &str,
    client: i64,
    device: &str,
    carer: i64,
    provider: i64,
    t: i64,
) -> ImportedIncident {
    ImportedIncident {
        source_ref: source_ref.into(),
        client_id: Some(client),
        device_id: device.into(),
        kind: "sos".into(),
        lane: "life_safety".into(),
        state: State::Closed,
        outcome: Some("help_given".into()),
        claimed_by: Some("operator:old".into()),
        device_time: Some(t - 500),
        received_at: t,
        opened_at: t + 100,
        closed_at: Some(t + 900_000),
        events: vec![
            event(t + 100, "system", "opened", None, Some("queued")),
            event(
                t + 30_000,
                "operator:old",
                "claim",
                Some("queued"),
                Some("claimed"),
            ),
            event(
                t + 60_000,
                "operator:old",
                "dispatch",
                Some("claimed"),
                Some("dispatched"),
            ),
            event(
                t + 90_000,
                &format!("carer:{carer}"),
                "carer_accepted",
                None,
                None,
            ),
            event(
                t + 600_000,
                "operator:old",
                "resolve",
                Some("dispatched"),
                Some("resolved"),
            ),
            event(
                t + 900_000,
                "operator:old",
                "close",
                Some("resolved"),
                Some("closed"),
            ),
        ],
        dispatches: vec![ImportedDispatch {
            carer_id: carer,
            provider_id: provider,
            state: "completed".into(),
            fallback: false,
            offered_at: t + 60_000,
            accepted_at: Some(t + 90_000),
            arrived_at: Some(t + 400_000),
        }],
    }
}

async fn service_figures_are_read_from_imported_history(db: &Db) {
    let t = a_town(db).await;
    let day = 86_400_000;
    let from = AT;
    let to = AT + day;
    // A device watched since before the period, one heard only after it.
    db.mark_heard(std::slice::from_ref(&t.device), AT - day)
        .await
        .unwrap();
    let (_, late_device) = a_resident(db, "王桂兰", "海珠区", "江南大道").await;
    db.mark_heard(std::slice::from_ref(&late_device), to + 1)
        .await
        .unwrap();

    let sos = handled(
        "legacy-1",
        t.client,
        &t.device,
        t.near,
        t.provider,
        AT + 1_000,
    );
    let offline = ImportedIncident {
        source_ref: "legacy-2".into(),
        kind: "offline".into(),
        lane: "technical".into(),
        state: State::Cancelled,
        outcome: Some("cleared".into()),
        claimed_by: None,
        device_time: None,
        received_at: AT + 5_000,
        opened_at: AT + 5_000,
        closed_at: None,
        events: vec![event(
            AT + 7_000,
            "device",
            "cleared",
            Some("queued"),
            Some("cancelled"),
        )],
        dispatches: Vec::new(),
        ..sos.clone()
    };
    // Before the period.
    let old = handled(
        "legacy-0",
        t.client,
        &t.device,
        t.near,
        t.provider,
        AT - 2 * day,
    );
    let imported = db
        .import_incident_history(&[old.clone(), sos.clone(), offline.clone()])
        .await
        .unwrap();
    assert_eq!(imported.len(), 3);
    assert_eq!(db.incident_counts().await.unwrap(), (3, 0, 2));
    // Imported again: the same incidents, nothing new.
    assert_eq!(
        db.import_incident_history(&[sos.clone(), offline.clone()])
            .await
            .unwrap(),
        imported[1..]
    );
    assert_eq!(db.incident_counts().await.unwrap(), (3, 0, 2));
    // History, not work: nothing armed, owed or to publish.
    assert!(db.due_timers(i64::MAX, 100).await.unwrap().is_empty());
    assert!(db.unrouted_incidents().await.unwrap().is_empty());
    assert!(db.unpublished_dispatches().await.unwrap().is_empty());
    assert!(
        db.unprocessed_alarms(0, 100, None)
            .await
            .unwrap()
            .is_empty()
    );
    // Its timeline as it was, and the incident read back.
    let line = db.timeline(imported[1]).await.unwrap();
    assert_eq!(line.len(), 6);
    assert_eq!(
        (line[1].at, line[1].actor.as_str()),
        (AT + 31_000, "operator:old")
    );
    let s = db.incident_summary(imported[1]).await.unwrap().unwrap();
    assert_eq!(
        (
            s.opened_at,
            s.state.as_str(),
            s.outcome.as_deref(),
            s.claimed_by.as_deref()
        ),
        (
            AT + 1_100,
            "closed",
            Some("help_given"),
            Some("operator:old")
        )
    );
    // A live press never folds into history.
    let live = an_sos(db, t.client, &t.device, 99).await;
    assert!(!imported.contains(&live));

    let data = db.sla_data(from, to).await.unwrap();
    assert_eq!(ids(&data.incidents, |i| i.id), [imported[1], imported[2]]);
    let i = &data.incidents[0];
    assert_eq!(
        (
            i.kind.as_str(),
            i.lane.as_str(),
            i.state.as_str(),
            i.client_id,
            i.district.as_deref(),
            i.street.as_deref(),
            i.subsidy_category.as_deref()
        ),
        (
            "sos",
            "life_safety",
            "closed",
            Some(t.client),
            Some(DISTRICT),
            Some(STREET),
            Some("living_alone")
        )
    );
    assert_eq!(
        (
            i.received_at,
            i.device_time,
            i.claimed_at,
            i.dispatched_at,
            i.resolved_at,
            i.cancelled_at
        ),
        (
            AT + 1_000,
            Some(AT + 500),
            Some(AT + 31_000),
            Some(AT + 61_000),
            Some(AT + 601_000),
            None
        )
    );
    assert_eq!(data.incidents[1].cancelled_at, Some(AT + 7_000));
    assert_eq!(data.dispatches.len(), 1);
    let d = &data.dispatches[0];
    assert_eq!(
        (
            d.incident_id,
            d.provider_id,
            d.offered_at,
            d.accepted_at,
            d.arrived_at
        ),
        (
            imported[1],
            t.provider,
            AT + 61_000,
            Some(AT + 91_000),
            Some(AT + 401_000)
        )
    );
    assert_eq!(data.providers, [(t.provider, "越秀区颐康中心".to_owned())]);
    assert_eq!(data.coverage.len(), 1);
    assert_eq!(
        (
            data.coverage[0].provider_id,
            data.coverage[0].district.as_str(),
            data.coverage[0].street.clone(),
            data.coverage[0].rank
        ),
        (t.provider, DISTRICT, None, 0)
    );
    let devices: Vec<(&str, i64)> = data
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.heard_at))
        .collect();
    assert_eq!(devices, [(t.device.as_str(), AT - day)]);
    assert_eq!(data.devices[0].district.as_deref(), Some(DISTRICT));
    let spells: Vec<(&str, i64, Option<i64>)> = data
        .offline
        .iter()
        .map(|o| (o.device_id.as_str(), o.opened_at, o.ended_at))
        .collect();
    assert_eq!(spells, [(t.device.as_str(), AT + 5_000, Some(AT + 7_000))]);
    assert!(data.wellbeing.is_empty());

    // Before the period: only the old call; its offline spell had not begun.
    let before = db.sla_data(AT - 3 * day, AT).await.unwrap();
    assert_eq!(ids(&before.incidents, |i| i.id), [imported[0]]);
    assert_eq!(before.dispatches.len(), 1);
    assert!(before.offline.is_empty());
    // After it: the offline spell ended inside it, so none.
    let after = db.sla_data(AT + 8_000, to).await.unwrap();
    assert!(after.offline.is_empty());

    // Wellbeing calls are counted where the resident lives.
    let subject = format!("client:{}", t.client);
    let audit = AuditEntry {
        actor: "user:wang",
        action: "wellbeing_check",
        subject: &subject,
        detail: "",
    };
    db.record_wellbeing_check(t.client, "operator:wang", "well", "", &audit)
        .await
        .unwrap();
    let now = pingantong_store::now_ms();
    let calls = db
        .sla_data(now - 3_600_000, now + 3_600_000)
        .await
        .unwrap()
        .wellbeing;
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (
            calls[0].district.as_str(),
            calls[0].street.as_str(),
            calls[0].subsidy_category.as_deref()
        ),
        (DISTRICT, STREET, Some("living_alone"))
    );
    assert!(db.sla_data(from, to).await.unwrap().wellbeing.is_empty());
}

async fn an_invalid_import_writes_nothing(db: &Db) {
    let t = a_town(db).await;
    let good = handled("legacy-1", t.client, &t.device, t.near, t.provider, AT);
    let cases: [(ImportedIncident, &str); 5] = [
        (
            ImportedIncident {
                source_ref: String::new(),
                ..good.clone()
            },
            "source_ref",
        ),
        (
            ImportedIncident {
                lane: "urgent".into(),
                ..good.clone()
            },
            "lane",
        ),
        (
            ImportedIncident {
                opened_at: AT - 1,
                ..good.clone()
            },
            "opened before",
        ),
        (
            ImportedIncident {
                events: vec![event(
                    AT + 1,
                    "operator:old",
                    "claim",
                    Some("queued"),
                    Some("taken"),
                )],
                ..good.clone()
            },
            "unknown state",
        ),
        (
            ImportedIncident {
                dispatches: vec![ImportedDispatch {
                    state: "lost".into(),
                    ..good.dispatches[0].clone()
                }],
                ..good.clone()
            },
            "dispatch state",
        ),
    ];
    for (bad, why) in cases {
        let name = if bad.source_ref.is_empty() {
            ""
        } else {
            "legacy-2"
        };
        let bad = ImportedIncident {
            source_ref: name.into(),
            ..bad
        };
        // With a good one before it: the whole import is refused.
        match db.import_incident_history(&[good.clone(), bad]).await {
            Err(ImportError::Invalid {
                source_ref,
                why: said,
            }) => {
                assert_eq!(source_ref, name);
                assert!(said.contains(why), "{said}");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    assert_eq!(db.incident_counts().await.unwrap(), (0, 0, 0));
    assert_eq!(db.count_alarms(None).await.unwrap(), 0);
    // A carer who does not exist: refused by the database, nothing kept.
    let nobody = ImportedIncident {
        source_ref: "legacy-3".into(),
        dispatches: vec![ImportedDispatch {
            carer_id: t.far + 100,
            ..good.dispatches[0].clone()
        }],
        ..good.clone()
    };
    let refused = db.import_incident_history(&[good.clone(), nobody]).await;
    assert!(matches!(refused, Err(ImportError::Store(_))), "{refused:?}");
    assert_eq!(db.incident_counts().await.unwrap(), (0, 0, 0));
    assert_eq!(db.count_alarms(None).await.unwrap(), 0);
    // The good one alone goes in.
    assert_eq!(db.import_incident_history(&[good]).await.unwrap().len(), 1);
    assert_eq!(db.incident_counts().await.unwrap(), (1, 0, 1));
}
