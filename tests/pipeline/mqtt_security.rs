//! Who may say what on the broker: strangers, devices, carers and servers,
//! each tried the way an attacker on the same network would, with a stock
//! MQTT client (rumqttc) against the embedded broker's gate.

use std::time::Duration;

use pingantong::domain::State;
use pingantong::mqtt::acl::Principal;
use pingantong_protocol::DeviceId;
use serde_json::json;

use crate::helpers::*;

fn sos(seq: u32) -> serde_json::Value {
    json!({"v": 1, "seq": seq, "kind": "sos", "time": 1_764_000_000_000u64})
}

fn device(id: &str) -> Principal {
    Principal::Device(DeviceId::parse(id).unwrap())
}

/// Wait until the probe has heard `n` answers from the broker, and return
/// them sorted (SUBACKs the gate writes itself may overtake the broker's).
async fn answers(probe: &MqttProbe, n: usize) -> Vec<String> {
    let mut a = eventually(&format!("{n} answers from the broker"), || async {
        let a = probe.answers.lock().unwrap().clone();
        (a.len() >= n).then_some(a)
    })
    .await;
    a.sort();
    a
}

/// An SOS from a provisioned device, with its own credential, to open an
/// incident and an offer to the near carer; returns (dispatch id, incident id).
async fn offer_to_near_carer(app: &TestApp, city: &City, watcher: &MqttProbe) -> (i64, i64) {
    let prefix = &app.settings.mqtt.topic_prefix;
    let id = app.mqtt_device(city).await;
    let (host, port) = broker_of(app);
    let login = app.mqtt_login(&device(&id)).await;
    let dev = MqttProbe::connect_as(
        &host,
        port,
        &[format!("{prefix}/v1/devices/{id}/ack")],
        &id,
        Some(login),
    )
    .await;
    dev.publish(&format!("{prefix}/v1/devices/{id}/events"), sos(1))
        .await;
    let topic = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    let offer = eventually("the near carer's offer", || async {
        watcher
            .on(&topic)
            .into_iter()
            .find(|o| o["type"] == "offer")
    })
    .await;
    (
        offer["dispatch_id"].as_i64().unwrap(),
        offer["incident_id"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_reads_nothing_and_raises_an_sos_only_in_quarantine() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let provisioned = app.mqtt_device(&city).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let stranger_id = unique("X").replace('_', "-");
    let quarantine_ack = format!("{prefix}/v1/quarantine/{stranger_id}/ack");
    // No credentials at all.
    let stranger = MqttProbe::connect_as(
        &host,
        port,
        &[
            "#".into(),
            format!("{prefix}/v1/carers/+/dispatch"),
            format!("{prefix}/v1/carers/{}/dispatch", city.near_carer),
            quarantine_ack.clone(),
        ],
        &stranger_id,
        None,
    )
    .await;
    let said = answers(&stranger, 5).await;
    assert_eq!(
        said,
        [
            "connack:Success",
            "suback:ok",
            "suback:refused",
            "suback:refused",
            "suback:refused"
        ],
        "only its own quarantine answers"
    );

    // Speaking as a provisioned device, as a carer, or forging a server's ACK.
    stranger
        .publish(&format!("{prefix}/v1/devices/{provisioned}/events"), sos(1))
        .await;
    stranger
        .publish(
            &format!("{prefix}/v1/devices/{provisioned}/ack"),
            json!({"v": 1, "seq": 1, "status": "stored"}),
        )
        .await;

    // Its own SOS in quarantine: stored unverified, an incident for an operator, answered.
    stranger
        .publish(
            &format!("{prefix}/v1/quarantine/{stranger_id}/events"),
            sos(7),
        )
        .await;
    let ack = eventually("the quarantine ACK", || async {
        stranger.on(&quarantine_ack).into_iter().next()
    })
    .await;
    assert_eq!(ack["status"], "stored");
    assert_eq!(ack["verified"], false);
    let rows = app.db.alarm_states(&stranger_id, 7).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "unknown_device");
    let incident = eventually("an incident for an operator", || async {
        rows_incident(&app, &stranger_id).await
    })
    .await;
    let overview = app.db.incidents_overview().await.unwrap();
    let row = overview.iter().find(|r| r.0 == incident).unwrap();
    assert!(!row.3, "flagged unverified");
    // Everything it sent before its SOS was read by now: none of it arrived.
    assert!(
        app.db
            .alarm_states(&provisioned, 1)
            .await
            .unwrap()
            .is_empty()
    );
    // And it heard nothing but its own answer, though an incident was opened.
    let heard: Vec<String> = stranger
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(heard.iter().all(|t| *t == quarantine_ack), "{heard:?}");

    // Another stranger cannot raise events under this one's name.
    let other_id = unique("Y").replace('_', "-");
    let other = MqttProbe::connect_as(&host, port, &[], &other_id, None).await;
    other
        .publish(
            &format!("{prefix}/v1/quarantine/{stranger_id}/events"),
            sos(8),
        )
        .await;
    other
        .publish(&format!("{prefix}/v1/quarantine/{other_id}/events"), sos(9))
        .await;
    eventually("the second stranger's own SOS", || async {
        (!app.db.alarm_states(&other_id, 9).await.unwrap().is_empty()).then_some(())
    })
    .await;
    assert!(
        app.db
            .alarm_states(&stranger_id, 8)
            .await
            .unwrap()
            .is_empty()
    );

    // A stranger naming a provisioned device, without its credential: kept,
    // marked as a bad signature, never verified.
    let posing = MqttProbe::connect_as(&host, port, &[], &provisioned, None).await;
    posing
        .publish(
            &format!("{prefix}/v1/quarantine/{provisioned}/events"),
            sos(3),
        )
        .await;
    let rows = eventually("the posing stranger's SOS", || async {
        let r = app.db.alarm_states(&provisioned, 3).await.unwrap();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(rows[0].0, "bad_tag");
    app.stop().await;
}

async fn rows_incident(app: &TestApp, device: &str) -> Option<i64> {
    app.db
        .alarm_states(device, 7)
        .await
        .unwrap()
        .first()
        .and_then(|r| r.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_speaks_only_for_itself_and_a_revoked_one_not_at_all() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let (host, port) = broker_of(&app);
    let (dev, login, a, b) = a_device_for_itself(&app, &city, &host, port, None).await;

    // A wrong password, another device's name, a username that names no one.
    for (user, pass) in [
        (login.0.clone(), "0".repeat(48)),
        (format!("devices/{b}"), login.1.clone()),
        ("admin".to_owned(), login.1.clone()),
    ] {
        let p = MqttProbe::connect_as(&host, port, &[], &unique("c"), Some((user, pass))).await;
        assert_eq!(answers(&p, 1).await[0], "connack:BadUserNamePassword");
    }

    // Revoked through the API: its connection ends and it cannot come back.
    let api = Api::of(&app);
    add_user(&app.db, "sec-admin", pingantong::domain::Role::Admin).await;
    let token = api.token("sec-admin").await;
    let (status, _) = api
        .post(
            "/api/v1/mqtt/credentials/revoke",
            &token,
            json!({"username": format!("devices/{a}")}),
        )
        .await;
    assert_eq!(status, 204);
    eventually("the revoked device is refused on reconnecting", || async {
        dev.answers
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == "connack:BadUserNamePassword")
            .then_some(())
    })
    .await;
    // Issued again through the API: a new password, the old one dead.
    let (status, issued) = api
        .post(
            "/api/v1/mqtt/credentials",
            &token,
            json!({"username": format!("devices/{a}")}),
        )
        .await;
    assert_eq!(status, 201);
    assert_ne!(issued["password"], login.1.as_str());
    let fresh = MqttProbe::connect_as(
        &host,
        port,
        &[],
        &unique("c"),
        Some((login.0.clone(), issued["password"].as_str().unwrap().into())),
    )
    .await;
    assert_eq!(answers(&fresh, 1).await[0], "connack:Success");
    // Only admins issue them, and never a server's.
    add_user(&app.db, "sec-op", pingantong::domain::Role::Operator).await;
    let op = api.token("sec-op").await;
    let (status, _) = api
        .post(
            "/api/v1/mqtt/credentials",
            &op,
            json!({"username": format!("devices/{a}")}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .post(
            "/api/v1/mqtt/credentials",
            &token,
            json!({"username": "servers/x"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .post(
            "/api/v1/mqtt/credentials",
            &token,
            json!({"username": "devices/NOT-THERE"}),
        )
        .await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carer_reads_and_answers_only_their_own_offers() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let near = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    let far = format!("{prefix}/v1/carers/{}/dispatch", city.far_carer);
    let watcher = MqttProbe::connect(&host, port, std::slice::from_ref(&near)).await;
    let far_login = app.mqtt_login(&Principal::Carer(city.far_carer)).await;
    let intruder = MqttProbe::connect_as(
        &host,
        port,
        &[near.clone(), far.clone()],
        &unique("phone"),
        Some(far_login),
    )
    .await;
    assert_eq!(
        answers(&intruder, 3).await,
        ["connack:Success", "suback:ok", "suback:refused"]
    );
    let (dispatch, incident) = offer_to_near_carer(&app, &city, &watcher).await;
    let near_login = app.mqtt_login(&Principal::Carer(city.near_carer)).await;
    let phone = MqttProbe::connect_as(&host, port, &[], &unique("phone"), Some(near_login)).await;
    only_the_offered_carer_answers(&app, &city, &intruder, &phone, dispatch, incident).await;
    // The carer's answer is in the audit chain under the carer's name, with
    // the step it made; the intruder's is nowhere.
    let trail = app.db.audit_trail(None, 100).await.unwrap();
    let by = |actor: &str, action: &str| {
        trail
            .iter()
            .filter(|r| r.actor == actor && r.action == action)
            .count()
    };
    let near_actor = format!("carer:{}", city.near_carer);
    assert_eq!(by(&near_actor, "carer_accepted"), 1, "{trail:?}");
    assert_eq!(by(&near_actor, "incident_carer_accept"), 1, "{trail:?}");
    let far_actor = format!("carer:{}", city.far_carer);
    assert!(trail.iter().all(|r| r.actor != far_actor), "{trail:?}");
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_takes_over_the_servers_session() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let server_id = app.settings.instance_id.clone();
    let carer = app.mqtt_login(&Principal::Carer(city.near_carer)).await;
    // Anonymous and as a carer, each with the server's client id.
    for login in [None, Some(carer)] {
        let p = MqttProbe::connect_as(&host, port, &[], &server_id, login).await;
        assert_eq!(answers(&p, 1).await[0], "connack:BadClientId");
    }
    // A client id the broker cannot take is refused at the gate (twice would
    // stop rumqttd 0.20 accepting anyone), and the broker still answers.
    for _ in 0..2 {
        let p = MqttProbe::connect_as(&host, port, &[], "a/b", None).await;
        assert_eq!(answers(&p, 1).await[0], "connack:BadClientId");
    }
    // The server is still on the broker: a provisioned device's SOS is answered.
    let id = app.mqtt_device(&city).await;
    let login = app.mqtt_login(&device(&id)).await;
    let acks = format!("{prefix}/v1/devices/{id}/ack");
    let dev =
        MqttProbe::connect_as(&host, port, std::slice::from_ref(&acks), &id, Some(login)).await;
    dev.publish(&format!("{prefix}/v1/devices/{id}/events"), sos(1))
        .await;
    eventually("the server's ACK", || async {
        dev.on(&acks).into_iter().next()
    })
    .await;
    app.stop().await;
}

/// Whether the probe has been told `what` (`connack:…`, `suback:…`) yet.
async fn told(probe: &MqttProbe, what: &str) {
    eventually(&format!("the broker's {what}"), || async {
        probe
            .answers
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == what)
            .then_some(())
    })
    .await
}

/// Device `a`, with its own credential (connecting as `client_id`, else its
/// id): its own ACK topic granted and `b`'s refused, an event published as
/// `b` dropped, its own answered and verified. Returns its probe, its
/// credential and the two devices' ids.
async fn a_device_for_itself(
    app: &TestApp,
    city: &City,
    host: &str,
    port: u16,
    client_id: Option<&str>,
) -> (MqttProbe, (String, String), String, String) {
    let prefix = &app.settings.mqtt.topic_prefix;
    let a = app.mqtt_device(city).await;
    let b = app.mqtt_device(city).await;
    let login = app.mqtt_login(&device(&a)).await;
    let acks = format!("{prefix}/v1/devices/{a}/ack");
    let dev = MqttProbe::connect_as(
        host,
        port,
        &[acks.clone(), format!("{prefix}/v1/devices/{b}/ack")],
        client_id.unwrap_or(&a),
        Some(login.clone()),
    )
    .await;
    told(&dev, "suback:ok").await;
    told(&dev, "suback:refused").await;
    dev.publish(&format!("{prefix}/v1/devices/{b}/events"), sos(1))
        .await;
    dev.publish(&format!("{prefix}/v1/devices/{a}/events"), sos(2))
        .await;
    let ack = eventually("the device's own ACK", || async {
        dev.on(&acks).into_iter().next()
    })
    .await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["verified"].as_bool()),
        (Some(2), Some(true))
    );
    assert!(
        app.db.alarm_states(&b, 1).await.unwrap().is_empty(),
        "not as b"
    );
    (dev, login, a, b)
}

/// The far carer (`intruder`) answers the near carer's offer on the near
/// carer's topic: nothing changes, and the offer never reached them; then the
/// near carer's own `phone` accepts, and that is applied.
async fn only_the_offered_carer_answers(
    app: &TestApp,
    city: &City,
    intruder: &MqttProbe,
    phone: &MqttProbe,
    dispatch: i64,
    incident: i64,
) {
    let prefix = &app.settings.mqtt.topic_prefix;
    let reply = format!("{prefix}/v1/carers/{}/reply", city.near_carer);
    let accept = json!({"v": 1, "dispatch_id": dispatch, "action": "accept"});
    intruder.publish(&reply, accept.clone()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.db.dispatch_states(incident).await.unwrap()[0].2,
        "offered",
        "not applied"
    );
    let near = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    assert!(
        intruder.on(&near).is_empty(),
        "the near carer's offer never reached another carer"
    );
    phone.publish(&reply, accept).await;
    eventually("the near carer's accept applied", || async {
        (app.db.incident_state(incident).await.unwrap() == Some(State::CarerAccepted)).then_some(())
    })
    .await;
}

/// The same rules on a real Mosquitto (2.0, dynamic-security plugin), kept
/// in step with the registry by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_is_kept_in_step_with_the_registry() {
    let admin = ("servers/admin".to_owned(), unique("pw"));
    let broker = OwnMosquitto::start_dynsec(&admin.0, &admin.1);
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Mosquitto, dir.path());
    s.mqtt.url = Some(format!("mqtt://127.0.0.1:{}", broker.port));
    s.mqtt.username = Some(admin.0.clone());
    s.mqtt.password = Some(pingantong::config::Secret::new(admin.1.clone()));
    s.mqtt.dynsec = true;
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let port = broker.port;
    let host = "127.0.0.1";

    // No credentials: not let in at all (this broker has no quarantine).
    let stranger =
        MqttProbe::connect_as(host, port, &[], &unique("x").replace('_', "-"), None).await;
    told(&stranger, "connack:NotAuthorized").await;

    // Carers' phones, before any offer: each reads only their own.
    let near = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    let far_login = app.mqtt_login(&Principal::Carer(city.far_carer)).await;
    let intruder = MqttProbe::connect_as(
        host,
        port,
        std::slice::from_ref(&near),
        &unique("p"),
        Some(far_login),
    )
    .await;
    told(&intruder, "suback:refused").await;
    let near_login = app.mqtt_login(&Principal::Carer(city.near_carer)).await;
    let phone = MqttProbe::connect_as(
        host,
        port,
        std::slice::from_ref(&near),
        &unique("p"),
        Some(near_login),
    )
    .await;
    told(&phone, "suback:ok").await;
    // A device, pushed to the broker by the server within seconds, using the
    // server's own client id: on this broker client ids are the usernames.
    let (dev, login, _, _) =
        a_device_for_itself(&app, &city, host, port, Some(&app.settings.instance_id)).await;

    let offer = eventually("the near carer's offer, on their own phone", || async {
        phone.on(&near).into_iter().find(|o| o["type"] == "offer")
    })
    .await;
    let dispatch = offer["dispatch_id"].as_i64().unwrap();
    let incident = offer["incident_id"].as_i64().unwrap();
    only_the_offered_carer_answers(&app, &city, &intruder, &phone, dispatch, incident).await;

    // (The device connected with the server's client id, and the offers still
    // flowed: the server never lost its session.)

    // Revoked: the broker is told, the device is cut off and refused.
    let refusals = || {
        dev.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a == "connack:NotAuthorized")
            .count()
    };
    let before = refusals();
    app.db
        .revoke_mqtt_credential(&login.0, "system:test")
        .await
        .unwrap();
    eventually("the revoked device refused", || async {
        (refusals() > before).then_some(())
    })
    .await;
    app.stop().await;
}

/// `mqtts` on the embedded broker: a device over TLS, with the console's
/// certificate; plain text on that port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Embedded, dir.path());
    s.http.tls_cert = Some(cert);
    s.http.tls_key = Some(key);
    s.mqtt.embedded_mqtts_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let mqtts = app.mqtts.expect("an mqtts listener");
    let city = seed_small_city(&app.db).await;
    let id = app.mqtt_device(&city).await;
    let (user, pass) = app.mqtt_login(&device(&id)).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();

    // rustls needs one crypto provider per process; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut opts = rumqttc::MqttOptions::new(id.clone(), "localhost", mqtts.port());
    opts.set_credentials(user, pass);
    opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca: made.cert.pem().into_bytes(),
        alpn: None,
        client_auth: None,
    }));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    let acks = format!("{prefix}/v1/devices/{id}/ack");
    client
        .subscribe(acks.clone(), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish(
            format!("{prefix}/v1/devices/{id}/events"),
            rumqttc::QoS::AtLeastOnce,
            false,
            sos(1).to_string(),
        )
        .await
        .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic == acks => {
                    break serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap();
                }
                Ok(_) => {}
                Err(e) => panic!("mqtts connection: {e}"),
            }
        }
    })
    .await
    .expect("an ACK over TLS");
    assert_eq!(
        (ack["status"].as_str(), ack["verified"].as_bool()),
        (Some("stored"), Some(true))
    );

    // Plain MQTT on the TLS port: no CONNACK, ever.
    let plain = MqttProbe::connect_as("127.0.0.1", mqtts.port(), &[], &unique("c"), None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(plain.answers.lock().unwrap().is_empty());
    app.stop().await;
}

/// What the broker keeps for later readers (retained messages) is the
/// servers' status and nothing else: no offer, no event, no resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_carry_no_personal_data() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let watcher = MqttProbe::connect(
        &host,
        port,
        &[format!("{prefix}/v1/carers/{}/dispatch", city.near_carer)],
    )
    .await;
    // An SOS all the way to an offer, from a device that asks the broker to keep its event.
    let id = app.mqtt_device(&city).await;
    let login = app.mqtt_login(&device(&id)).await;
    let acks = format!("{prefix}/v1/devices/{id}/ack");
    let dev =
        MqttProbe::connect_as(&host, port, std::slice::from_ref(&acks), &id, Some(login)).await;
    dev.client
        .publish(
            format!("{prefix}/v1/devices/{id}/events"),
            rumqttc::QoS::AtLeastOnce,
            true,
            sos(1).to_string(),
        )
        .await
        .unwrap();
    eventually("the offer", || async {
        watcher
            .on(&format!("{prefix}/v1/carers/{}/dispatch", city.near_carer))
            .into_iter()
            .next()
    })
    .await;
    eventually("the ACK", || async { dev.on(&acks).into_iter().next() }).await;
    // A newcomer reading everything under the prefix gets only what was retained.
    let newcomer = MqttProbe::connect(&host, port, &[format!("{prefix}/#")]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept = newcomer.received.lock().unwrap().clone();
    assert!(!kept.is_empty(), "the server's status is retained");
    for (topic, body) in &kept {
        assert!(topic.ends_with("/status"), "{topic} retained: {body}");
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["status", "v"], "{topic}: {body}");
    }
    app.stop().await;
}
