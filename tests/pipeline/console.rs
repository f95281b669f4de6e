//! The console's HTTP API end to end: an operator takes an SOS from the queue
//! to closed while a carer answers over HTTP; every role's forbidden cases;
//! the live feed with resume; the audit trail; the OpenAPI document.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingantong::domain::Role;
use pingantong::store::Db;
use pingantong_protocol::EventKind;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Timeline events read from the live feed: (id, incident id, action).
type Seen = Arc<Mutex<Vec<(i64, i64, String)>>>;

/// Follow the live feed in the background, from `last_event_id` if given.
async fn follow(
    api: &Api,
    token: &str,
    last_event_id: Option<i64>,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let mut req = api.http.get(api.url("/api/v1/feed")).bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let seen: Seen = Arc::default();
    let out = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            // Events end with a blank line.
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(str::trim);
                let id = block
                    .lines()
                    .find_map(|l| l.strip_prefix("id:"))
                    .and_then(|v| v.trim().parse::<i64>().ok());
                if let (Some(id), Some(data)) = (id, data) {
                    let v: Value = serde_json::from_str(data).unwrap();
                    assert_eq!(v["id"], id, "the event id is the timeline id");
                    out.lock().unwrap().push((
                        id,
                        v["incident_id"].as_i64().unwrap(),
                        v["action"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    });
    (seen, task)
}

async fn operator_takes_an_sos_to_closed_while_a_carer_answers(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    add_user(&app.db, "op.wang", Role::Operator).await;
    add_user(&app.db, "reg.chen", Role::Regulator).await;
    add_carer_user(&app.db, "carer.near", city.near_carer).await;
    add_carer_user(&app.db, "carer.far", city.far_carer).await;
    let api = Api::of(&app);
    let op = api.token("op.li").await;
    let op2 = api.token("op.wang").await;
    let reg = api.token("reg.chen").await;
    let near = api.token("carer.near").await;
    let far = api.token("carer.far").await;
    let (seen, feed_task) = follow(&api, &op, None).await;

    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let offer = eventually("the automatic offer", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    let incident = offer.incident_id;
    assert_eq!(offer.carer_id, city.near_carer);

    // The queue and the screen-pop.
    let (status, queue) = api.get("/api/v1/incidents", Some(&op)).await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(queue[0]["id"], incident);
    assert_eq!(queue[0]["lane"], "life_safety");
    assert_eq!(queue[0]["client_name"], "陈秀英");
    let (status, detail) = api
        .get(&format!("/api/v1/incidents/{incident}"), Some(&op))
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["client"]["medications"], "华法林 3mg");
    assert_eq!(detail["devices"][0]["battery"], 77);
    assert_eq!(detail["timeline"][0]["action"], "opened");
    assert_eq!(detail["dispatches"][0]["carer_id"], city.near_carer);

    // Forbidden and unauthorised.
    for (token, path) in [
        (&near, "/api/v1/incidents"),
        (&reg, "/api/v1/incidents"),
        (&reg, &format!("/api/v1/incidents/{incident}")[..]),
        (&op, "/api/v1/carer/jobs"),
        (&near, "/api/v1/feed"),
    ] {
        let (status, body) = api.get(path, Some(token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("role"));
    }
    let (status, _) = api.get("/api/v1/incidents", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let claim = format!("/api/v1/incidents/{incident}/claim");
    let (status, _) = api.post(&claim, &near, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a carer claims nothing");

    // The near carer sees the job and declines it: the far one is asked.
    let (status, jobs) = api.get("/api/v1/carer/jobs", Some(&near)).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert_eq!(jobs[0]["dispatch_id"], offer.dispatch_id);
    assert_eq!(
        jobs[0]["medical_notes"], "",
        "an offer not accepted does not show the resident's health"
    );
    assert_eq!(jobs[0]["key_safe"], "", "nor the key-safe code");
    let answer = |d: i64| format!("/api/v1/dispatches/{d}/answer");
    let (status, body) = api
        .post(
            &answer(offer.dispatch_id),
            &far,
            json!({"action": "accept"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "not the far carer's: {body}");
    let (status, body) = api
        .post(
            &answer(offer.dispatch_id),
            &near,
            json!({"action": "decline", "reason": "on another job"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the far carer asked", || async {
        app.carers
            .offers()
            .iter()
            .any(|o| o.carer_id == city.far_carer)
            .then_some(())
    })
    .await;

    // The operator claims; nobody else can.
    let (status, body) = api.post(&claim, &op, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "claimed");
    let (status, body) = api.post(&claim, &op2, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("op.li"), "{body}");
    let (status, _) = api
        .post(
            &format!("/api/v1/incidents/{incident}/notes"),
            &op,
            json!({"text": "女儿说她在医院附近，十分钟到"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // The operator sends the near carer after all, by hand.
    let (status, carers) = api
        .get(&format!("/api/v1/incidents/{incident}/carers"), Some(&op))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(carers[0]["carer_id"], city.near_carer, "{carers}");
    let (status, body) = api
        .post(
            &format!("/api/v1/incidents/{incident}/dispatch"),
            &op,
            json!({"carer_id": city.near_carer}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let dispatch = body["dispatch_id"].as_i64().unwrap();
    eventually("the hand-picked offer on the carer's phone", || async {
        app.carers
            .offers()
            .iter()
            .any(|o| o.dispatch_id == dispatch)
            .then_some(())
    })
    .await;
    for (action, state) in [
        ("accept", "carer_accepted"),
        ("arrived", "on_scene"),
        ("completed", "resolved"),
    ] {
        let (status, body) = api
            .post(
                &answer(dispatch),
                &near,
                json!({"action": action, "outcome": "help_given"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
        let s = app.db.incident_summary(incident).await.unwrap().unwrap();
        assert_eq!(s.state, state, "after {action}");
        if action == "accept" {
            // Now, and only for this carer, the resident's health: on the
            // phone's topic and in the job list.
            let details = eventually("the details on the phone", || async {
                app.carers
                    .details()
                    .into_iter()
                    .find(|d| d.dispatch_id == dispatch)
            })
            .await;
            assert_eq!(
                (
                    details.carer_id,
                    details.medications.as_str(),
                    details.allergies.as_str(),
                    details.key_safe.as_str()
                ),
                (city.near_carer, "华法林 3mg", "青霉素", "4711")
            );
            let (_, jobs) = api.get("/api/v1/carer/jobs", Some(&near)).await;
            assert_eq!(jobs[0]["medical_notes"], "高血压；房颤", "{jobs}");
            assert_eq!(jobs[0]["key_safe"], "4711", "{jobs}");
            assert!(
                app.carers
                    .details()
                    .iter()
                    .all(|d| d.dispatch_id == dispatch),
                "the carer who only declined was never told"
            );
        }
    }
    let close = format!("/api/v1/incidents/{incident}/close");
    let (status, body) = api.post(&close, &op, json!({})).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an outcome is needed: {body}"
    );
    let (status, body) = api.post(&close, &op, json!({"outcome": "  "})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a blank outcome is none: {body}"
    );
    let (status, body) = api
        .post(
            &close,
            &op,
            json!({"outcome": "help_given", "detail": "扶起，无受伤"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "closed");
    let (status, _) = api.post(&close, &op, json!({"outcome": "x"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "closed is closed");

    // The feed saw every step, in order, once; a reconnect resumes exactly.
    let timeline = app.db.timeline(incident).await.unwrap();
    let feed = eventually("every step on the feed", || async {
        let s = seen.lock().unwrap().clone();
        (s.len() >= timeline.len()).then_some(s)
    })
    .await;
    feed_task.abort();
    let ids: Vec<i64> = feed.iter().map(|e| e.0).collect();
    assert_eq!(ids, timeline.iter().map(|t| t.id).collect::<Vec<_>>());
    let actions: Vec<&str> = feed.iter().map(|e| e.2.as_str()).collect();
    for a in [
        "opened",
        "carer_declined",
        "claim",
        "note",
        "carer_accepted",
        "close",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let (again, task) = follow(&api, &op, Some(ids[2])).await;
    let resumed = eventually("the resumed feed", || async {
        let s = again.lock().unwrap().clone();
        (s.len() >= ids.len() - 3).then_some(s)
    })
    .await;
    task.abort();
    assert_eq!(
        resumed.iter().map(|e| e.0).collect::<Vec<_>>(),
        ids[3..].to_vec(),
        "after the last id seen, nothing missed, nothing twice"
    );

    // Every look at her profile and every action is on the audit chain.
    let audit = app.db.audit_trail(None, 1000).await.unwrap();
    let has = |action: &str, subject: &str| {
        audit
            .iter()
            .any(|e| e.action == action && e.subject == subject)
    };
    let client = format!("client:{}", city.client_id);
    assert!(has("profile_read", &client), "{audit:?}");
    for a in [
        "incident_claim",
        "incident_note",
        "incident_dispatch",
        "incident_close",
    ] {
        assert!(has(a, &format!("incident:{incident}")), "{a}: {audit:?}");
    }
    assert!(has(
        "dispatch_decline",
        &format!("dispatch:{}", offer.dispatch_id)
    ));
    assert!(has("dispatch_completed", &format!("dispatch:{dispatch}")));
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn operator_and_carer_over_http_sqlite() {
    operator_takes_an_sos_to_closed_while_a_carer_answers(Backend::Sqlite).await;
}

#[tokio::test]
async fn operator_and_carer_over_http_postgres() {
    operator_takes_an_sos_to_closed_while_a_carer_answers(Backend::Postgres).await;
}

/// A server with an operator signed in (`op.li`) and one SOS in the queue.
async fn operator_and_an_sos(backend: Backend) -> (TestApp, Api, String, i64) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    let api = Api::of(&app);
    let op = api.token("op.li").await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let incident = newest_incident(&app.db).await;
    (app, api, op, incident)
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers() {
    let (app, api, op, incident) = operator_and_an_sos(Backend::Sqlite).await;
    let cases: Vec<(String, Value, StatusCode)> = vec![
        (
            format!("/api/v1/incidents/{incident}/claim"),
            json!({"detial": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/api/v1/incidents/{incident}/notes"),
            json!({"text": ""}),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/v1/incidents/{incident}/notes"),
            json!({"text": "x".repeat(3000)}),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/v1/incidents/{incident}/handoff"),
            json!({"service": "999"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/api/v1/incidents/{incident}/dispatch"),
            json!({"carer_id": 999_999}),
            StatusCode::CONFLICT,
        ),
        (
            format!("/api/v1/incidents/{incident}/dispatch"),
            json!({"carer_id": "near"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/incidents/999999/claim".into(),
            json!({}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/incidents/abc/claim".into(),
            json!({}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/dispatches/1/answer".into(),
            json!({"action": "accept"}),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (path, body, want) in cases {
        let (status, answer) = api.post(&path, &op, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        assert!(
            answer["error"].is_string(),
            "{path}: JSON error body {answer}"
        );
    }
    for path in [
        "/api/v1/incidents?limit=abc",
        "/api/v1/incidents?lane=urgent",
    ] {
        let (status, answer) = api.get(path, Some(&op)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    // A hand-off: 120 with the hospital summary.
    let (status, h) = api
        .post(
            &format!("/api/v1/incidents/{incident}/handoff"),
            &op,
            json!({"service": "120", "reference": "GZ120-7781"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{h}");
    assert_eq!(h["summary"]["allergies"], "青霉素");
    app.stop().await;
}

/// `?state=` lists the incidents in exactly that state, open or not: carers'
/// completed jobs (resolved) are found there to be closed.
async fn incidents_by_state(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    let api = Api::of(&app);
    let op = api.token("op.li").await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    dev.send(&event(&city.device, 2, EventKind::LowBattery), &city.secret)
        .await;
    let both = eventually("the SOS and the low-battery job", || async {
        let all = app.db.incidents_overview().await.unwrap();
        (all.len() == 2).then_some(all)
    })
    .await;
    let (mut sos, mut battery) = (both[0].0, both[1].0);
    if app.db.incident_summary(sos).await.unwrap().unwrap().lane != "life_safety" {
        std::mem::swap(&mut sos, &mut battery);
    }
    for step in ["claim", "resolve"] {
        let (status, body) = api
            .post(&format!("/api/v1/incidents/{sos}/{step}"), &op, json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
    }
    let list = |query: &'static str| {
        let api = &api;
        let op = &op;
        async move {
            let (status, rows) = api
                .get(&format!("/api/v1/incidents{query}"), Some(op))
                .await;
            assert_eq!(status, StatusCode::OK, "{query}: {rows}");
            rows.as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["id"].as_i64().unwrap(),
                        r["state"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let resolved = vec![(sos, "resolved".to_owned())];
    assert_eq!(list("?state=resolved").await, resolved);
    assert_eq!(
        list("?state=resolved&open=true").await,
        resolved,
        "state overrides open"
    );
    assert_eq!(list("?state=resolved&open=false").await, resolved);
    assert_eq!(list("?state=resolved&lane=life_safety").await, resolved);
    assert_eq!(list("?state=resolved&lane=technical").await, vec![]);
    assert_eq!(list("?state=closed").await, vec![]);
    let queued = list("?state=queued").await;
    assert_eq!(
        queued.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![battery],
        "{queued:?}"
    );
    // The open queue no longer has the resolved one.
    let open = list("").await;
    assert_eq!(
        open.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![battery],
        "{open:?}"
    );

    let (status, body) = api
        .post(
            &format!("/api/v1/incidents/{sos}/close"),
            &op,
            json!({"outcome": "help_given"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(list("?state=resolved").await, vec![]);
    assert_eq!(
        list("?state=closed").await,
        vec![(sos, "closed".to_owned())]
    );

    for bad in [
        "?state=open",
        "?state=Resolved",
        "?state=",
        "?state=resolved,closed",
        "?state=resolved&state=closed",
    ] {
        let (status, body) = api.get(&format!("/api/v1/incidents{bad}"), Some(&op)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, body) = api.get("/api/v1/incidents?state=open", Some(&op)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("resolved"),
        "the error names the states: {body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn incidents_by_state_sqlite() {
    incidents_by_state(Backend::Sqlite).await;
}

#[tokio::test]
async fn incidents_by_state_postgres() {
    incidents_by_state(Backend::Postgres).await;
}

/// The document served at /openapi.json is valid in shape and names exactly
/// the routes the server answers.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let api = Api::of(&app);
    let (status, doc) = api.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    for must in [
        "/api/v1/incidents",
        "/api/v1/incidents/{id}",
        "/api/v1/incidents/{id}/claim",
        "/api/v1/incidents/{id}/dispatch",
        "/api/v1/incidents/{id}/handoff",
        "/api/v1/carer/jobs",
        "/api/v1/dispatches/{id}/answer",
        "/api/v1/feed",
        "/api/v1/session",
        "/api/v1/me",
        "/api/v1/audit/verify",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(must), "{must} undocumented");
    }
    // `state` on the queue: an optional query parameter naming every state.
    let params = doc["paths"]["/api/v1/incidents"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let state = params
        .iter()
        .find(|p| p["name"] == "state")
        .expect("the state parameter is documented");
    assert_eq!(state["in"], "query");
    assert_ne!(state["required"], true);
    let names = state.to_string();
    for s in pingantong::domain::State::ALL {
        assert!(names.contains(&format!("\"{s}\"")), "{s} missing: {state}");
    }
    // `lane` likewise, with every lane's name.
    let lane = params
        .iter()
        .find(|p| p["name"] == "lane")
        .expect("the lane parameter is documented");
    assert_ne!(lane["required"], true);
    assert_eq!(
        lane["schema"]["enum"],
        serde_json::json!(pingantong_protocol::Lane::NAMES),
        "{lane}"
    );
    // Every $ref points at a schema the document defines.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = r.split('"').next().unwrap();
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {target}"));
        assert!(schemas.contains_key(name), "dangling $ref {target}");
    }
    // Every documented operation is routed: without a token it is refused
    // or answered, never "no such route".
    let http = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in paths {
        let url = api.url(&path.replace("{id}", "1"));
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http
                .request(m, &url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            // The feed is a stream: its headers arrive, its body does not end.
            let status = match r {
                Ok(r) => r.status(),
                Err(e) if e.is_timeout() => continue,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but answered {status}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 16, "{operations} operations");
    // And what is not documented is not there.
    let r = http.get(api.url("/api/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
    app.stop().await;
}

/// A console left open does not keep a stopping server up: its feed ends.
#[tokio::test]
async fn an_open_feed_ends_when_the_server_stops() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    let api = Api::of(&app);
    let op = api.token("op.li").await;
    let (_seen, feed) = follow(&api, &op, None).await;
    // Without the feed ending, the server's graceful shutdown would wait for
    // it and `stop` would give up.
    app.stop().await;
    tokio::time::timeout(Duration::from_secs(5), feed)
        .await
        .expect("the feed's stream ended with the server")
        .unwrap();
}

/// A live feed is worth no more than the session that opened it: it ends at
/// log-out, and when the account is disabled, while the server runs on.
#[tokio::test]
async fn an_open_feed_ends_at_log_out_and_when_the_account_is_disabled() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    add_user(&app.db, "op.li", Role::Operator).await;
    add_user(&app.db, "op.wu", Role::Operator).await;
    let api = Api::of(&app);
    let li = api.token("op.li").await;
    let (_seen, feed) = follow(&api, &li, None).await;
    // Still open a while later: the session is live.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!feed.is_finished(), "a live session's feed stays open");
    assert_eq!(api.logout(&li).await, StatusCode::NO_CONTENT);
    tokio::time::timeout(Duration::from_secs(5), feed)
        .await
        .expect("the feed ended within 5 s of the log-out")
        .unwrap();
    // A new feed with the old token is refused.
    let r = api
        .http
        .get(api.url("/api/v1/feed"))
        .bearer_auth(&li)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let wu = api.token("op.wu").await;
    let (_seen, feed) = follow(&api, &wu, None).await;
    app.db
        .set_user_disabled("op.wu", true, "user:admin")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), feed)
        .await
        .expect("the feed ended within 5 s of the account being disabled")
        .unwrap();
    app.stop().await;
}

/// PostgreSQL gives a row its id at insert: a line whose transaction commits
/// after a later line's is still on the feed (the feed looks again for the
/// ids its reads skipped) once, and a follower that resumes from before it
/// gets it from the database.
#[tokio::test]
async fn a_line_committed_after_a_later_one_still_reaches_the_feed() {
    let (app, api, op, incident) = operator_and_an_sos(Backend::Postgres).await;
    let (seen, feed) = follow(&api, &op, None).await;
    let Db::Postgres(pool, _) = &app.db else {
        unreachable!("a PostgreSQL server")
    };
    let line = |action: &'static str| {
        sqlx::query(
            "INSERT INTO incident_events (incident_id, at, actor, action, detail) \
             VALUES ($1, 0, 'test', $2, '') RETURNING id",
        )
        .bind(incident)
        .bind(action)
    };
    // The slow transaction takes its id first, and commits last.
    let mut slow = pool.begin().await.unwrap();
    let late_id: i64 = sqlx::Row::get(&line("late").fetch_one(&mut *slow).await.unwrap(), 0);
    let early_id: i64 = sqlx::Row::get(&line("early").fetch_one(pool).await.unwrap(), 0);
    assert!(late_id < early_id);
    let has = |action: &str| {
        let seen = Arc::clone(&seen);
        let action = action.to_owned();
        move || {
            let seen = Arc::clone(&seen);
            let action = action.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|(_, _, a)| *a == action)
                    .then_some(())
            }
        }
    };
    eventually("the later line on the feed", has("early")).await;
    slow.commit().await.unwrap();
    eventually("the line committed late on the feed", has("late")).await;
    let ids: Vec<i64> = seen.lock().unwrap().iter().map(|(id, ..)| *id).collect();
    assert_eq!(
        ids.iter().filter(|&&id| id == late_id).count(),
        1,
        "{ids:?}"
    );
    // A follower resuming from before both gets both from the database.
    let (again, task) = follow(&api, &op, Some(late_id - 1)).await;
    eventually("both lines on the resumed feed", || async {
        let a = again.lock().unwrap();
        let got: Vec<i64> = a.iter().map(|(id, ..)| *id).collect();
        (got.contains(&late_id) && got.contains(&early_id)).then_some(())
    })
    .await;
    feed.abort();
    task.abort();
    app.stop().await;
}
