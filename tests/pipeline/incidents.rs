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
