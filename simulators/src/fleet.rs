//! A fleet of native pendants: heartbeats, presses, retries until ACKed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use pingantong_protocol::{EventKind, Location};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::speaker::{Speaker, Verdict};

#[derive(Debug, Clone)]
pub struct Pendant {
    pub id: String,
    pub secret: Vec<u8>,
}

#[derive(Clone)]
pub struct FleetConfig {
    pub addr: SocketAddr,
    /// The protocol the pendants speak.
    pub speaker: Arc<dyn Speaker>,
    pub pendants: Vec<Pendant>,
    pub heartbeat: Duration,
    /// Presses per second across the whole fleet (Poisson).
    pub alarm_rate: f64,
    /// Technical events (low battery) per second across the fleet: a flood to
    /// time the presses through. Counted with the heartbeats.
    pub technical_rate: f64,
    /// How long pendants keep pressing and beating.
    pub duration: Duration,
    /// A frame unanswered this long is sent again (same bytes: a retry).
    pub retry_after: Duration,
    /// After `duration`, how long to wait for the last answers.
    pub grace: Duration,
}

/// Live counters, readable while the fleet runs (progress display).
#[derive(Debug, Default)]
pub struct FleetStats {
    pub connected: AtomicU64,
    pub alarms_sent: AtomicU64,
    pub alarms_acked: AtomicU64,
    pub alarms_refused: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_acked: AtomicU64,
    pub retries: AtomicU64,
    pub reconnects: AtomicU64,
    stop: AtomicBool,
    stop_now: Notify,
}

impl FleetStats {
    /// Stop pressing and beating now (Ctrl-C); answers still owed are awaited
    /// for the grace period as at the normal end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stop_now.notify_waiters();
    }
}

#[derive(Debug)]
pub struct FleetReport {
    pub alarms_sent: u64,
    pub alarms_acked: u64,
    /// Answered with a NAK the device must not retry (bad tag, unknown device).
    pub alarms_refused: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    pub retries: u64,
    pub reconnects: u64,
    /// (device, seq) of every alarm ACKed.
    pub acked: Vec<(String, u32)>,
    /// (device, seq) of every alarm still unanswered at the end.
    pub unanswered: Vec<(String, u32)>,
    /// Press → ACK, microseconds (retries included).
    pub alarm_latency_us: Histogram<u64>,
    pub heartbeat_latency_us: Histogram<u64>,
}

impl FleetReport {
    /// A report with no counts yet (filled from [`FleetStats`] at the end).
    pub fn empty() -> Self {
        Self {
            alarms_sent: 0,
            alarms_acked: 0,
            alarms_refused: 0,
            heartbeats_sent: 0,
            heartbeats_acked: 0,
            retries: 0,
            reconnects: 0,
            acked: Vec::new(),
            unanswered: Vec::new(),
            alarm_latency_us: histogram(),
            heartbeat_latency_us: histogram(),
        }
    }

    /// Copy the live counters into the report.
    pub fn fill_counts(&mut self, stats: &FleetStats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.alarms_sent = get(&stats.alarms_sent);
        self.alarms_acked = get(&stats.alarms_acked);
        self.alarms_refused = get(&stats.alarms_refused);
        self.heartbeats_sent = get(&stats.heartbeats_sent);
        self.heartbeats_acked = get(&stats.heartbeats_acked);
        self.retries = get(&stats.retries);
        self.reconnects = get(&stats.reconnects);
    }

    pub fn alarms_lost(&self) -> u64 {
        self.alarms_sent - self.alarms_acked - self.alarms_refused
    }
}

struct Outstanding {
    bytes: BytesMut,
    first_sent: Instant,
    last_sent: Instant,
    alarm: bool,
}

struct PendantResult {
    acked: Vec<(String, u32)>,
    unanswered: Vec<(String, u32)>,
    alarm_latency: Histogram<u64>,
    heartbeat_latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Run the fleet to the end and report. `stats` may be read meanwhile.
pub async fn run(cfg: FleetConfig, stats: Arc<FleetStats>) -> FleetReport {
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.pendants.len());
    for i in 0..cfg.pendants.len() {
        let cfg = Arc::clone(&cfg);
        let stats = Arc::clone(&stats);
        tasks.push(tokio::spawn(
            async move { pendant(cfg, i, stats, start).await },
        ));
    }
    let mut alarm_latency_us = histogram();
    let mut heartbeat_latency_us = histogram();
    let mut acked = Vec::new();
    let mut unanswered = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            alarm_latency_us.add(&r.alarm_latency).expect("same bounds");
            heartbeat_latency_us
                .add(&r.heartbeat_latency)
                .expect("same bounds");
            acked.extend(r.acked);
            unanswered.extend(r.unanswered);
        }
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    FleetReport {
        alarms_sent: get(&stats.alarms_sent),
        alarms_acked: get(&stats.alarms_acked),
        alarms_refused: get(&stats.alarms_refused),
        heartbeats_sent: get(&stats.heartbeats_sent),
        heartbeats_acked: get(&stats.heartbeats_acked),
        retries: get(&stats.retries),
        reconnects: get(&stats.reconnects),
        acked,
        unanswered,
        alarm_latency_us,
        heartbeat_latency_us,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn next_press(rate_per_pendant: f64) -> Duration {
    if rate_per_pendant <= 0.0 {
        return Duration::from_secs(365 * 24 * 3600);
    }
    let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() / rate_per_pendant)
}

async fn pendant(
    cfg: Arc<FleetConfig>,
    index: usize,
    stats: Arc<FleetStats>,
    start: Instant,
) -> PendantResult {
    let me = &cfg.pendants[index];
    let speaker = Arc::clone(&cfg.speaker);
    let rate = cfg.alarm_rate / cfg.pendants.len().max(1) as f64;
    let technical_rate = cfg.technical_rate / cfg.pendants.len().max(1) as f64;
    let mut stop_sending = start + cfg.duration;
    let mut give_up = stop_sending + cfg.grace;
    let mut result = PendantResult {
        acked: Vec::new(),
        unanswered: Vec::new(),
        alarm_latency: histogram(),
        heartbeat_latency: histogram(),
    };
    // Keyed by wire sequence number; the smallest `first_sent` is the oldest.
    let mut outstanding: BTreeMap<u32, Outstanding> = BTreeMap::new();
    let mut seq: u32 = 0;
    let jitter = rand::rng().random_range(0.0..1.0);
    let mut next_heartbeat = start + cfg.heartbeat.mul_f64(jitter);
    let mut next_alarm = start + next_press(rate);
    let mut next_technical = start + next_press(technical_rate);
    let mut backoff = Duration::from_millis(50);
    let mut first_connect = true;

    'connection: while Instant::now() < give_up {
        let stream = match tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(cfg.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if !first_connect {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first_connect = false;
        let _ = stream.set_nodelay(true);
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let (mut rd, mut wr) = stream.into_split();
        // A login (if the protocol has one), then everything unanswered again.
        let mut first = BytesMut::new();
        let mut hello_replies = 0;
        if let Some((hello, replies)) = speaker.hello(me) {
            first.extend_from_slice(&hello);
            hello_replies = replies;
        }
        let mut resent: Vec<_> = outstanding.iter_mut().collect();
        resent.sort_by_key(|(_, o)| o.first_sent);
        for (_, o) in resent {
            first.extend_from_slice(&o.bytes);
            o.last_sent = Instant::now();
            stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let broken = !first.is_empty() && wr.write_all(&first).await.is_err();
        let mut buf = BytesMut::with_capacity(256);
        let mut retry_tick = tokio::time::interval(cfg.retry_after.min(Duration::from_millis(500)));
        if broken {
            stats.connected.fetch_sub(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            continue;
        }
        loop {
            let now = Instant::now();
            if stats.stop.load(Ordering::Acquire) && now < stop_sending {
                stop_sending = now;
                give_up = now + cfg.grace;
            }
            if now >= stop_sending && outstanding.is_empty() {
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                break 'connection;
            }
            if now >= give_up {
                break;
            }
            let sending = now < stop_sending;
            let wake = if sending {
                next_heartbeat.min(next_alarm).min(next_technical)
            } else {
                give_up
            };
            tokio::select! {
                _ = stats.stop_now.notified(), if sending => continue,
                _ = tokio::time::sleep_until(wake) => {
                    if !sending { continue; }
                    let now = Instant::now();
                    let alarm = now >= next_alarm;
                    let kind = if alarm {
                        next_alarm += next_press(rate);
                        if rand::rng().random_range(0..10) == 0 { EventKind::Fall } else { EventKind::Sos }
                    } else if now >= next_technical {
                        next_technical += next_press(technical_rate);
                        EventKind::LowBattery
                    } else {
                        next_heartbeat += cfg.heartbeat;
                        EventKind::Heartbeat
                    };
                    seq = seq.wrapping_add(1);
                    let location = alarm.then_some(Location { lat: 23.13, lon: 113.26, accuracy_m: Some(20) });
                    let bytes = speaker.encode(me, seq, kind, unix_ms(), location);
                    let sent = Instant::now();
                    if alarm {
                        stats.alarms_sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    let failed = wr.write_all(&bytes).await.is_err();
                    if speaker.answered(kind) {
                        outstanding.insert(
                            speaker.wire_seq(seq),
                            Outstanding { bytes, first_sent: sent, last_sent: sent, alarm },
                        );
                    } else if !alarm {
                        // Nothing will come back: sent is all a device can know.
                        stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                    }
                    if failed { break; }
                }
                r = rd.read_buf(&mut buf) => {
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    loop {
                        let answer = match speaker.next_reply(me, &mut buf) {
                            Ok(Some(a)) => a,
                            Ok(None) => break,
                            Err(_) => { buf.clear(); break; }
                        };
                        if answer.verdict == Verdict::Retry { continue; }
                        let key = match answer.seq {
                            Some(s) => Some(s),
                            None if hello_replies > 0 => { hello_replies -= 1; None }
                            // In-order protocols answer the oldest frame first.
                            None => outstanding.iter().min_by_key(|(_, o)| o.first_sent).map(|(k, _)| *k),
                        };
                        let Some(o) = key.and_then(|k| outstanding.remove(&k)) else { continue };
                        let us = o.first_sent.elapsed().as_micros().max(1) as u64;
                        match (o.alarm, answer.verdict) {
                            (true, Verdict::Ack) => {
                                stats.alarms_acked.fetch_add(1, Ordering::Relaxed);
                                let _ = result.alarm_latency.record(us);
                                result.acked.push((me.id.clone(), key.unwrap_or(0)));
                            }
                            (true, _) => { stats.alarms_refused.fetch_add(1, Ordering::Relaxed); }
                            (false, Verdict::Ack) => {
                                stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                                let _ = result.heartbeat_latency.record(us);
                            }
                            (false, _) => {}
                        }
                    }
                }
                _ = retry_tick.tick() => {
                    let due = outstanding.values().any(|o| o.last_sent.elapsed() >= cfg.retry_after);
                    if due && !speaker.echoes_seq() {
                        // Replies without sequence numbers are matched in order; a
                        // resend on this connection would shift them. Start afresh.
                        break;
                    }
                    let mut again = BytesMut::new();
                    for o in outstanding.values_mut() {
                        if o.last_sent.elapsed() >= cfg.retry_after {
                            again.extend_from_slice(&o.bytes);
                            o.last_sent = Instant::now();
                            stats.retries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !again.is_empty() && wr.write_all(&again).await.is_err() { break; }
                }
            }
        }
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        // Connection lost: reconnect (after a short pause) and resend.
        tokio::time::sleep(backoff).await;
    }
    for (s, o) in outstanding {
        if o.alarm {
            result.unanswered.push((me.id.clone(), s));
        }
    }
    result
}
