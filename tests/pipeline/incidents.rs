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
    let id = eventually("the incident", || async {
        app.db
            .incidents_overview()
            .await
            .unwrap()
            .first()
            .map(|i| i.0)
    })
    .await;
    assert_eq!(
        app.db.incident_state(id).await.unwrap(),
        Some(State::Queued)
    );

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
