//! Health, readiness and metrics; the server without its broker.

use pingantong_protocol::EventKind;
use pingantong_protocol::native::Reply;

use crate::helpers::*;

#[tokio::test]
async fn ready_when_database_and_broker_are_up_and_metrics_are_served() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let (code, body) = http_get(app.addrs.http, "/healthz").await;
    assert_eq!((code, body.trim()), (200, "ok"));
    let ready = eventually("ready", || async {
        let (code, body) = http_get(app.addrs.http, "/readyz").await;
        (code == 200).then_some(body)
    })
    .await;
    assert!(
        ready.contains(r#""mqtt":"up""#) && ready.contains(r#""database":"ok""#),
        "{ready}"
    );
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    let (code, metrics) = http_get(app.addrs.http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("pat_events_committed_total"), "{metrics}");
    let (code, _) = http_get(app.addrs.http, "/nope").await;
    assert_eq!(code, 404);
    app.stop().await;
}

#[tokio::test]
async fn without_a_broker_tcp_alarms_still_work_and_readiness_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Mosquitto, dir.path());
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.mqtt.url = Some(format!("mqtt://127.0.0.1:{closed}"));
    let app = TestApp::spawn_unwaited(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let mut dev = Device::connect(app.native).await;
    let (r, _) = dev
        .send(&event(&city.device, 1, EventKind::Sos), &city.secret)
        .await;
    assert!(matches!(r, Reply::Ack { .. }), "{r:?}");
    let (code, body) = http_get(app.addrs.http, "/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains(r#""mqtt":"down""#) && body.contains(r#""database":"ok""#),
        "{body}"
    );
    // The incident is open and the offer waits, unpublished, for the broker.
    let d = eventually("the offer recorded", || async {
        let d = app.db.dispatches_overview().await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert!(!d[0].4, "not published while the broker is down");
    // The broker comes up: the server connects and sends the waiting offer.
    let _broker = OwnMosquitto::start_on(closed);
    eventually_for(
        "the offer published",
        std::time::Duration::from_secs(30),
        || async {
            app.db.dispatches_overview().await.unwrap()[0]
                .4
                .then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_broker_that_wants_a_password_gets_it() {
    use pingantong::config::Secret;
    let broker = OwnMosquitto::start_with_password("pat-server", "s3cret-for-test");
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Mosquitto, dir.path());
    s.mqtt.url = Some(format!("mqtt://127.0.0.1:{}", broker.port));
    s.mqtt.username = Some("pat-server".into());
    s.mqtt.password = Some(Secret::new("wrong"));
    let refused = TestApp::spawn_unwaited(s.clone(), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (code, body) = http_get(refused.addrs.http, "/readyz").await;
    assert_eq!(code, 503, "a wrong password is not a connection: {body}");
    refused.stop().await;

    s.mqtt.password = Some(Secret::new("s3cret-for-test"));
    let app = TestApp::spawn_unwaited(s, Some(dir)).await;
    eventually("connected with the right password", || async {
        (http_get(app.addrs.http, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_tls_broker_with_the_right_authority() {
    let (broker, ca) = OwnMosquitto::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Mosquitto, dir.path());
    s.mqtt.url = Some(format!("mqtts://127.0.0.1:{}", broker.port));
    s.mqtt.ca_file = Some(ca);
    let app = TestApp::spawn_unwaited(s.clone(), None).await;
    eventually("connected over TLS", || async {
        (http_get(app.addrs.http, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    app.stop().await;

    // An authority that did not sign the broker's certificate is not trusted.
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = stranger.path().join("other.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(stranger.path().join("other.key"))
        .arg("-out")
        .arg(&other_ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    s.mqtt.ca_file = Some(other_ca);
    let refused = TestApp::spawn_unwaited(s, Some(dir)).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(http_get(refused.addrs.http, "/readyz").await.0, 503);
    refused.stop().await;
}

/// The planner's statistics of a PostgreSQL table: the columns it has them for.
async fn planner_knows(db: &pingantong::store::Db, table: &str) -> Vec<String> {
    let pingantong::store::Db::Postgres(pool, _) = db else {
        panic!("a PostgreSQL database");
    };
    sqlx::query_scalar(
        "SELECT attname::TEXT FROM pg_stats WHERE schemaname = current_schema() \
         AND tablename = $1 ORDER BY attname",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A city loaded into PostgreSQL and never analyzed (a fresh seed or import,
/// a database without autovacuum): the server analyzes its tables as it
/// starts, so its first alarms are planned on what they hold, and a second
/// look finds nothing stale. Tables still (nearly) empty are left alone: an
/// empty table analyzed would be taken for empty as alarms fill it. Its
/// sessions run without just-in-time compilation.
#[tokio::test]
async fn a_city_loaded_blind_is_analyzed_as_the_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let s = test_settings(Backend::Postgres, Broker::Embedded, dir.path());
    let db = pingantong::store::Db::connect(&s.store_config(2).unwrap())
        .await
        .unwrap();
    pingantong_sim::city::seed_city(
        &db,
        &pingantong_sim::city::CitySpec {
            clients: 1_000,
            carers_per_provider: 2,
            secret_seed: "blind".into(),
            protocol: pingantong_sim::speaker::Mix::native(),
            native_from: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(planner_knows(&db, "devices").await, Vec::<String>::new());
    db.close().await;

    let app = TestApp::spawn_with(s, Some(dir)).await;
    // The listeners are bound before the server starts its work.
    let known = eventually("the planner knows the devices", || async {
        let known = planner_knows(&app.db, "devices").await;
        (!known.is_empty()).then_some(known)
    })
    .await;
    assert!(known.contains(&"client_id".to_owned()), "{known:?}");
    let known = planner_knows(&app.db, "contacts").await;
    assert!(known.contains(&"client_id".to_owned()), "{known:?}");
    assert_eq!(planner_knows(&app.db, "alarms").await, Vec::<String>::new());
    // Nor does it compile its short queries just in time.
    let pingantong::store::Db::Postgres(pool, _) = &app.db else {
        unreachable!()
    };
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(jit, "off");
    assert_eq!(
        app.db.refresh_statistics().await.unwrap(),
        Vec::<String>::new()
    );
    // SQLite plans by its indexes: nothing to do there.
    let sqlite = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    seed_small_city(&sqlite.db).await;
    assert_eq!(
        sqlite.db.refresh_statistics().await.unwrap(),
        Vec::<String>::new()
    );
    sqlite.stop().await;
    app.stop().await;
}

/// With a certificate and key the console and API speak only HTTPS: a client
/// that trusts the certificate logs in over TLS, a plain-text request on the
/// port gets no answer; a key that is not there stops the start, naming it.
#[tokio::test]
async fn the_console_and_api_over_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();

    let mut settings = test_settings(Backend::Sqlite, Broker::Embedded, dir.path());
    settings.http.tls_key = Some(dir.path().join("missing.pem"));
    settings.http.tls_cert = Some(cert.clone());
    let refused = pingantong::Application::build(settings.clone()).await;
    let Err(e) = refused else {
        panic!("a missing key must stop the start")
    };
    assert!(e.to_string().contains("missing.pem"), "{e}");

    settings.http.tls_key = Some(key);
    let app = TestApp::spawn_with(settings, None).await;
    add_user(&app.db, "li.wei", pingantong::domain::Role::Operator).await;
    let port = app.addrs.http.port();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", app.addrs.http)
        .build()
        .unwrap();
    let r = https
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = https
        .post(format!("https://localhost:{port}/api/v1/session"))
        .json(&serde_json::json!({"username": "li.wei", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "log-in over TLS");
    // Plain HTTP on the same port: the handshake fails, nothing is answered.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(std::time::Duration::from_secs(15))
        .send()
        .await;
    assert!(plain.is_err(), "answered in plain text: {plain:?}");
    // A client that does not trust the certificate refuses the server.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", app.addrs.http)
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err());
    app.stop().await;
}
