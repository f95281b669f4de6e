//! dispatch: carers' answers to offers and further offers, the family
//! notification cascade, and the wellbeing work list.

use pingantong_domain::{Action, State};
use pingantong_protocol::{EventKind, Location};
use pingantong_store::{
    AuditEntry, CarerAnswer, Cascade, Db, GaveUp, ImportedDispatch, ImportedIncident, NewContact,
    NewDispatch, NewIncident, OfferError, ReplyError, StageWork, Transition,
};

#[allow(unused_imports)]
use crate::both_backends;
use crate::incidents::{
    AT, DISTRICT, STREET, a_resident, a_town, an_sos, offer_to, opened, press, record, store,
};

both_backends!(
    a_carer_answers_an_offer_step_by_step,
    further_offers_go_to_carers_not_holding_one,
    an_offer_on_an_ended_incident_is_not_taken,
    family_notices_go_down_the_list_until_someone_is_reached,
    everyone_is_told_at_once_when_the_rule_says_so,
    the_wellbeing_list_names_residents_nobody_has_heard_from,
);

async fn a_carer_answers_an_offer_step_by_step(db: &Db) {
    let t = a_town(db).await;
    let id = an_sos(db, t.client, &t.device, 1).await;
    let d = db
        .record_route(id, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .unwrap();
    let lines = db.timeline(id).await.unwrap().len();

    // Refusals, each leaving the offer as it was.
    let answer = |dispatch, carer, a| db.apply_carer_answer(dispatch, carer, a, "");
    let e = answer(d + 100, t.near, CarerAnswer::Accept)
        .await
        .unwrap_err();
    assert!(matches!(e, ReplyError::NotFound(x) if x == d + 100), "{e}");
    let e = answer(d, t.far, CarerAnswer::Accept).await.unwrap_err();
    assert!(
        matches!(e, ReplyError::NotYours { dispatch, carer, owner }
            if (dispatch, carer, owner) == (d, t.far, t.near)),
        "{e}"
    );
    assert_eq!(e.kind(), "not_yours");
    for early in [CarerAnswer::Arrived, CarerAnswer::Completed] {
        let e = answer(d, t.near, early).await.unwrap_err();
        assert!(
            matches!(&e, ReplyError::OutOfOrder { dispatch, state, answer }
                if *dispatch == d && state == "offered" && *answer == early),
            "{e}"
        );
    }
    assert_eq!(
        db.dispatch_states(id).await.unwrap(),
        [(d, t.near, "offered".to_owned())]
    );
    assert_eq!(db.timeline(id).await.unwrap().len(), lines);

    // Accepted: on the timeline and in the audit chain, the carer busy.
    assert_eq!(
        db.apply_carer_answer(d, t.near, CarerAnswer::Accept, "on my way")
            .await
            .unwrap(),
        (id, true)
    );
    assert_eq!(
        db.dispatch_states(id).await.unwrap(),
        [(d, t.near, "accepted".to_owned())]
    );
    let carer = db.carer(t.near).await.unwrap().unwrap();
    assert_eq!(
        (
            carer.id,
            carer.provider_id,
            carer.name.as_str(),
            carer.on_duty,
            carer.busy
        ),
        (t.near, t.provider, "李护工", true, true)
    );
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.actor, last.action, last.detail),
        (
            format!("carer:{}", t.near),
            "carer_accepted".to_owned(),
            format!("dispatch {d}: on my way")
        )
    );
    let subject = format!("dispatch:{d}");
    let trail = db.audit_trail(Some(&subject), 10).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(
        (
            trail[0].actor.clone(),
            trail[0].action.as_str(),
            trail[0].detail.clone()
        ),
        (
            format!("carer:{}", t.near),
            "carer_accepted",
            format!("incident {id}: on my way")
        )
    );

    // Said twice: harmless, and written once.
    assert_eq!(
        answer(d, t.near, CarerAnswer::Accept).await.unwrap(),
        (id, false)
    );
    assert_eq!(db.timeline(id).await.unwrap().len(), lines + 1);
    assert_eq!(db.audit_trail(Some(&subject), 10).await.unwrap().len(), 1);
    // Too late to decline.
    assert!(matches!(
        answer(d, t.near, CarerAnswer::Decline).await,
        Err(ReplyError::OutOfOrder { .. })
    ));

    assert_eq!(
        answer(d, t.near, CarerAnswer::Arrived).await.unwrap(),
        (id, true)
    );
    assert_eq!(
        answer(d, t.near, CarerAnswer::Completed).await.unwrap(),
        (id, true)
    );
    assert_eq!(
        db.dispatch_states(id).await.unwrap(),
        [(d, t.near, "completed".to_owned())]
    );
    assert!(!db.carer(t.near).await.unwrap().unwrap().busy);
    let actions = db.incident_actions(id).await.unwrap();
    assert_eq!(
        actions[actions.len() - 3..],
        ["carer_accepted", "carer_arrived", "carer_completed"]
    );
    assert_eq!(db.audit_trail(Some(&subject), 10).await.unwrap().len(), 3);
    assert_eq!(db.carers_passed_over(id).await.unwrap(), [t.near]);
    assert!(db.carer(t.far + 100).await.unwrap().is_none());
}

async fn further_offers_go_to_carers_not_holding_one(db: &Db) {
    let t = a_town(db).await;
    let id = an_sos(db, t.client, &t.device, 1).await;
    assert_eq!(db.incident_client(id).await.unwrap(), Some(t.client));
    assert_eq!(db.incident_kind(id).await.unwrap().as_deref(), Some("sos"));
    assert_eq!(db.incident_client(id + 100).await.unwrap(), None);
    assert_eq!(db.incident_kind(id + 100).await.unwrap(), None);
    assert!(db.carers_passed_over(id).await.unwrap().is_empty());

    let d1 = db
        .record_route(id, Some(&offer_to(t.near, t.provider)), AT + 90_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        db.apply_carer_answer(d1, t.near, CarerAnswer::Decline, "at another job")
            .await
            .unwrap(),
        (id, true)
    );
    assert!(!db.carer(t.near).await.unwrap().unwrap().busy);

    // The next carer, from a fallback provider.
    let fallback = NewDispatch {
        fallback: true,
        distance_m: Some(2_400.0),
        ..offer_to(t.far, t.provider)
    };
    let d2 = db
        .add_offer(id, &fallback, AT + 120_000, "system", "after a decline")
        .await
        .unwrap();
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.detail.clone()
        ),
        (
            "system",
            "carer_offered",
            format!(
                "dispatch {d2}: carer {} of provider {} (fallback provider) (after a decline)",
                t.far, t.provider
            )
        )
    );
    let due = db.due_timers(AT + 120_000, 10).await.unwrap();
    assert!(
        due.iter()
            .any(|x| x.dispatch_id == Some(d2) && x.due_at == AT + 120_000),
        "{due:?}"
    );
    // At most one live offer per carer per incident.
    let e = db
        .add_offer(
            id,
            &offer_to(t.far, t.provider),
            AT,
            "operator:wang",
            "again",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OfferError::AlreadyHeld { carer, incident, dispatch, state }
            if (*carer, *incident, *dispatch, state.as_str()) == (t.far, id, d2, "offered")),
        "{e}"
    );
    let mut asked = db.carers_passed_over(id).await.unwrap();
    asked.sort();
    assert_eq!(asked, [t.near, t.far]);
    assert_eq!(
        db.dispatch_states(id).await.unwrap(),
        [
            (d1, t.near, "declined".to_owned()),
            (d2, t.far, "offered".to_owned())
        ]
    );
    // A carer who declined may be asked again by an operator.
    let d3 = db
        .add_offer(
            id,
            &offer_to(t.near, t.provider),
            AT,
            "operator:wang",
            "nobody else",
        )
        .await
        .unwrap();
    assert_eq!(db.dispatch_states(id).await.unwrap().len(), 3);
    assert!(matches!(
        db.add_offer(id + 100, &offer_to(t.near, t.provider), AT, "system", "x").await,
        Err(OfferError::NotFound(x)) if x == id + 100
    ));

    // Over: no more offers, and the ones out are taken back.
    let cancel = Transition {
        incident_id: id,
        action: Action::Cancel,
        actor: "operator:wang",
        detail: "",
        outcome: Some("duplicate"),
        merged_into: None,
        take_over: false,
    };
    db.transition(&cancel).await.unwrap();
    let e = db
        .add_offer(
            id,
            &offer_to(t.near, t.provider),
            AT,
            "operator:wang",
            "late",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OfferError::Ended { incident, state } if *incident == id && state == "cancelled"),
        "{e}"
    );
    for (d, carer) in [(d2, t.far), (d3, t.near)] {
        let e = db
            .apply_carer_answer(d, carer, CarerAnswer::Accept, "")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ReplyError::Withdrawn { dispatch, incident, incident_state }
                if (*dispatch, *incident, incident_state.as_str()) == (d, id, "cancelled")),
            "{e}"
        );
        assert_eq!(e.kind(), "withdrawn");
    }
    assert!(!db.carer(t.far).await.unwrap().unwrap().busy);
}

/// An offer left standing on an incident that is over (as an older server,
/// or an import, left them) cannot be accepted.
async fn an_offer_on_an_ended_incident_is_not_taken(db: &Db) {
    let t = a_town(db).await;
    let ids = db
        .import_incident_history(&[ImportedIncident {
            source_ref: "legacy-7".into(),
            client_id: Some(t.client),
            device_id: t.device.clone(),
            kind: "sos".into(),
            lane: "life_safety".into(),
            state: State::Closed,
            outcome: Some("help_given".into()),
            claimed_by: Some("operator:old".into()),
            device_time: None,
            received_at: AT,
            opened_at: AT + 100,
            closed_at: Some(AT + 600_000),
            events: Vec::new(),
            dispatches: vec![ImportedDispatch {
                carer_id: t.near,
                provider_id: t.provider,
                state: "offered".into(),
                fallback: false,
                offered_at: AT + 1_000,
                accepted_at: None,
                arrived_at: None,
            }],
        }])
        .await
        .unwrap();
    let id = ids[0];
    let (d, carer, state) = db.dispatch_states(id).await.unwrap().remove(0);
    assert_eq!((carer, state.as_str()), (t.near, "offered"));
    let e = db
        .apply_carer_answer(d, t.near, CarerAnswer::Accept, "")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ReplyError::IncidentEnded { dispatch, incident, incident_state, answer }
            if (*dispatch, *incident, incident_state.as_str(), *answer)
                == (d, id, "closed", CarerAnswer::Accept)),
        "{e}"
    );
    assert_eq!(e.kind(), "incident_ended");
    assert_eq!(db.dispatch_states(id).await.unwrap()[0].2, "offered");
    assert!(!db.carer(t.near).await.unwrap().unwrap().busy);
    // Saying no to it is still heard.
    assert_eq!(
        db.apply_carer_answer(d, t.near, CarerAnswer::Decline, "")
            .await
            .unwrap(),
        (id, true)
    );
}

/// A contact of `client` at `position`, told by `notify` (`None`: phoned).
async fn a_contact(
    db: &Db,
    client: i64,
    position: i64,
    name: &str,
    relation: &str,
    notify: Option<(&str, &str)>,
) {
    db.insert_contact(&NewContact {
        client_id: client,
        position,
        name: name.into(),
        relation: relation.into(),
        phone: format!("1390000000{position}"),
        notify: notify.map(|(c, a)| (c.into(), a.into())),
    })
    .await
    .unwrap();
}

/// An SOS of the resident that starts the family cascade, its first notices
/// due at `notify_at`; the alarm says where she is.
async fn an_sos_telling_the_family(
    db: &Db,
    client: i64,
    device: &str,
    cascade: Cascade,
    notify_at: i64,
) -> i64 {
    let mut r = record(device, 1, EventKind::Sos, AT);
    r.location = Some(Location {
        lat: 23.1400,
        lon: 113.2700,
        accuracy_m: None,
    });
    let alarm = store(db, r).await;
    let key = format!("client:{client}");
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: NewIncident {
                    notify: Some(cascade),
                    notify_at,
                    ..press(alarm, &key, client, device, "sos")
                },
                route: None,
            }],
            &[],
        )
        .await
        .unwrap();
    opened(&done[0])
}

/// (contact position, status, attempts) of an incident's notices.
async fn notices(db: &Db, incident: i64) -> Vec<(i64, String, i64)> {
    db.notifications_of(incident)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.position, n.status, n.attempts))
        .collect()
}

async fn family_notices_go_down_the_list_until_someone_is_reached(db: &Db) {
    let t = a_town(db).await;
    a_contact(
        db,
        t.client,
        1,
        "陈志强",
        "son",
        Some(("mqtt", "family/zq")),
    )
    .await;
    a_contact(
        db,
        t.client,
        2,
        "陈美玲",
        "daughter",
        Some(("email", "ml@example.cn")),
    )
    .await;
    // Phoned by the operator, never sent a notice.
    a_contact(db, t.client, 3, "刘阿姨", "neighbour", None).await;
    let n = AT + 1_000;
    let id = an_sos_telling_the_family(db, t.client, &t.device, Cascade::UntilReached, n).await;

    assert_eq!(
        notices(db, id).await,
        [(1, "pending".to_owned(), 0), (2, "waiting".to_owned(), 0)]
    );
    assert!(
        db.begin_notification_attempts(n - 1, n + 30_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let jobs = db
        .begin_notification_attempts(n, n + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(
        (
            j.incident_id,
            j.channel.as_str(),
            j.address.as_str(),
            j.attempts,
            j.contact_name.as_str(),
            j.relation.as_str(),
            j.client_name.as_str(),
            j.kind.as_str()
        ),
        (id, "mqtt", "family/zq", 1, "陈志强", "son", "陈秀英", "sos")
    );
    assert!(j.client_address.contains(STREET), "{}", j.client_address);
    assert_eq!(
        (j.home_lat, j.home_lon, j.device_lat, j.device_lon),
        (
            Some(crate::incidents::HOME.0),
            Some(crate::incidents::HOME.1),
            Some(23.1400),
            Some(113.2700)
        )
    );
    assert!(j.opened_at > 0);
    // Leased: not taken again before the lease runs out.
    assert!(
        db.begin_notification_attempts(n + 29_999, n + 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A failed attempt is tried again when it says.
    db.notification_retry(j.id, n + 5_000, "broker unreachable")
        .await
        .unwrap();
    let row = db.notifications_of(id).await.unwrap().remove(0);
    assert_eq!(
        (row.status.as_str(), row.last_error.as_deref()),
        ("pending", Some("broker unreachable"))
    );
    let jobs = db
        .begin_notification_attempts(n + 5_000, n + 30_000, 10)
        .await
        .unwrap();
    assert_eq!((jobs.len(), jobs[0].id, jobs[0].attempts), (1, j.id, 2));

    // Given up: on the timeline, and the next on the list is due.
    assert_eq!(
        db.notification_gave_up(&jobs[0], "broker unreachable", n + 6_000)
            .await
            .unwrap(),
        GaveUp::NextContact
    );
    assert_eq!(
        notices(db, id).await,
        [(1, "failed".to_owned(), 2), (2, "pending".to_owned(), 0)]
    );
    let last = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.as_str()),
        (
            "family_notice_failed",
            "陈志强 (son) not reached by mqtt after 2 attempts: broker unreachable"
        )
    );
    // Settled already: giving up again changes nothing.
    assert_eq!(
        db.notification_gave_up(&jobs[0], "again", n + 7_000)
            .await
            .unwrap(),
        GaveUp::OthersPending
    );
    assert_eq!(db.timeline(id).await.unwrap().pop().unwrap(), last);

    assert!(
        db.begin_notification_attempts(n + 5_999, n + 30_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let jobs = db
        .begin_notification_attempts(n + 6_000, n + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(
        (
            jobs.len(),
            jobs[0].contact_name.as_str(),
            jobs[0].channel.as_str()
        ),
        (1, "陈美玲", "email")
    );
    db.notifications_delivered(&jobs).await.unwrap();
    db.notifications_delivered(&[]).await.unwrap();
    let rows = db.notifications_of(id).await.unwrap();
    assert_eq!(rows[1].status, "delivered");
    assert!(rows[1].delivered_at.is_some());
    assert_eq!(rows[1].last_error, None);
    let told = db.timeline(id).await.unwrap().pop().unwrap();
    assert_eq!(
        (told.action.as_str(), told.detail.as_str()),
        ("family_notified", "陈美玲 (daughter) told by email")
    );
    // Told once: a second report of the same delivery writes nothing.
    db.notifications_delivered(&jobs).await.unwrap();
    assert_eq!(db.timeline(id).await.unwrap().pop().unwrap(), told);
    assert!(
        db.begin_notification_attempts(i64::MAX, i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn everyone_is_told_at_once_when_the_rule_says_so(db: &Db) {
    let t = a_town(db).await;
    a_contact(
        db,
        t.client,
        1,
        "陈志强",
        "son",
        Some(("webhook", "https://example.cn/a")),
    )
    .await;
    a_contact(
        db,
        t.client,
        2,
        "陈美玲",
        "daughter",
        Some(("email", "ml@example.cn")),
    )
    .await;
    a_contact(
        db,
        t.client,
        3,
        "陈小明",
        "grandson",
        Some(("mqtt", "family/xm")),
    )
    .await;
    let n = AT + 1_000;
    let id = an_sos_telling_the_family(db, t.client, &t.device, Cascade::Everyone, n).await;
    assert_eq!(
        notices(db, id).await,
        [
            (1, "pending".to_owned(), 0),
            (2, "pending".to_owned(), 0),
            (3, "pending".to_owned(), 0)
        ]
    );
    // Taken in due order, up to the limit.
    let first = db
        .begin_notification_attempts(n, n + 30_000, 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let rest = db
        .begin_notification_attempts(n, n + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    let mut jobs: Vec<_> = first.into_iter().chain(rest).collect();
    jobs.sort_by_key(|j| j.contact_id);

    // One reached: the others are still tried, and not skipped.
    db.notifications_delivered(&jobs[..1]).await.unwrap();
    assert_eq!(
        notices(db, id).await,
        [
            (1, "delivered".to_owned(), 1),
            (2, "pending".to_owned(), 1),
            (3, "pending".to_owned(), 1)
        ]
    );
    assert_eq!(
        db.notification_gave_up(&jobs[1], "mailbox full", n + 9_000)
            .await
            .unwrap(),
        GaveUp::OthersPending
    );
    assert_eq!(
        db.notification_gave_up(&jobs[2], "no such topic", n + 9_000)
            .await
            .unwrap(),
        GaveUp::OthersPending
    );
    assert!(
        !db.incident_actions(id)
            .await
            .unwrap()
            .contains(&"family_not_reached".to_owned())
    );

    // Nobody reached at all: the operator is told to telephone them.
    let (client, device) = a_resident(db, "王桂兰", DISTRICT, STREET).await;
    a_contact(db, client, 1, "王建国", "son", Some(("mqtt", "family/jg"))).await;
    a_contact(
        db,
        client,
        2,
        "王丽",
        "daughter",
        Some(("email", "wl@example.cn")),
    )
    .await;
    let other = an_sos_telling_the_family(db, client, &device, Cascade::Everyone, n).await;
    let jobs = db
        .begin_notification_attempts(n, n + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.incident_id == other));
    let outcomes = [
        db.notification_gave_up(&jobs[0], "offline", n + 9_000)
            .await
            .unwrap(),
        db.notification_gave_up(&jobs[1], "bounced", n + 9_000)
            .await
            .unwrap(),
    ];
    assert_eq!(outcomes, [GaveUp::OthersPending, GaveUp::NobodyReached]);
    let last = db.timeline(other).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.as_str()),
        (
            "family_not_reached",
            "nobody on the contact list could be reached: telephone them"
        )
    );

    // An unverified sender's alarm tells nobody.
    let mut r = record(&device, 9, EventKind::Sos, AT);
    r.auth = pingantong_store::AuthStatus::BadTag;
    let alarm = store(db, r).await;
    let key = format!("unverified:{device}");
    let done = db
        .apply_stage_work(
            &[StageWork::Incident {
                incident: NewIncident {
                    verified: false,
                    notify: Some(Cascade::Everyone),
                    ..press(alarm, &key, client, &device, "sos")
                },
                route: None,
            }],
            &[],
        )
        .await
        .unwrap();
    assert!(
        db.notifications_of(opened(&done[0]))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_wellbeing_list_names_residents_nobody_has_heard_from(db: &Db) {
    let (_, used_device) = a_resident(db, "陈秀英", DISTRICT, STREET).await;
    let (silent, silent_device) = a_resident(db, "王桂兰", DISTRICT, "人民街").await;
    let (never, _) = a_resident(db, "李淑珍", DISTRICT, STREET).await;
    let (away, _) = a_resident(db, "赵玉兰", DISTRICT, STREET).await;
    db.set_client_away(away, Some(AT + 86_400_000))
        .await
        .unwrap();
    // A resident without a device is nobody's to call.
    db.insert_client(&crate::incidents::new_client("孙桂英", DISTRICT, STREET))
        .await
        .unwrap();

    // The latest use counts, also within one call; an older one changes nothing.
    db.mark_used(&[
        (used_device.clone(), 50_000),
        (silent_device.clone(), 1_000),
        (silent_device.clone(), 500),
    ])
    .await
    .unwrap();
    db.mark_used(&[(silent_device.clone(), 200), ("PA-NOBODY".into(), 9)])
        .await
        .unwrap();
    db.mark_used(&[]).await.unwrap();

    let cutoff = 10_000;
    let list = db.wellbeing_list(cutoff, AT, 100).await.unwrap();
    let seen: Vec<(i64, Option<i64>)> =
        list.iter().map(|w| (w.client_id, w.last_used_at)).collect();
    // Never used first, then the longest silence.
    assert_eq!(seen, [(never, None), (silent, Some(1_000))]);
    assert_eq!(
        (
            list[1].name.as_str(),
            list[1].district.as_str(),
            list[1].street.as_str()
        ),
        ("王桂兰", DISTRICT, "人民街")
    );
    assert_eq!(
        (list[1].last_check_at, list[1].last_outcome.clone()),
        (None, None)
    );
    assert_eq!(
        db.wellbeing_list(cutoff, AT, 1).await.unwrap()[..],
        list[..1]
    );
    // Back home: listed again.
    let later = AT + 2 * 86_400_000;
    assert_eq!(
        db.wellbeing_list(cutoff, later, 100).await.unwrap().len(),
        3
    );

    // A call made takes the resident off the list, with its audit entry.
    let subject = format!("client:{never}");
    let audit = AuditEntry {
        actor: "user:wang",
        action: "wellbeing_check",
        subject: &subject,
        detail: "well",
    };
    assert!(
        db.record_wellbeing_check(never, "operator:wang", "well", "she was gardening", &audit)
            .await
            .unwrap()
    );
    let seen: Vec<i64> = db
        .wellbeing_list(cutoff, AT, 100)
        .await
        .unwrap()
        .iter()
        .map(|w| w.client_id)
        .collect();
    assert_eq!(seen, [silent]);
    let trail = db.audit_trail(Some(&subject), 10).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].action, "wellbeing_check");
    // With a cut-off after the call, the call is what the list shows.
    let now = pingantong_store::now_ms();
    let late = db.wellbeing_list(now + 3_600_000, AT, 100).await.unwrap();
    let called = late.iter().find(|w| w.client_id == never).unwrap();
    assert!(called.last_check_at.is_some_and(|at| at <= now + 1_000));
    assert_eq!(called.last_outcome.as_deref(), Some("well"));
    assert_eq!(late.len(), 3, "{late:?}");

    // No such resident, or an outcome not on the list: nothing written.
    let entries = db.audit_trail(None, 1_000).await.unwrap().len();
    assert!(
        !db.record_wellbeing_check(never + 100, "operator:wang", "well", "", &audit)
            .await
            .unwrap()
    );
    assert!(
        db.record_wellbeing_check(silent, "operator:wang", "fine", "", &audit)
            .await
            .is_err()
    );
    assert_eq!(db.audit_trail(None, 1_000).await.unwrap().len(), entries);
    assert!(
        db.wellbeing_list(cutoff, AT, 100)
            .await
            .unwrap()
            .iter()
            .any(|w| w.client_id == silent)
    );
}
