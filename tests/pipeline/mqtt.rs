//! Device events and carer replies over MQTT, on the embedded broker and on Mosquitto.

use pingantong::domain::State;
use pingantong::store::NewDevice;
use serde_json::json;

use crate::helpers::*;

fn sos(seq: u32) -> serde_json::Value {
    json!({"v": 1, "seq": seq, "kind": "sos", "time": 1_764_000_000_000u64, "battery": 64,
           "location": {"lat": 23.1291, "lon": 113.2644, "accuracy_m": 10}})
}

async fn event_to_carer_and_back(backend: Backend, broker: Broker) {
    let app = TestApp::spawn(backend, broker).await;
    let city = seed_small_city(&app.db).await;
    let device = app.mqtt_device(&city).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let events = format!("{prefix}/v1/devices/{device}/events");
    let acks = format!("{prefix}/v1/devices/{device}/ack");
    let offers = format!("{prefix}/v1/carers/{}/dispatch", city.near_carer);
    let status = format!("{prefix}/v1/server/{}/status", app.settings.instance_id);
    let probe =
        MqttProbe::connect(&host, port, &[acks.clone(), offers.clone(), status.clone()]).await;
    eventually("the server's retained status", || async {
        probe
            .on(&status)
            .iter()
            .any(|s| s["status"] == "online")
            .then_some(())
    })
    .await;

    probe.publish(&events, sos(1)).await;
    let ack = eventually("the application ACK", || async {
        probe.on(&acks).into_iter().next()
    })
    .await;
    assert_eq!(ack["v"], 1);
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["status"], "stored");
    assert_eq!(ack["verified"], true);
    assert_eq!(
        app.db.alarm_states(&device, 1).await.unwrap()[0].0,
        "verified"
    );

    // The same message again (the gateway missed our ACK): stored once.
    probe.publish(&events, sos(1)).await;
    eventually("the duplicate ACK", || async {
        probe
            .on(&acks)
            .iter()
            .any(|a| a["status"] == "duplicate")
            .then_some(())
    })
    .await;
    assert_eq!(app.db.alarm_states(&device, 1).await.unwrap().len(), 1);

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
        ("completed", State::Resolved),
    ] {
        probe
            .publish(
                &replies,
                json!({"v": 1, "dispatch_id": dispatch, "action": action, "outcome": "helped_up"}),
            )
            .await;
        eventually(&format!("incident {state} after {action}"), || async {
            (app.db.incident_state(incident).await.unwrap() == Some(state)).then_some(())
        })
        .await;
    }
    let d = app.db.dispatch_states(incident).await.unwrap();
    assert_eq!(d[0].2, "completed");
    let actions = app.db.incident_actions(incident).await.unwrap();
    for a in [
        "carer_accepted",
        "carer_accept",
        "carer_arrived",
        "carer_arrive",
        "carer_completed",
        "resolve",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    app.stop().await;
    eventually("the server says it is offline", || async {
        probe
            .on(&status)
            .iter()
            .any(|s| s["status"] == "offline")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn mqtt_event_to_carer_and_back_sqlite_embedded() {
    event_to_carer_and_back(Backend::Sqlite, Broker::Embedded).await;
}

#[tokio::test]
async fn mqtt_event_to_carer_and_back_postgres_mosquitto() {
    event_to_carer_and_back(Backend::Postgres, Broker::Mosquitto).await;
}

#[tokio::test]
async fn a_decline_offers_the_job_to_the_next_carer() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let device = app.mqtt_device(&city).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(&host, port, &[format!("{prefix}/v1/carers/+/dispatch")]).await;
    probe
        .publish(&format!("{prefix}/v1/devices/{device}/events"), sos(1))
        .await;
    let first = eventually("the first offer", || async {
        probe
            .received
            .lock()
            .unwrap()
            .first()
            .map(|(_, v)| v.clone())
    })
    .await;
    assert_eq!(first["carer_id"], city.near_carer);
    probe
        .publish(
            &format!("{prefix}/v1/carers/{}/reply", city.near_carer),
            json!({"v": 1, "dispatch_id": first["dispatch_id"], "action": "decline", "reason": "stuck in traffic"}),
        )
        .await;
    let second = eventually("the second offer", || async {
        probe
            .received
            .lock()
            .unwrap()
            .get(1)
            .map(|(_, v)| v.clone())
    })
    .await;
    // The next nearest of the contracted provider, not the one who declined.
    assert_eq!(second["carer_id"], city.far_carer);
    // A reply for someone else's dispatch is refused and changes nothing.
    probe
        .publish(
            &format!("{prefix}/v1/carers/{}/reply", city.near_carer),
            json!({"v": 1, "dispatch_id": second["dispatch_id"], "action": "accept"}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let incident = second["incident_id"].as_i64().unwrap();
    assert_eq!(
        app.db.incident_state(incident).await.unwrap(),
        Some(State::Queued)
    );
    let states: Vec<String> = app
        .db
        .dispatch_states(incident)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.2)
        .collect();
    assert_eq!(states, ["declined", "offered"]);
    app.stop().await;
}

#[tokio::test]
async fn malformed_and_unknown_events_are_answered_and_kept() {
    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let prefix = app.settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(&host, port, &[format!("{prefix}/v1/devices/+/ack")]).await;
    probe
        .publish(
            &format!("{prefix}/v1/devices/BTN-1/events"),
            json!({"v": 1, "seq": 5, "kind": "explode"}),
        )
        .await;
    // An unknown device's SOS is stored and reaches an operator, unverified.
    probe
        .publish(&format!("{prefix}/v1/devices/STRANGER-9/events"), sos(1))
        .await;
    let bad = eventually("the rejection", || async {
        probe
            .on(&format!("{prefix}/v1/devices/BTN-1/ack"))
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(bad["status"], "rejected");
    assert_eq!(bad["seq"], 5);
    assert_eq!(bad["reason"], "malformed");
    let stranger = eventually("the unverified ACK", || async {
        probe
            .on(&format!("{prefix}/v1/devices/STRANGER-9/ack"))
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        (stranger["status"].as_str(), stranger["verified"].as_bool()),
        (Some("stored"), Some(false))
    );
    assert_eq!(app.db.count_rejected_frames().await.unwrap(), 1);
    let incidents = eventually("the unverified incident", || async {
        let i = app.db.incidents_overview().await.unwrap();
        (!i.is_empty()).then_some(i)
    })
    .await;
    assert_eq!(incidents[0].1, "unverified:STRANGER-9");
    assert!(!incidents[0].3);
    app.stop().await;
}

#[tokio::test]
async fn events_published_while_the_server_is_down_are_delivered_when_it_returns() {
    // PostgreSQL keeps the data across the two runs; Mosquitto keeps the
    // session; the data directory (the kept keys) stays, as a server's does.
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(
        test_settings(Backend::Postgres, Broker::Mosquitto, dir.path()),
        None,
    )
    .await;
    let city = seed_small_city(&app.db).await;
    let device = app.mqtt_device(&city).await;
    let settings = app.settings.clone();
    let prefix = settings.mqtt.topic_prefix.clone();
    let (host, port) = broker_of(&app);
    app.stop().await;

    let probe = MqttProbe::connect(&host, port, &[]).await;
    for seq in 1..=5 {
        probe
            .publish(&format!("{prefix}/v1/devices/{device}/events"), sos(seq))
            .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let back = TestApp::spawn_with(settings, None).await;
    eventually("all five stored after the restart", || async {
        let mut n = 0;
        for seq in 1..=5 {
            n += back.db.alarm_states(&device, seq).await.unwrap().len();
        }
        (n == 5).then_some(())
    })
    .await;
    back.stop().await;
}

#[tokio::test]
async fn two_servers_with_a_shared_subscription_split_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = test_settings(Backend::Postgres, Broker::Mosquitto, dir.path());
    a.mqtt.share_group = Some(unique("g"));
    let mut b = a.clone();
    b.instance_id = format!("{}-b", a.instance_id);
    let one = TestApp::spawn_with(a.clone(), None).await;
    let two = TestApp::spawn_with(b, None).await;
    let city = seed_small_city(&one.db).await;
    let device = one.mqtt_device(&city).await;
    let (host, port) = broker_of(&one);
    let probe = MqttProbe::connect(&host, port, &[]).await;
    let n = 200u32;
    for seq in 1..=n {
        let body = json!({"v": 1, "seq": seq, "kind": "position", "battery": 90});
        probe
            .publish(
                &format!("{}/v1/devices/{device}/events", a.mqtt.topic_prefix),
                body,
            )
            .await;
    }
    let peers = eventually("every event stored", || async {
        let p = one.db.alarms_by_peer().await.unwrap();
        (p.iter().map(|x| x.1).sum::<i64>() == i64::from(n)).then_some(p)
    })
    .await;
    // Both servers took a share, and none took the same event twice.
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|(_, c)| *c > 0), "{peers:?}");
    for seq in [1, n / 2, n] {
        assert_eq!(
            one.db
                .alarm_states(&device, i64::from(seq))
                .await
                .unwrap()
                .len(),
            1
        );
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_the_middle_of_a_stream_loses_nothing() {
    let mut broker = OwnMosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Mosquitto, dir.path());
    s.mqtt.url = Some(format!("mqtt://127.0.0.1:{}", broker.port));
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    let device = app.mqtt_device(&city).await;
    let topic = format!(
        "{}/v1/devices/{device}/events",
        app.settings.mqtt.topic_prefix
    );
    let probe = MqttProbe::connect("127.0.0.1", broker.port, &[]).await;
    let n = 300u32;
    for seq in 1..=n {
        if seq == n / 3 {
            broker.restart();
        }
        let body =
            json!({"v": 1, "seq": seq, "kind": if seq % 50 == 0 { "sos" } else { "position" }});
        probe.publish(&topic, body).await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let stored = eventually("every event stored once", || async {
        let p = app.db.alarms_by_peer().await.unwrap();
        let total: i64 = p.iter().map(|x| x.1).sum();
        (total == i64::from(n)).then_some(total)
    })
    .await;
    assert_eq!(stored, i64::from(n));
    for seq in 1..=n {
        assert_eq!(
            app.db
                .alarm_states(&device, i64::from(seq))
                .await
                .unwrap()
                .len(),
            1,
            "seq {seq}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn zigbee2mqtt_and_tasmota_buttons_raise_alarms() {
    use pingantong::ingest::adapters::{AdapterConfig, AdapterKind};
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(Backend::Sqlite, Broker::Embedded, dir.path());
    let z2m_name = unique("hall_sos");
    let tas_topic = unique("tasmota");
    s.mqtt.adapters = vec![
        AdapterConfig {
            kind: AdapterKind::Zigbee2mqtt,
            source: z2m_name.clone(),
            device: "Z2M-HALL".into(),
            sos_actions: None,
        },
        AdapterConfig {
            kind: AdapterKind::Tasmota,
            source: tas_topic.clone(),
            device: "TAS-BED".into(),
            sos_actions: None,
        },
    ];
    let app = TestApp::spawn_with(s, Some(dir)).await;
    let city = seed_small_city(&app.db).await;
    for (id, protocol) in [("Z2M-HALL", "zigbee2mqtt"), ("TAS-BED", "tasmota")] {
        app.db
            .upsert_device(&NewDevice {
                id: id.into(),
                protocol: protocol.into(),
                secret: Vec::new(),
                client_id: Some(city.client_id),
            })
            .await
            .unwrap();
    }
    let (host, port) = broker_of(&app);
    // The bridge publishes with its own credential; on the embedded broker
    // it may publish only the adapters' topics.
    let bridge = app
        .mqtt_login(&pingantong::mqtt::acl::Principal::Bridge(unique("bridge")))
        .await;
    let probe = MqttProbe::connect_as(&host, port, &[], &unique("bridge"), Some(bridge)).await;
    // A state update (battery only) shows the button is alive; no alarm.
    probe
        .publish(
            &format!("zigbee2mqtt/{z2m_name}"),
            json!({"battery": 81, "linkquality": 90}),
        )
        .await;
    probe
        .publish(
            &format!("zigbee2mqtt/{z2m_name}"),
            json!({"action": "emergency", "battery": 81}),
        )
        .await;
    probe
        .publish(
            &format!("stat/{tas_topic}/BUTTON1"),
            json!({"ACTION": "SINGLE"}),
        )
        .await;
    let incidents = eventually(
        "both presses folded into the resident's incident",
        || async {
            let i = app.db.incidents_overview().await.unwrap();
            (i.len() == 1 && i[0].2 == 2).then_some(i)
        },
    )
    .await;
    assert!(incidents[0].3, "provisioned buttons are verified");
    // The battery-only update is the button's presence, not an alarm row.
    let heard = eventually("the state update written as presence", || async {
        app.db.presence_of("Z2M-HALL").await.unwrap()
    })
    .await;
    assert_eq!(heard.battery, Some(81));
    assert_eq!(
        app.db
            .count_alarms(Some(pingantong_protocol::EventKind::Heartbeat))
            .await
            .unwrap(),
        0
    );
    eventually("the carer's offer", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_mqtt_fleet_loses_nothing() {
    use pingantong_sim::city::{CitySpec, seed_city};
    use pingantong_sim::fleet::{self, FleetStats, Pendant};
    use pingantong_sim::mqtt_fleet::MqttFleetConfig;
    use std::sync::Arc;
    use std::time::Duration;

    let app = TestApp::spawn(Backend::Sqlite, Broker::Embedded).await;
    let city = seed_city(
        &app.db,
        &CitySpec {
            clients: 10,
            carers_per_provider: 1,
            secret_seed: "mqtt-fleet".into(),
            protocol: pingantong_sim::speaker::Mix::single("mqtt").unwrap(),
            native_from: None,
        },
    )
    .await
    .unwrap();
    let (host, port) = broker_of(&app);
    let passwords = app.device_passwords(&city.devices).await;
    let report = fleet::run_mqtt(
        MqttFleetConfig {
            host,
            port,
            prefix: app.settings.mqtt.topic_prefix.clone(),
            pendants: city
                .devices
                .iter()
                .map(|id| Pendant::new(id.clone(), Vec::new()))
                .collect(),
            heartbeat: Duration::from_millis(300),
            alarm_rate: 10.0,
            duration: Duration::from_secs(2),
            retry_after: Duration::from_secs(2),
            grace: Duration::from_secs(10),
            line: 0,
            passwords,
        },
        Arc::new(FleetStats::default()),
    )
    .await;
    assert!(report.alarms_sent > 0);
    assert_eq!(report.alarms_lost(), 0, "{:?}", report.unanswered);
    assert_eq!(report.alarms_acked, report.alarms_sent);
    for (device, seq) in &report.acked {
        assert_eq!(
            app.db.alarm_states(device, i64::from(*seq)).await.unwrap()[0].0,
            "verified"
        );
    }
    app.stop().await;
}
