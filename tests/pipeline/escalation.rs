//! Deadlines: unclaimed incidents alert supervisors until claimed; unanswered
//! offers walk to the next carer, the next provider, then the supervisors.
//! Time is moved by hand ([`ManualClock`]); the deadlines live in the database.

use std::time::Duration;

use pingantong::domain::Action;
use pingantong::store::Transition;
use pingantong_protocol::EventKind;

use crate::helpers::*;

const SWEEPS: Duration = Duration::from_millis(700);

async fn sos(app: &TestApp, city: &City, seq: u32) -> i64 {
    let mut dev = Device::connect(app.native).await;
    dev.send(&event(&city.device, seq, EventKind::Sos), &city.secret)
        .await;
    newest_incident(&app.db).await
}

/// A server on a hand-driven clock, the small city, and a supervisor listening.
async fn watched_city() -> (ManualClock, TestApp, City, MqttProbe, String) {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = test_settings(Backend::Sqlite, Broker::Embedded, dir.path());
    let prefix = s.mqtt.topic_prefix.clone();
    let app = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    let city = seed_small_city(&app.db).await;
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(&host, port, &[format!("{prefix}/v1/supervisors/alerts")]).await;
    (clock, app, city, probe, prefix)
}

fn alerts(probe: &MqttProbe, prefix: &str, kind: &str) -> usize {
    probe
        .on(&format!("{prefix}/v1/supervisors/alerts"))
        .iter()
        .filter(|a| a["kind"] == kind)
        .count()
}

#[tokio::test]
async fn an_unclaimed_incident_alerts_supervisors_until_someone_claims_it() {
    let (clock, app, city, probe, prefix) = watched_city().await;
    let incident = sos(&app, &city, 1).await;

    clock.advance(Duration::from_secs(59));
    tokio::time::sleep(SWEEPS).await;
    assert_eq!(alerts(&probe, &prefix, "unclaimed"), 0, "not before 60 s");

    clock.advance(Duration::from_secs(2));
    eventually("the first alert", || async {
        (alerts(&probe, &prefix, "unclaimed") == 1).then_some(())
    })
    .await;
    clock.advance(Duration::from_secs(61));
    eventually("the reminder", || async {
        (alerts(&probe, &prefix, "unclaimed") == 2).then_some(())
    })
    .await;

    app.db
        .transition(&Transition {
            incident_id: incident,
            action: Action::Claim,
            actor: "operator:wang",
            detail: "",
            outcome: None,
            merged_into: None,
            take_over: false,
        })
        .await
        .unwrap();
    clock.advance(Duration::from_secs(120));
    tokio::time::sleep(SWEEPS).await;
    assert_eq!(
        alerts(&probe, &prefix, "unclaimed"),
        2,
        "claimed: no more reminders"
    );
    let actions = app.db.incident_actions(incident).await.unwrap();
    assert_eq!(actions.iter().filter(|a| *a == "claim_overdue").count(), 2);
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "supervisor_alerted")
            .count(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn unanswered_offers_walk_to_the_next_carer_then_the_supervisors() {
    let (clock, app, city, probe, prefix) = watched_city().await;
    let incident = sos(&app, &city, 1).await;
    let offered = || async {
        app.db
            .dispatch_states(incident)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.1, d.2))
            .collect::<Vec<_>>()
    };
    eventually("the first offer", || async {
        (offered().await.len() == 1).then_some(())
    })
    .await;
    // Nobody answers, three times over.
    for n in 2..=3 {
        clock.advance(Duration::from_secs(91));
        eventually("the next offer", || async {
            (offered().await.len() == n).then_some(())
        })
        .await;
    }
    clock.advance(Duration::from_secs(91));
    eventually("the supervisors told nobody is left", || async {
        (alerts(&probe, &prefix, "no_carer") == 1).then_some(())
    })
    .await;
    assert_eq!(
        offered().await,
        [
            (city.near_carer, "expired".to_string()),
            (city.far_carer, "expired".to_string()),
            (city.other_provider_carer, "expired".to_string()),
        ],
        "the contracted provider's carers nearest first, then the fallback provider"
    );
    let d = app.db.dispatches_overview().await.unwrap();
    assert_eq!(
        d.iter().map(|x| x.3).collect::<Vec<_>>(),
        [false, false, true],
        "fallback recorded"
    );
    app.stop().await;
}

#[tokio::test]
async fn deadlines_survive_a_restart() {
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = test_settings(Backend::Postgres, Broker::Embedded, dir.path());
    let app = TestApp::spawn_with_clock(s.clone(), None, &clock).await;
    let city = seed_small_city(&app.db).await;
    let incident = sos(&app, &city, 1).await;
    app.stop().await;

    // Down for two minutes; the deadline passed while nobody was running.
    clock.advance(Duration::from_secs(120));
    let back = TestApp::spawn_with_clock(s, Some(dir), &clock).await;
    eventually("the overdue claim noticed after the restart", || async {
        let a = back.db.incident_actions(incident).await.unwrap();
        a.iter().any(|x| x == "claim_overdue").then_some(())
    })
    .await;
    eventually("the expired offer passed on", || async {
        (back.db.dispatch_states(incident).await.unwrap().len() == 2).then_some(())
    })
    .await;
    back.stop().await;
}

/// A rules file read at start: the deployment makes a removed watch a call
/// for help (people with dementia take them off and wander), with its own
/// 30 s claim limit.
#[tokio::test]
async fn a_rules_file_changes_what_a_kind_does_and_its_time_limits() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[kinds.removed_from_wrist]\npriority = \"life_safety\"\n\
         actions = [\"operator\", \"offer_carer\"]\nclaim_within_secs = 30\n",
    )
    .unwrap();
    let clock = ManualClock::starting_now();
    let dir = tempfile::tempdir().unwrap();
    let s = pingantong::Settings {
        rules_file: Some(rules.clone()),
        ..test_settings(Backend::Sqlite, Broker::Embedded, dir.path())
    };
    let prefix = s.mqtt.topic_prefix.clone();
    let app = TestApp::spawn_with_clock(s.clone(), Some(dir), &clock).await;
    let city = seed_small_city(&app.db).await;
    let (host, port) = broker_of(&app);
    let probe = MqttProbe::connect(&host, port, &[format!("{prefix}/v1/supervisors/alerts")]).await;
    let mut dev = Device::connect(app.native).await;
    dev.send(
        &event(&city.device, 1, EventKind::RemovedFromWrist),
        &city.secret,
    )
    .await;
    let offer = eventually("the carer's offer", || async {
        app.carers.offers().into_iter().next()
    })
    .await;
    assert_eq!(offer.carer_id, city.near_carer);
    assert_eq!(offer.kind, "removed_from_wrist");
    let incident = offer.incident_id;
    let summary = app.db.incident_summary(incident).await.unwrap().unwrap();
    assert_eq!(summary.lane, "life_safety");
    // One per person, like any call for help: an SOS now folds into it.
    dev.send(&event(&city.device, 2, EventKind::Sos), &city.secret)
        .await;
    eventually("the SOS folded in", || async {
        let i = app.db.incidents_overview().await.unwrap();
        (i.len() == 1 && i[0].2 == 2).then_some(())
    })
    .await;

    clock.advance(Duration::from_secs(29));
    tokio::time::sleep(SWEEPS).await;
    assert_eq!(alerts(&probe, &prefix, "unclaimed"), 0, "not before 30 s");
    clock.advance(Duration::from_secs(2));
    eventually("the alert at 30 s", || async {
        (alerts(&probe, &prefix, "unclaimed") == 1).then_some(())
    })
    .await;
    app.stop().await;

    // A rule that would let a call for help skip the operator stops the start.
    std::fs::write(
        &rules,
        "[kinds.sos]\npriority = \"life_safety\"\nactions = [\"offer_carer\"]\n",
    )
    .unwrap();
    let err = match pingantong::Application::build(pingantong::Settings {
        rules_file: Some(rules.clone()),
        ..s.on_free_loopback_ports()
    })
    .await
    {
        Ok(_) => panic!("the server started on a rule that skips the operator"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"sos\"") && err.contains("operator"), "{err}");
}
