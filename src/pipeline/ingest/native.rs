//! The native pendant protocol over TCP (protocol/NATIVE.md).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use pingantong_protocol::AlarmEvent;
use pingantong_protocol::native::{
    self, ACK_CLOCK_SKEW, ACK_DUPLICATE, EventFrame, NakReason, ParseError, RawFrame, Reply,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::IngestContext;
use pingantong_store::writer::PendingCommit;
use pingantong_store::{AlarmRecord, AuthStatus, CommitOutcome, DeviceRow, StoreError, now_ms};
use pingantong_telemetry::events;

pub const PROTOCOL: &str = "native";

/// Serve native pendants on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<IngestContext>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        events::ListenerStarted {
            protocol: PROTOCOL,
            addr: &addr,
        }
        .emit();
    }
    let max = ctx.limits.max_connections;
    super::serve(
        listener,
        PROTOCOL,
        max,
        shutdown,
        move |stream, peer, stop| connection(Arc::clone(&ctx), stream, peer, stop),
    )
    .await;
}

/// One pendant's connection, for as long as it lasts. Most of a city's
/// pendants are connected and silent: this future is what each of them costs.
fn connection(
    ctx: Arc<IngestContext>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send {
    Connection { ctx, peer }.run(stream, stop)
}

/// The answer owed to one frame, in the order the frames arrived.
enum Slot {
    Ready(Reply, Option<Arc<DeviceRow>>),
    Committing {
        seq: u32,
        auth: AuthStatus,
        skew: bool,
        device: Option<Arc<DeviceRow>>,
        commit: PendingCommit,
    },
}

struct Connection {
    ctx: Arc<IngestContext>,
    peer: SocketAddr,
}

/// Frames read but not yet answered, per connection: past this many the
/// connection stops reading until answers go out.
const IN_FLIGHT_PER_CONNECTION: usize = 64;

/// What a first read of a frame reserves; the buffer grows for longer frames.
const READ_CHUNK: usize = 256;

/// The frame being looked up and submitted. Boxed: the handling future (a
/// directory miss reads the database) is large, and inline it would make
/// every idle connection that large too.
type Handling<'a> = Pin<Box<dyn Future<Output = Slot> + Send + 'a>>;

/// What woke a connection up.
enum Step {
    Shutdown,
    Handled(Slot),
    Committed(Result<CommitOutcome, StoreError>),
    Writable(std::io::Result<()>),
    Readable(std::io::Result<()>),
    TimedOut,
}

impl Connection {
    /// Serve the connection; say why it ended.
    ///
    /// Reading and answering run side by side: a frame is submitted for commit
    /// as soon as it arrives, even while earlier frames of the same connection
    /// are still being committed, and answers go out in arrival order as their
    /// commits complete. An SOS behind a burst of routine frames therefore
    /// joins the very next commit instead of waiting for the burst's answers.
    ///
    /// All of it happens in this one task, waiting on whichever of the
    /// socket, the frame being handled and the oldest commit is ready. An idle
    /// pendant is the common case by far (100,000 of them, mostly silent), so
    /// an idle connection holds no buffer, no queue and no second task: each
    /// is allocated when bytes arrive and released when they are answered.
    async fn run(self, stream: TcpStream, shutdown: CancellationToken) {
        // Not in an async block around the call: that would hold the
        // connection's state twice (what it captured, and the call's future).
        let reason = self.converse(&stream, &shutdown).await;
        events::ConnectionClosed {
            protocol: PROTOCOL,
            peer: &self.peer,
            reason,
        }
        .emit();
    }

    async fn converse(&self, stream: &TcpStream, shutdown: &CancellationToken) -> &'static str {
        let limits = &self.ctx.limits;
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut owed: VecDeque<Slot> = VecDeque::new();
        let mut handling: Option<Handling<'_>> = None;
        let mut ended: Option<&'static str> = None;
        // A frame begun must be finished within `frame_timeout`; a silent
        // connection may stay so for `idle_timeout`. Armed afresh on every
        // wait for bytes, as each read is its own wait.
        let timer = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(timer);
        let mut armed = false;
        loop {
            // The next whole frame is taken up once the previous one is
            // submitted, in arrival order, unless too many wait for answers.
            if handling.is_none() && owed.len() < IN_FLIGHT_PER_CONNECTION {
                match native::split_frame(&mut buf) {
                    Ok(Some(raw)) => handling = Some(Box::pin(self.handle(raw))),
                    Ok(None) => {}
                    Err(e) => {
                        Box::pin(self.reject("framing", &e, &buf)).await;
                        owed.push_back(Slot::Ready(nak(0, NakReason::Malformed), None));
                        buf = BytesMut::new();
                        ended = Some("framing_error");
                    }
                }
            }
            while let Some(Slot::Ready(..)) = owed.front() {
                if let Some(Slot::Ready(reply, device)) = owed.pop_front() {
                    // An unknown device's reply cannot be signed; a known one's always is.
                    reply.encode(device.as_deref().map(|d| d.secret.as_slice()), &mut out);
                }
            }
            if !out.is_empty() {
                match stream.try_write(&out) {
                    Ok(0) => return "write_failed",
                    Ok(n) => out.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return "write_failed",
                }
            }
            release_if_empty(&mut buf);
            release_if_empty(&mut out);
            if owed.is_empty() && owed.capacity() > 0 {
                owed = VecDeque::new();
            }
            // Every frame read is answered before the connection closes.
            if let Some(reason) = ended
                && handling.is_none()
                && owed.is_empty()
                && out.is_empty()
            {
                return reason;
            }
            // Only with no whole frame left in `buf`: so an empty buffer means
            // "between frames" and a non-empty one "inside a frame".
            let reading =
                ended.is_none() && handling.is_none() && owed.len() < IN_FLIGHT_PER_CONNECTION;
            if !reading {
                armed = false;
            } else if !armed {
                let limit = if buf.is_empty() {
                    limits.idle_timeout
                } else {
                    limits.frame_timeout
                };
                timer.as_mut().reset(tokio::time::Instant::now() + limit);
                armed = true;
            }
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if ended.is_none() => Step::Shutdown,
                slot = async { handling.as_mut().expect("checked").await }, if handling.is_some() => {
                    Step::Handled(slot)
                }
                outcome = oldest_commit(&mut owed), if !owed.is_empty() => Step::Committed(outcome),
                r = poll_fn(|cx| stream.poll_write_ready(cx)), if !out.is_empty() => Step::Writable(r),
                r = poll_fn(|cx| stream.poll_read_ready(cx)), if reading => Step::Readable(r),
                _ = &mut timer, if reading => Step::TimedOut,
            };
            match step {
                Step::Shutdown => ended = Some("shutdown"),
                Step::Handled(slot) => {
                    handling = None;
                    owed.push_back(slot);
                }
                Step::Committed(outcome) => {
                    if let Some(slot) = owed.pop_front() {
                        owed.push_front(settle(slot, outcome));
                    }
                }
                // The next turn writes what is pending.
                Step::Writable(Ok(())) => {}
                Step::Writable(Err(_)) => return "write_failed",
                Step::Readable(Ok(())) => {
                    if buf.capacity() == 0 {
                        buf.reserve(READ_CHUNK);
                    }
                    match stream.try_read_buf(&mut buf) {
                        Ok(0) if buf.is_empty() => ended = Some("closed_by_peer"),
                        Ok(0) => {
                            let detail = "peer closed mid-frame";
                            Box::pin(self.reject("incomplete", &detail, &buf)).await;
                            buf = BytesMut::new();
                            ended = Some("closed_mid_frame");
                        }
                        Ok(_) => armed = false,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => ended = Some("read_failed"),
                    }
                }
                Step::Readable(Err(_)) => ended = Some("read_failed"),
                Step::TimedOut => {
                    armed = false;
                    if buf.is_empty() {
                        ended = Some("idle_timeout");
                    } else {
                        let detail = "frame not completed in time";
                        Box::pin(self.reject("incomplete", &detail, &buf)).await;
                        buf = BytesMut::new();
                        ended = Some("frame_timeout");
                    }
                }
            }
        }
    }

    async fn handle(&self, raw: RawFrame) -> Slot {
        let frame = match EventFrame::parse(&raw) {
            Ok(f) => f,
            Err(e) => {
                self.reject(parse_reason(&e), &e, &raw.bytes).await;
                let reason = match e {
                    ParseError::UnsupportedVersion(_) => NakReason::UnsupportedVersion,
                    _ => NakReason::Malformed,
                };
                return Slot::Ready(nak(0, reason), None);
            }
        };
        let event = &frame.event;
        let seq = event.seq;
        let device = match self.ctx.device_patiently(event.device.as_str()).await {
            Ok(d) => d,
            // The server is stopping with the database away: the frame cannot
            // be checked, so ask the device to send it again.
            Err(_) => return Slot::Ready(nak(seq, NakReason::Unavailable), None),
        };
        let auth = match &device {
            None => AuthStatus::UnknownDevice,
            Some(d) if frame.verify(&d.secret) => AuthStatus::Verified,
            Some(_) => AuthStatus::BadTag,
        };
        if auth != AuthStatus::Verified {
            events::UnverifiedEvent {
                protocol: PROTOCOL,
                device: event.device.as_str(),
                auth: auth.as_str(),
                kind: &event.kind.name(),
            }
            .emit();
        }
        let now = now_ms();
        let window = self.ctx.limits.clock_window.as_millis() as i64;
        let skew = event
            .device_time_ms
            .is_some_and(|t| (t as i64 - now).abs() > window);
        let record = AlarmRecord {
            received_at: now,
            protocol: PROTOCOL,
            peer: self.peer.to_string(),
            device_id: event.device.as_str().to_owned(),
            seq: i64::from(seq),
            kind: event.kind,
            device_time: event.device_time_ms.map(|t| t as i64),
            battery: event.battery_pct.map(i64::from),
            location: event.location,
            auth,
            raw: raw.bytes.to_vec(),
            decoded: decoded_json(event),
            // The tag differs whenever the content does, so a device that
            // reuses a sequence number after a reset is not taken for a retry.
            dedup_key: format!("native:{}:{}:{}", event.device, seq, hex(frame.tag())),
            retry_window_ms: Some(super::retry_window(event.device_time_ms.is_some())),
        };
        match self.ctx.writer.submit(record).await {
            Ok(commit) => Slot::Committing {
                seq,
                auth,
                skew,
                device,
                commit,
            },
            Err(_) => Slot::Ready(nak(seq, NakReason::Unavailable), device),
        }
    }

    /// Keep bytes that could not be parsed, with the reason, and count them.
    async fn reject(
        &self,
        reason: &'static str,
        detail: &(dyn std::fmt::Display + Sync),
        raw: &[u8],
    ) {
        events::FrameRejected {
            protocol: PROTOCOL,
            peer: &self.peer,
            reason,
            detail,
        }
        .emit();
        let kept = raw[..raw.len().min(native::MAX_FRAME_LEN)].to_vec();
        let why = format!("{reason}: {detail}");
        if let Err(e) = self
            .ctx
            .store_rejected(PROTOCOL, self.peer.to_string(), why, kept)
            .await
        {
            events::StageFailed {
                stage: "store_rejected_frame",
                error: &e,
            }
            .emit();
        }
    }
}

/// The oldest frame's commit; the answers after it wait their turn.
async fn oldest_commit(owed: &mut VecDeque<Slot>) -> Result<CommitOutcome, StoreError> {
    match owed.front_mut() {
        Some(Slot::Committing { commit, .. }) => commit.await,
        _ => std::future::pending().await,
    }
}

/// Decide a committed slot's reply.
fn settle(slot: Slot, outcome: Result<CommitOutcome, StoreError>) -> Slot {
    let Slot::Committing {
        seq,
        auth,
        skew,
        device,
        ..
    } = slot
    else {
        return slot;
    };
    let reply = match (outcome, auth) {
        (Err(_), _) => nak(seq, NakReason::Unavailable),
        (Ok(_), AuthStatus::BadTag) => nak(seq, NakReason::BadTag),
        (Ok(_), AuthStatus::UnknownDevice) => nak(seq, NakReason::UnknownDevice),
        (Ok(outcome), AuthStatus::Verified) => {
            let mut status = 0;
            if outcome == CommitOutcome::Duplicate {
                status |= ACK_DUPLICATE;
            }
            if skew {
                status |= ACK_CLOCK_SKEW;
            }
            Reply::Ack {
                seq,
                status,
                server_time_ms: now_ms() as u64,
            }
        }
    };
    Slot::Ready(reply, device)
}

/// Give an emptied buffer's memory back: most connections are idle most of the time.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

fn nak(seq: u32, reason: NakReason) -> Reply {
    Reply::Nak {
        seq,
        reason,
        server_time_ms: now_ms() as u64,
    }
}

fn parse_reason(e: &ParseError) -> &'static str {
    match e {
        ParseError::UnsupportedVersion(_) => "unsupported_version",
        ParseError::UnexpectedType(_) => "unexpected_type",
        ParseError::DeviceId(_) => "bad_device_id",
        _ => "malformed",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The decoded event as JSON, kept next to the raw bytes.
pub fn decoded_json(e: &AlarmEvent) -> String {
    serde_json::json!({
        "device": e.device.as_str(),
        "seq": e.seq,
        "kind": e.kind.name(),
        "device_time_ms": e.device_time_ms,
        "battery_pct": e.battery_pct,
        "location": e.location.map(|l| serde_json::json!({
            "lat": l.lat, "lon": l.lon, "accuracy_m": l.accuracy_m
        })),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one silent pendant costs the server is mostly its connection's
    /// task (the rest: the socket's readiness slot, 256 bytes). Measured
    /// with tokio's task header and cache-line padding on top, the task is
    /// ~900 bytes here; wrapped once more in an async block it would double.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let (db, _dir) = pingantong_store::scratch_sqlite().await;
        let (urgent, _) = tokio::sync::mpsc::channel(1);
        let (other, _) = tokio::sync::mpsc::channel(1);
        let (writer, _task) = pingantong_store::writer::spawn(
            db.clone(),
            8,
            Arc::new(pingantong_domain::rules::Rules::default()),
            pingantong_store::writer::HandOver {
                urgent,
                other,
                supervision: None,
            },
        );
        let ctx = Arc::new(IngestContext {
            writer,
            directory: crate::directory::Directory::new(db.clone()),
            db,
            limits: Default::default(),
            core: tokio::runtime::Handle::current(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _pendant = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let task = super::super::holding(
            connection(ctx, stream, peer, CancellationToken::new()),
            permit,
        );
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 1_024,
            "an idle connection's task holds {size} bytes (budget 1,024)"
        );
    }
}
