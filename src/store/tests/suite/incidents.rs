//! incidents: what the incident stage writes (opening, folding, routing,
//! cancels and clears), the state machine's steps, the offers an ending takes
//! back, emergency hand-offs and the deadlines kept in the database.
//!
//! The builders at the top are shared with the alarms, dispatch and console
//! areas: a resident with a pendant, the provider contracted for their
//! district with two carers on duty, alarms and the incidents they open.

use pingantong_domain::rules::Rules;
use pingantong_domain::{Action, IllegalTransition, State};
use pingantong_protocol::{EventKind, Location};
use pingantong_store::{
    AlarmRecord, AuditEntry, AuthStatus, CarerAnswer, CarerCandidate, ClaimCheck, CommitOutcome,
    Db, HandoffError, IncidentOutcome, NewCarer, NewClient, NewContact, NewDevice, NewDispatch,
    NewIncident, NewProvider, OfferCheck, PurgeCursor, RetentionPolicy, RouteDone, RouteRequest,
    StageDone, StageWork, Transition, TransitionError,
};

#[allow(unused_imports)]
use crate::both_backends;

// ---------------------------------------------------------------------------
// Builders shared by the areas of this suite.

pub const DISTRICT: &str = "越秀区";
pub const STREET: &str = "北京街";
/// The resident's home.
pub const HOME: (f64, f64) = (23.1291, 113.2644);
/// Across the district, where the far carer stands.
pub const FAR: (f64, f64) = (23.1500, 113.3000);
/// When the suite's alarms are received (ms): any fixed time will do.
pub const AT: i64 = 1_700_000_000_000;
/// The claim deadline of the incidents `an_sos` opens.
pub const CLAIM_DUE: i64 = AT + 60_000;

/// A resident with a pendant; the provider contracted for their district
/// with two carers on duty, one near the home and one far across it.
pub struct Town {
    pub client: i64,
    pub device: String,
    pub provider: i64,
    pub near: i64,
    pub far: i64,
}

impl Town {
    pub fn key(&self) -> String {
        format!("client:{}", self.client)
    }
}

pub fn new_client(name: &str, district: &str, street: &str) -> NewClient {
    NewClient {
        name: name.into(),
        address: format!("广州市{district}{street} 12号 301室"),
        district: district.into(),
        street: street.into(),
        lat: Some(HOME.0),
        lon: Some(HOME.1),
        language: "yue".into(),
        medical_notes: "高血压；房颤".into(),
        medications: "华法林 3mg".into(),
        allergies: "青霉素".into(),
        key_safe: "4711".into(),
        birth_year: Some(1938),
        subsidy_category: Some("living_alone".into()),
    }
}

/// A resident of `district` with a native pendant `PA-<client id>`.
pub async fn a_resident(db: &Db, name: &str, district: &str, street: &str) -> (i64, String) {
    let client = db
        .insert_client(&new_client(name, district, street))
        .await
        .unwrap();
    let device = format!("PA-{client}");
    db.upsert_device(&NewDevice {
        id: device.clone(),
        protocol: "native".into(),
        secret: b"a pendant's secret of 32 bytes..".to_vec(),
        client_id: Some(client),
    })
    .await
    .unwrap();
    (client, device)
}

pub async fn a_provider(db: &Db, name: &str, district: &str, rank: i64) -> i64 {
    db.insert_provider(&NewProvider {
        name: name.into(),
        service_types: "home_visit".into(),
        capacity: 10,
        coverage: vec![(district.into(), None)],
        rank,
    })
    .await
    .unwrap()
}

pub async fn a_carer(db: &Db, provider: i64, name: &str, at: (f64, f64)) -> i64 {
    db.insert_carer(&NewCarer {
        provider_id: provider,
        name: name.into(),
        phone: "13800000000".into(),
        lat: at.0,
        lon: at.1,
        on_duty: true,
    })
    .await
    .unwrap()
}

pub async fn a_town(db: &Db) -> Town {
    let (client, device) = a_resident(db, "陈秀英", DISTRICT, STREET).await;
    let provider = a_provider(db, "越秀区颐康中心", DISTRICT, 0).await;
    let near = a_carer(db, provider, "李护工", (23.1300, 113.2650)).await;
    let far = a_carer(db, provider, "张护工", FAR).await;
    Town {
        client,
        device,
        provider,
        near,
        far,
    }
}

/// One verified event of `device`, received at `at`.
pub fn record(device: &str, seq: i64, kind: EventKind, at: i64) -> AlarmRecord {
    AlarmRecord {
        received_at: at,
        protocol: "native",
        peer: "10.1.2.3:40000".into(),
        device_id: device.into(),
        seq,
        kind,
        device_time: Some(at - 40),
        battery: Some(80),
        location: None,
        auth: AuthStatus::Verified,
        raw: vec![0xA5, 0x5A, seq as u8, 0x01],
        decoded: format!(r#"{{"device":"{device}","seq":{seq}}}"#),
        dedup_key: format!("{device}:{seq}"),
        retry_window_ms: None,
    }
}

/// Store one event; its row id.
pub async fn store(db: &Db, r: AlarmRecord) -> i64 {
    match db.insert_alarms(&[r], &Rules::default()).await.unwrap()[..] {
        [CommitOutcome::Stored(id)] => id,
        ref other => panic!("not stored: {other:?}"),
    }
}

/// A verified resident's press, owed a carer, not routed as it opens.
pub fn press<'a>(
    alarm_id: i64,
    fold_key: &'a str,
    client: i64,
    device: &'a str,
    kind: &'a str,
) -> NewIncident<'a> {
    NewIncident {
        alarm_id,
        fold_key,
        client_id: Some(client),
        device_id: device,
        kind,
        lane: "life_safety",
        verified: true,
        offer: true,
        advise: None,
        notify: None,
        notify_at: AT,
        claim_due_at: CLAIM_DUE,
    }
}

/// The incident one item of stage work opened.
pub fn opened(done: &StageDone) -> i64 {
    match done {
        StageDone::Incident {
            outcome: IncidentOutcome::Opened(id),
            ..
        } => *id,
        other => panic!("no incident opened: {other:?}"),
    }
}

/// An SOS from a device nobody provisioned (`PA-STRANGER`), pressed at
/// `at`: an unverified incident with no resident. `offer`: whether its
/// rule would offer it to a carer. The incident's id and the alarm's.
pub async fn a_strangers_sos(db: &Db, at: i64, offer: bool) -> (i64, i64) {
    let stranger = "PA-STRANGER";
    let mut r = record(stranger, 1, EventKind::Sos, at);
    r.auth = AuthStatus::UnknownDevice;
    let alarm = store(db, r).await;
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: NewIncident {
                    client_id: None,
                    verified: false,
                    offer,
                    ..press(alarm, "unverified:PA-STRANGER", 0, stranger, "sos")
                },
                route: None,
            }],
            &[],
        )
        .await
        .unwrap();
    (opened(&done[0]), alarm)
}

/// An SOS of the resident (`seq` names the alarm) opening an incident whose
/// routing is owed; the incident's id.
pub async fn an_sos(db: &Db, client: i64, device: &str, seq: i64) -> i64 {
    let alarm = store(db, record(device, seq, EventKind::Sos, AT + seq)).await;
    let key = format!("client:{client}");
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: press(alarm, &key, client, device, "sos"),
                route: None,
            }],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    opened(&done[0])
}

/// A technical job (`low_battery` …) of the device, owed no carer.
pub async fn a_job(db: &Db, client: i64, device: &str, kind: EventKind, seq: i64) -> i64 {
    let alarm = store(db, record(device, seq, kind, AT + seq)).await;
    let key = format!("device:{device}");
    let name = kind.name();
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: NewIncident {
                    lane: "technical",
                    offer: false,
                    ..press(alarm, &key, client, device, &name)
                },
                route: None,
            }],
            &[],
        )
        .await
        .unwrap();
    opened(&done[0])
}

pub fn offer_to(carer: i64, provider: i64) -> NewDispatch {
    NewDispatch {
        carer_id: carer,
        provider_id: provider,
        distance_m: Some(150.0),
        fallback: false,
    }
}

/// One step of the state machine, with no reason or outcome.
pub async fn step(
    db: &Db,
    incident_id: i64,
    action: Action,
    actor: &str,
) -> Result<State, TransitionError> {
    db.transition(&Transition {
        incident_id,
        action,
        actor,
        detail: "",
        outcome: None,
        merged_into: None,
        take_over: false,
    })
    .await
}

/// Rough metres between two points (good enough to tell near from far).
pub fn metres(a: (f64, f64), b: (f64, f64)) -> f64 {
    111_000.0 * ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// A routing policy for the stage: the available carer nearest `at`.
pub fn nearest(at: Option<(f64, f64)>, candidates: &[CarerCandidate]) -> Option<NewDispatch> {
    let at = at?;
    candidates
        .iter()
        .filter_map(|c| Some((c, c.carer_id?, metres(at, (c.lat?, c.lon?)))))
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map(|(c, carer, m)| NewDispatch {
            carer_id: carer,
            provider_id: c.provider_id,
            distance_m: Some(m),
            fallback: false,
        })
}

// ---------------------------------------------------------------------------

both_backends!(
    presses_open_one_incident_and_fold_into_it,
    an_alarm_handed_over_twice_in_one_batch_is_counted_once,
    owed_routing_is_done_once_and_its_offer_published_once,
    routing_as_it_opens_sends_the_carer_nearest_the_alarm,
    a_residents_cancel_is_noted_and_a_devices_clear_ends_the_job,
    the_state_machine_moves_an_incident_and_writes_each_step,
    an_ending_takes_back_its_offers_and_the_phones_are_told_once,
    a_handoff_moves_the_incident_on_and_keeps_the_residents_summary,
    deadlines_fire_once_each,
    a_job_a_device_cleared_is_purged_like_one_an_operator_ended,
);

async fn presses_open_one_incident_and_fold_into_it(db: &Db) {
    let t = a_town(db).await;
    let key = t.key();
    let a1 = store(db, record(&t.device, 1, EventKind::Medical, AT)).await;
    let a2 = store(db, record(&t.device, 2, EventKind::Medical, AT + 1)).await;
    // Two presses in one batch: the second folds into what the first opened.
    let first = NewIncident {
        advise: Some("120"),
        ..press(a1, &key, t.client, &t.device, "medical")
    };
    let done = db
        .apply_stage_work(
            &[
                StageWork::Incident {
                    incident: first,
                    route: None,
                },
                StageWork::Incident {
                    incident: press(a2, &key, t.client, &t.device, "medical"),
                    route: None,
                },
            ],
            &[],
        )
        .await
        .unwrap();
    let id = opened(&done[0]);
    assert_eq!(
        done[1],
        StageDone::Incident {
            outcome: IncidentOutcome::Folded(id),
            route: None
        }
    );
    let s = db.incident_summary(id).await.unwrap().unwrap();
    assert_eq!(
        (
            s.kind.as_str(),
            s.lane.as_str(),
            s.state.as_str(),
            s.verified,
            s.client_id,
            s.device_id.as_str(),
            s.press_count,
            s.claimed_by,
            s.advised_service.as_deref(),
            s.outcome
        ),
        (
            "medical",
            "life_safety",
            "queued",
            true,
            Some(t.client),
            t.device.as_str(),
            2,
            None,
            Some("120"),
            None
        )
    );
    assert_eq!(db.incident_state(id).await.unwrap(), Some(State::Queued));
    assert_eq!(
        db.incident_actions(id).await.unwrap(),
        ["handoff_advised", "opened", "press_folded"]
    );
    // Both alarms are linked to it and handled.
    for seq in [1, 2] {
        assert_eq!(
            db.alarm_states(&t.device, seq).await.unwrap(),
            [("verified".to_owned(), true, Some(id))]
        );
    }

    // A later batch folds too; the same alarm handed over again changes nothing.
    let a3 = store(db, record(&t.device, 3, EventKind::Sos, AT + 2)).await;
    let again = StageWork::Incident {
        incident: press(a3, &key, t.client, &t.device, "sos"),
        route: None,
    };
    let done = db.apply_stage_work(&[again], &[]).await.unwrap();
    assert_eq!(
        done,
        [StageDone::Incident {
            outcome: IncidentOutcome::Folded(id),
            route: None
        }]
    );
    let done = db.apply_stage_work(&[again], &[]).await.unwrap();
    assert_eq!(
        done,
        [StageDone::Incident {
            outcome: IncidentOutcome::AlreadyProcessed,
            route: None
        }]
    );
    let s = db.incident_summary(id).await.unwrap().unwrap();
    assert_eq!(s.press_count, 3);
    assert_eq!(db.incident_actions(id).await.unwrap().len(), 4);

    // A stranger's press opens an unverified incident of its own.
    let (other, a4) = a_strangers_sos(db, AT + 3, false).await;
    assert_ne!(other, id);
    assert_eq!(db.incident_counts().await.unwrap(), (2, 1, 0));
    assert_eq!(
        db.incidents_overview().await.unwrap(),
        [
            (id, key.clone(), 3, true),
            (other, "unverified:PA-STRANGER".to_owned(), 1, false)
        ]
    );
    let line = db.timeline(other).await.unwrap();
    assert_eq!(line.len(), 1);
    assert_eq!(
        line[0].detail,
        format!("alarm {a4} from an unverified device")
    );

    // Nothing is made up for an incident that does not exist.
    assert_eq!(db.incident_summary(other + 100).await.unwrap(), None);
    assert_eq!(db.incident_state(other + 100).await.unwrap(), None);
    assert!(db.incident_actions(other + 100).await.unwrap().is_empty());
}

async fn owed_routing_is_done_once_and_its_offer_published_once(db: &Db) {
    let t = a_town(db).await;
    let id = an_sos(db, t.client, &t.device, 1).await;

    // Owed: listed with the resident's profile, health fields opened.
    let owed = db.unrouted_incidents().await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!((owed[0].incident_id, owed[0].kind.as_str()), (id, "sos"));
    assert_eq!(owed[0].client.id, t.client);
    assert_eq!(owed[0].client.district, DISTRICT);
    assert_eq!(owed[0].client.medical_notes, "高血压；房颤");

    // Both carers are available to the contracted provider.
    let mut found: Vec<(i64, Option<i64>, i64, i64)> = db
        .carer_candidates(DISTRICT, STREET)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.provider_id, c.carer_id, c.capacity, c.active_jobs))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (t.provider, Some(t.near), 10, 0),
            (t.provider, Some(t.far), 10, 0)
        ]
    );
    assert!(
        db.carer_candidates("海珠区", STREET)
            .await
            .unwrap()
            .is_empty()
    );

    let d = db
        .record_route(id, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .expect("an offer was made");
    assert!(db.unrouted_incidents().await.unwrap().is_empty());
    assert_eq!(
        db.incident_actions(id).await.unwrap().last().unwrap(),
        "carer_offered"
    );
    // Routed once: a second decision is not written.
    assert_eq!(
        db.record_route(id, Some(&offer_to(t.far, t.provider)), AT + 90_000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(db.incident_counts().await.unwrap(), (1, 0, 1));
    assert_eq!(
        db.dispatches_overview().await.unwrap(),
        [(d, id, t.near, false, false)]
    );

    // What the carer's phone is sent, with the health fields opened.
    let o = db.dispatch_offer(d).await.unwrap().unwrap();
    assert_eq!(
        (o.dispatch_id, o.incident_id, o.carer_id, o.kind.as_str()),
        (d, id, t.near, "sos")
    );
    assert_eq!(o.client_name, "陈秀英");
    assert_eq!((o.lat, o.lon), (Some(HOME.0), Some(HOME.1)));
    assert_eq!(o.distance_m, Some(150.0));
    assert_eq!(
        (
            o.medical_notes.as_str(),
            o.medications.as_str(),
            o.allergies.as_str(),
            o.key_safe.as_str()
        ),
        ("高血压；房颤", "华法林 3mg", "青霉素", "4711")
    );
    assert_eq!((o.reported_lat, o.reported_lon), (None, None));
    assert_eq!(db.dispatch_offer(d + 100).await.unwrap(), None);

    // Published once.
    assert_eq!(db.unpublished_dispatches().await.unwrap(), [d]);
    // The server that made the offer holds it while it publishes: no
    // other server's sweep takes it meanwhile.
    assert!(db.claim_unpublished_dispatches().await.unwrap().is_empty());
    assert_eq!(
        db.unpublished_dispatches().await.unwrap(),
        [d],
        "still owed"
    );
    db.mark_dispatches_published(&[d]).await.unwrap();
    db.mark_dispatches_published(&[]).await.unwrap();
    assert!(db.unpublished_dispatches().await.unwrap().is_empty());
    assert_eq!(
        db.dispatches_overview().await.unwrap(),
        [(d, id, t.near, false, true)]
    );

    // Nobody available: said on the timeline, no dispatch.
    let (client, device) = a_resident(db, "王桂兰", "海珠区", "江南大道").await;
    let other = an_sos(db, client, &device, 1).await;
    assert_eq!(db.record_route(other, None, AT).await.unwrap(), None);
    assert_eq!(
        db.incident_actions(other).await.unwrap(),
        ["opened", "no_carer_available"]
    );
    assert!(db.unrouted_incidents().await.unwrap().is_empty());
    assert_eq!(db.incident_counts().await.unwrap(), (2, 0, 1));

    // A carer on a job is nobody's candidate; the provider's job is counted.
    db.apply_carer_answer(d, t.near, CarerAnswer::Accept, "")
        .await
        .unwrap();
    let found: Vec<(Option<i64>, i64)> = db
        .carer_candidates(DISTRICT, STREET)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.carer_id, c.active_jobs))
        .collect();
    assert_eq!(found, [(Some(t.far), 1)]);

    // An operator offered the job to the carer routing chooses: they keep
    // that offer, and no second one is made.
    let (client, device) = a_resident(db, "李淑珍", DISTRICT, STREET).await;
    let third = an_sos(db, client, &device, 1).await;
    let held = db
        .add_offer(
            third,
            &offer_to(t.far, t.provider),
            AT,
            "operator:wang",
            "she knows her",
        )
        .await
        .unwrap();
    assert_eq!(
        db.record_route(third, Some(&offer_to(t.far, t.provider)), AT)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        db.incident_actions(third).await.unwrap(),
        ["opened", "carer_offered", "carer_already_offered"]
    );
    assert_eq!(
        db.dispatch_states(third).await.unwrap(),
        [(held, t.far, "offered".to_owned())]
    );
    assert!(db.unrouted_incidents().await.unwrap().is_empty());
}

async fn routing_as_it_opens_sends_the_carer_nearest_the_alarm(db: &Db) {
    let t = a_town(db).await;
    let profile = db.client_profile(t.client).await.unwrap().unwrap();
    // The resident is out, near the far carer, and the watch says so.
    let mut r = record(&t.device, 1, EventKind::Fall, AT);
    r.location = Some(Location {
        lat: FAR.0 + 0.0001,
        lon: FAR.1,
        accuracy_m: Some(15),
    });
    let alarm = store(db, r).await;
    let key = t.key();
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: press(alarm, &key, t.client, &t.device, "fall"),
                route: Some(RouteRequest {
                    client: &profile,
                    at: Some((FAR.0 + 0.0001, FAR.1)),
                    offer_due_at: AT + 90_000,
                    choose: nearest,
                }),
            }],
            &[],
        )
        .await
        .unwrap();
    let id = opened(&done[0]);
    let StageDone::Incident {
        route: Some(RouteDone::Offered(o)),
        ..
    } = &done[0]
    else {
        panic!("offered: {done:?}");
    };
    assert_eq!((o.incident_id, o.carer_id), (id, t.far));
    assert_eq!(o.reported_lat, Some(FAR.0 + 0.0001));
    assert_eq!(o.key_safe, "4711");
    // Read back, the offer says the same, the position opened from its seal.
    let read = db.dispatch_offer(o.dispatch_id).await.unwrap().unwrap();
    assert_eq!(
        (read.carer_id, read.reported_lat, read.reported_lon),
        (t.far, Some(FAR.0 + 0.0001), Some(FAR.1))
    );
    assert_eq!(
        db.incident_position(id).await.unwrap(),
        Some((FAR.0 + 0.0001, FAR.1))
    );
    assert_eq!(
        db.incident_actions(id).await.unwrap(),
        ["opened", "carer_offered"]
    );
    assert!(db.unrouted_incidents().await.unwrap().is_empty());
    // The offer's deadline is armed with it.
    let due = db.due_timers(AT + 90_000, 10).await.unwrap();
    assert!(
        due.iter()
            .any(|x| x.kind == "offer" && x.dispatch_id == Some(o.dispatch_id)),
        "{due:?}"
    );

    // A resident where no provider is contracted: nobody, said so.
    let (client, device) = a_resident(db, "王桂兰", "海珠区", "江南大道").await;
    let profile = db.client_profile(client).await.unwrap().unwrap();
    let alarm = store(db, record(&device, 1, EventKind::Sos, AT)).await;
    let key = format!("client:{client}");
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: press(alarm, &key, client, &device, "sos"),
                route: Some(RouteRequest {
                    client: &profile,
                    at: None,
                    offer_due_at: AT + 90_000,
                    choose: nearest,
                }),
            }],
            &[],
        )
        .await
        .unwrap();
    let other = opened(&done[0]);
    assert!(matches!(
        &done[0],
        StageDone::Incident {
            route: Some(RouteDone::NoCarer),
            ..
        }
    ));
    assert_eq!(
        db.incident_actions(other).await.unwrap(),
        ["opened", "no_carer_available"]
    );
    assert_eq!(db.incident_position(other).await.unwrap(), None);

    // Offers handed to the broker are marked with the next batch, even an empty one.
    assert_eq!(db.unpublished_dispatches().await.unwrap(), [o.dispatch_id]);
    assert!(
        db.apply_stage_work(&[], &[o.dispatch_id])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(db.unpublished_dispatches().await.unwrap().is_empty());
}

async fn a_residents_cancel_is_noted_and_a_devices_clear_ends_the_job(db: &Db) {
    let t = a_town(db).await;
    let key = t.key();
    // Nothing open: nothing to cancel.
    let c0 = store(db, record(&t.device, 1, EventKind::Cancel, AT)).await;
    let done = db
        .apply_stage_work(
            &[StageWork::Cancel {
                alarm_id: c0,
                fold_key: &key,
            }],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done, [StageDone::Cancel(IncidentOutcome::NothingToCancel)]);
    assert_eq!(
        db.alarm_states(&t.device, 1).await.unwrap(),
        [("verified".to_owned(), true, None)]
    );

    // A cancel is noted on the open incident, which stays open.
    let id = an_sos(db, t.client, &t.device, 2).await;
    let c1 = store(db, record(&t.device, 3, EventKind::Cancel, AT + 3)).await;
    let done = db
        .apply_stage_work(
            &[StageWork::Cancel {
                alarm_id: c1,
                fold_key: &key,
            }],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        done,
        [StageDone::Cancel(IncidentOutcome::CancelRecorded(id))]
    );
    assert_eq!(db.incident_state(id).await.unwrap(), Some(State::Queued));
    let line = db.timeline(id).await.unwrap();
    let last = line.last().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.detail.clone()
        ),
        ("resident", "cancel_requested", format!("alarm {c1}"))
    );

    // A technical job the device clears is over, with its outcome.
    let job = a_job(db, t.client, &t.device, EventKind::PowerCut, 4).await;
    let r = store(db, record(&t.device, 5, EventKind::PowerRestored, AT + 5)).await;
    let device_key = format!("device:{}", t.device);
    let done = db
        .apply_stage_work(
            &[StageWork::Clear {
                alarm_id: r,
                fold_key: &device_key,
                detail: "mains power is back",
            }],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done, [StageDone::Cleared(Some(job))]);
    assert_eq!(
        db.incident_state(job).await.unwrap(),
        Some(State::Cancelled)
    );
    let s = db.incident_summary(job).await.unwrap().unwrap();
    assert_eq!(s.outcome.as_deref(), Some("cleared"));
    let last = db.timeline(job).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.to_state.as_deref(),
            last.detail.as_str()
        ),
        (
            "device",
            "cleared",
            Some("cancelled"),
            "mains power is back"
        )
    );
    // The SOS was not touched by it.
    assert_eq!(db.incident_state(id).await.unwrap(), Some(State::Queued));

    // A second clear finds nothing open; a plain event is only marked handled.
    let r2 = store(db, record(&t.device, 6, EventKind::PowerRestored, AT + 6)).await;
    let p = store(db, record(&t.device, 7, EventKind::LowBattery, AT + 7)).await;
    let done = db
        .apply_stage_work(
            &[
                StageWork::Clear {
                    alarm_id: r2,
                    fold_key: &device_key,
                    detail: "again",
                },
                StageWork::Processed { alarm_id: p },
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done, [StageDone::Cleared(None), StageDone::Processed]);
    assert_eq!(
        db.alarm_states(&t.device, 7).await.unwrap(),
        [("verified".to_owned(), true, None)]
    );
    assert!(
        db.unprocessed_alarms(0, 100, None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_state_machine_moves_an_incident_and_writes_each_step(db: &Db) {
    let t = a_town(db).await;
    let id = an_sos(db, t.client, &t.device, 1).await;

    assert_eq!(
        step(db, id, Action::Claim, "operator:wang").await.unwrap(),
        State::Claimed
    );
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.from_state.as_deref(),
            last.to_state.as_deref()
        ),
        ("operator:wang", "claim", Some("queued"), Some("claimed"))
    );
    let s = db.incident_summary(id).await.unwrap().unwrap();
    assert_eq!(s.claimed_by.as_deref(), Some("operator:wang"));
    let lines = db.timeline(id).await.unwrap().len();

    // Refusals change nothing.
    match step(db, id, Action::Claim, "operator:li").await {
        Err(TransitionError::AlreadyClaimed(i, owner)) => {
            assert_eq!((i, owner.as_str()), (id, "operator:wang"))
        }
        other => panic!("{other:?}"),
    }
    match step(db, id, Action::Close, "operator:wang").await {
        Err(TransitionError::Illegal(IllegalTransition { from, action })) => {
            assert_eq!((from, action), (State::Claimed, Action::Close))
        }
        other => panic!("{other:?}"),
    }
    match step(db, id, Action::Resolve, "operator:li").await {
        Err(TransitionError::ClaimedByOther {
            id: i,
            owner,
            action,
        }) => {
            assert_eq!(
                (i, owner.as_str(), action),
                (id, "operator:wang", Action::Resolve)
            )
        }
        other => panic!("{other:?}"),
    }
    for reason in [None, Some("bored")] {
        let cancel = Transition {
            incident_id: id,
            action: Action::Cancel,
            actor: "operator:wang",
            detail: "",
            outcome: reason,
            merged_into: None,
            take_over: false,
        };
        assert!(matches!(
            db.transition(&cancel).await,
            Err(TransitionError::CancelReasonNeeded { id: i }) if i == id
        ));
    }
    assert!(matches!(
        step(db, id + 100, Action::Claim, "operator:wang").await,
        Err(TransitionError::NotFound(i)) if i == id + 100
    ));
    assert_eq!(db.incident_state(id).await.unwrap(), Some(State::Claimed));
    assert_eq!(db.timeline(id).await.unwrap().len(), lines);

    // Another operator takes it over to resolve it: said twice, audited twice.
    let subject = format!("incident:{id}");
    let audit = AuditEntry {
        actor: "user:li",
        action: "incident_resolve",
        subject: &subject,
        detail: "carer found her well",
    };
    let resolve = Transition {
        incident_id: id,
        action: Action::Resolve,
        actor: "operator:li",
        detail: "carer found her well",
        outcome: None,
        merged_into: None,
        take_over: true,
    };
    assert_eq!(
        db.transition_audited(&resolve, &audit).await.unwrap(),
        State::Resolved
    );
    let line = db.timeline(id).await.unwrap();
    let took = &line[line.len() - 2];
    assert_eq!(
        (
            took.action.as_str(),
            took.actor.as_str(),
            took.detail.as_str()
        ),
        ("take_over", "operator:li", "from operator:wang, to resolve")
    );
    assert_eq!(
        (
            line[line.len() - 1].action.as_str(),
            line[line.len() - 1].to_state.as_deref()
        ),
        ("resolve", Some("resolved"))
    );
    assert_eq!(
        db.incident_summary(id)
            .await
            .unwrap()
            .unwrap()
            .claimed_by
            .as_deref(),
        Some("operator:li")
    );
    let trail = db.audit_trail(Some(&subject), 10).await.unwrap();
    let trail: Vec<(&str, &str)> = trail
        .iter()
        .map(|e| (e.action.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("incident_resolve", "carer found her well"),
            ("incident_take_over", "from operator:wang")
        ]
    );

    // Closed with its outcome; then nothing more.
    let close = Transition {
        incident_id: id,
        action: Action::Close,
        actor: "operator:li",
        detail: "",
        outcome: Some("help_given"),
        merged_into: None,
        take_over: false,
    };
    assert_eq!(db.transition(&close).await.unwrap(), State::Closed);
    let s = db.incident_summary(id).await.unwrap().unwrap();
    assert_eq!(
        (s.state.as_str(), s.outcome.as_deref()),
        ("closed", Some("help_given"))
    );
    assert!(matches!(
        step(db, id, Action::Resolve, "operator:li").await,
        Err(TransitionError::Illegal(IllegalTransition {
            from: State::Closed,
            action: Action::Resolve
        }))
    ));

    // A technical job is cancelled without a reason from the list.
    let job = a_job(db, t.client, &t.device, EventKind::LowBattery, 2).await;
    assert_eq!(
        step(db, job, Action::Cancel, "operator:wang")
            .await
            .unwrap(),
        State::Cancelled
    );
    // Merging needs an open incident; its target is kept.
    let a = an_sos(db, t.client, &t.device, 3).await;
    let merge = Transition {
        incident_id: a,
        action: Action::Merge,
        actor: "operator:wang",
        detail: "same call",
        outcome: None,
        merged_into: Some(id),
        take_over: false,
    };
    assert_eq!(db.transition(&merge).await.unwrap(), State::Merged);
    assert_eq!(db.incident_state(a).await.unwrap(), Some(State::Merged));
}

async fn an_ending_takes_back_its_offers_and_the_phones_are_told_once(db: &Db) {
    let t = a_town(db).await;
    let other_provider = a_provider(db, "应急援助队", DISTRICT, 9).await;
    let third = a_carer(db, other_provider, "赵护工", HOME).await;
    let id = an_sos(db, t.client, &t.device, 1).await;
    let d1 = db
        .record_route(id, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .unwrap();
    let d2 = db
        .add_offer(
            id,
            &offer_to(t.far, t.provider),
            AT + 90_000,
            "operator:wang",
            "a second pair of hands",
        )
        .await
        .unwrap();
    let d3 = db
        .add_offer(
            id,
            &offer_to(third, other_provider),
            AT + 90_000,
            "operator:wang",
            "the nearest",
        )
        .await
        .unwrap();
    db.apply_carer_answer(d2, t.far, CarerAnswer::Accept, "")
        .await
        .unwrap();
    db.apply_carer_answer(d3, third, CarerAnswer::Accept, "")
        .await
        .unwrap();
    db.apply_carer_answer(d3, third, CarerAnswer::Arrived, "")
        .await
        .unwrap();
    assert!(db.carer(t.far).await.unwrap().unwrap().busy);
    assert!(db.owed_withdrawals(10).await.unwrap().is_empty());

    let cancel = Transition {
        incident_id: id,
        action: Action::Cancel,
        actor: "operator:wang",
        detail: "she pressed it by mistake",
        outcome: Some("resident_false_alarm"),
        merged_into: None,
        take_over: false,
    };
    assert_eq!(db.transition(&cancel).await.unwrap(), State::Cancelled);
    // The offer and the carer on the way are withdrawn; who stands in the room is not.
    assert_eq!(
        db.dispatch_states(id).await.unwrap(),
        [
            (d1, t.near, "withdrawn".to_owned()),
            (d2, t.far, "withdrawn".to_owned()),
            (d3, third, "arrived".to_owned())
        ]
    );
    assert!(!db.carer(t.far).await.unwrap().unwrap().busy);
    assert!(db.carer(third).await.unwrap().unwrap().busy);
    let mut withdrawn = db
        .timeline(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "offer_withdrawn")
        .map(|e| e.detail)
        .collect::<Vec<_>>();
    withdrawn.sort();
    assert_eq!(
        withdrawn,
        [
            format!(
                "dispatch {d1} to carer {}: the incident is cancelled",
                t.near
            ),
            format!(
                "dispatch {d2} to carer {} (on the way): the incident is cancelled",
                t.far
            )
        ]
    );

    let owed = db.owed_withdrawals(10).await.unwrap();
    let seen: Vec<(i64, i64, i64, &str)> = owed
        .iter()
        .map(|w| {
            (
                w.dispatch_id,
                w.incident_id,
                w.carer_id,
                w.incident_state.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [(d1, id, t.near, "cancelled"), (d2, id, t.far, "cancelled")]
    );
    assert_eq!(owed[0].reason(), "incident_cancelled");
    assert!(owed.iter().all(|w| w.withdrawn_at > 0));
    assert_eq!(db.owed_withdrawals(1).await.unwrap(), owed[..1]);
    // Each taken by one server at a time, oldest first, still owed until sent.
    assert_eq!(db.claim_owed_withdrawals(1).await.unwrap(), owed[..1]);
    assert_eq!(db.claim_owed_withdrawals(10).await.unwrap(), owed[1..]);
    assert!(db.claim_owed_withdrawals(10).await.unwrap().is_empty());
    assert_eq!(db.owed_withdrawals(10).await.unwrap(), owed);

    // Told once: each is owed until marked sent.
    db.mark_withdrawals_sent(&[d1]).await.unwrap();
    assert_eq!(db.owed_withdrawals(10).await.unwrap(), owed[1..]);
    db.mark_withdrawals_sent(&[d1, d2]).await.unwrap();
    db.mark_withdrawals_sent(&[]).await.unwrap();
    assert!(db.owed_withdrawals(10).await.unwrap().is_empty());

    // Resolved takes back only the offers nobody answered.
    let next = an_sos(db, t.client, &t.device, 2).await;
    let d4 = db
        .record_route(next, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .unwrap();
    // Held by its maker while it publishes; once the hold has run out
    // unpublished (the maker died), a sweep takes it, for one server at a time.
    assert!(db.claim_unpublished_dispatches().await.unwrap().is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(
        pingantong_store::PUBLISH_LEASE_MS as u64 + 100,
    ))
    .await;
    assert_eq!(db.claim_unpublished_dispatches().await.unwrap(), [d4]);
    assert!(db.claim_unpublished_dispatches().await.unwrap().is_empty());
    let d5 = db
        .add_offer(
            next,
            &offer_to(t.far, t.provider),
            AT + 90_000,
            "system",
            "fallback",
        )
        .await
        .unwrap();
    db.apply_carer_answer(d5, t.far, CarerAnswer::Accept, "")
        .await
        .unwrap();
    step(db, next, Action::Claim, "operator:wang")
        .await
        .unwrap();
    step(db, next, Action::Resolve, "operator:wang")
        .await
        .unwrap();
    assert_eq!(
        db.dispatch_states(next).await.unwrap(),
        [
            (d4, t.near, "withdrawn".to_owned()),
            (d5, t.far, "accepted".to_owned())
        ]
    );
    let owed = db.owed_withdrawals(10).await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(
        (owed[0].dispatch_id, owed[0].reason()),
        (d4, "incident_resolved".to_owned())
    );
}

async fn a_handoff_moves_the_incident_on_and_keeps_the_residents_summary(db: &Db) {
    let t = a_town(db).await;
    db.insert_contact(&NewContact {
        client_id: t.client,
        position: 1,
        name: "陈志强".into(),
        relation: "son".into(),
        phone: "13900000001".into(),
        notify: None,
    })
    .await
    .unwrap();
    let id = an_sos(db, t.client, &t.device, 1).await;
    step(db, id, Action::Claim, "operator:wang").await.unwrap();

    // A number that is not an emergency service: refused, nothing written.
    assert!(matches!(
        db.record_handoff(id, "999", "X", "operator:wang").await,
        Err(HandoffError::Service(s)) if s == "999"
    ));
    assert_eq!(db.incident_state(id).await.unwrap(), Some(State::Claimed));
    assert!(db.handoffs_of(id).await.unwrap().is_empty());

    let h = db
        .record_handoff(id, "120", "GZ120-0001", "operator:wang")
        .await
        .unwrap();
    assert_eq!(
        (
            h.incident_id,
            h.service.as_str(),
            h.reference.as_str(),
            h.outcome.clone()
        ),
        (id, "120", "GZ120-0001", None)
    );
    assert_eq!(h.summary["name"], "陈秀英");
    assert_eq!(h.summary["allergies"], "青霉素");
    assert_eq!(h.summary["conditions"], "高血压；房颤");
    assert_eq!(h.summary["home"]["lat"], HOME.0);
    assert_eq!(h.summary["contacts"][0]["phone"], "13900000001");
    assert!(
        h.summary["age"].as_i64().is_some_and(|a| a > 80),
        "{}",
        h.summary
    );
    assert_eq!(
        db.incident_state(id).await.unwrap(),
        Some(State::Dispatched)
    );
    let actions = db.incident_actions(id).await.unwrap();
    assert_eq!(
        actions[actions.len() - 2..],
        ["dispatch", "emergency_handoff"]
    );

    // Read back as written, the summary opened from its seal.
    let of = db.handoffs_of(id).await.unwrap();
    assert_eq!(of, std::slice::from_ref(&h));
    assert_eq!(db.open_handoffs().await.unwrap(), std::slice::from_ref(&h));

    // A second service later leaves the incident dispatched.
    let police = db
        .record_handoff(id, "110", "GZ110-0002", "operator:wang")
        .await
        .unwrap();
    assert_eq!(
        db.incident_state(id).await.unwrap(),
        Some(State::Dispatched)
    );
    assert_eq!(db.handoffs_of(id).await.unwrap().len(), 2);

    db.handoff_outcome(h.id, "admitted", "operator:wang")
        .await
        .unwrap();
    let of = db.handoffs_of(id).await.unwrap();
    assert_eq!(of[0].outcome.as_deref(), Some("admitted"));
    assert_eq!(of[1].outcome, None);
    assert_eq!(db.open_handoffs().await.unwrap(), [police]);
    assert_eq!(
        db.incident_actions(id).await.unwrap().last().unwrap(),
        "handoff_outcome"
    );
    assert!(matches!(
        db.handoff_outcome(h.id + 100, "admitted", "operator:wang").await,
        Err(HandoffError::NotFound(x)) if x == h.id + 100
    ));

    // No resident on file: nothing to hand over.
    let (lone, _) = a_strangers_sos(db, AT, true).await;
    assert!(matches!(
        db.record_handoff(lone, "120", "X", "operator:wang").await,
        Err(HandoffError::NoClient(x)) if x == lone
    ));

    // An incident that is over takes no hand-off.
    step(db, id, Action::Resolve, "operator:wang")
        .await
        .unwrap();
    assert!(matches!(
        db.record_handoff(id, "120", "late", "operator:wang").await,
        Err(HandoffError::Transition(TransitionError::Illegal(_)))
    ));
    assert_eq!(db.handoffs_of(id).await.unwrap().len(), 2);
}

async fn deadlines_fire_once_each(db: &Db) {
    let t = a_town(db).await;
    let id = an_sos(db, t.client, &t.device, 1).await;

    // The claim deadline armed as it opened.
    assert!(db.due_timers(CLAIM_DUE - 1, 10).await.unwrap().is_empty());
    let due = db.due_timers(CLAIM_DUE, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let claim = due[0].clone();
    assert_eq!(
        (
            claim.incident_id,
            claim.dispatch_id,
            claim.kind.as_str(),
            claim.round,
            claim.due_at
        ),
        (id, None, "claim", 0, CLAIM_DUE)
    );
    let remind = CLAIM_DUE + 60_000;
    assert_eq!(
        db.fire_claim_timer(&claim, remind).await.unwrap(),
        ClaimCheck::Overdue { round: 1 }
    );
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.as_str()),
        ("claim_overdue", "not claimed by an operator; reminder 1")
    );
    // Fired: not due again, and firing it twice does nothing.
    assert!(db.due_timers(CLAIM_DUE, 10).await.unwrap().is_empty());
    assert_eq!(
        db.fire_claim_timer(&claim, remind).await.unwrap(),
        ClaimCheck::Settled
    );
    let reminder = db.due_timers(remind, 10).await.unwrap();
    assert_eq!(reminder.len(), 1);
    assert_eq!(
        (
            reminder[0].kind.as_str(),
            reminder[0].round,
            reminder[0].due_at
        ),
        ("claim", 1, remind)
    );

    // Claimed meanwhile: the reminder finds nothing to do and arms no other.
    step(db, id, Action::Claim, "operator:wang").await.unwrap();
    let lines = db.timeline(id).await.unwrap().len();
    assert_eq!(
        db.fire_claim_timer(&reminder[0], remind + 60_000)
            .await
            .unwrap(),
        ClaimCheck::Settled
    );
    assert!(db.due_timers(i64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(db.timeline(id).await.unwrap().len(), lines);

    // An offer nobody answers expires at its deadline, once.
    let offer_due = AT + 90_000;
    let d = db
        .record_route(id, Some(&offer_to(t.near, t.provider)), offer_due)
        .await
        .unwrap()
        .unwrap();
    let due = db.due_timers(offer_due, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].kind.as_str(), due[0].dispatch_id, due[0].incident_id),
        ("offer", Some(d), id)
    );
    assert_eq!(
        db.fire_offer_timer(&due[0]).await.unwrap(),
        OfferCheck::Expired
    );
    assert_eq!(
        db.dispatch_states(id).await.unwrap(),
        [(d, t.near, "expired".to_owned())]
    );
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.clone()),
        (
            "offer_expired",
            format!("dispatch {d} not answered in time")
        )
    );
    assert_eq!(
        db.fire_offer_timer(&due[0]).await.unwrap(),
        OfferCheck::Settled
    );

    // An offer answered in time is settled when its deadline comes.
    let d2 = db
        .add_offer(
            id,
            &offer_to(t.far, t.provider),
            offer_due + 1,
            "system",
            "next carer",
        )
        .await
        .unwrap();
    db.apply_carer_answer(d2, t.far, CarerAnswer::Accept, "")
        .await
        .unwrap();
    let due = db.due_timers(offer_due + 1, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].dispatch_id, Some(d2));
    assert_eq!(
        db.fire_offer_timer(&due[0]).await.unwrap(),
        OfferCheck::Settled
    );
    assert_eq!(db.dispatch_states(id).await.unwrap()[1].2, "accepted");

    db.note_supervisor_alert(id, "no operator claimed it within 2 reminders")
        .await
        .unwrap();
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.detail.as_str()
        ),
        (
            "system",
            "supervisor_alerted",
            "no operator claimed it within 2 reminders"
        )
    );
}

/// Closed incidents lose their timeline after the retention period. A
/// technical job the device itself cleared is over just as one an operator
/// cancelled, and is purged with it.
async fn a_job_a_device_cleared_is_purged_like_one_an_operator_ended(db: &Db) {
    let t = a_town(db).await;
    let device_key = format!("device:{}", t.device);
    // One job cancelled by an operator, one cleared by the device.
    let by_operator = a_job(db, t.client, &t.device, EventKind::LowBattery, 1).await;
    step(db, by_operator, Action::Cancel, "operator:wang")
        .await
        .unwrap();
    let by_device = a_job(db, t.client, &t.device, EventKind::PowerCut, 2).await;
    let r = store(db, record(&t.device, 3, EventKind::PowerRestored, AT + 3)).await;
    db.apply_stage_work(
        &[StageWork::Clear {
            alarm_id: r,
            fold_key: &device_key,
            detail: "mains power is back",
        }],
        &[],
    )
    .await
    .unwrap();
    for id in [by_operator, by_device] {
        assert_eq!(db.incident_state(id).await.unwrap(), Some(State::Cancelled));
    }
    let closed_at = |records: &pingantong_store::ResidentRecords, id: i64| {
        records
            .incidents
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.closed_at)
            .expect("the resident's incident")
    };
    let records = db.resident_export(t.client).await.unwrap();
    assert!(closed_at(&records, by_operator).is_some());

    // Two days on, with a one-day period: both are past it.
    let later = pingantong_store::now_ms() + 2 * 86_400_000;
    let policy = RetentionPolicy {
        frames_days: 0,
        positions_days: 0,
        closed_incidents_days: 1,
    };
    let report = db
        .purge_expired(&policy, later, &mut PurgeCursor::default())
        .await
        .unwrap();
    assert!(db.timeline(by_operator).await.unwrap().is_empty());
    let kept = db.timeline(by_device).await.unwrap().len();
    assert!(
        report.incidents == 2 && kept == 0,
        "the job the device cleared (closed_at {:?}) kept {kept} timeline steps past the \
         retention period; {} of 2 ended incidents purged",
        closed_at(&records, by_device),
        report.incidents
    );
}

/// A batch is applied "as if one after another", each item idempotent: the
/// same alarm twice in one batch is, the second time, already processed —
/// as it is when it comes again in the next batch.
async fn an_alarm_handed_over_twice_in_one_batch_is_counted_once(db: &Db) {
    let t = a_town(db).await;
    let key = t.key();
    let alarm = store(db, record(&t.device, 1, EventKind::Sos, AT)).await;
    let work = StageWork::Incident {
        incident: press(alarm, &key, t.client, &t.device, "sos"),
        route: None,
    };
    let done = db.apply_stage_work(&[work, work], &[]).await.unwrap();
    let id = opened(&done[0]);
    let s = db.incident_summary(id).await.unwrap().unwrap();
    assert_eq!(
        (s.press_count, done[1].clone()),
        (
            1,
            StageDone::Incident {
                outcome: IncidentOutcome::AlreadyProcessed,
                route: None
            }
        ),
        "one alarm, timeline {:?}",
        db.incident_actions(id).await.unwrap()
    );
}
