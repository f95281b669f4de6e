//! The registry over HTTP end to end: every role's rights, a pendant
//! provisioned over the API answering its first press, a contact added over
//! the API notified of it, secrets that never come back out, CSV import row
//! by row, and the audit chain over all of it.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use pingantong::api::auth::hash_password;
use pingantong::domain::Role;
use pingantong::store::{NewClient, NewUser};
use pingantong_protocol::EventKind;
use pingantong_protocol::native::Reply;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const KEY: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3";
const ROTATED: &str = "00112233445566778899AABBCCDDEEFF00112233";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// HTTP with every answer kept, to show no secret ever comes back.
struct Http {
    api: Api,
    seen: Mutex<Vec<String>>,
}

impl Http {
    fn of(app: &TestApp) -> Self {
        Self {
            api: Api::of(app),
            seen: Mutex::default(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.api.http.request(method, self.api.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    async fn csv(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let r = self
            .api
            .http
            .post(self.api.url(path))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// No answer so far held any of these secrets (as hex, either case).
    fn never_showed(&self, secrets: &[&str]) {
        for text in self.seen.lock().unwrap().iter() {
            let lower = text.to_ascii_lowercase();
            for s in secrets {
                assert!(
                    !lower.contains(&s.to_ascii_lowercase()),
                    "a secret came back: {text}"
                );
            }
        }
    }
}

/// A family's web service that takes every notice.
async fn family_hook() -> (Arc<Mutex<Vec<Value>>>, String) {
    async fn receive(
        State(calls): State<Arc<Mutex<Vec<Value>>>>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        calls
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        axum::http::StatusCode::NO_CONTENT
    }
    let calls = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/family", post(receive))
        .with_state(Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/family", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (calls, url)
}

async fn add_carer_account(app: &TestApp, username: &str, carer_id: i64) {
    let hash = hash_password(PASSWORD).unwrap();
    app.db
        .add_user(
            &NewUser {
                username,
                password_hash: &hash,
                role: Role::Carer,
                carer_id: Some(carer_id),
                provider_id: None,
            },
            "test",
        )
        .await
        .unwrap();
}

/// The newest incident, once there is one.
async fn newest_incident(app: &TestApp, after: i64) -> i64 {
    eventually("the incident", || async {
        app.db
            .incidents_overview()
            .await
            .unwrap()
            .iter()
            .map(|i| i.0)
            .filter(|id| *id > after)
            .max()
    })
    .await
}

async fn registry_by_role(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let (hook_calls, hook_url) = family_hook().await;
    for (user, role) in [
        ("adm", Role::Admin),
        ("sup", Role::Supervisor),
        ("op", Role::Operator),
        ("reg", Role::Regulator),
    ] {
        add_user(&app.db, user, role).await;
    }
    let h = Http::of(&app);
    let adm = h.api.token("adm").await;
    let sup = h.api.token("sup").await;
    let op = h.api.token("op").await;
    let reg = h.api.token("reg").await;

    // A provider for the district, and a carer of theirs.
    let (status, provider) = h
        .post(
            "/api/v1/providers",
            &adm,
            json!({"name": "越秀区颐康中心", "service_types": ["home_visit", "emergency_response"],
                   "capacity": 10, "coverage": [{"district": "越秀区"}, {"district": "海珠区", "street": "南华西街"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{provider}");
    let provider_id = provider["id"].as_i64().unwrap();
    assert_eq!(provider["coverage"].as_array().unwrap().len(), 2);
    let (status, carer) = h
        .post(
            "/api/v1/carers",
            &sup,
            json!({"provider_id": provider_id, "name": "张护工", "phone": "139 0000 0000",
                   "location": {"lat": 23.1300, "lon": 113.2650}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{carer}");
    let carer_id = carer["id"].as_i64().unwrap();
    assert_eq!(carer["on_duty"], false);
    let (status, carer) = h
        .put(
            &format!("/api/v1/carers/{carer_id}/duty"),
            &sup,
            json!({"on_duty": true, "busy": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{carer}");
    assert_eq!(carer["on_duty"], true);
    add_carer_account(&app, "carer.zhang", carer_id).await;
    let carer_token = h.api.token("carer.zhang").await;
    let (status, carers) = h
        .get(&format!("/api/v1/carers?provider_id={provider_id}"), &op)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(carers[0]["name"], "张护工");
    let (status, providers) = h.get("/api/v1/providers", &op).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(providers[0]["service_types"][1], "emergency_response");

    // A client, changed by a supervisor, marked away and back by an operator.
    let (status, client) = h
        .post(
            "/api/v1/clients",
            &adm,
            json!({"external_ref": "GZ-YX-000123", "name": "陈秀英",
                   "address": "广州市越秀区北京街 12号 301室", "district": "越秀区", "street": "北京街",
                   "location": {"lat": 23.1291, "lon": 113.2644}, "language": "yue",
                   "medical_notes": "高血压；房颤", "medications": "华法林 3mg", "allergies": "青霉素",
                   "birth_year": 1938, "subsidy_category": "living_alone"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{client}");
    let client_id = client["id"].as_i64().unwrap();
    assert_eq!(client["name"], "陈秀英");
    assert_eq!(client["location"]["lat"], 23.1291);
    let mut changed = client.clone();
    for k in ["id", "updated_at", "contacts", "devices", "away_until"] {
        changed.as_object_mut().unwrap().remove(k);
    }
    changed["medications"] = json!("华法林 2.5mg");
    let (status, client) = h
        .put(&format!("/api/v1/clients/{client_id}"), &sup, changed)
        .await;
    assert_eq!(status, StatusCode::OK, "{client}");
    assert_eq!(client["medications"], "华法林 2.5mg");
    let until = pingantong::store::now_ms() + 3_600_000;
    let away = format!("/api/v1/clients/{client_id}/away");
    let (status, body) = h.put(&away, &op, json!({"until": until})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["away_until"], until);
    let (status, body) = h.put(&away, &op, json!({"until": null})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Contacts: an operator enters them as the family gives them; a
    // supervisor reorders them, keeping their ids.
    let contacts = format!("/api/v1/clients/{client_id}/contacts");
    let (status, list) = h
        .put(
            &contacts,
            &op,
            json!({"contacts": [
                {"name": "陈小明", "relation": "儿子", "phone": "+86 138 0013 8000",
                 "notify": {"channel": "webhook", "address": hook_url}},
                {"name": "邻居王阿姨", "relation": "邻居", "phone": "020-8888 1234"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let son = list[0]["id"].as_i64().unwrap();
    let neighbour = list[1]["id"].as_i64().unwrap();
    let (status, list) = h
        .put(
            &contacts,
            &sup,
            json!({"contacts": [
                {"id": neighbour, "name": "邻居王阿姨", "relation": "邻居", "phone": "020-8888 1234"},
                {"id": son, "name": "陈小明", "relation": "儿子", "phone": "13800138000",
                 "notify": {"channel": "webhook", "address": hook_url}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["id"], neighbour);
    assert_eq!(list[1]["id"], son);
    assert_eq!(list[1]["position"], 2);
    assert_eq!(list[1]["phone"], "13800138000");
    assert_eq!(list[1]["notify"]["channel"], "webhook");

    // Reads: the list has no health data; the profile has everything.
    let (status, page) = h.get("/api/v1/clients?district=越秀区&q=gz-yx", &op).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], client_id);
    assert!(page[0].get("medical_notes").is_none(), "{page}");
    let (status, page) = h.get("/api/v1/clients?q=13800138000", &op).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page[0]["id"], client_id, "found by a contact's phone");

    // A pendant provisioned over the API works on its first press.
    let device = unique("PT").replace('_', "-");
    let (status, row) = h
        .post(
            "/api/v1/devices",
            &adm,
            json!({"protocol": "native", "id": device, "secret": KEY, "client_id": client_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{row}");
    assert_eq!(row["has_key"], true);
    let mut pendant = Device::connect(app.native).await;
    let (reply, authentic) = pendant
        .send(&event(&device, 1, EventKind::Sos), &hex(KEY))
        .await;
    assert!(matches!(reply, Reply::Ack { seq: 1, .. }), "{reply:?}");
    assert!(authentic, "the ACK is signed with the new key");
    let incident = newest_incident(&app, 0).await;
    let summary = app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.client_id, Some(client_id));
    assert!(summary.verified);
    // The contact entered over the API hears of it.
    let notice = eventually("the son's webhook called", || async {
        hook_calls.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(notice["incident_id"], incident, "{notice}");
    let notices = app.db.notifications_of(incident).await.unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].contact_id, son);
    // The son taken off the list after a notice went to him: his row stays
    // for that notice, the list and the screen-pop no longer have him. Put
    // back, he is a new contact.
    let neighbour_only = json!({"id": neighbour, "name": "邻居王阿姨", "relation": "邻居", "phone": "020-8888 1234"});
    let (status, list) = h
        .put(&contacts, &op, json!({"contacts": [neighbour_only]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    let notices = app.db.notifications_of(incident).await.unwrap();
    assert_eq!(notices[0].contact_id, son, "the notice keeps its contact");
    let screen_pop = app.db.client_profile(client_id).await.unwrap().unwrap();
    assert_eq!(screen_pop.contacts.len(), 1);
    let (status, list) = h
        .put(
            &contacts,
            &op,
            json!({"contacts": [neighbour_only, {"name": "陈小明", "relation": "儿子",
                   "phone": "13800138000", "notify": {"channel": "webhook", "address": hook_url}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_ne!(list[1]["id"], son);

    let (status, alarms) = h
        .get(&format!("/api/v1/alarms?device_id={device}&limit=5"), &op)
        .await;
    assert_eq!(status, StatusCode::OK, "{alarms}");
    assert_eq!(alarms[0]["kind"], "sos");
    assert_eq!(alarms[0]["auth"], "verified");
    assert_eq!(alarms[0]["incident_id"], incident);
    assert!(!alarms[0]["raw_hex"].as_str().unwrap().is_empty());
    let (status, devices) = h
        .get(&format!("/api/v1/devices?client_id={client_id}"), &op)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(devices[0]["id"], device.as_str());
    let (status, profile) = h.get(&format!("/api/v1/clients/{client_id}"), &op).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["allergies"], "青霉素");
    assert_eq!(profile["devices"][0]["id"], device.as_str());
    assert_eq!(profile["contacts"][1]["name"], "陈小明");

    // A new key: frames signed with it are taken once the directory has it.
    let (status, row) = h
        .put(
            &format!("/api/v1/devices/{device}"),
            &sup,
            json!({"protocol": "native", "secret": ROTATED, "client_id": client_id, "heartbeat_secs": 600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["heartbeat_secs"], 600);
    let started = std::time::Instant::now();
    for seq in 10.. {
        let (reply, _) = pendant
            .send(&event(&device, seq, EventKind::Heartbeat), &hex(ROTATED))
            .await;
        if matches!(reply, Reply::Ack { .. }) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the rotated key is never taken: {reply:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (reply, _) = pendant
        .send(&event(&device, 99, EventKind::Sos), &hex(KEY))
        .await;
    assert!(
        matches!(reply, Reply::Nak { seq: 99, .. }),
        "the old key is refused: {reply:?}"
    );
    let (status, body) = h
        .put(
            &format!("/api/v1/devices/{device}"),
            &sup,
            json!({"protocol": "gt06", "client_id": null, "heartbeat_secs": null}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "another protocol: {body}");

    // Retired: twice is once; then it cannot be changed.
    let retire = format!("/api/v1/devices/{device}/retire");
    for _ in 0..2 {
        let (status, row) = h.post(&retire, &adm, json!(null)).await;
        assert_eq!(status, StatusCode::OK, "{row}");
        assert_eq!(row["retired"], true);
    }
    let (status, _) = h
        .put(
            &format!("/api/v1/devices/{device}"),
            &adm,
            json!({"protocol": "native", "client_id": null, "heartbeat_secs": null}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, listed) = h.get("/api/v1/devices?retired=true", &op).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == device.as_str())
    );

    // What each role may not do.
    let c = |p: &str| {
        p.replace("{c}", &client_id.to_string())
            .replace("{d}", &device)
    };
    let writes: Vec<(Method, String, Value)> = vec![
        (Method::POST, c("/api/v1/clients"), json!({})),
        (Method::PUT, c("/api/v1/clients/{c}"), json!({})),
        (Method::POST, c("/api/v1/devices"), json!({})),
        (Method::PUT, c("/api/v1/devices/{d}"), json!({})),
        (Method::POST, c("/api/v1/devices/{d}/retire"), json!(null)),
        (Method::POST, c("/api/v1/providers"), json!({})),
        (Method::POST, c("/api/v1/carers"), json!({})),
        (
            Method::PUT,
            format!("/api/v1/carers/{carer_id}/duty"),
            json!({}),
        ),
    ];
    let contact_writes: Vec<(Method, String, Value)> = vec![
        (
            Method::PUT,
            c("/api/v1/clients/{c}/contacts"),
            json!({"contacts": []}),
        ),
        (
            Method::PUT,
            c("/api/v1/clients/{c}/away"),
            json!({"until": null}),
        ),
    ];
    let reads: Vec<String> = [
        "/api/v1/clients",
        "/api/v1/clients/{c}",
        "/api/v1/devices",
        "/api/v1/devices/{d}",
        "/api/v1/providers",
        "/api/v1/carers",
        "/api/v1/alarms",
    ]
    .iter()
    .map(|p| c(p))
    .collect();
    for (method, path, body) in &writes {
        let (status, answer) = h
            .call(method.clone(), path, Some(&op), Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "operator {method} {path}: {answer}"
        );
        assert!(answer["error"].as_str().unwrap().contains("role"));
    }
    for token in [&carer_token, &reg] {
        for (method, path, body) in writes.iter().chain(&contact_writes) {
            let (status, answer) = h
                .call(method.clone(), path, Some(token), Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        }
        for path in &reads {
            let (status, answer) = h.get(path, token).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "GET {path}: {answer}");
        }
    }
    for (method, path, body) in writes.iter().chain(&contact_writes) {
        let (status, _) = h.call(method.clone(), path, None, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    for path in &reads {
        let (status, _) = h.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "GET {path}");
    }
    for path in ["/api/v1/import/clients", "/api/v1/import/devices"] {
        for token in [&op, &carer_token, &reg] {
            let (status, _) = h
                .csv(path, token, "text/csv", b"id,protocol\n".to_vec())
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        }
    }

    // Secrets went in and never came out, not even to the audit log.
    h.never_showed(&[KEY, ROTATED]);
    let audit = app.db.audit_trail(None, 1000).await.unwrap();
    for e in &audit {
        for s in [KEY, ROTATED] {
            assert!(
                !e.detail
                    .to_ascii_lowercase()
                    .contains(&s.to_ascii_lowercase())
            );
        }
    }
    let has = |action: &str, subject: &str| {
        audit
            .iter()
            .any(|e| e.action == action && e.subject == subject && e.actor.starts_with("user:"))
    };
    let cs = format!("client:{client_id}");
    let ds = format!("device:{device}");
    for (action, subject) in [
        ("provider_created", format!("provider:{provider_id}")),
        ("carer_created", format!("carer:{carer_id}")),
        ("carer_duty", format!("carer:{carer_id}")),
        ("client_created", cs.clone()),
        ("client_updated", cs.clone()),
        ("client_away", cs.clone()),
        ("contacts_replaced", cs.clone()),
        ("profile_read", cs.clone()),
        ("device_provisioned", ds.clone()),
        ("device_updated", ds.clone()),
        ("device_retired", ds.clone()),
    ] {
        assert!(has(action, &subject), "{action} {subject}: {audit:?}");
    }
    let updated = audit.iter().find(|e| e.action == "client_updated").unwrap();
    assert_eq!(updated.detail, "changed medications", "names, never values");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "device_retired")
            .count(),
        1,
        "retiring twice is one change"
    );
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn registry_by_role_sqlite() {
    registry_by_role(Backend::Sqlite).await;
}

#[tokio::test]
async fn registry_by_role_postgres() {
    registry_by_role(Backend::Postgres).await;
}

const CLIENTS_CSV: &str = "\u{feff}external_ref,name,address,district,street,lat,lon,birth_year,subsidy_category,medical_notes,contact1_name,contact1_relation,contact1_phone,contact1_channel,contact1_address,contact2_name,contact2_phone
GZ-YX-0001,陈秀英,\"广州市越秀区北京街 12号, 301室\",越秀区,北京街,23.1291,113.2644,1938,living_alone,高血压；房颤,陈小明,儿子,13800138000,email,son@example.cn,邻居王阿姨,020-8888 1234
GZ-YX-0002,,某地址,越秀区,北京街,,,,,,,,,,,,
GZ-YX-0003,李桂芳,某地址,越秀区,北京街,,,,,,女儿,,12-ab,,,,
GZ-YX-0004,王五,某地址,   ,北京街,,,,,,,,,,,,
GZ-YX-0001,赵六,某地址,越秀区,北京街,,,,,,,,,,,,
,,,,,,,,,,,,,,,,
GZ-YX-0005,钱七,某地址,海珠区,南华西街,23.1,,,,,,,,,,,
GZ-YX-0006,孙八,\"海珠区南华西街
8号\",海珠区,南华西街,,,1940,destitute,,,,,,,,
";

async fn import_by_csv(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    add_user(&app.db, "adm", Role::Admin).await;
    let h = Http::of(&app);
    let adm = h.api.token("adm").await;

    let (status, report) = h
        .csv(
            "/api/v1/import/clients",
            &adm,
            "text/csv; charset=utf-8",
            CLIENTS_CSV.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["failed"], 5, "{report}");
    let rows = report["rows"].as_array().unwrap();
    let lines: Vec<i64> = rows.iter().map(|r| r["row"].as_i64().unwrap()).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 8, 9], "the blank row is skipped");
    let error = |line: i64| {
        rows.iter()
            .find(|r| r["row"] == line)
            .and_then(|r| r["error"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(error(3).starts_with("name: "), "{report}");
    assert!(error(4).starts_with("contact1_phone: "), "{report}");
    assert!(error(5).starts_with("district: "), "{report}");
    assert!(error(6).starts_with("external_ref: "), "{report}");
    assert!(error(8).starts_with("lat, lon: "), "{report}");
    let chen = rows[0]["id"].as_i64().unwrap();
    let sun = rows[6]["id"].as_i64().unwrap();
    assert_eq!(rows[0]["ok"], true);
    assert!(rows[0].get("error").is_none());

    let record = app.db.client_record(chen).await.unwrap().unwrap();
    assert_eq!(record.name, "陈秀英");
    assert_eq!(record.address, "广州市越秀区北京街 12号, 301室");
    assert_eq!(record.external_ref.as_deref(), Some("GZ-YX-0001"));
    assert_eq!(record.birth_year, Some(1938));
    assert_eq!(record.contacts.len(), 2);
    assert_eq!(record.contacts[0].notify_channel.as_deref(), Some("email"));
    assert_eq!(record.contacts[1].phone, "020-8888 1234");
    let record = app.db.client_record(sun).await.unwrap().unwrap();
    assert_eq!(
        record.address, "海珠区南华西街\n8号",
        "a cell over two lines"
    );

    let key = "00112233445566778899aabbccddeeff";
    let pendant = unique("IMP").replace('_', "-");
    let devices_csv = format!(
        "id,protocol,secret,client_ref,client_id,heartbeat_secs\n\
         {pendant},native,{key},GZ-YX-0001,,\n\
         GT-{pendant},gt06,,,{sun},600\n\
         {pendant},native,{key},GZ-YX-0001,,\n\
         X1-{pendant},native,zz11,GZ-YX-0001,,\n\
         X2-{pendant},native,0011223344556677,GZ-YX-0001,,\n\
         X3-{pendant},gt06,,NOPE,,\n\
         X4-{pendant},gt06,,GZ-YX-0001,{sun},\n\
         bad id!,gt06,,,,\n\
         X5-{pendant},tcp,,,,\n\
         X6-{pendant},gt06,{key},,,\n"
    );
    let (status, report) = h
        .csv(
            "/api/v1/import/devices",
            &adm,
            "text/csv",
            devices_csv.into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["imported"].as_i64(), report["failed"].as_i64()),
        (Some(2), Some(8)),
        "{report}"
    );
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows[0]["id"], pendant.as_str());
    assert_eq!(rows[1]["id"], format!("GT-{pendant}"));
    for (i, start) in [
        (2, "id: "),
        (3, "secret: "),
        (4, "secret: "),
        (5, "client_ref: "),
        (6, "client_id, client_ref: "),
        (7, "id: "),
        (8, "protocol: "),
        (9, "secret: "),
    ] {
        let e = rows[i]["error"].as_str().unwrap_or_default();
        assert!(e.starts_with(start), "row {}: {e}", rows[i]["row"]);
    }
    let gt06 = app
        .db
        .device_listing(&format!("GT-{pendant}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (gt06.client_id, gt06.heartbeat_secs),
        (Some(sun), Some(600))
    );

    // The imported pendant answers for the imported client.
    let mut dev = Device::connect(app.native).await;
    let (reply, _) = dev
        .send(&event(&pendant, 1, EventKind::Sos), &hex(key))
        .await;
    assert!(matches!(reply, Reply::Ack { .. }), "{reply:?}");
    let incident = newest_incident(&app, 0).await;
    let summary = app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.client_id, Some(chen));
    let notices = app.db.notifications_of(incident).await.unwrap();
    assert_eq!(notices[0].channel, "email", "{notices:?}");

    h.never_showed(&[key]);
    let audit = app.db.audit_trail(None, 1000).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "client_created"
        && e.subject == format!("client:{chen}")
        && e.detail == "import row 2"));
    assert!(audit.iter().any(|e| e.action == "device_provisioned"
        && e.subject == format!("device:{pendant}")
        && e.detail.ends_with("import row 2")));
    for (action, detail) in [
        ("clients_imported", "2 imported, 5 failed"),
        ("devices_imported", "2 imported, 8 failed"),
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.detail == detail),
            "{action}: {audit:?}"
        );
    }
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "client_created")
            .count(),
        2,
        "refused rows leave nothing behind"
    );
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn csv_import_row_by_row_sqlite() {
    import_by_csv(Backend::Sqlite).await;
}

#[tokio::test]
async fn csv_import_row_by_row_postgres() {
    import_by_csv(Backend::Postgres).await;
}

/// Files the import cannot read at all, and requests the registry refuses,
/// get a 4xx naming the fault; nothing a client sends is a 5xx.
#[tokio::test]
async fn bad_registry_requests_get_clear_4xx_answers() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    add_user(&app.db, "adm", Role::Admin).await;
    let h = Http::of(&app);
    let adm = h.api.token("adm").await;
    let import = "/api/v1/import/clients";
    for (content_type, body, want, says) in [
        ("text/csv", "", StatusCode::BAD_REQUEST, "header"),
        (
            "text/csv",
            "name,adress,district,street\n",
            StatusCode::BAD_REQUEST,
            "adress",
        ),
        (
            "text/csv",
            "name,address,district\n",
            StatusCode::BAD_REQUEST,
            "street",
        ),
        (
            "application/json",
            "name,address,district,street\n",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "text/csv",
        ),
        (
            "text/csv; charset=gbk",
            "name,address,district,street\n",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UTF-8",
        ),
    ] {
        let (status, answer) = h.csv(import, &adm, content_type, body.into()).await;
        assert_eq!(status, want, "{content_type} {body:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    // Over 5 MB, or over 20,000 rows: 413.
    let mut big = b"name,address,district,street\n".to_vec();
    big.resize(5 * 1024 * 1024 + 1, b'x');
    let (status, answer) = h.csv(import, &adm, "text/csv", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let mut many = String::from("name,address,district,street\n");
    for _ in 0..20_001 {
        many.push_str("a,b,c,d\n");
    }
    let (status, answer) = h.csv(import, &adm, "text/csv", many.into()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    // Over the server's usual 2 MB body limit but within 5 MB: read, and
    // each row judged (these notes are too long).
    let mut long = String::from("name,address,district,street,medical_notes\n");
    let notes = "字".repeat(4_001);
    for _ in 0..250 {
        long.push_str(&format!("a,b,c,d,{notes}\n"));
    }
    assert!(long.len() > 3_000_000);
    let (status, report) = h.csv(import, &adm, "text/csv", long.into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["failed"], 250);
    assert!(
        report["rows"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("medical_notes: ")
    );

    let client = json!({"name": "陈", "address": "x", "district": "越秀区", "street": "北京街"});
    let (status, body) = h.post("/api/v1/clients", &adm, client.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    let with = |k: &str, v: Value| {
        let mut c = client.clone();
        c[k] = v;
        c
    };
    let contact = |notify: Value| json!({"contacts": [{"name": "女儿", "phone": "13800138000", "notify": notify}]});
    let contacts = format!("/api/v1/clients/{id}/contacts");
    let cases: Vec<(Method, String, Value, StatusCode)> = vec![
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("name", json!("  ")),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("location", json!({"lat": 91, "lon": 0})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("birth_year", json!(1800)),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("language", json!("zh_CN")),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("subsidy_category", json!("rich")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("nmae", json!("x")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/clients".into(),
            with("name", json!("a\u{0}b")),
            StatusCode::CREATED,
        ),
        (
            Method::PUT,
            "/api/v1/clients/999999".into(),
            client.clone(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/api/v1/clients/99999999999999999999".into(),
            client.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            contacts.clone(),
            contact(json!({"channel": "webhook", "address": "ftp://x/"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            contacts.clone(),
            contact(json!({"channel": "email", "address": "not-an-address"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            contacts.clone(),
            contact(json!({"channel": "mqtt", "address": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            contacts.clone(),
            json!({"contacts": [{"id": 424242, "name": "x", "phone": "110"}]}),
            StatusCode::CONFLICT,
        ),
        (
            Method::PUT,
            contacts.clone(),
            json!({"contacts": [{"name": "x", "phone": "(020) 1234"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("/api/v1/clients/{id}/away"),
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "native", "id": "A1", "secret": "0011"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "native", "id": "A 1", "secret": KEY}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "gt06", "id": "A1", "secret": KEY}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "tcp", "id": "A1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "gt06", "id": "A1", "client_id": 999999}),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "sia_dc09", "id": "A2", "secret": KEY}),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json!({"protocol": "sia_dc09", "id": "A2"}),
            StatusCode::CONFLICT,
        ),
        (
            Method::PUT,
            "/api/v1/devices/nope".into(),
            json!({"protocol": "gt06", "client_id": null, "heartbeat_secs": null}),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/v1/carers".into(),
            json!({"provider_id": 999999, "name": "x", "location": {"lat": 0, "lon": 0}}),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/api/v1/providers".into(),
            json!({"name": "x", "service_types": [], "capacity": 1, "coverage": [{"district": "d"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/api/v1/carers/999999/duty".into(),
            json!({"on_duty": true, "busy": false}),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = h
            .call(method.clone(), &path, Some(&adm), Some(body.clone()))
            .await;
        assert_eq!(status, want, "{method} {path} {body}: {answer}");
        if !status.is_success() {
            assert!(answer["error"].is_string(), "{answer}");
        }
    }
    for path in [
        "/api/v1/clients?q=%00&district=%00",
        "/api/v1/alarms?device_id=%00&kind=%00",
        "/api/v1/devices?after=%00",
    ] {
        let (status, answer) = h.get(path, &adm).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    }
    for path in [
        "/api/v1/clients?limit=0",
        "/api/v1/alarms?limit=5000",
        "/api/v1/devices?protocol=tcp",
    ] {
        let (status, _) = h.get(path, &adm).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    }
    app.stop().await;
}

/// A resident's right of access: everything held about them, for an admin
/// only, the export itself on record — and nothing of anyone else.
async fn a_residents_data_is_exported(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut device = Device::connect(app.native).await;
    let (reply, _) = device
        .send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(reply, Reply::Ack { .. }), "{reply:?}");
    let incident = newest_incident(&app, 0).await;
    add_user(&app.db, "export.admin", Role::Admin).await;
    add_user(&app.db, "export.op", Role::Operator).await;
    let api = Api::of(&app);
    let op = api.token("export.op").await;
    let path = format!("/api/v1/clients/{}/export", city.client_id);
    assert_eq!(api.get(&path, Some(&op)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(api.get(&path, None).await.0, StatusCode::UNAUTHORIZED);
    // The operator reads the profile: that read is in the export's access log.
    let (status, _) = api
        .get(&format!("/api/v1/clients/{}", city.client_id), Some(&op))
        .await;
    assert_eq!(status, StatusCode::OK);
    let admin = api.token("export.admin").await;
    let (status, body) = api.get(&path, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["client"]["name"], "陈秀英");
    assert!(body["client"]["medical_notes"].is_string(), "{body}");
    let alarms = body["alarms"].as_array().unwrap();
    assert!(
        alarms
            .iter()
            .any(|a| a["device_id"] == city.device.as_str() && a["kind"] == "sos"),
        "{body}"
    );
    assert!(
        body["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == incident),
        "{body}"
    );
    assert!(
        body["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["incident_id"] == incident),
        "{body}"
    );
    let log = body["access_log"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|e| e["actor"] == "user:export.op" && e["action"] == "profile_read"),
        "{body}"
    );
    assert!(
        log.iter()
            .any(|e| e["actor"] == "user:export.admin" && e["action"] == "client_exported"),
        "{body}"
    );
    // Another resident's export holds none of hers.
    let other = app
        .db
        .insert_client(&NewClient {
            name: "李桂芬".into(),
            address: "广州市越秀区光塔街 9号".into(),
            district: "越秀区".into(),
            street: "光塔街".into(),
            lat: None,
            lon: None,
            language: "yue".into(),
            medical_notes: String::new(),
            medications: String::new(),
            allergies: String::new(),
            key_safe: String::new(),
            birth_year: None,
            subsidy_category: None,
        })
        .await
        .unwrap();
    let (status, theirs) = api
        .get(&format!("/api/v1/clients/{other}/export"), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(theirs["alarms"].as_array().unwrap().is_empty(), "{theirs}");
    assert!(
        theirs["incidents"].as_array().unwrap().is_empty(),
        "{theirs}"
    );
    let (status, _) = api.get("/api/v1/clients/999999/export", Some(&admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn a_residents_data_is_exported_sqlite() {
    a_residents_data_is_exported(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_residents_data_is_exported_postgres() {
    a_residents_data_is_exported(Backend::Postgres).await;
}
