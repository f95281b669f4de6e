//! Family and keyholder notices: the cascade in the client's order, every
//! channel for real (a webhook server, an SMTP server, the broker), retries
//! with backoff on a hand-driven clock, and failures surfaced to the
//! operator's timeline and the supervisors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use pingantong::config::Secret;
use pingantong::store::{Cascade, Db, NewContact, NotificationRow};
use pingantong_protocol::EventKind;

use crate::helpers::*;

/// A family's web service: fails its first `failures` calls with `status`.
/// With a gate, each call is recorded as it arrives and answered only once
/// the gate lets it through.
#[derive(Clone, Default)]
struct Hook {
    failures: usize,
    status: u16,
    calls: Arc<Mutex<Vec<(HeaderMap, axum::body::Bytes)>>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Hook {
    async fn start(failures: usize, status: u16) -> (Self, String) {
        Self::serve(Hook {
            failures,
            status,
            ..Default::default()
        })
        .await
    }

    /// A hook that holds every call until `gate` has a permit for it.
    async fn gated(gate: Arc<tokio::sync::Semaphore>) -> (Self, String) {
        Self::serve(Hook {
            gate: Some(gate),
            ..Default::default()
        })
        .await
    }

    async fn serve(hook: Hook) -> (Self, String) {
        let app = axum::Router::new()
            .route("/family", post(receive))
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/family", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hook, url)
    }

    fn calls(&self) -> Vec<(HeaderMap, axum::body::Bytes)> {
        self.calls.lock().unwrap().clone()
    }

    /// The JSON of call `n`, after checking its signature covers exactly the bytes sent.
    fn notice(&self, n: usize) -> serde_json::Value {
        let (headers, body) = &self.calls()[n];
        let sig = headers
            .get("x-pingantong-signature")
            .and_then(|v| v.to_str().ok())
            .expect("a signed notice");
        assert_eq!(
            sig,
            pingantong::notify::sign(WEBHOOK_SECRET.as_bytes(), body)
        );
        assert_eq!(headers["content-type"], "application/json");
        serde_json::from_slice(body).expect("a JSON notice")
    }
}

async fn receive(
    State(hook): State<Hook>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = {
        let mut calls = hook.calls.lock().unwrap();
        calls.push((headers, body));
        calls.len()
    };
    if let Some(gate) = &hook.gate {
        gate.acquire().await.unwrap().forget();
    }
    if n <= hook.failures {
        StatusCode::from_u16(hook.status).unwrap()
    } else {
        StatusCode::NO_CONTENT
    }
}

const WEBHOOK_SECRET: &str = "family-hook-secret";

/// An SMTP server on loopback that keeps what it receives.
fn smtp_server() -> (String, std::sync::mpsc::Receiver<mogimail::Email>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = mogimail::SmtpServer::new("mail.test").start(&format!("127.0.0.1:{port}"), tx);
    });
    // Ready when it accepts.
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(5), "SMTP server up");
        std::thread::sleep(Duration::from_millis(10));
    }
    (format!("smtp://127.0.0.1:{port}"), rx)
}

/// The text of a base64-encoded mail body (the lines that are base64).
fn mail_text(data: &str) -> String {
    use base64::Engine;
    let body: String = data
        .lines()
        .filter(|l| {
            l.len() >= 16
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        })
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("a base64 body");
    String::from_utf8(bytes).expect("UTF-8 text")
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/family")
}

async fn add_contacts(db: &Db, client_id: i64, contacts: &[(&str, &str)]) {
    for (i, (channel, address)) in contacts.iter().enumerate() {
        db.insert_contact(&NewContact {
            client_id,
            position: i as i64 + 1,
            name: format!("家属{}", i + 1),
            relation: "女儿".into(),
            phone: "13800000000".into(),
            notify: Some(((*channel).into(), (*address).into())),
        })
        .await
        .unwrap();
    }
}

struct Family {
    clock: ManualClock,
    app: TestApp,
    city: City,
    probe: MqttProbe,
    prefix: String,
}

async fn family(
    backend: Backend,
    cascade: Cascade,
    max_attempts: u32,
    smtp_url: Option<String>,
) -> Family {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = {
        let mut s = test_settings(backend, Broker::Embedded, dir.path());
        s.notify.cascade = cascade;
        s.notify.max_attempts = max_attempts;
        s.notify.retry_secs = 5;
        s.notify.retry_max_secs = 60;
        s.notify.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        s.notify.smtp_url = smtp_url.map(Secret::new);
        s
    };
    let prefix = s.mqtt.topic_prefix.clone();
    let app = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    let city = seed_small_city(&app.db).await;
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(
        &host,
        port,
        &[
            format!("{prefix}/v1/supervisors/alerts"),
            format!("{prefix}/v1/contacts/+/notices"),
        ],
    )
    .await;
    Family {
        clock,
        app,
        city,
        probe,
        prefix,
    }
}

async fn press(f: &Family, kind: EventKind) -> i64 {
    let mut dev = Device::connect(f.app.native).await;
    dev.send(&event(&f.city.device, 1, kind), &f.city.secret)
        .await;
    newest_incident(&f.app.db).await
}

/// An SOS from each city's resident; their incidents, once all are open.
async fn sos_from_each(f: &Family, cities: &[City]) -> Vec<i64> {
    for c in cities {
        let mut dev = Device::connect(f.app.native).await;
        dev.send(&event(&c.device, 1, EventKind::Sos), &c.secret)
            .await;
    }
    eventually("an incident per resident", || async {
        let ids: Vec<i64> = f
            .app
            .db
            .incidents_overview()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        (ids.len() == cities.len()).then_some(ids)
    })
    .await
}

async fn notices_until<F>(db: &Db, incident: i64, what: &str, done: F) -> Vec<NotificationRow>
where
    F: Fn(&[NotificationRow]) -> bool,
{
    eventually(what, || async {
        let rows = db.notifications_of(incident).await.unwrap();
        done(&rows).then_some(rows)
    })
    .await
}

fn statuses(rows: &[NotificationRow]) -> Vec<(&str, i64)> {
    rows.iter()
        .map(|r| (r.status.as_str(), r.attempts))
        .collect()
}

async fn a_busy_webhook_is_retried_until_it_takes_the_notice(backend: Backend) {
    let (hook, url) = Hook::start(2, 503).await;
    let f = family(backend, Cascade::UntilReached, 5, None).await;
    add_contacts(
        &f.app.db,
        f.city.client_id,
        &[("webhook", &url), ("mqtt", "")],
    )
    .await;
    let incident = press(&f, EventKind::Sos).await;

    let rows = notices_until(&f.app.db, incident, "the first attempt failed", |r| {
        r[0].attempts == 1 && r[0].last_error.is_some()
    })
    .await;
    assert_eq!(statuses(&rows), vec![("pending", 1), ("waiting", 0)]);
    assert!(rows[0].last_error.as_deref().unwrap().contains("503"));
    // Backoff: 5 s, then 10 s. Nothing is retried before its time.
    f.clock.advance(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.calls().len(), 1, "no retry before 5 s");
    f.clock.advance(Duration::from_secs(1));
    notices_until(&f.app.db, incident, "the second attempt", |r| {
        r[0].attempts == 2
    })
    .await;
    f.clock.advance(Duration::from_secs(10));
    let rows = notices_until(&f.app.db, incident, "delivered", |r| {
        r[0].status == "delivered"
    })
    .await;
    // Reached: the cascade stops, the next contact is not bothered.
    assert_eq!(statuses(&rows), vec![("delivered", 3), ("skipped", 0)]);
    let app_notices = f.probe.received.lock().unwrap().len();
    assert_eq!(app_notices, 0, "the second contact's app was not told");

    assert_eq!(hook.calls().len(), 3);
    let notice = &hook.notice(2);
    assert_eq!(notice["incident_id"], incident);
    assert_eq!(notice["kind"], "sos");
    assert_eq!(notice["resident"], "陈秀英");
    assert_eq!(notice["contact"], "家属1");
    // The pendant's own position, as Guangzhou's rules ask relatives be given.
    assert_eq!(notice["location"]["source"], "device");
    assert_eq!(notice["location"]["lat"], 23.1291);
    assert!(notice["message_zh"].as_str().unwrap().contains("北京街"));
    let timeline = f.app.db.incident_actions(incident).await.unwrap();
    assert!(
        timeline.contains(&"family_notified".to_owned()),
        "{timeline:?}"
    );
    assert!(!timeline.contains(&"family_notice_failed".to_owned()));
    f.app.stop().await;
}

#[tokio::test]
async fn a_busy_webhook_is_retried_sqlite() {
    a_busy_webhook_is_retried_until_it_takes_the_notice(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_busy_webhook_is_retried_postgres() {
    a_busy_webhook_is_retried_until_it_takes_the_notice(Backend::Postgres).await;
}

#[tokio::test]
async fn an_unreachable_contact_is_surfaced_and_the_next_one_gets_an_email() {
    let (smtp, mail) = smtp_server();
    let f = family(Backend::Sqlite, Cascade::UntilReached, 2, Some(smtp)).await;
    add_contacts(
        &f.app.db,
        f.city.client_id,
        &[
            ("webhook", &closed_port_url()),
            ("email", "daughter@family.test"),
            ("mqtt", ""),
        ],
    )
    .await;
    let incident = press(&f, EventKind::Fall).await;
    notices_until(&f.app.db, incident, "the first attempt", |r| {
        r[0].attempts == 1
    })
    .await;
    f.clock.advance(Duration::from_secs(5));
    let rows = notices_until(&f.app.db, incident, "e-mail delivered", |r| {
        r[1].status == "delivered"
    })
    .await;
    assert_eq!(
        statuses(&rows),
        vec![("failed", 2), ("delivered", 1), ("skipped", 0)]
    );
    assert!(rows[0].last_error.as_deref().unwrap().contains("webhook"));

    let email = mail
        .recv_timeout(Duration::from_secs(5))
        .expect("the e-mail arrived");
    assert_eq!(email.to, vec!["daughter@family.test".to_owned()]);
    assert!(email.data.contains("Ping An Tong alarm"), "{}", email.data);
    assert!(email.data.contains("charset=utf-8"), "{}", email.data);
    let text = mail_text(&email.data);
    assert!(text.contains("陈秀英"), "{text}");
    assert!(text.contains(&format!("#{incident} fall")), "{text}");
    assert!(text.contains("openstreetmap.org/?mlat=23.12910"), "{text}");

    // The operator sees why on the timeline; the supervisors heard of it.
    let timeline = f.app.db.incident_actions(incident).await.unwrap();
    assert!(
        timeline.contains(&"family_notice_failed".to_owned()),
        "{timeline:?}"
    );
    assert!(
        timeline.contains(&"family_notified".to_owned()),
        "{timeline:?}"
    );
    let alerts = eventually("the supervisors' alert", || async {
        let a = f.probe.on(&format!("{}/v1/supervisors/alerts", f.prefix));
        a.iter()
            .any(|a| a["kind"] == "family_notice_failed")
            .then_some(a)
    })
    .await;
    assert!(alerts.iter().all(|a| a["kind"] != "family_not_reached"));
    f.app.stop().await;
}

#[tokio::test]
async fn everyone_hears_at_once_and_nobody_reached_is_an_alert() {
    let (hook, url) = Hook::start(usize::MAX, 410).await;
    let f = family(Backend::Sqlite, Cascade::Everyone, 3, None).await;
    add_contacts(
        &f.app.db,
        f.city.client_id,
        &[
            ("mqtt", ""),
            ("webhook", &url),
            ("email", "son@family.test"),
        ],
    )
    .await;
    let incident = press(&f, EventKind::Medical).await;
    let rows = notices_until(&f.app.db, incident, "every contact settled", |r| {
        r.iter().all(|n| n.status != "pending")
    })
    .await;
    // A 410 and an e-mail with no mail server configured: no retry can help.
    assert_eq!(
        statuses(&rows),
        vec![("delivered", 1), ("failed", 1), ("failed", 1)]
    );
    assert!(rows[2].last_error.as_deref().unwrap().contains("email"));
    assert_eq!(hook.calls().len(), 1);
    let notices = eventually("the app's notice", || async {
        let n = f.probe.on(&format!(
            "{}/v1/contacts/{}/notices",
            f.prefix, rows[0].contact_id
        ));
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert_eq!(notices[0]["kind"], "medical");
    assert_eq!(notices[0]["incident_id"], incident);
    // Someone was reached: no "nobody reached" alert.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let timeline = f.app.db.incident_actions(incident).await.unwrap();
    assert!(!timeline.contains(&"family_not_reached".to_owned()));
    // The medical rule advises 120 on the incident itself.
    let summary = f.app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.advised_service.as_deref(), Some("120"));
    assert!(
        timeline.contains(&"handoff_advised".to_owned()),
        "{timeline:?}"
    );
    f.app.stop().await;

    // A family whose only contact cannot be reached at all.
    let f = family(Backend::Sqlite, Cascade::UntilReached, 2, None).await;
    add_contacts(&f.app.db, f.city.client_id, &[("webhook", &url)]).await;
    let incident = press(&f, EventKind::Sos).await;
    notices_until(&f.app.db, incident, "given up", |r| r[0].status == "failed").await;
    eventually("the 'nobody reached' alert", || async {
        f.probe
            .on(&format!("{}/v1/supervisors/alerts", f.prefix))
            .iter()
            .any(|a| a["kind"] == "family_not_reached" && a["incident_id"] == incident)
            .then_some(())
    })
    .await;
    let timeline = f.app.db.incident_actions(incident).await.unwrap();
    assert!(
        timeline.contains(&"family_not_reached".to_owned()),
        "{timeline:?}"
    );
    f.app.stop().await;
}

/// Many families at once: the notices are taken and settled a batch at a
/// time; each is sent once, each cascade stops at its first contact, each
/// incident's timeline says who was told, and nothing settled is taken again.
#[tokio::test]
async fn a_street_of_presses_tells_each_family_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let f = family(backend, Cascade::UntilReached, 3, None).await;
        let mut cities = vec![f.city.clone()];
        for _ in 0..5 {
            cities.push(seed_small_city(&f.app.db).await);
        }
        for c in &cities {
            add_contacts(&f.app.db, c.client_id, &[("mqtt", ""), ("mqtt", "")]).await;
        }
        let incidents = sos_from_each(&f, &cities).await;
        let mut told = Vec::new();
        for &incident in &incidents {
            let rows = notices_until(&f.app.db, incident, "the first contact told", |r| {
                r.len() == 2 && r[0].status == "delivered" && r[1].status == "skipped"
            })
            .await;
            assert_eq!(statuses(&rows), vec![("delivered", 1), ("skipped", 0)]);
            let timeline = f.app.db.incident_actions(incident).await.unwrap();
            assert_eq!(
                timeline.iter().filter(|a| *a == "family_notified").count(),
                1,
                "{backend:?}: {timeline:?}"
            );
            told.push(rows[0].contact_id);
        }
        // One notice on each first contact's topic, none on the second's.
        let notices = eventually("every notice on the broker", || async {
            let n: Vec<usize> = told
                .iter()
                .map(|c| {
                    f.probe
                        .on(&format!("{}/v1/contacts/{c}/notices", f.prefix))
                        .len()
                })
                .collect();
            n.iter().all(|&k| k >= 1).then_some(n)
        })
        .await;
        assert!(notices.iter().all(|&k| k == 1), "{backend:?}: {notices:?}");
        let all = f.probe.received.lock().unwrap().len();
        assert_eq!(all, cities.len(), "{backend:?}: nobody else was told");
        // Settled: a later pass, however late, takes none of them again.
        let later = f.clock.now() + 3_600_000;
        let again = f
            .app
            .db
            .begin_notification_attempts(later, later + 30_000, 256)
            .await
            .unwrap();
        assert!(again.is_empty(), "{backend:?}: {again:?}");
        f.app.stop().await;
    }
}

/// Two servers share the notices: one holds only those it is sending. With
/// every family's web service slow to answer, the first server sends as many
/// as it sends at once and leaves the rest due, so the second takes them
/// (rather than waiting for leases on notices nobody has started).
#[tokio::test]
async fn a_notice_waiting_for_a_slot_is_left_to_another_server() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (hook, url) = Hook::gated(Arc::clone(&gate)).await;
        let f = family(backend, Cascade::UntilReached, 3, None).await;
        let extra = pingantong::notify::IN_FLIGHT + 4;
        let mut cities = vec![f.city.clone()];
        for _ in 1..extra {
            cities.push(seed_small_city(&f.app.db).await);
        }
        for c in &cities {
            add_contacts(&f.app.db, c.client_id, &[("webhook", &url)]).await;
        }
        let incidents = sos_from_each(&f, &cities).await;
        eventually("as many calls held as go out at once", || async {
            (hook.calls().len() == pingantong::notify::IN_FLIGHT).then_some(())
        })
        .await;
        // Every notice is owed by now; none beyond the slots is sent meanwhile.
        for &incident in &incidents {
            notices_until(&f.app.db, incident, "the notice owed", |r| r.len() == 1).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            hook.calls().len(),
            pingantong::notify::IN_FLIGHT,
            "{backend:?}"
        );

        // The other server finds the notices not started, and only those.
        let now = f.clock.now();
        let theirs = f
            .app
            .db
            .begin_notification_attempts(now, now + 30_000, 256)
            .await
            .unwrap();
        assert_eq!(
            theirs.len(),
            extra - pingantong::notify::IN_FLIGHT,
            "{backend:?}: {theirs:?}"
        );
        f.app.db.notifications_delivered(&theirs).await.unwrap();
        gate.add_permits(extra);
        for &incident in &incidents {
            let rows = notices_until(&f.app.db, incident, "delivered", |r| {
                r[0].status == "delivered"
            })
            .await;
            assert_eq!(statuses(&rows), vec![("delivered", 1)], "{backend:?}");
            let timeline = f.app.db.incident_actions(incident).await.unwrap();
            assert_eq!(
                timeline.iter().filter(|a| *a == "family_notified").count(),
                1,
                "{backend:?}: {timeline:?}"
            );
        }
        // Nobody was called twice: the first server never took the others' notices.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            hook.calls().len(),
            pingantong::notify::IN_FLIGHT,
            "{backend:?}"
        );
        f.app.stop().await;
    }
}

#[tokio::test]
async fn technical_jobs_do_not_notify_the_family() {
    let (hook, url) = Hook::start(0, 200).await;
    let f = family(Backend::Sqlite, Cascade::Everyone, 3, None).await;
    add_contacts(&f.app.db, f.city.client_id, &[("webhook", &url)]).await;
    let incident = press(&f, EventKind::LowBattery).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        f.app
            .db
            .notifications_of(incident)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(hook.calls().is_empty());
    f.app.stop().await;
}

#[tokio::test]
async fn notices_owed_are_sent_after_a_restart() {
    let (hook, url) = Hook::start(1, 503).await;
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = {
        let mut s = test_settings(Backend::Postgres, Broker::Embedded, dir.path());
        s.notify.retry_secs = 5;
        s.notify.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        s
    };
    let app = TestApp::spawn_with_clock(s.clone(), None, &clock).await;
    let city = seed_small_city(&app.db).await;
    add_contacts(&app.db, city.client_id, &[("webhook", &url)]).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let incident = newest_incident(&app.db).await;
    notices_until(&app.db, incident, "the first attempt failed", |r| {
        r[0].attempts == 1 && r[0].last_error.is_some()
    })
    .await;
    app.stop().await;

    // Down while the retry fell due; the cascade is in the database.
    clock.advance(Duration::from_secs(30));
    let back = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    let rows = notices_until(&back.db, incident, "delivered after the restart", |r| {
        r[0].status == "delivered"
    })
    .await;
    assert_eq!(statuses(&rows), vec![("delivered", 2)]);
    assert_eq!(hook.notice(1)["incident_id"], incident);
    back.stop().await;
}
