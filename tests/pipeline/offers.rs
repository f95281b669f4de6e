//! Offers end with their incident: withdrawn in the same step, the carer told
//! on MQTT, late answers refused, deadlines silent; one live offer per carer
//! per incident; a job goes accepted → arrived → completed; another
//! operator's incident is ended only by taking it over; a call for help is
//! cancelled only with a reason; carers are ranked from where the alarm was.

use std::time::Duration;

use pingantong::domain::{Action, Role, State};
use pingantong::store::{
    CarerAnswer, Db, NewDispatch, OfferCheck, OfferError, ReplyError, Transition, TransitionError,
};
use pingantong_protocol::{EventKind, Location};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A server on a hand-moved clock with the small city, two operators
/// (`op.li`, `op.wang`) and the carers' accounts signed in, and a phone
/// listening to every carer's dispatch topic.
struct Scene {
    clock: ManualClock,
    app: TestApp,
    city: City,
    api: Api,
    li: String,
    wang: String,
    near: String,
    far: String,
    probe: MqttProbe,
    prefix: String,
}

async fn scene(backend: Backend) -> Scene {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = test_settings(backend, Broker::Embedded, dir.path());
    let prefix = s.mqtt.topic_prefix.clone();
    let app = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    let city = seed_small_city(&app.db).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    add_user(&app.db, "op.wang", Role::Operator).await;
    add_carer_user(&app.db, "carer.near", city.near_carer).await;
    add_carer_user(&app.db, "carer.far", city.far_carer).await;
    let api = Api::of(&app);
    let (li, wang) = (api.token("op.li").await, api.token("op.wang").await);
    let (near, far) = (api.token("carer.near").await, api.token("carer.far").await);
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(&host, port, &[format!("{prefix}/v1/carers/+/dispatch")]).await;
    Scene {
        clock,
        app,
        city,
        api,
        li,
        wang,
        near,
        far,
        probe,
        prefix,
    }
}

impl Scene {
    /// Messages of `kind` (`offer`, `withdrawn`) on a carer's dispatch topic.
    fn messages(&self, carer: i64, kind: &str) -> Vec<Value> {
        self.probe
            .on(&format!("{}/v1/carers/{carer}/dispatch", self.prefix))
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }

    /// The withdrawal of `dispatch` as the carer's phone received it.
    async fn withdrawal(&self, carer: i64, dispatch: i64) -> Value {
        eventually("the withdrawal on the carer's topic", || async {
            self.messages(carer, "withdrawn")
                .into_iter()
                .find(|m| m["dispatch_id"] == dispatch)
        })
        .await
    }

    /// A press from the resident's pendant at `at`; the incident and the
    /// automatic offer (carer, dispatch) once it is on the phone.
    async fn press(&self, kind: EventKind, at: (f64, f64)) -> (i64, i64, i64) {
        let mut e = event(&self.city.device, 1, kind);
        e.location = Some(Location {
            lat: at.0,
            lon: at.1,
            accuracy_m: Some(10),
        });
        let mut dev = Device::connect(self.app.native).await;
        dev.send(&e, &self.city.secret).await;
        let offer = eventually("the automatic offer on a phone", || async {
            self.probe
                .received
                .lock()
                .unwrap()
                .iter()
                .find(|(_, m)| m["type"] == "offer")
                .map(|(_, m)| m.clone())
        })
        .await;
        (
            offer["incident_id"].as_i64().unwrap(),
            offer["carer_id"].as_i64().unwrap(),
            offer["dispatch_id"].as_i64().unwrap(),
        )
    }

    /// An SOS at home, offered to the near carer.
    async fn sos(&self) -> (i64, i64) {
        let (incident, carer, dispatch) = self.press(EventKind::Sos, HOME).await;
        assert_eq!(carer, self.city.near_carer);
        (incident, dispatch)
    }

    async fn step(
        &self,
        token: &str,
        incident: i64,
        step: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.api
            .post(&format!("/api/v1/incidents/{incident}/{step}"), token, body)
            .await
    }

    async fn answer(&self, token: &str, dispatch: i64, action: &str) -> (StatusCode, Value) {
        self.api
            .post(
                &format!("/api/v1/dispatches/{dispatch}/answer"),
                token,
                json!({"action": action, "outcome": "help_given"}),
            )
            .await
    }

    async fn dispatches(&self, incident: i64) -> Vec<(i64, i64, String)> {
        self.app.db.dispatch_states(incident).await.unwrap()
    }
}

/// The resident's home (seed_small_city).
const HOME: (f64, f64) = (23.1291, 113.2644);

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// Resolve and close with the offer pending: the carer is told, the offer's
/// deadline offers it to nobody, a late accept (HTTP or MQTT) is refused.
async fn an_ended_incident_takes_its_offer_back(backend: Backend) {
    let sc = scene(backend).await;
    let (incident, dispatch) = sc.sos().await;
    for (step, body) in [
        ("claim", json!({})),
        ("resolve", json!({})),
        ("close", json!({"outcome": "help_given"})),
    ] {
        let (status, body) = sc.step(&sc.li, incident, step, body).await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
    }
    let w = sc.withdrawal(sc.city.near_carer, dispatch).await;
    assert_eq!(w["v"], 1);
    assert_eq!(w["incident_id"], incident);
    assert_eq!(w["carer_id"], sc.city.near_carer);
    // Taken back as it was resolved; sent then, or by the sweep after the close.
    assert!(
        ["incident_resolved", "incident_closed"].contains(&w["reason"].as_str().unwrap()),
        "{w}"
    );
    assert_eq!(
        sc.dispatches(incident).await,
        [(dispatch, sc.city.near_carer, "withdrawn".to_owned())]
    );
    let actions = sc.app.db.incident_actions(incident).await.unwrap();
    let at = |a: &str| actions.iter().position(|x| x == a).unwrap();
    assert!(at("resolve") < at("offer_withdrawn"), "{actions:?}");

    // The offer's deadline passes, and the claim's: a sweep fires what is
    // due and nobody else is asked.
    sc.clock.advance(Duration::from_secs(120));
    eventually("the deadlines due fired", || async {
        sc.app
            .db
            .due_timers(sc.clock.now(), 10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(sc.dispatches(incident).await.len(), 1, "no further offer");
    assert!(sc.messages(sc.city.far_carer, "offer").is_empty());

    // A late accept over HTTP: refused with the reason.
    let (status, body) = sc.answer(&sc.near, dispatch, "accept").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("withdrawn"), "{body}");
    assert!(error_of(&body).contains("closed"), "{body}");
    // …and over MQTT: refused, counted by reason, nothing changes.
    sc.probe
        .publish(
            &format!("{}/v1/carers/{}/reply", sc.prefix, sc.city.near_carer),
            json!({"v": 1, "dispatch_id": dispatch, "action": "accept"}),
        )
        .await;
    eventually("the refusal on the metrics", || async {
        let (_, metrics) = http_get(sc.app.addrs.http, "/metrics").await;
        metrics
            .contains("pat_carer_replies_refused_total{reason=\"withdrawn\"}")
            .then_some(())
    })
    .await;
    assert_eq!(
        sc.app.db.incident_state(incident).await.unwrap(),
        Some(State::Closed)
    );
    assert_eq!(sc.dispatches(incident).await[0].2, "withdrawn");
    assert!(
        !sc.app
            .db
            .carer(sc.city.near_carer)
            .await
            .unwrap()
            .unwrap()
            .busy
    );
    // The job list says so for a while, without her medical details.
    let (status, jobs) = sc.api.get("/api/v1/carer/jobs", Some(&sc.near)).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert_eq!(jobs[0]["dispatch_id"], dispatch, "{jobs}");
    assert_eq!(jobs[0]["state"], "withdrawn");
    assert_eq!(jobs[0]["medical_notes"], "");
    sc.app.stop().await;
}

#[tokio::test]
async fn an_ended_incident_takes_its_offer_back_sqlite() {
    an_ended_incident_takes_its_offer_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_ended_incident_takes_its_offer_back_postgres() {
    an_ended_incident_takes_its_offer_back(Backend::Postgres).await;
}

/// A call for help is cancelled only with a reason from the list and a
/// confirmation; the carer already on the way is told to turn back.
async fn a_cancel_needs_a_reason_and_turns_the_carer_back(backend: Backend) {
    let sc = scene(backend).await;
    let (incident, dispatch) = sc.sos().await;
    let (status, body) = sc.answer(&sc.near, dispatch, "accept").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        sc.app
            .db
            .carer(sc.city.near_carer)
            .await
            .unwrap()
            .unwrap()
            .busy
    );
    let (status, body) = sc.step(&sc.li, incident, "claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for (body, want, says) in [
        (json!({}), StatusCode::BAD_REQUEST, "reason"),
        (
            json!({"detail": "她说按错了"}),
            StatusCode::BAD_REQUEST,
            "reason",
        ),
        (
            json!({"reason": "resident_false_alarm"}),
            StatusCode::BAD_REQUEST,
            "confirm",
        ),
        (
            json!({"reason": "resident_false_alarm", "confirm": false}),
            StatusCode::BAD_REQUEST,
            "confirm",
        ),
        (
            json!({"reason": "she is fine", "confirm": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "resident_false_alarm",
        ),
    ] {
        let (status, answer) = sc.step(&sc.li, incident, "cancel", body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(error_of(&answer).contains(says), "{body}: {answer}");
    }
    // The store holds the rule for any caller, not only the API.
    let err = sc
        .app
        .db
        .transition(&Transition {
            incident_id: incident,
            action: Action::Cancel,
            actor: "operator:op.li",
            detail: "",
            outcome: Some("false_alarm"),
            merged_into: None,
            take_over: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransitionError::CancelReasonNeeded { .. }),
        "{err}"
    );
    assert_eq!(sc.dispatches(incident).await[0].2, "accepted");

    let (status, body) = sc
        .step(
            &sc.li,
            incident,
            "cancel",
            json!({"reason": "resident_false_alarm", "confirm": true, "detail": "她说按错了"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    let w = sc.withdrawal(sc.city.near_carer, dispatch).await;
    assert_eq!(w["reason"], "incident_cancelled");
    let summary = sc.app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.outcome.as_deref(), Some("resident_false_alarm"));
    assert_eq!(sc.dispatches(incident).await[0].2, "withdrawn");
    assert!(
        !sc.app
            .db
            .carer(sc.city.near_carer)
            .await
            .unwrap()
            .unwrap()
            .busy,
        "free again"
    );
    let (status, body) = sc.answer(&sc.near, dispatch, "arrived").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("withdrawn"), "{body}");
    sc.app.stop().await;
}

#[tokio::test]
async fn a_cancel_needs_a_reason_and_turns_the_carer_back_sqlite() {
    a_cancel_needs_a_reason_and_turns_the_carer_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_cancel_needs_a_reason_and_turns_the_carer_back_postgres() {
    a_cancel_needs_a_reason_and_turns_the_carer_back(Backend::Postgres).await;
}

/// Insert a second live offer for the same carer, bypassing the server's
/// checks: the database's own index refuses it.
async fn raw_second_offer(db: &Db, incident: i64, carer: i64, provider: i64) -> bool {
    const SQL: &str = "INSERT INTO dispatches (incident_id, carer_id, provider_id, fallback, \
                       state, offered_at, updated_at) VALUES ($1, $2, $3, FALSE, 'offered', 1, 1)";
    match db {
        Db::Sqlite { write, .. } => sqlx::query(SQL)
            .bind(incident)
            .bind(carer)
            .bind(provider)
            .execute(write)
            .await
            .is_ok(),
        Db::Postgres(p, _) => sqlx::query(SQL)
            .bind(incident)
            .bind(carer)
            .bind(provider)
            .execute(p)
            .await
            .is_ok(),
    }
}

/// The operator's dispatch to the carer who holds the automatic offer is
/// refused; the console does not suggest them; the carer's job goes
/// accepted → arrived → completed, and completing it takes the other
/// carer's offer back.
async fn one_live_offer_per_carer_and_a_job_in_order(backend: Backend) {
    let sc = scene(backend).await;
    let (incident, dispatch) = sc.sos().await;
    let (status, body) = sc.step(&sc.li, incident, "claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, carers) = sc
        .api
        .get(
            &format!("/api/v1/incidents/{incident}/carers"),
            Some(&sc.li),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{carers}");
    let suggested: Vec<i64> = carers
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["carer_id"].as_i64().unwrap())
        .collect();
    assert_eq!(suggested[0], sc.city.far_carer, "{carers}");
    assert!(!suggested.contains(&sc.city.near_carer), "{carers}");

    let owned = sc;
    let sc = &owned;
    let dispatch_to = |carer: i64| async move {
        sc.step(&sc.li, incident, "dispatch", json!({"carer_id": carer}))
            .await
    };
    let (status, body) = dispatch_to(sc.city.near_carer).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error_of(&body).contains(&format!("already holds dispatch {dispatch}")),
        "{body}"
    );
    // The store refuses it for any caller, and the database for any writer.
    let carer = sc.app.db.carer(sc.city.near_carer).await.unwrap().unwrap();
    let again = NewDispatch {
        carer_id: carer.id,
        provider_id: carer.provider_id,
        distance_m: None,
        fallback: false,
    };
    let err = sc
        .app
        .db
        .add_offer(incident, &again, i64::MAX, "operator:op.li", "test")
        .await
        .unwrap_err();
    assert!(matches!(err, OfferError::AlreadyHeld { .. }), "{err}");
    assert!(!raw_second_offer(&sc.app.db, incident, carer.id, carer.provider_id).await);
    assert_eq!(sc.dispatches(incident).await.len(), 1);

    let (status, body) = dispatch_to(sc.city.far_carer).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let far_dispatch = body["dispatch_id"].as_i64().unwrap();

    // Completed before arrived is refused.
    let (status, body) = sc.answer(&sc.near, dispatch, "accept").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = sc.answer(&sc.near, dispatch, "completed").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("arrived"), "{body}");
    assert_eq!(
        sc.app.db.incident_state(incident).await.unwrap(),
        Some(State::CarerAccepted)
    );
    for action in ["arrived", "completed"] {
        let (status, body) = sc.answer(&sc.near, dispatch, action).await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }
    assert_eq!(
        sc.app.db.incident_state(incident).await.unwrap(),
        Some(State::Resolved)
    );
    // The far carer's offer ended with the job.
    let w = sc.withdrawal(sc.city.far_carer, far_dispatch).await;
    assert_eq!(w["reason"], "incident_resolved");
    assert_eq!(
        sc.dispatches(incident).await,
        [
            (dispatch, sc.city.near_carer, "completed".to_owned()),
            (far_dispatch, sc.city.far_carer, "withdrawn".to_owned()),
        ]
    );
    let (status, body) = sc.answer(&sc.far, far_dispatch, "accept").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    owned.app.stop().await;
}

#[tokio::test]
async fn one_live_offer_per_carer_and_a_job_in_order_sqlite() {
    one_live_offer_per_carer_and_a_job_in_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn one_live_offer_per_carer_and_a_job_in_order_postgres() {
    one_live_offer_per_carer_and_a_job_in_order(Backend::Postgres).await;
}

/// Ending an incident another operator holds needs an explicit take-over,
/// which the timeline and the audit log record.
async fn another_operators_incident_is_taken_over_explicitly(backend: Backend) {
    let sc = scene(backend).await;
    let (incident, _) = sc.sos().await;
    let (status, body) = sc.step(&sc.li, incident, "claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (step, body) in [
        ("resolve", json!({})),
        ("resolve", json!({"take_over": false})),
        ("cancel", json!({"reason": "duplicate", "confirm": true})),
    ] {
        let (status, answer) = sc.step(&sc.wang, incident, step, body.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{step} {body}: {answer}");
        assert!(error_of(&answer).contains("operator:op.li"), "{answer}");
        assert!(error_of(&answer).contains("take_over"), "{answer}");
    }
    assert_eq!(
        sc.app.db.incident_state(incident).await.unwrap(),
        Some(State::Claimed)
    );
    let (status, body) = sc
        .step(&sc.wang, incident, "resolve", json!({"take_over": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "resolved");
    let summary = sc.app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.claimed_by.as_deref(), Some("operator:op.wang"));
    let timeline = sc.app.db.timeline(incident).await.unwrap();
    let took = timeline
        .iter()
        .find(|e| e.action == "take_over")
        .expect("the take-over on the timeline");
    assert_eq!(took.actor, "operator:op.wang");
    assert!(took.detail.contains("operator:op.li"), "{took:?}");
    let audit = sc.app.db.audit_trail(None, 1000).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "incident_take_over"
            && e.actor == "user:op.wang"
            && e.subject == format!("incident:{incident}")
            && e.detail.contains("operator:op.li")),
        "{audit:?}"
    );
    // Their own incident now: closed without a further take-over.
    let (status, body) = sc
        .step(
            &sc.wang,
            incident,
            "close",
            json!({"outcome": "help_given"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(sc.app.db.verify_audit_chain().await.unwrap().is_ok());
    sc.app.stop().await;
}

#[tokio::test]
async fn another_operators_incident_is_taken_over_explicitly_sqlite() {
    another_operators_incident_is_taken_over_explicitly(Backend::Sqlite).await;
}

#[tokio::test]
async fn another_operators_incident_is_taken_over_explicitly_postgres() {
    another_operators_incident_is_taken_over_explicitly(Backend::Postgres).await;
}

/// An alarm that says where the person is (a fall outdoors, a wanderer's
/// watch leaving its geofence: `other_05`) is offered to the carer nearest to
/// that place, not to home.
async fn carers_are_ranked_from_the_reported_position(backend: Backend, kind: EventKind) {
    let sc = scene(backend).await;
    // Beside the far carer (23.20, 113.30), some 8 km from home.
    let (incident, carer, _) = sc.press(kind, (23.2001, 113.3001)).await;
    let summary = sc.app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.kind, kind.name());
    assert_eq!(carer, sc.city.far_carer);
    // The phone is told where: the fall, besides the home's address.
    let offer = &sc.messages(carer, "offer")[0];
    assert_eq!(offer["reported_lat"], 23.2001, "{offer}");
    assert_eq!(offer["reported_lon"], 113.3001, "{offer}");
    assert_eq!(offer["lat"], HOME.0, "{offer}");
    let (status, carers) = sc
        .api
        .get(
            &format!("/api/v1/incidents/{incident}/carers"),
            Some(&sc.li),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{carers}");
    // The far carer holds the offer; the near one is next, some 8 km away.
    assert_eq!(carers[0]["carer_id"], sc.city.near_carer, "{carers}");
    let m = carers[0]["distance_m"].as_f64().unwrap();
    assert!(m > 5_000.0, "measured from the fall, not from home: {m}");
    // An operator's offer says where, too, and measures from there.
    let (status, body) = sc.step(&sc.li, incident, "claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = sc
        .step(
            &sc.li,
            incident,
            "dispatch",
            json!({"carer_id": sc.city.near_carer}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let offer = eventually("the operator's offer on the phone", || async {
        sc.messages(sc.city.near_carer, "offer").into_iter().next()
    })
    .await;
    assert_eq!(offer["reported_lat"], 23.2001, "{offer}");
    assert!(offer["distance_m"].as_f64().unwrap() > 5_000.0, "{offer}");
    sc.app.stop().await;
}

#[tokio::test]
async fn carers_are_ranked_from_where_a_fall_was_sqlite() {
    carers_are_ranked_from_the_reported_position(Backend::Sqlite, EventKind::Fall).await;
}

#[tokio::test]
async fn carers_are_ranked_from_where_a_fall_was_postgres() {
    carers_are_ranked_from_the_reported_position(Backend::Postgres, EventKind::Fall).await;
}

#[tokio::test]
async fn carers_are_ranked_from_where_a_wanderer_is_sqlite() {
    carers_are_ranked_from_the_reported_position(Backend::Sqlite, EventKind::Other(0x05)).await;
}

#[tokio::test]
async fn carers_are_ranked_from_where_a_wanderer_is_postgres() {
    carers_are_ranked_from_the_reported_position(Backend::Postgres, EventKind::Other(0x05)).await;
}

/// What an older server may have left: an offer still pending on an incident
/// that ended. Its deadline does nothing, the incident takes no further
/// offer, and the offer cannot be accepted.
async fn an_ended_incident_is_offered_to_nobody(backend: Backend) {
    let sc = scene(backend).await;
    let (incident, dispatch) = sc.sos().await;
    let closed = "UPDATE incidents SET state = 'closed' WHERE id = $1";
    let rows = match &sc.app.db {
        Db::Sqlite { write, .. } => sqlx::query(closed)
            .bind(incident)
            .execute(write)
            .await
            .map(|r| r.rows_affected()),
        Db::Postgres(p, _) => sqlx::query(closed)
            .bind(incident)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
    };
    assert_eq!(rows.unwrap(), 1);
    let db = &sc.app.db;
    let timer = db
        .due_timers(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.kind == "offer" && t.dispatch_id == Some(dispatch))
        .expect("the offer's deadline");
    assert_eq!(
        db.fire_offer_timer(&timer).await.unwrap(),
        OfferCheck::Settled
    );
    assert_eq!(sc.dispatches(incident).await[0].2, "offered");
    let far = db.carer(sc.city.far_carer).await.unwrap().unwrap();
    let next = NewDispatch {
        carer_id: far.id,
        provider_id: far.provider_id,
        distance_m: None,
        fallback: false,
    };
    let err = db
        .add_offer(incident, &next, i64::MAX, "system", "test")
        .await
        .unwrap_err();
    assert!(matches!(err, OfferError::Ended { .. }), "{err}");
    let err = db
        .apply_carer_answer(dispatch, sc.city.near_carer, CarerAnswer::Accept, "")
        .await
        .unwrap_err();
    assert!(matches!(err, ReplyError::IncidentEnded { .. }), "{err}");
    assert_eq!(sc.dispatches(incident).await.len(), 1);
    sc.app.stop().await;
}

#[tokio::test]
async fn an_ended_incident_is_offered_to_nobody_sqlite() {
    an_ended_incident_is_offered_to_nobody(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_ended_incident_is_offered_to_nobody_postgres() {
    an_ended_incident_is_offered_to_nobody(Backend::Postgres).await;
}

/// A job the device itself reports over (power back after a cut) takes its
/// offer back too, where the rules offer such a job to a carer.
async fn a_cleared_job_takes_its_offer_back(backend: Backend) {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[kinds.power_cut]\npriority = \"technical\"\nactions = [\"operator\", \"offer_carer\"]\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = pingantong::Settings {
        rules_file: Some(rules),
        ..test_settings(backend, Broker::Embedded, dir.path())
    };
    let prefix = s.mqtt.topic_prefix.clone();
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(&host, port, &[format!("{prefix}/v1/carers/+/dispatch")]).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::PowerCut), &city.secret)
        .await;
    let offer = eventually("the job offered", || async {
        probe
            .received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, m)| m["type"] == "offer")
            .map(|(_, m)| m.clone())
    })
    .await;
    assert_eq!(offer["kind"], "power_cut");
    let dispatch = offer["dispatch_id"].as_i64().unwrap();
    let incident = offer["incident_id"].as_i64().unwrap();
    dev.send(
        &event(&city.device, 2, EventKind::PowerRestored),
        &city.secret,
    )
    .await;
    let w = eventually("the withdrawal", || async {
        probe
            .received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, m)| m["type"] == "withdrawn" && m["dispatch_id"] == dispatch)
            .map(|(_, m)| m.clone())
    })
    .await;
    assert_eq!(w["reason"], "incident_cancelled");
    assert_eq!(
        app.db.incident_state(incident).await.unwrap(),
        Some(State::Cancelled)
    );
    assert_eq!(
        app.db.dispatch_states(incident).await.unwrap()[0].2,
        "withdrawn"
    );
    let actions = app.db.incident_actions(incident).await.unwrap();
    assert!(
        actions.iter().any(|a| a == "offer_withdrawn"),
        "{actions:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cleared_job_takes_its_offer_back_sqlite() {
    a_cleared_job_takes_its_offer_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_cleared_job_takes_its_offer_back_postgres() {
    a_cleared_job_takes_its_offer_back(Backend::Postgres).await;
}

/// A withdrawal made while the broker is down is owed in the database and
/// reaches the carer's phone once the broker is back.
#[tokio::test]
async fn a_withdrawal_waits_for_the_broker() {
    let mut broker = OwnMosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Mosquitto, dir.path());
    s.mqtt.url = Some(format!("mqtt://127.0.0.1:{}", broker.port));
    let prefix = s.mqtt.topic_prefix.clone();
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let phone = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    let probe = MqttProbe::connect("127.0.0.1", broker.port, std::slice::from_ref(&phone)).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let offer = eventually("the offer on the phone", || async {
        probe.on(&phone).into_iter().find(|m| m["type"] == "offer")
    })
    .await;
    let (incident, dispatch) = (
        offer["incident_id"].as_i64().unwrap(),
        offer["dispatch_id"].as_i64().unwrap(),
    );

    broker.stop();
    eventually("the server sees the broker gone", || async {
        (http_get(app.addrs.http, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    for action in [Action::Claim, Action::Resolve] {
        app.db
            .transition(&Transition {
                incident_id: incident,
                action,
                actor: "operator:op.li",
                detail: "",
                outcome: None,
                merged_into: None,
                take_over: false,
            })
            .await
            .unwrap();
    }
    // A sweep tries, fails (counted), and it stays owed.
    eventually("a sweep tried to send it", || async {
        let (_, metrics) = http_get(app.addrs.http, "/metrics").await;
        metrics
            .contains("pat_stage_failures_total{stage=\"withdrawal_publish\"}")
            .then_some(())
    })
    .await;
    assert_eq!(app.db.owed_withdrawals(10).await.unwrap().len(), 1);

    broker.start_again();
    let w = eventually_for(
        "the withdrawal after the broker's return",
        Duration::from_secs(30),
        || async {
            probe
                .on(&phone)
                .into_iter()
                .find(|m| m["type"] == "withdrawn")
        },
    )
    .await;
    assert_eq!(w["dispatch_id"], dispatch);
    eventually("marked sent", || async {
        app.db
            .owed_withdrawals(10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    app.stop().await;
}
