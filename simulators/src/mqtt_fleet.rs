//! A fleet of devices publishing through an MQTT broker (protocol/MQTT.md): press → application
//! ACK latency, every event published again until answered, through a scenario's phases and its
//! mass disconnect like the TCP fleet.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pingantong_protocol::EventKind;
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fleet::schedule::{self, Schedule, unix_ms};
use crate::record::{Press, Recorder};
use crate::roster::{FleetStats, Pendant, PendantResult};
use crate::scenario::Plan;

#[derive(Debug, Clone)]
pub struct MqttFleetConfig {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub pendants: Vec<Pendant>,
    pub heartbeat: Duration,
    /// Presses per second across the fleet (`run`; `run_plan` takes the plan's phases).
    pub alarm_rate: f64,
    pub duration: Duration,
    pub retry_after: Duration,
    pub grace: Duration,
    /// The protocol line the pendants' presses are tallied under ([`Press::line`]).
    pub line: usize,
    /// Each pendant's MQTT password by device id (username `devices/<id>`);
    /// a pendant without one connects without credentials (quarantine, unverified).
    pub passwords: std::collections::HashMap<String, String>,
}

/// One task per pendant, following `plan` (its rates are this fleet's share).
pub(crate) fn spawn(
    cfg: MqttFleetConfig,
    plan: Plan,
    stats: &Arc<FleetStats>,
    recorder: &Arc<Recorder>,
) -> Vec<JoinHandle<PendantResult>> {
    let shared = Arc::new(Shared {
        cfg,
        plan,
        stats: Arc::clone(stats),
        recorder: Arc::clone(recorder),
    });
    (0..shared.cfg.pendants.len())
        .map(|i| tokio::spawn(pendant(Arc::clone(&shared), i)))
        .collect()
}

struct Shared {
    cfg: MqttFleetConfig,
    plan: Plan,
    stats: Arc<FleetStats>,
    recorder: Arc<Recorder>,
}

#[derive(Clone, Copy, PartialEq)]
enum Frame {
    Alarm(Press),
    StormReport,
    Other,
}

struct Sent {
    first: Instant,
    /// `None` until published once (made while cut off or still subscribing).
    last: Option<Instant>,
    body: String,
    frame: Frame,
}

/// A client and its event loop; the connection opens on the first poll.
fn session(cfg: &MqttFleetConfig, me: &Pendant) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(
        format!("sim-{}-{}", me.id, std::process::id()),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(pass) = cfg.passwords.get(&me.id) {
        opts.set_credentials(format!("devices/{}", me.id), pass.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

async fn pendant(sh: Arc<Shared>, index: usize) -> PendantResult {
    let (cfg, plan, stats, rec) = (&sh.cfg, &sh.plan, &sh.stats, &sh.recorder);
    let me = &cfg.pendants[index];
    let events = format!("{}/v1/devices/{}/events", cfg.prefix, me.id);
    let acks = format!("{}/v1/devices/{}/ack", cfg.prefix, me.id);
    let rates = |p: usize| schedule::rates(plan, p, cfg.pendants.len());
    let start = rec.start();
    let mut stop_sending = start + plan.total();
    let mut give_up = stop_sending + cfg.grace;
    let mut phase = 0;
    let mut due = Schedule::new(start, cfg.heartbeat, rates(0));
    let mut offline_until: Option<Instant> = None;
    let mut report_due: Option<EventKind> = None;
    let mut storm_return = false;

    let mut seq = 0u32;
    let mut sent: HashMap<u32, Sent> = HashMap::new();
    let mut result = PendantResult {
        acked: Vec::new(),
        unanswered: Vec::new(),
    };
    let mut conn: Option<(AsyncClient, EventLoop)> = None;
    let mut subscribed = false;
    let mut ready_told = false;
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    loop {
        let now = Instant::now();
        if stats.stopping() && now < stop_sending {
            stop_sending = now;
            give_up = now + cfg.grace;
        }
        let sending = now < stop_sending;
        if (!sending && sent.is_empty() && report_due.is_none()) || now >= give_up {
            break;
        }
        while sending && phase + 1 < plan.phases.len() && now >= start + plan.phases[phase].end() {
            phase += 1;
            let at = start + plan.phases[phase].start;
            due.phase(at, rates(phase));
            if let Some(storm) = &plan.phases[phase].storm {
                // The power goes: the connection drops without a DISCONNECT.
                conn = None;
                // Presses in flight are answered only after the reconnect:
                // they count with those made while cut off.
                for o in sent.values_mut() {
                    if let Frame::Alarm(press) = &mut o.frame
                        && !press.offline
                    {
                        rec.alarm_cut_off(*press);
                        press.offline = true;
                    }
                }
                if std::mem::take(&mut subscribed) {
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                }
                let delay = storm
                    .reconnect_within
                    .mul_f64(rand::rng().random_range(0.0..1.0));
                offline_until = Some(at + delay);
                report_due = storm.report;
                storm_return = true;
                rec.storm_disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let offline = offline_until.is_some_and(|t| now < t);
        if !offline && conn.is_none() && (sending || !sent.is_empty() || report_due.is_some()) {
            offline_until = None;
            conn = Some(session(cfg, me));
        }

        let mut wake = give_up;
        if sending {
            wake = wake.min(stop_sending).min(due.next());
            if phase + 1 < plan.phases.len() {
                wake = wake.min(start + plan.phases[phase].end());
            }
        }
        if let (Some(t), true) = (offline_until, offline) {
            wake = wake.min(t);
        }

        tokio::select! {
            _ = stats.stop_notified(), if sending => continue,
            polled = async {
                match conn.as_mut() {
                    Some((_, eventloop)) => eventloop.poll().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some((client, _)) = conn.as_ref() else { continue };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(acks.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed = true;
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        if !ready_told {
                            ready_told = true;
                            rec.pendant_ready();
                        }
                        if std::mem::take(&mut storm_return) {
                            rec.storm_reconnect();
                        }
                        if let Some(kind) = report_due.take() {
                            seq = seq.wrapping_add(1);
                            stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                            rec.storm_reports_sent.fetch_add(1, Ordering::Relaxed);
                            let body = event_body(seq, kind);
                            let t = Instant::now();
                            sent.insert(seq, Sent { first: t, last: None, body, frame: Frame::StormReport });
                        }
                        // Whatever was made while cut off, and whatever the last session had in
                        // flight, oldest first.
                        let mut owed: Vec<_> = sent.values_mut().collect();
                        owed.sort_by_key(|o| o.first);
                        for o in owed {
                            if o.last.is_some() {
                                stats.retries.fetch_add(1, Ordering::Relaxed);
                            }
                            o.last = Some(Instant::now());
                            let _ = client.publish(events.clone(), QoS::AtLeastOnce, false, o.body.clone()).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        let Some(s) = v["seq"].as_u64().map(|s| s as u32) else { continue };
                        let status = v["status"].as_str().unwrap_or("");
                        if status == "unavailable" { continue; }
                        let Some(o) = sent.remove(&s) else { continue };
                        let us = o.first.elapsed().as_micros().max(1) as u64;
                        let stored = matches!(status, "stored" | "duplicate");
                        match (o.frame, stored) {
                            (Frame::Alarm(press), true) => {
                                stats.alarms_acked.fetch_add(1, Ordering::Relaxed);
                                rec.alarm_acked(press, us);
                                result.acked.push((me.id.clone(), s));
                            }
                            (Frame::Alarm(_), false) => {
                                stats.alarms_refused.fetch_add(1, Ordering::Relaxed);
                            }
                            (f, _) => {
                                stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                                rec.frame_acked(us);
                                if f == Frame::StormReport {
                                    rec.storm_report_acked();
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if std::mem::take(&mut subscribed) {
                            stats.connected.fetch_sub(1, Ordering::Relaxed);
                            stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        // The event loop dials again on the next poll.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                let sending = now < stop_sending && !stats.stopping();
                if !sending { continue; }
                let Some(kind) = due.take(now) else { continue };
                let alarm = matches!(kind, EventKind::Sos | EventKind::Fall);
                // Cut off, a device keeps a press for later but neither beats nor reports.
                if offline && !alarm {
                    continue;
                }
                seq = seq.wrapping_add(1);
                let press = Press { line: cfg.line, phase, offline };
                let frame = if alarm {
                    stats.alarms_sent.fetch_add(1, Ordering::Relaxed);
                    rec.alarm_sent(press);
                    Frame::Alarm(press)
                } else {
                    stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                    Frame::Other
                };
                let body = event_body(seq, kind);
                let t = Instant::now();
                let last = match conn.as_ref() {
                    Some((client, _)) if subscribed => {
                        let _ = client.publish(events.clone(), QoS::AtLeastOnce, false, body.clone()).await;
                        Some(t)
                    }
                    _ => None,
                };
                sent.insert(seq, Sent { first: t, last, body, frame });
            }
            _ = retry.tick(), if !sent.is_empty() => {
                let Some((client, _)) = conn.as_ref().filter(|_| subscribed) else { continue };
                for o in sent.values_mut() {
                    if o.last.is_some_and(|t| t.elapsed() >= cfg.retry_after) {
                        o.last = Some(Instant::now());
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        let _ = client.try_publish(events.clone(), QoS::AtLeastOnce, false, o.body.clone());
                    }
                }
            }
        }
    }
    if subscribed {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    result.unanswered = sent
        .iter()
        .filter(|(_, o)| matches!(o.frame, Frame::Alarm(_)))
        .map(|(s, _)| (me.id.clone(), *s))
        .collect();
    result
}

fn event_body(seq: u32, kind: EventKind) -> String {
    let mut v = serde_json::json!({
        "v": 1, "seq": seq, "kind": kind.name(), "time": unix_ms(), "battery": 80,
    });
    if matches!(kind, EventKind::Sos | EventKind::Fall) {
        v["location"] = serde_json::json!({"lat": 23.13, "lon": 113.26, "accuracy_m": 20});
    }
    v.to_string()
}
