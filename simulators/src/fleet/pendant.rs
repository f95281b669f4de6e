//! One simulated pendant: presses, reports and beats per its phase's rates, over a connection it
//! holds or one per report; every answered frame is resent until ACKed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use pingantong_protocol::{EventKind, Location};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::FleetConfig;
use super::schedule::{self, Schedule, unix_ms};
use crate::record::{Press, Recorder};
use crate::roster::FleetStats;
use crate::scenario::Plan;
use crate::source;
use crate::speaker::Verdict;

/// What every pendant of a run shares.
pub(super) struct Shared {
    pub cfg: FleetConfig,
    pub plan: Plan,
    pub stats: Arc<FleetStats>,
    pub recorder: Arc<Recorder>,
    /// Sockets the per-report pendants may hold open at once (they stay under the file limit).
    pub sockets: Arc<Semaphore>,
}

pub use crate::roster::PendantResult;

#[derive(Clone, Copy, PartialEq)]
enum Frame {
    /// A press made during this phase; `offline`: while cut off by a mass disconnect.
    Alarm(Press),
    /// The report sent on reconnecting after a mass disconnect.
    StormReport,
    Other,
}

struct Outstanding {
    bytes: BytesMut,
    first_sent: Instant,
    /// `None` until written once (a per-report pendant writes when it has connected).
    last_sent: Option<Instant>,
    frame: Frame,
}

/// An open connection; counted in `connected` while it lives.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    hello_replies: usize,
    stats: Arc<FleetStats>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits up to 2 s for a connection, then at most this long between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

pub(super) async fn run(sh: Arc<Shared>, index: usize) -> PendantResult {
    let (cfg, plan, stats, rec) = (&sh.cfg, &sh.plan, &sh.stats, &sh.recorder);
    let me = &cfg.pendants[index];
    let line = &cfg.lines[me.line];
    let speaker = Arc::clone(&line.speaker);
    let persistent = index < plan.persistent;
    let from = match line.addr.ip() {
        IpAddr::V4(_) if plan.source_spread > 0 => {
            Some(source::source_addr(index % plan.source_spread))
        }
        _ => None,
    };
    let start = rec.start();
    let mut stop_sending = start + plan.total();
    let mut give_up = stop_sending + cfg.grace;
    let mut result = PendantResult {
        acked: Vec::new(),
        unanswered: Vec::new(),
    };
    // Keyed by wire sequence number; the smallest `first_sent` is the oldest.
    let mut outstanding: BTreeMap<u32, Outstanding> = BTreeMap::new();
    // Frames the server never answers, waiting for a connection.
    let mut unsent = BytesMut::new();
    let mut seq: u32 = 0;

    let mut phase = 0;
    let rates = |p: usize| schedule::rates(plan, p, cfg.pendants.len());
    let mut due = Schedule::new(start, cfg.heartbeat, rates(0));
    // A mass disconnect drops this pendant until `offline_until` and it reports on its return.
    let mut offline_until: Option<Instant> = None;
    let mut report_due: Option<EventKind> = None;

    let mut conn: Option<Conn> = None;
    let mut next_connect = start;
    let mut backoff = Duration::from_millis(50);
    let mut connected_once = false;
    let mut ready_told = !persistent;

    loop {
        let now = Instant::now();
        if stats.stopping() && now < stop_sending {
            stop_sending = now;
            give_up = now + cfg.grace;
        }
        let sending = now < stop_sending;
        if (!sending && outstanding.is_empty() && report_due.is_none()) || now >= give_up {
            break;
        }
        // Phase boundaries: new rates (a Poisson process may be redrawn at any time), and the storm.
        while sending && phase + 1 < plan.phases.len() && now >= start + plan.phases[phase].end() {
            phase += 1;
            let at = start + plan.phases[phase].start;
            due.phase(at, rates(phase));
            if let (Some(storm), true) = (&plan.phases[phase].storm, persistent) {
                conn = None;
                cut_off(outstanding.values_mut(), rec);
                let delay = storm
                    .reconnect_within
                    .mul_f64(rand::rng().random_range(0.0..1.0));
                offline_until = Some(at + delay);
                next_connect = at + delay;
                report_due = storm.report;
                rec.storm_disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let offline = offline_until.is_some_and(|t| now < t);
        let want_conn = !offline
            && ((persistent && sending)
                || !outstanding.is_empty()
                || !unsent.is_empty()
                || report_due.is_some());

        if want_conn && conn.is_none() && now >= next_connect {
            let permit = if persistent {
                None
            } else {
                match Arc::clone(&sh.sockets).acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => break,
                }
            };
            let stream = match source::connect(line.addr, from, Duration::from_secs(2)).await {
                Ok(s) => s,
                Err(_) => {
                    next_connect = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            if persistent && connected_once {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            connected_once = true;
            if offline_until.take().is_some() {
                rec.storm_reconnect();
            }
            stats.connected.fetch_add(1, Ordering::Relaxed);
            let (rd, wr) = stream.into_split();
            let mut c = Conn {
                rd,
                wr,
                buf: BytesMut::with_capacity(256),
                hello_replies: 0,
                stats: Arc::clone(stats),
                _permit: permit,
            };
            // A login (if the protocol has one), the storm's report, then everything unanswered.
            let mut first = BytesMut::new();
            if let Some((hello, replies)) = speaker.hello(me) {
                first.extend_from_slice(&hello);
                c.hello_replies = replies;
            }
            if let Some(kind) = report_due.take() {
                seq = seq.wrapping_add(1);
                let bytes = speaker.encode(me, seq, kind, unix_ms(), None);
                stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                rec.storm_reports_sent.fetch_add(1, Ordering::Relaxed);
                if speaker.answered(kind) {
                    outstanding.insert(
                        speaker.wire_seq(seq),
                        Outstanding {
                            bytes,
                            first_sent: Instant::now(),
                            last_sent: None,
                            frame: Frame::StormReport,
                        },
                    );
                } else {
                    first.extend_from_slice(&bytes);
                    stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                    rec.storm_report_acked();
                }
            }
            first.extend_from_slice(&unsent.split());
            let mut resent: Vec<_> = outstanding.values_mut().collect();
            resent.sort_by_key(|o| o.first_sent);
            for o in resent {
                first.extend_from_slice(&o.bytes);
                if o.last_sent.is_some() {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                o.last_sent = Some(Instant::now());
            }
            if !first.is_empty() && c.wr.write_all(&first).await.is_err() {
                next_connect = Instant::now() + backoff;
                continue;
            }
            if c.hello_replies == 0 && !ready_told {
                ready_told = true;
                rec.pendant_ready();
            }
            conn = Some(c);
            continue;
        }
        // A per-report pendant hangs up once everything it sent is answered.
        if !persistent && conn.is_some() && outstanding.is_empty() && unsent.is_empty() {
            conn = None;
            continue;
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
        if want_conn && conn.is_none() {
            wake = wake.min(next_connect);
        }
        let oldest_sent = outstanding.values().filter_map(|o| o.last_sent).min();
        if let (Some(t), true) = (oldest_sent, conn.is_some()) {
            wake = wake.min(t + cfg.retry_after);
        }

        tokio::select! {
            _ = stats.stop_notified(), if sending => continue,
            r = async {
                match conn.as_mut() {
                    Some(c) => c.rd.read_buf(&mut c.buf).await,
                    None => std::future::pending().await,
                }
            } => {
                if !matches!(r, Ok(n) if n > 0) {
                    conn = None;
                    next_connect = Instant::now() + backoff;
                    continue;
                }
                let Some(c) = conn.as_mut() else { continue };
                loop {
                    let answer = match speaker.next_reply(me, &mut c.buf) {
                        Ok(Some(a)) => a,
                        Ok(None) => break,
                        Err(_) => { c.buf.clear(); break; }
                    };
                    if answer.verdict == Verdict::Retry { continue; }
                    let key = match answer.seq {
                        Some(s) if outstanding.contains_key(&s) => Some(s),
                        _ if c.hello_replies > 0 => {
                            c.hello_replies -= 1;
                            if c.hello_replies == 0 && !ready_told {
                                ready_told = true;
                                rec.pendant_ready();
                            }
                            None
                        }
                        Some(_) => None,
                        // In-order protocols answer the oldest frame first.
                        None => outstanding.iter().min_by_key(|(_, o)| o.first_sent).map(|(k, _)| *k),
                    };
                    let Some(o) = key.and_then(|k| outstanding.remove(&k)) else { continue };
                    let us = o.first_sent.elapsed().as_micros().max(1) as u64;
                    match (o.frame, answer.verdict) {
                        (Frame::Alarm(press), Verdict::Ack) => {
                            stats.alarms_acked.fetch_add(1, Ordering::Relaxed);
                            rec.alarm_acked(press, us);
                            result.acked.push((me.id.clone(), key.unwrap_or(0)));
                        }
                        (Frame::Alarm(_), _) => {
                            stats.alarms_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        (f, Verdict::Ack) => {
                            stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                            rec.frame_acked(us);
                            if f == Frame::StormReport {
                                rec.storm_report_acked();
                            }
                        }
                        (_, _) => {}
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                // Whatever falls due after the end is not sent.
                let sending = now < stop_sending && !stats.stopping();
                if sending && let Some(kind) = due.take(now) {
                    let alarm = matches!(kind, EventKind::Sos | EventKind::Fall);
                    // Without power a pendant still takes a press (sent on reconnecting), but
                    // neither beats nor reports.
                    if offline && !alarm {
                        continue;
                    }
                    seq = seq.wrapping_add(1);
                    let location = alarm.then_some(Location { lat: 23.13, lon: 113.26, accuracy_m: Some(20) });
                    let bytes = speaker.encode(me, seq, kind, unix_ms(), location);
                    let press = Press { line: me.line, phase, offline };
                    if alarm {
                        stats.alarms_sent.fetch_add(1, Ordering::Relaxed);
                        rec.alarm_sent(press);
                    } else {
                        stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    let sent = Instant::now();
                    let failed = match conn.as_mut() {
                        Some(c) => c.wr.write_all(&bytes).await.is_err(),
                        None if speaker.answered(kind) => false,
                        None => {
                            unsent.extend_from_slice(&bytes);
                            false
                        }
                    };
                    if speaker.answered(kind) {
                        let frame = if alarm { Frame::Alarm(press) } else { Frame::Other };
                        let last_sent = conn.is_some().then_some(sent);
                        outstanding.insert(speaker.wire_seq(seq), Outstanding { bytes, first_sent: sent, last_sent, frame });
                    } else if !alarm {
                        // Nothing will come back: sent is all a device can know.
                        stats.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                    }
                    if failed {
                        conn = None;
                        next_connect = Instant::now() + backoff;
                    }
                    continue;
                }
                let Some(c) = conn.as_mut() else { continue };
                let due = |o: &Outstanding| o.last_sent.is_some_and(|t| t.elapsed() >= cfg.retry_after);
                if !outstanding.values().any(due) {
                    continue;
                }
                if !speaker.echoes_seq() {
                    // Replies without sequence numbers are matched in order; a resend on this
                    // connection would shift them. Start afresh.
                    conn = None;
                    next_connect = Instant::now() + backoff;
                    continue;
                }
                let mut again = BytesMut::new();
                for o in outstanding.values_mut().filter(|o| due(o)) {
                    again.extend_from_slice(&o.bytes);
                    o.last_sent = Some(Instant::now());
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                if c.wr.write_all(&again).await.is_err() {
                    conn = None;
                    next_connect = Instant::now() + backoff;
                }
            }
        }
    }
    for (s, o) in outstanding {
        if matches!(o.frame, Frame::Alarm { .. }) {
            result.unanswered.push((me.id.clone(), s));
        }
    }
    result
}

/// Presses in flight when a mass disconnect takes the connection are answered
/// only after the reconnect: they count with those made while cut off.
fn cut_off<'a>(outstanding: impl Iterator<Item = &'a mut Outstanding>, rec: &Recorder) {
    for o in outstanding {
        if let Frame::Alarm(press) = &mut o.frame
            && !press.offline
        {
            rec.alarm_cut_off(*press);
            press.offline = true;
        }
    }
}
