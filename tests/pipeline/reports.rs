//! The city's reports on SQLite and PostgreSQL: an incident history generated
//! with a seeded RNG and imported through the store, the figures counted again
//! here in plain Rust from what was generated, and compared; the CLI; the
//! HTTP endpoints per role; and the times a live carer's answers leave behind.

use std::collections::{BTreeMap, BTreeSet};

use pingantong::api::auth::hash_password;
use pingantong::domain::{Action, Role, State};
use pingantong::sla::{self, Figures, GroupKey, Grouping, Measure, Month, SlaTargets};
use pingantong::store::{Db, NewUser, Transition, now_ms};
use pingantong_protocol::EventKind;
use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

mod history;

use history::*;

fn close_to(got: Option<f64>, part: u64, whole: u64, what: &str) {
    match got {
        None => assert_eq!(whole, 0, "{what}: no percentage though {whole} counted"),
        Some(p) => {
            let want = part as f64 * 100.0 / whole as f64;
            assert!((p - want).abs() < 1e-9, "{what}: {p} != {want}");
        }
    }
}

fn compare(what: &str, got: &Figures, want: &Expected) {
    let counts = (
        got.incidents_life_safety,
        got.incidents_technical,
        got.cancelled,
        got.merged,
        got.handled,
        got.handled_base,
    );
    let wanted = (
        want.life_safety,
        want.technical,
        want.cancelled,
        want.merged,
        want.handled,
        want.handled_base,
    );
    assert_eq!(counts, wanted, "{what}: counts");
    close_to(got.handled_pct, want.handled, want.handled_base, what);
    for (name, g, w) in [
        ("answer", &got.answer, want.answer),
        ("attend", &got.attend, want.attend),
    ] {
        assert_eq!(
            [g.measured, g.within, g.within_max],
            w,
            "{what}: {name} (measured, inner, outer)"
        );
        assert_eq!(g.pending, 0, "{what}: a past month has nothing pending");
        close_to(g.within_pct, w[1], w[0], what);
        close_to(g.within_max_pct, w[2], w[0], what);
    }
    let d = &got.devices;
    assert_eq!(
        (d.watched, d.online),
        (want.watched, want.online),
        "{what}: devices"
    );
    close_to(d.online_pct, want.online, want.watched, what);
    match d.uptime_pct {
        None => assert_eq!(want.watched_ms, 0),
        Some(p) => {
            let w = (want.watched_ms - want.offline_ms) as f64 * 100.0 / want.watched_ms as f64;
            assert!((p - w).abs() < 1e-9, "{what}: uptime {p} != {w}");
        }
    }
}

fn key_of(k: &GroupKey) -> String {
    match k {
        GroupKey::Provider { provider_id, .. } => format!("{provider_id:?}"),
        GroupKey::District { district } => district.clone(),
        GroupKey::Street { district, street } => format!("{district}/{street}"),
        GroupKey::Category {
            subsidy_category, ..
        } => subsidy_category.clone(),
    }
}

async fn connect(backend: Backend, dir: &std::path::Path) -> (Db, pingantong::Settings) {
    let settings = test_settings(backend, Broker::Embedded, dir);
    let db = Db::connect(&settings.store_config(4).unwrap())
        .await
        .unwrap();
    (db, settings)
}

async fn history_against_an_independent_count(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (db, settings) = connect(backend, dir.path()).await;
    let h = generate(&db, 20_251_130).await;
    let month: Month = MONTH.parse().unwrap();
    let targets = SlaTargets::default();
    let now = now_ms();

    for by in [
        Grouping::Provider,
        Grouping::District,
        Grouping::Street,
        Grouping::Category,
    ] {
        let report = sla::monthly_report(&db, month, by, &targets, now)
            .await
            .unwrap();
        assert_eq!(report.period.from_ms, NOV);
        assert_eq!(report.period.to_ms, DEC);
        let want = expected(&h, by);
        let got: BTreeMap<String, &Figures> = report
            .rows
            .iter()
            .map(|r| (key_of(&r.key), &r.figures))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{by:?}: groups"
        );
        for (k, w) in &want {
            compare(&format!("{by:?} {k}"), got[k], w);
        }
        // The whole city is the sum of its groups.
        let mut all = Expected::default();
        for w in want.values() {
            all.life_safety += w.life_safety;
            all.technical += w.technical;
            all.cancelled += w.cancelled;
            all.merged += w.merged;
            all.handled += w.handled;
            all.handled_base += w.handled_base;
            for i in 0..3 {
                all.answer[i] += w.answer[i];
                all.attend[i] += w.attend[i];
            }
            all.watched += w.watched;
            all.online += w.online;
            all.watched_ms += w.watched_ms;
            all.offline_ms += w.offline_ms;
        }
        compare(&format!("{by:?} total"), &report.total, &all);
    }

    // The generator produced every case this test is about.
    let total = expected(&h, Grouping::District)
        .values()
        .fold((0, 0, 0), |acc, e| {
            (acc.0 + e.cancelled, acc.1 + e.merged, acc.2 + e.attend[0])
        });
    assert!(total.0 >= 5 && total.1 >= 2 && total.2 >= 40, "{total:?}");

    let list = sla::breach_list(&db, month, &targets, now).await.unwrap();
    let got: BTreeSet<(i64, Measure, u64)> = list
        .breaches
        .iter()
        .map(|b| (b.incident_id, b.measure, b.limit_secs))
        .collect();
    assert_eq!(got, expected_breaches(&h));
    let find = |name: &str, m: Measure| {
        let id = h.named[name];
        list.breaches
            .iter()
            .find(|b| b.incident_id == id && b.measure == m)
    };
    let b = find("late_answer", Measure::Answer).unwrap();
    assert_eq!(b.why, "answered after 212 s (limit 180 s)");
    assert_eq!(b.actual_secs, Some(212));
    assert_eq!(b.intervals.received_to_claimed_ms, Some(212 * SEC));
    assert_eq!(b.provider_id, h.world.clients[0].contracted);
    assert_eq!(b.district, "越秀区");
    let b = find("never_claimed", Measure::Answer).unwrap();
    assert_eq!(b.why, "never answered by an operator (limit 180 s)");
    assert_eq!(b.actual_secs, None);
    assert_eq!(b.intervals.accepted_to_on_scene_ms, Some(19 * MIN));
    assert!(find("never_claimed", Measure::Attend).is_none());
    // Cancelled after a carer accepted, nobody arrived: no attend breach.
    assert!(find("false_alarm", Measure::Attend).is_none());
    assert!(find("false_alarm", Measure::Answer).is_none());
    let b = find("late_carer", Measure::Attend).unwrap();
    assert_eq!(b.why, "attended after 71 min (limit 60 min)");
    assert_eq!(b.intervals.dispatched_to_accepted_ms, Some(40 * SEC));
    let b = find("still_waiting", Measure::Answer).unwrap();
    assert!(b.why.starts_with("not answered yet after "), "{}", b.why);
    // The month's edges in China Standard Time.
    assert!(find("first_second", Measure::Answer).is_some());
    assert_eq!(
        find("last_second", Measure::Answer).unwrap().opened_local,
        "2025-11-30T23:59:59+08:00"
    );
    assert!(find("next_month", Measure::Answer).is_none());
    assert!(find("previous_month", Measure::Answer).is_none());
    let december = sla::breach_list(&db, month.next(), &targets, now)
        .await
        .unwrap();
    assert!(
        december
            .breaches
            .iter()
            .any(|b| b.incident_id == h.named["next_month"]),
        "2025-12-01 00:00 in Guangzhou is December, though still November in UTC"
    );

    // The command line prints the same figures.
    cli(&settings, &h, dir.path()).await;
    // Nothing a regulator reads carries a client's medical notes.
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains(SECRET_NOTES) && !json.contains("华法林"));
    db.close().await;
}

#[tokio::test]
async fn history_against_an_independent_count_sqlite() {
    history_against_an_independent_count(Backend::Sqlite).await;
}

#[tokio::test]
async fn history_against_an_independent_count_postgres() {
    history_against_an_independent_count(Backend::Postgres).await;
}

const CATEGORY_HEADER: &str = "month,subsidy_category,category_label,incidents_life_safety,\
incidents_technical,cancelled,merged,handled,handled_base,handled_pct,answer_measured,\
answer_pending,answered_within_60s,answered_within_60s_pct,answered_within_180s,\
answered_within_180s_pct,answer_target_met,attend_measured,attend_pending,\
attended_within_45min,attended_within_45min_pct,attended_within_60min,\
attended_within_60min_pct,attend_target_met,devices_watched,devices_online,\
devices_online_pct,device_uptime_pct,wellbeing_checks";

async fn run_cli(settings: &pingantong::Settings, dir: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pingantong"));
    cmd.arg("report")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(settings.database_url());
    if let Some(s) = &settings.database.schema {
        cmd.arg("--database-schema").arg(s);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("PAT_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn cli(settings: &pingantong::Settings, h: &History, dir: &std::path::Path) {
    let csv = run_cli(
        settings,
        dir,
        &["--month", MONTH, "--format", "csv", "--by", "category"],
    )
    .await;
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(lines[0], CATEGORY_HEADER);
    let e = &expected(h, Grouping::Category)["living_alone"];
    let pct = |part: u64, whole: u64| {
        if whole == 0 {
            String::new()
        } else {
            format!("{:.2}", part as f64 * 100.0 / whole as f64)
        }
    };
    let met = |c: [u64; 3], inner: f64, outer: f64| {
        if c[0] == 0 {
            String::new()
        } else {
            let ok = c[1] as f64 * 100.0 >= inner * c[0] as f64
                && c[2] as f64 * 100.0 >= outer * c[0] as f64;
            ok.to_string()
        }
    };
    let uptime = if e.watched_ms == 0 {
        String::new()
    } else {
        format!(
            "{:.2}",
            (e.watched_ms - e.offline_ms) as f64 * 100.0 / e.watched_ms as f64
        )
    };
    let want = [
        MONTH.to_owned(),
        "living_alone".into(),
        "独居".into(),
        e.life_safety.to_string(),
        e.technical.to_string(),
        e.cancelled.to_string(),
        e.merged.to_string(),
        e.handled.to_string(),
        e.handled_base.to_string(),
        pct(e.handled, e.handled_base),
        e.answer[0].to_string(),
        "0".into(),
        e.answer[1].to_string(),
        pct(e.answer[1], e.answer[0]),
        e.answer[2].to_string(),
        pct(e.answer[2], e.answer[0]),
        met(e.answer, 97.5, 99.0),
        e.attend[0].to_string(),
        "0".into(),
        e.attend[1].to_string(),
        pct(e.attend[1], e.attend[0]),
        e.attend[2].to_string(),
        pct(e.attend[2], e.attend[0]),
        met(e.attend, 90.0, 100.0),
        e.watched.to_string(),
        e.online.to_string(),
        pct(e.online, e.watched),
        uptime,
        // The generated month has no wellbeing calls (counting them is unit-tested in src/sla).
        "0".into(),
    ]
    .join(",");
    assert!(lines.contains(&want.as_str()), "{want}\nnot in\n{csv}");
    assert!(
        lines.iter().any(|l| l.starts_with("2025-11,,(all),")),
        "the city's total: {csv}"
    );

    let json = run_cli(settings, dir, &["--month", MONTH, "--breaches"]).await;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["month"], MONTH);
    assert_eq!(
        v["breaches"].as_array().unwrap().len(),
        expected_breaches(h).len()
    );
}

/// The HTTP side of a test server.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn token(&self, db: &Db, username: &str, role: Role, carer_id: Option<i64>) -> String {
        const PASSWORD: &str = "correct horse battery";
        let hash = hash_password(PASSWORD).unwrap();
        db.add_user(
            &NewUser {
                username,
                password_hash: &hash,
                role,
                carer_id,
                provider_id: None,
            },
            "test",
        )
        .await
        .unwrap();
        let r: Value = self
            .http
            .post(format!("{}/api/v1/session", self.base))
            .json(&serde_json::json!({ "username": username, "password": PASSWORD }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["token"].as_str().unwrap().to_owned()
    }

    /// (status, content type, body)
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, ct, r.text().await.unwrap())
    }
}

async fn endpoints_by_role(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let mut rng = StdRng::seed_from_u64(7);
    let world = seed_world(&app.db, &mut rng, 5).await;
    let t = NOV + 3 * 24 * HOUR;
    let (carer, provider) = (world.carers[&world.fallback][0], world.fallback);
    let stories = [
        Story::new("a".into(), 0, "sos", t)
            .at(t + 212 * SEC, Step::Claim)
            .at(t + 5 * MIN, Step::Resolve),
        Story::new("b".into(), 2, "fall", t + HOUR)
            .at(t + HOUR + 10 * SEC, Step::Claim)
            .at(t + HOUR + 20 * SEC, Step::Offer(carer, provider))
            .at(t + HOUR + MIN, Step::Accept(0))
            .at(t + HOUR + 30 * MIN, Step::Arrive(0)),
    ];
    let imported: Vec<_> = stories.into_iter().map(|s| s.build(&world).0).collect();
    let ids = app.db.import_incident_history(&imported).await.unwrap();
    let api = Api {
        base: format!("http://{}", app.addrs.http),
        http: reqwest::Client::new(),
    };
    let monthly = format!("/api/v1/reports/monthly?month={MONTH}&by=provider&format=json");
    let breaches = format!("/api/v1/sla/breaches?month={MONTH}");

    for path in [&monthly, &breaches] {
        let (status, _, body) = api.get(path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    }
    for (name, role, carer_id) in [
        ("op", Role::Operator, None),
        ("carer", Role::Carer, Some(carer)),
    ] {
        let token = api.token(&app.db, name, role, carer_id).await;
        for path in [&monthly, &breaches] {
            let (status, _, body) = api.get(path, Some(&token)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {body}");
            assert!(body.contains("regulator"), "{body}");
        }
    }

    let reg = api.token(&app.db, "city", Role::Regulator, None).await;
    let (status, ct, body) = api.get(&monthly, Some(&reg)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ct, "application/json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["month"], MONTH);
    assert_eq!(v["by"], "provider");
    assert_eq!(v["total"]["incidents_life_safety"], 2);
    assert_eq!(v["total"]["answer"]["measured"], 2);
    assert_eq!(v["total"]["answer"]["within"], 1);
    assert_eq!(v["total"]["attend"]["within"], 1);
    assert_eq!(v["targets"]["answer_secs"], 60);
    for secret in [SECRET_NOTES, "华法林", "住户0"] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }

    let (status, ct, body) = api
        .get(
            &format!("/api/v1/reports/monthly?month={MONTH}&by=district&format=csv"),
            Some(&reg),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ct, "text/csv; charset=utf-8");
    assert!(
        body.starts_with("month,district,incidents_life_safety,"),
        "{body}"
    );
    assert!(body.contains("\r\n2025-11,越秀区,1,0,"), "{body}");

    let (status, _, body) = api.get(&breaches, Some(&reg)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let list = v["breaches"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["incident_id"], ids[0]);
    assert_eq!(list[0]["why"], "answered after 212 s (limit 180 s)");

    for role in [Role::Supervisor, Role::Admin] {
        let token = api.token(&app.db, role.as_str(), role, None).await;
        let (status, ct, body) = api
            .get(&format!("{breaches}&format=csv"), Some(&token))
            .await;
        assert_eq!(status, StatusCode::OK, "{role}: {body}");
        assert_eq!(ct, "text/csv; charset=utf-8");
        assert!(body.starts_with("incident_id,opened_local,"), "{body}");
    }

    for bad in [
        "/api/v1/reports/monthly?month=2025-13",
        "/api/v1/reports/monthly?month=2025-11&by=client",
        "/api/v1/reports/monthly?month=2025-11&format=xml",
        "/api/v1/reports/monthly",
        "/api/v1/sla/breaches?month=2025-11&by=provider",
    ] {
        let (status, _, body) = api.get(bad, Some(&reg)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    }

    // Both are in the OpenAPI document.
    let (status, _, body) = api.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    for path in ["/api/v1/reports/monthly", "/api/v1/sla/breaches"] {
        let op = &doc["paths"][path]["get"];
        assert_eq!(op["tags"][0], "reports", "{path}: {op}");
        let params: Vec<_> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, ["month", "by", "format"], "{path}");
    }

    // Who read what is in the audit log.
    const READS: &str =
        "SELECT actor, subject FROM audit_log WHERE action = 'report_read' ORDER BY id";
    let reads: Vec<(String, String)> = match &app.db {
        Db::Sqlite { read, .. } => sqlx::query_as(READS).fetch_all(read).await.unwrap(),
        Db::Postgres(p, _) => sqlx::query_as(READS).fetch_all(p).await.unwrap(),
    };
    assert_eq!(
        reads[0],
        ("user:city".to_owned(), format!("report:monthly:{MONTH}"))
    );
    assert!(reads.contains(&(
        "user:supervisor".to_owned(),
        format!("report:breaches:{MONTH}")
    )));
    assert_eq!(reads.len(), 5, "{reads:?}");
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn endpoints_by_role_sqlite() {
    endpoints_by_role(Backend::Sqlite).await;
}

#[tokio::test]
async fn endpoints_by_role_postgres() {
    endpoints_by_role(Backend::Postgres).await;
}

/// A real alarm, a real carer's answers over MQTT: the offer keeps the times
/// of its accept and arrival, and this month's report counts them.
async fn live_carer_times(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let offers = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    let probe = MqttProbe::connect(&host, port, std::slice::from_ref(&offers)).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let offer = eventually("the offer", || async {
        probe.on(&offers).into_iter().next()
    })
    .await;
    let dispatch = offer["dispatch_id"].as_i64().unwrap();
    let incident = offer["incident_id"].as_i64().unwrap();
    let replies = format!("{prefix}/v1/carers/{}/reply", city.near_carer);
    for (action, state) in [
        ("accept", State::CarerAccepted),
        ("arrived", State::OnScene),
    ] {
        probe
            .publish(
                &replies,
                serde_json::json!({"v": 1, "dispatch_id": dispatch, "action": action}),
            )
            .await;
        eventually(action, || async {
            (app.db.incident_state(incident).await.unwrap() == Some(state)).then_some(())
        })
        .await;
    }
    let now = now_ms();
    let month = Month::containing(now);
    let data = app
        .db
        .sla_data(month.start_ms(), month.end_ms())
        .await
        .unwrap();
    let d = &data.dispatches[0];
    let (accepted, arrived) = (d.accepted_at.unwrap(), d.arrived_at.unwrap());
    assert!(d.offered_at <= accepted && accepted <= arrived && arrived <= now);
    let targets = SlaTargets::default();
    let r = sla::monthly_report(&app.db, month, Grouping::Provider, &targets, now)
        .await
        .unwrap();
    assert_eq!(r.total.attend.measured, 1);
    assert_eq!(r.total.attend.within, 1);
    // Nobody has claimed it yet, and it is young: pending, not a breach.
    assert_eq!(r.total.answer.pending, 1);
    let claim = Transition {
        incident_id: incident,
        action: Action::Claim,
        actor: "operator:wang",
        detail: "",
        outcome: None,
        merged_into: None,
        take_over: false,
    };
    app.db.transition(&claim).await.unwrap();
    let r = sla::monthly_report(&app.db, month, Grouping::Provider, &targets, now_ms())
        .await
        .unwrap();
    assert_eq!((r.total.answer.measured, r.total.answer.within), (1, 1));
    let row = r
        .rows
        .iter()
        .find(|row| row.figures.incidents_life_safety == 1)
        .unwrap();
    assert!(
        matches!(&row.key, GroupKey::Provider { provider: p, .. } if p == "越秀区颐康中心"),
        "the provider whose carer went: {:?}",
        row.key
    );
    app.stop().await;
}

#[tokio::test]
async fn live_carer_times_sqlite() {
    live_carer_times(Backend::Sqlite).await;
}

#[tokio::test]
async fn live_carer_times_postgres() {
    live_carer_times(Backend::Postgres).await;
}
