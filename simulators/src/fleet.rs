//! A fleet of pendants speaking one or several TCP protocols: heartbeats, presses, retries
//! until ACKed.

mod config;
mod pendant;
pub(crate) mod schedule;

pub use config::{FleetConfig, Line};

pub use crate::roster::{FleetReport, FleetStats, Pendant, PendantResult};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::mqtt_fleet::MqttFleetConfig;
use crate::record::Recorder;
use crate::scenario::Plan;

/// Run the fleet to the end and report: one phase at `cfg`'s rates, every pendant holding a
/// connection. `stats` may be read meanwhile.
pub async fn run(cfg: FleetConfig, stats: Arc<FleetStats>) -> FleetReport {
    let plan = Plan::single(
        cfg.duration,
        cfg.alarm_rate,
        cfg.technical_rate,
        cfg.pendants.len(),
    );
    let recorder = Arc::new(Recorder::new(&plan, Instant::now()));
    run_plan(cfg, plan, stats, recorder).await
}

/// Run the fleet through `plan`'s phases (which replace `cfg`'s rates and duration) and report;
/// `recorder` holds the timeline, the phases and the storm afterwards. The run's clock starts at
/// `recorder.start()`.
pub async fn run_plan(
    cfg: FleetConfig,
    plan: Plan,
    stats: Arc<FleetStats>,
    recorder: Arc<Recorder>,
) -> FleetReport {
    run_mixed(Some(cfg), None, plan, stats, recorder).await
}

/// Run TCP pendants and MQTT pendants side by side through one plan, its rates shared out by
/// head count, into one report and one `recorder`. The plan's `persistent` counts TCP pendants;
/// MQTT pendants all hold a connection.
pub async fn run_mixed(
    tcp: Option<FleetConfig>,
    mqtt: Option<MqttFleetConfig>,
    plan: Plan,
    stats: Arc<FleetStats>,
    recorder: Arc<Recorder>,
) -> FleetReport {
    let tcp_n = tcp.as_ref().map_or(0, |c| c.pendants.len());
    let mqtt_n = mqtt.as_ref().map_or(0, |c| c.pendants.len());
    let share = |n: usize| n as f64 / (tcp_n + mqtt_n).max(1) as f64;
    let sampler = {
        let (stats, recorder) = (Arc::clone(&stats), Arc::clone(&recorder));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                recorder.start() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                recorder.tick(
                    stats.connected.load(Ordering::Relaxed),
                    stats.frames_acked(),
                );
            }
        })
    };
    let mut tasks: Vec<tokio::task::JoinHandle<PendantResult>> = Vec::with_capacity(tcp_n + mqtt_n);
    if let Some(cfg) = tcp {
        let shared = Arc::new(pendant::Shared {
            sockets: Arc::new(Semaphore::new(plan.per_report_sockets.max(1))),
            cfg,
            plan: plan.scaled(share(tcp_n)),
            stats: Arc::clone(&stats),
            recorder: Arc::clone(&recorder),
        });
        for i in 0..tcp_n {
            tasks.push(tokio::spawn(pendant::run(Arc::clone(&shared), i)));
        }
    }
    if let Some(cfg) = mqtt {
        let plan = plan.scaled(share(mqtt_n));
        tasks.extend(crate::mqtt_fleet::spawn(cfg, plan, &stats, &recorder));
    }
    let mut report = FleetReport::empty();
    for t in tasks {
        if let Ok(r) = t.await {
            report.acked.extend(r.acked);
            report.unanswered.extend(r.unanswered);
        }
    }
    sampler.abort();
    recorder.finish(
        stats.connected.load(Ordering::Relaxed),
        stats.frames_acked(),
    );
    report.fill_counts(&stats);
    (report.alarm_latency_us, report.heartbeat_latency_us) = recorder.histograms();
    report
}

/// Run every MQTT pendant as its own client at `cfg`'s rate until the end, then report.
pub async fn run_mqtt(cfg: MqttFleetConfig, stats: Arc<FleetStats>) -> FleetReport {
    let plan = Plan::single(cfg.duration, cfg.alarm_rate, 0.0, 0);
    let recorder =
        Arc::new(Recorder::new(&plan, Instant::now()).expecting_ready(cfg.pendants.len() as u64));
    run_mixed(None, Some(cfg), plan, stats, recorder).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::BytesMut;
    use pingantong_protocol::EventKind;
    use pingantong_protocol::native::{EventFrame, Reply, split_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::scenario::ScenarioFile;

    /// A server that ACKs every native frame and counts connections and power-restored reports.
    async fn acking_server(
        listener: TcpListener,
        accepted: Arc<AtomicU64>,
        restored: Arc<AtomicU64>,
    ) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let restored = Arc::clone(&restored);
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {
                    let mut out = BytesMut::new();
                    while let Ok(Some(raw)) = split_frame(&mut buf) {
                        let Ok(f) = EventFrame::parse(&raw) else {
                            return;
                        };
                        if f.event.kind == EventKind::PowerRestored {
                            restored.fetch_add(1, Ordering::Relaxed);
                        }
                        let ack = Reply::Ack {
                            seq: f.event.seq,
                            status: 0,
                            server_time_ms: 0,
                        };
                        ack.encode(None, &mut out);
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn a_mixed_fleet_rides_out_a_storm_with_nothing_lost() {
        // Two lines (two listeners); the pendants alternate between them.
        let (accepted, restored) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        let on_b = Arc::new(AtomicU64::new(0));
        for counter in [Arc::clone(&accepted), Arc::clone(&on_b)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            servers.push(tokio::spawn(acking_server(
                listener,
                counter,
                Arc::clone(&restored),
            )));
        }
        let scenario = ScenarioFile::parse(
            r#"
            [[phase]]
            name = "calm"
            secs = 1
            alarm_rate = 20
            [[phase]]
            name = "cut"
            secs = 1.5
            alarm_rate = 20
            disconnect = true
            reconnect_within_secs = 0.5
            report_on_reconnect = "power_restored"
            "#,
        )
        .unwrap();
        let pendants: Vec<Pendant> = (1..=20)
            .map(|n| Pendant {
                id: crate::device_id("PA", n),
                secret: vec![7; 32],
                line: n % 2,
            })
            .collect();
        let plan = Plan {
            phases: scenario.phases().unwrap(),
            persistent: 10,
            source_spread: 2,
            per_report_sockets: 4,
        };
        let recorder =
            Arc::new(Recorder::new(&plan, Instant::now()).with_lines(["a".into(), "b".into()]));
        let native = || Arc::new(crate::speaker::NativeSpeaker);
        let cfg = FleetConfig {
            lines: vec![Line::new(native(), addrs[0]), Line::new(native(), addrs[1])],
            pendants,
            heartbeat: Duration::from_millis(300),
            alarm_rate: 0.0,
            technical_rate: 0.0,
            duration: Duration::ZERO,
            retry_after: Duration::from_secs(1),
            grace: Duration::from_secs(5),
        };
        let stats = Arc::new(FleetStats::default());
        let r = run_plan(cfg, plan, Arc::clone(&stats), Arc::clone(&recorder)).await;
        servers.iter().for_each(|s| s.abort());
        assert!(r.alarms_sent > 10, "presses were made: {}", r.alarms_sent);
        assert_eq!(r.alarms_lost(), 0, "{:?}", r.unanswered);
        assert_eq!(r.heartbeats_acked, r.heartbeats_sent);
        assert_eq!(
            stats.connected.load(Ordering::Relaxed),
            0,
            "every socket closed"
        );
        // Ten held connections, ten again after the storm, and one per report for the rest.
        let (a, b) = (
            accepted.load(Ordering::Relaxed),
            on_b.load(Ordering::Relaxed),
        );
        assert!(a > 0 && b > 0, "both lines used: {a} {b}");
        assert!(a + b > 20 + 10, "{a} + {b}");
        assert_eq!(restored.load(Ordering::Relaxed), 10);
        let s = recorder.summary(
            r.alarms_acked + r.heartbeats_acked,
            Duration::from_millis(2_500),
        );
        assert_eq!(s["connect"]["pendants"], 10);
        assert_eq!(s["storm"]["disconnected"], 10);
        assert_eq!(s["storm"]["reconnected"], 10);
        assert_eq!(s["storm"]["reports_acked"], 10);
        assert!(
            s["storm"]["secs_to_all_reports_acked"].as_f64().unwrap() < 1.5,
            "{}",
            s["storm"]
        );
        let sent: u64 = s["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["alarms_sent"].as_u64().unwrap())
            .sum();
        assert_eq!(sent, r.alarms_sent);
        let acked: u64 = s["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["alarms_acked"].as_u64().unwrap())
            .sum();
        assert_eq!(acked, r.alarms_acked);
        let by_line = |l: &str| s["by_protocol"][l]["alarms_acked"].as_u64().unwrap();
        assert!(by_line("a") > 0 && by_line("b") > 0, "{}", s["by_protocol"]);
        assert_eq!(by_line("a") + by_line("b"), r.alarms_acked);
    }
}
