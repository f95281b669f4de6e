//! The incident state machine against a real database.

use pingantong::domain::{Action, State};
use pingantong::store::{Transition, TransitionError};
use pingantong_protocol::EventKind;
use pingantong_protocol::native::Reply;

use crate::helpers::*;

fn step(incident_id: i64, action: Action, actor: &str) -> Transition<'_> {
    Transition {
        incident_id,
        action,
        actor,
        detail: "",
        outcome: None,
        merged_into: None,
        take_over: false,
    }
}

async fn lifecycle(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let (r, _) = dev
        .send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }));
    let id = newest_incident(&app.db).await;
    assert_eq!(
        app.db.incident_state(id).await.unwrap(),
        Some(State::Queued)
    );
    // The stage offers a carer in a transaction of its own after opening the
    // incident; the walk below starts once it has, so the timeline's order is known.
    let offered = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !app
        .db
        .incident_actions(id)
        .await
        .unwrap()
        .iter()
        .any(|a| a == "carer_offered")
    {
        assert!(
            tokio::time::Instant::now() < offered,
            "no carer offered within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Closing an incident nobody took is refused, with the states named.
    let err = app
        .db
        .transition(&step(id, Action::Close, "operator:wang"))
        .await
        .unwrap_err();
    assert!(matches!(err, TransitionError::Illegal(_)), "{err}");
    assert!(err.to_string().contains("queued"), "{err}");
    let err = app
        .db
        .transition(&step(id, Action::Resolve, "operator:wang"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransitionError::Illegal(_)),
        "acknowledging is not resolving: {err}"
    );

    let walk = [
        (Action::Claim, "operator:wang", State::Claimed),
        (Action::Contact, "operator:wang", State::InContact),
        (Action::Dispatch, "operator:wang", State::Dispatched),
        (Action::CarerAccept, "carer:7", State::CarerAccepted),
        (Action::Dispatch, "operator:wang", State::CarerAccepted),
        (Action::CarerArrive, "carer:7", State::OnScene),
        (Action::Resolve, "operator:wang", State::Resolved),
    ];
    for (action, actor, want) in walk {
        assert_eq!(
            app.db.transition(&step(id, action, actor)).await.unwrap(),
            want,
            "{action}"
        );
    }
    let err = app
        .db
        .transition(&step(id, Action::Claim, "operator:li"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransitionError::AlreadyClaimed(_, ref who) if who == "operator:wang"),
        "{err}"
    );
    let close = Transition {
        outcome: Some("assisted_at_home"),
        ..step(id, Action::Close, "operator:wang")
    };
    assert_eq!(app.db.transition(&close).await.unwrap(), State::Closed);
    let err = app
        .db
        .transition(&step(id, Action::Merge, "operator:wang"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransitionError::Illegal(_)),
        "closed is terminal: {err}"
    );

    // Every step is on the timeline with who did it.
    let actions = app.db.incident_actions(id).await.unwrap();
    assert_eq!(
        actions,
        [
            "opened",
            "carer_offered",
            "claim",
            "contact",
            "dispatch",
            "carer_accept",
            "dispatch",
            "carer_arrive",
            "resolve",
            // The automatic offer, never answered, ends with the incident.
            "offer_withdrawn",
            "close"
        ]
    );
    // The person's incident is no longer open: a new press opens a new one.
    let (r, _) = dev
        .send(&event(&city.device, 2, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }));
    eventually("a second incident", || async {
        (app.db.incidents_overview().await.unwrap().len() == 2).then_some(())
    })
    .await;
    assert!(matches!(
        app.db
            .transition(&step(999_999, Action::Claim, "operator:wang"))
            .await,
        Err(TransitionError::NotFound(999_999))
    ));
    app.stop().await;
}

#[tokio::test]
async fn incident_lifecycle_sqlite() {
    lifecycle(Backend::Sqlite).await;
}

#[tokio::test]
async fn incident_lifecycle_postgres() {
    lifecycle(Backend::Postgres).await;
}

async fn emergency_handoff(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Fall), &city.secret)
        .await;
    let id = newest_incident(&app.db).await;
    app.db
        .transition(&step(id, Action::Claim, "operator:wang"))
        .await
        .unwrap();
    let err = app
        .db
        .record_handoff(id, "999", "x", "operator:wang")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("999"), "{err}");

    let h = app
        .db
        .record_handoff(id, "120", "GZ-120-7731", "operator:wang")
        .await
        .unwrap();
    assert_eq!(
        app.db.incident_state(id).await.unwrap(),
        Some(State::Dispatched)
    );
    // What the hospital needs, from the resident's file and the alarm.
    let s = &h.summary;
    assert_eq!(s["name"], "陈秀英");
    assert_eq!(s["conditions"], "高血压；房颤");
    assert_eq!(s["medications"], "华法林 3mg");
    assert_eq!(s["allergies"], "青霉素");
    let age = s["age"].as_i64().unwrap();
    assert!((80..100).contains(&age), "age {age}");
    assert!(s["last_known_position"]["lat"].as_f64().is_some());
    assert!(s["contacts"].is_array());
    assert_eq!(
        app.db.open_handoffs().await.unwrap().len(),
        1,
        "follow-up until an outcome"
    );
    app.db
        .handoff_outcome(h.id, "admitted_to_hospital", "operator:wang")
        .await
        .unwrap();
    assert!(app.db.open_handoffs().await.unwrap().is_empty());
    let actions = app.db.incident_actions(id).await.unwrap();
    for a in ["dispatch", "emergency_handoff", "handoff_outcome"] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
    // A closed incident takes no hand-off.
    app.db
        .transition(&step(id, Action::Resolve, "operator:wang"))
        .await
        .unwrap();
    app.db
        .transition(&step(id, Action::Close, "operator:wang"))
        .await
        .unwrap();
    assert!(
        app.db
            .record_handoff(id, "110", "", "operator:wang")
            .await
            .is_err()
    );
    app.stop().await;
}

#[tokio::test]
async fn emergency_handoff_sqlite() {
    emergency_handoff(Backend::Sqlite).await;
}

#[tokio::test]
async fn emergency_handoff_postgres() {
    emergency_handoff(Backend::Postgres).await;
}

/// The stage's batch: many alarms' work in one transaction, in order, and the
/// same batch again changes nothing.
async fn stage_batch(backend: Backend) {
    use pingantong::rules::Rules;
    use pingantong::store::{
        AlarmRecord, AuthStatus, Cascade, CommitOutcome, Db, IncidentOutcome, NewContact,
        NewIncident, RouteDone, RouteRequest, StageDone, StageWork,
    };

    let dir = tempfile::tempdir().unwrap();
    let (url, schema) = match backend {
        Backend::Sqlite => (format!("sqlite://{}/batch.db", dir.path().display()), None),
        Backend::Postgres => (POSTGRES_URL.to_owned(), Some(unique("batch"))),
    };
    let db = Db::connect(&store_config(url, schema, dir.path()))
        .await
        .unwrap();
    let city = seed_small_city(&db).await;
    for (position, notify) in [
        (1, Some(("mqtt", "son"))),
        (2, None),
        (3, Some(("mqtt", "x"))),
    ] {
        db.insert_contact(&NewContact {
            client_id: city.client_id,
            position,
            name: format!("contact {position}"),
            relation: "family".into(),
            phone: String::new(),
            notify: notify.map(|(c, a)| (c.to_owned(), a.to_owned())),
        })
        .await
        .unwrap();
    }
    let client = db.client_profile(city.client_id).await.unwrap().unwrap();
    let kinds = [
        EventKind::Sos,
        EventKind::Sos,
        EventKind::Cancel,
        EventKind::Sos,
        EventKind::PowerCut,
        EventKind::PowerRestored,
        EventKind::PowerCut,
        EventKind::LowBattery,
    ];
    let records: Vec<AlarmRecord> = kinds
        .iter()
        .enumerate()
        .map(|(n, &kind)| AlarmRecord {
            received_at: 1,
            protocol: "native",
            peer: "127.0.0.1:1".into(),
            device_id: city.device.clone(),
            seq: n as i64,
            kind,
            device_time: None,
            battery: None,
            location: None,
            auth: AuthStatus::Verified,
            raw: vec![n as u8],
            decoded: "{}".into(),
            dedup_key: unique("batch"),
            retry_window_ms: None,
        })
        .collect();
    let ids: Vec<i64> = db
        .insert_alarms(&records, &Rules::default())
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            CommitOutcome::Stored(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let person = format!("client:{}", city.client_id);
    let technical = format!("technical:{}:power_cut", city.device);
    let incident = |alarm_id: i64, fold_key, kind, lane, verified: bool| NewIncident {
        alarm_id,
        fold_key,
        client_id: verified.then_some(city.client_id),
        device_id: &city.device,
        kind,
        lane,
        verified,
        offer: verified,
        advise: None,
        notify: verified.then_some(Cascade::UntilReached),
        notify_at: 5,
        claim_due_at: 1_000,
    };
    let route = Some(RouteRequest {
        client: &client,
        at: None,
        offer_due_at: 2_000,
        choose: pingantong::routing::choose,
    });
    let work = [
        StageWork::Incident {
            incident: incident(ids[0], &person, "sos", "life_safety", true),
            route,
        },
        StageWork::Incident {
            incident: incident(ids[1], &person, "sos", "life_safety", true),
            route,
        },
        StageWork::Cancel {
            alarm_id: ids[2],
            fold_key: &person,
        },
        StageWork::Incident {
            incident: incident(ids[3], "unverified:X", "sos", "life_safety", false),
            route: None,
        },
        // Routed, and cleared in the same batch: offered to nobody.
        StageWork::Incident {
            incident: incident(ids[4], &technical, "power_cut", "technical", false),
            route,
        },
        StageWork::Clear {
            alarm_id: ids[5],
            fold_key: &technical,
            detail: "power restored",
        },
        StageWork::Incident {
            incident: incident(ids[6], &technical, "power_cut", "technical", false),
            route: None,
        },
        StageWork::Processed { alarm_id: ids[7] },
    ];
    let done = db.apply_stage_work(&work, &[]).await.unwrap();
    let opened = |d: &StageDone| match d {
        StageDone::Incident {
            outcome: IncidentOutcome::Opened(id),
            ..
        } => *id,
        other => panic!("not opened: {other:?}"),
    };
    let sos = opened(&done[0]);
    let StageDone::Incident {
        route: Some(RouteDone::Offered(offer)),
        ..
    } = &done[0]
    else {
        panic!("the SOS was not offered: {:?}", done[0]);
    };
    assert_eq!(offer.incident_id, sos);
    assert_eq!(offer.carer_id, city.near_carer);
    assert_eq!(offer.client_name, client.name);
    assert_eq!(
        done[1],
        StageDone::Incident {
            outcome: IncidentOutcome::Folded(sos),
            route: None
        }
    );
    assert_eq!(
        done[2],
        StageDone::Cancel(IncidentOutcome::CancelRecorded(sos))
    );
    let unverified = opened(&done[3]);
    let cut = opened(&done[4]);
    assert!(
        matches!(done[4], StageDone::Incident { route: None, .. }),
        "a job ended in its own batch is routed to nobody: {:?}",
        done[4]
    );
    assert_eq!(done[5], StageDone::Cleared(Some(cut)));
    // The clear closed the first job: a later cut is a new one.
    let cut_again = opened(&done[6]);
    assert_ne!(cut_again, cut);
    assert_eq!(done[7], StageDone::Processed);
    assert_eq!(
        db.incident_actions(sos).await.unwrap(),
        [
            "opened",
            "carer_offered",
            "press_folded",
            "cancel_requested"
        ]
    );
    assert_eq!(
        db.incident_actions(cut).await.unwrap(),
        ["opened", "cleared"]
    );
    let overview = db.incidents_overview().await.unwrap();
    let presses = |id| overview.iter().find(|o| o.0 == id).unwrap().2;
    assert_eq!(presses(sos), 2);
    assert_eq!(presses(unverified), 1);
    assert_eq!(
        db.incident_summary(cut)
            .await
            .unwrap()
            .unwrap()
            .outcome
            .as_deref(),
        Some("cleared")
    );
    let dispatches = db.dispatches_overview().await.unwrap();
    assert_eq!(dispatches.len(), 1);
    assert_eq!((dispatches[0].0, dispatches[0].1), (offer.dispatch_id, sos));
    // Claim deadlines for the four incidents, the offer's own.
    let timers = db.due_timers(i64::MAX, 100).await.unwrap();
    assert_eq!(timers.iter().filter(|t| t.kind == "claim").count(), 4);
    assert_eq!(
        timers
            .iter()
            .filter(|t| t.kind == "offer")
            .map(|t| (t.incident_id, t.dispatch_id))
            .collect::<Vec<_>>(),
        [(sos, Some(offer.dispatch_id))]
    );
    // The family: the first contact with a channel due now, the next waiting;
    // the contact without a channel is the operator's to phone.
    let notices = db.notifications_of(sos).await.unwrap();
    assert_eq!(
        notices
            .iter()
            .map(|n| (n.position, n.status.as_str()))
            .collect::<Vec<_>>(),
        [(1, "pending"), (3, "waiting")]
    );
    assert!(db.notifications_of(unverified).await.unwrap().is_empty());
    assert_eq!(db.unprocessed_alarms(0, 100, None).await.unwrap().len(), 0);

    // Again (a sweep finding what the queue already handled): nothing changes.
    let again = db.apply_stage_work(&work, &[]).await.unwrap();
    assert!(
        again.iter().all(|d| matches!(
            d,
            StageDone::Incident {
                outcome: IncidentOutcome::AlreadyProcessed,
                ..
            } | StageDone::Cancel(IncidentOutcome::AlreadyProcessed)
                | StageDone::Cleared(None)
                | StageDone::Processed
        )),
        "{again:?}"
    );
    assert_eq!(db.incidents_overview().await.unwrap(), overview);
    assert_eq!(db.dispatches_overview().await.unwrap(), dispatches);
    assert_eq!(
        db.incident_actions(sos).await.unwrap().len(),
        4,
        "no line written twice"
    );

    // The offer handed to the broker is marked in the next batch's transaction; the sweep
    // then leaves it alone.
    let unpublished = db.unpublished_dispatches().await.unwrap();
    assert!(!unpublished.is_empty(), "the batch's offer awaits its mark");
    db.apply_stage_work(&work, &unpublished).await.unwrap();
    assert_eq!(
        db.unpublished_dispatches().await.unwrap(),
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn stage_batch_sqlite() {
    stage_batch(Backend::Sqlite).await;
}

#[tokio::test]
async fn stage_batch_postgres() {
    stage_batch(Backend::Postgres).await;
}
