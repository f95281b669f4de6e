//! The web console in a real headless Chromium: an operator logs in, an SOS
//! pressed over the native protocol appears in the live queue, and the
//! operator takes it to closed through the page — closing it from "Waiting to
//! be closed" after a reload — and records a wellbeing call; then a regulator
//! reads the month's report (tests/browser/console.mjs, driven by Playwright).
//! Also: the console's files are served as they should be.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingantong::api::auth::hash_password;
use pingantong::domain::Role;
use pingantong::domain::State;
use pingantong::sla::Month;
use pingantong::store::{ImportedEvent, ImportedIncident, NewClient, NewDevice, NewUser, now_ms};
use pingantong_protocol::EventKind;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

const OPERATOR: &str = "op.browser";
const CARER: &str = "carer.browser";
const REGULATOR: &str = "reg.browser";
const ADMIN: &str = "admin.zhou";
/// On the wellbeing list: her pendant was never pressed or tested (console.mjs looks for her).
const QUIET_RESIDENT: &str = "王桂兰";
/// How long the script may take before it is killed (it gives up by itself after 120 s).
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);
const HOW_TO_INSTALL: &str = "install them as ops/test.sh does: `apt-get install -y chromium` \
     (Debian's package; node 20 and npm come with the machine) and `npm ci --prefix tests/browser`";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("PAT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Node, Chromium and Playwright must be there: missing, the test fails and says how to get them.
fn require_browser_tools() {
    let node = std::process::Command::new("node").arg("--version").output();
    match node {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`node --version` failed ({}); {HOW_TO_INSTALL}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("node is not installed ({e}); {HOW_TO_INSTALL}"),
    }
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "Chromium is not at {} (set PAT_CHROMIUM to use another); {HOW_TO_INSTALL}",
        chromium.display()
    );
    let playwright = root().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "playwright-core is not installed in tests/browser; {HOW_TO_INSTALL}"
    );
}

/// Everything the script printed, for the failure message.
#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<String>>);

impl Transcript {
    fn push(&self, stream: &str, line: &str) {
        let mut t = self.0.lock().unwrap();
        t.push_str(stream);
        t.push_str(line);
        t.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn operator_takes_an_sos_to_closed_in_headless_chromium() {
    require_browser_tools();
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    add_user(&app.db, OPERATOR, Role::Operator).await;
    // The carer the server suggests first, with an account to answer from.
    app.db
        .add_user(
            &NewUser {
                username: CARER,
                password_hash: &hash_password(PASSWORD).unwrap(),
                role: Role::Carer,
                carer_id: Some(city.near_carer),
                provider_id: None,
            },
            "test",
        )
        .await
        .unwrap();
    add_user(&app.db, REGULATOR, Role::Regulator).await;
    add_user(&app.db, ADMIN, Role::Admin).await;
    let quiet = app
        .db
        .insert_client(&NewClient {
            name: QUIET_RESIDENT.into(),
            address: "广州市越秀区光塔街 3号 502室".into(),
            district: "越秀区".into(),
            street: "光塔街".into(),
            lat: Some(23.1268),
            lon: Some(113.2590),
            language: "yue".into(),
            medical_notes: String::new(),
            medications: String::new(),
            allergies: String::new(),
            key_safe: String::new(),
            birth_year: Some(1941),
            subsidy_category: Some("advanced_age".into()),
        })
        .await
        .unwrap();
    let quiet_pendant = unique("PQ").replace('_', "-");
    app.db
        .upsert_device(&NewDevice {
            id: quiet_pendant.clone(),
            protocol: "native".into(),
            secret: b"a pendant nobody has pressed yet".to_vec(),
            client_id: Some(quiet),
        })
        .await
        .unwrap();
    let past = slow_answer_this_month(&app.db, &city).await;
    let url = format!("http://{}/", app.addrs.http);
    let png = root().join("target/browser/console.png");
    let reports_png = root().join("target/browser/reports.png");
    let _ = std::fs::remove_file(&png);
    let _ = std::fs::remove_file(&reports_png);

    let started = Instant::now();
    let mut child = tokio::process::Command::new("node")
        .arg(root().join("tests/browser/console.mjs"))
        .arg(&url)
        .arg(OPERATOR)
        .arg(PASSWORD)
        .arg(&png)
        .arg(CARER)
        .arg(REGULATOR)
        .arg(ADMIN)
        .arg(&quiet_pendant)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}; {HOW_TO_INSTALL}"));
    let transcript = Transcript::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let out = {
        let (t, mut lines) = (
            transcript.clone(),
            BufReader::new(child.stdout.take().unwrap()).lines(),
        );
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                t.push("", &line);
                if line.trim() == "READY"
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        })
    };
    let err = {
        let (t, mut lines) = (
            transcript.clone(),
            BufReader::new(child.stderr.take().unwrap()).lines(),
        );
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                t.push("stderr: ", &line);
            }
        })
    };

    // The script is logged in with the queue on screen: press the SOS.
    let ready = tokio::time::timeout(SCRIPT_LIMIT, ready_rx).await;
    let mut pendant = None;
    if matches!(ready, Ok(Ok(()))) {
        let mut dev = Device::connect(app.native).await;
        dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
            .await;
        pendant = Some(dev);
    }
    let left = SCRIPT_LIMIT.saturating_sub(started.elapsed());
    let status = match tokio::time::timeout(left, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = child.kill().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), out).await;
            panic!(
                "the browser test did not end within {SCRIPT_LIMIT:?}; killed. Output:\n{}",
                transcript.text()
            );
        }
    };
    // The pipes close with the process; read them to the end.
    let _ = tokio::time::timeout(Duration::from_secs(5), out).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), err).await;
    drop(pendant);
    let output = transcript.text();
    println!(
        "{output}browser test: {status} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        ready.is_ok_and(|r| r.is_ok()),
        "the script never printed READY:\n{output}"
    );
    assert!(
        status.success(),
        "the browser test failed ({status}):\n{output}"
    );

    // What the page did is what the server holds.
    let incidents = app.db.incidents_overview().await.unwrap();
    let live: Vec<_> = incidents.iter().filter(|i| i.0 != past).collect();
    assert_eq!(live.len(), 1, "{incidents:?}");
    let id = live[0].0;
    let s = app.db.incident_summary(id).await.unwrap().unwrap();
    assert_eq!(s.state, "closed");
    assert_eq!(s.outcome.as_deref(), Some("help_given"));
    assert_eq!(
        s.claimed_by.as_deref(),
        Some(&*format!("operator:{OPERATOR}"))
    );
    let audit = app
        .db
        .audit_trail(Some(&format!("incident:{id}")), 100)
        .await
        .unwrap();
    let actor = format!("user:{OPERATOR}");
    for action in [
        "incident_claim",
        "incident_dispatch",
        "incident_handoff",
        "incident_resolve",
        "incident_close",
    ] {
        assert!(
            audit.iter().any(|e| e.action == action && e.actor == actor),
            "{action} by {actor} missing from {audit:?}"
        );
    }
    let carer_said: Vec<String> = app
        .db
        .audit_trail(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == format!("user:{CARER}"))
        .map(|e| e.action)
        .collect();
    for action in ["dispatch_accept", "dispatch_arrived"] {
        assert!(
            carer_said.iter().any(|a| a == action),
            "{action} by {CARER}: {carer_said:?}"
        );
    }
    // The wellbeing call: on the audit chain, and she is off the list.
    let called = app
        .db
        .audit_trail(Some(&format!("client:{quiet}")), 100)
        .await
        .unwrap();
    assert!(
        called
            .iter()
            .any(|e| e.action == "wellbeing_check" && e.actor == actor && e.detail == "well"),
        "{called:?}"
    );
    let now = now_ms();
    let still = app
        .db
        .wellbeing_list(now - 24 * 3_600_000, now, 100)
        .await
        .unwrap();
    assert!(still.iter().all(|r| r.client_id != quiet), "{still:?}");
    // The regulator read the report and the breach list, and nothing else.
    let regulator = format!("user:{REGULATOR}");
    let read: Vec<(String, String)> = app
        .db
        .audit_trail(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == regulator)
        .map(|e| (e.action, e.subject))
        .collect();
    for subject in ["report:monthly:", "report:breaches:"] {
        assert!(
            read.iter()
                .any(|(a, s)| a == "report_read" && s.starts_with(subject)),
            "{subject} by {regulator}: {read:?}"
        );
    }
    assert!(
        read.iter()
            .all(|(a, _)| ["login", "logout", "report_read"].contains(&a.as_str())),
        "{read:?}"
    );
    // The admin disabled the regulator's account and issued, then revoked,
    // the quiet pendant's MQTT credential, each under the admin's name.
    let admin = format!("user:{ADMIN}");
    let trail = app.db.audit_trail(None, 1000).await.unwrap();
    let did = |action: &str, subject: &str| {
        trail
            .iter()
            .any(|e| e.actor == admin && e.action == action && e.subject == subject)
    };
    assert!(
        did("user_disabled", &format!("user:{REGULATOR}")),
        "{trail:?}"
    );
    let mqtt_subject = format!("mqtt:devices/{quiet_pendant}");
    assert!(did("mqtt_credential_issued", &mqtt_subject), "{trail:?}");
    assert!(did("mqtt_credential_revoked", &mqtt_subject), "{trail:?}");
    let creds = app.db.mqtt_credentials().await.unwrap();
    assert!(
        creds
            .iter()
            .any(|c| c.username == format!("devices/{quiet_pendant}") && c.revoked),
        "{creds:?}"
    );
    assert_eq!(
        app.db
            .login_user(REGULATOR)
            .await
            .unwrap()
            .map(|u| u.disabled),
        Some(true)
    );
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    for shot in [&png, &reports_png] {
        let bytes = std::fs::read(shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(
            bytes.len() > 10_000,
            "a screenshot of {} bytes",
            bytes.len()
        );
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    }
    app.stop().await;
}

/// An SOS of hers earlier this month that an operator answered after 212 s and
/// closed: the regulator's report has a missed target and a breach to show.
/// Returns its incident id.
async fn slow_answer_this_month(db: &pingantong::store::Db, city: &City) -> i64 {
    let now = now_ms();
    let opened = (now - 20 * 60_000).max(Month::containing(now).start_ms());
    let step = |at: i64, action: &str, from: State, to: State| ImportedEvent {
        at,
        actor: "operator:op.earlier".into(),
        action: action.into(),
        from_state: Some(from.as_str().into()),
        to_state: Some(to.as_str().into()),
        detail: String::new(),
    };
    let claimed = opened + 212_000;
    let incident = ImportedIncident {
        source_ref: "browser-test-slow-answer".into(),
        client_id: Some(city.client_id),
        device_id: city.device.clone(),
        kind: "sos".into(),
        lane: "life_safety".into(),
        state: State::Closed,
        outcome: Some("no_action_needed".into()),
        claimed_by: Some("operator:op.earlier".into()),
        device_time: None,
        received_at: opened,
        opened_at: opened,
        closed_at: Some(claimed + 120_000),
        events: vec![
            ImportedEvent {
                at: opened,
                actor: "system".into(),
                action: "opened".into(),
                from_state: None,
                to_state: Some("queued".into()),
                detail: String::new(),
            },
            step(claimed, "claim", State::Queued, State::Claimed),
            step(claimed + 60_000, "resolve", State::Claimed, State::Resolved),
            step(claimed + 120_000, "close", State::Resolved, State::Closed),
        ],
        dispatches: Vec::new(),
    };
    db.import_incident_history(&[incident]).await.unwrap()[0]
}

/// The page and its modules, with their types and no caching; the API's
/// JSON answers are unchanged around them.
#[tokio::test]
async fn the_console_files_are_served() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let api = Api::of(&app);
    let get = |path: &str| api.http.get(api.url(path)).send();
    let r = get("/").await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("<meta charset=\"utf-8\">"));
    assert!(page.contains("/console/app.js"));
    for (path, kind) in [
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/feed.js", "text/javascript; charset=utf-8"),
        ("/console/i18n.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    let style = get("/console/style.css")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(style.contains("Noto Sans CJK SC") && style.contains("Microsoft YaHei"));
    // Unknown files and routes: the API's JSON 404; the API itself is untouched.
    for path in [
        "/console/nothing.js",
        "/console/../Cargo.toml",
        "/index.php",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (status, doc) = api.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| p != "/" && !p.starts_with("/console")));
    let (status, _) = api.get("/api/v1/incidents", None).await;
    assert_eq!(status, 401);
    app.stop().await;
}
