//! Every device protocol over TCP, TLS and UDP — the native pendants, GT06,
//! watches, SIA DC-09, H02, Eview — driven through the protocol crate's
//! [`Codec`] and [`Judge`] by one connection engine.
//!
//! Each frame's observations become alarm records; the frame's reply goes out
//! only after they are committed. A frame that reports nothing (a login, a
//! link test) is answered at once: there is nothing to wait for.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use pingantong_protocol::{
    AuthStatus, Codec, Fate, Frame, FramingError, Integrity, Judge, Judgement, ReplyPlan,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{IngestContext, proxy};
use pingantong_store::writer::PendingCommit;
use pingantong_store::{AlarmRecord, CommitOutcome, DeviceRow, StoreError, now_ms};
use pingantong_telemetry::events;

/// Makes one codec per connection (or per datagram).
pub type CodecFactory = Arc<dyn Fn() -> Box<dyn Codec> + Send + Sync>;

/// Serve one protocol on a TCP listener until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    protocol: &'static str,
    codecs: CodecFactory,
    ctx: Arc<IngestContext>,
    shutdown: CancellationToken,
) {
    serve_stream(listener, protocol, codecs, None, ctx, shutdown).await;
}

/// Serve one protocol over TLS on a TCP listener until `shutdown` (DC-09
/// transmitters or tunnels that speak TLS): the handshake must end within
/// the frame timeout, then the connection is served as a plain one is.
pub async fn serve_tls(
    listener: TcpListener,
    protocol: &'static str,
    codecs: CodecFactory,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<IngestContext>,
    shutdown: CancellationToken,
) {
    serve_stream(listener, protocol, codecs, Some(acceptor), ctx, shutdown).await;
}

async fn serve_stream(
    listener: TcpListener,
    protocol: &'static str,
    codecs: CodecFactory,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<IngestContext>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        events::ListenerStarted {
            protocol,
            addr: &addr,
        }
        .emit();
    }
    let max = ctx.limits.max_connections;
    super::serve(
        listener,
        protocol,
        max,
        shutdown,
        move |stream, peer, stop| {
            let connection = Connection {
                ctx: Arc::clone(&ctx),
                codec: codecs(),
                peer,
            };
            connection.run(stream, tls.clone(), stop)
        },
    )
    .await;
}

/// Serve one protocol on a UDP socket until `shutdown`: every datagram is one
/// or more frames, answered to its sender after the commit.
pub async fn serve_udp(
    socket: UdpSocket,
    protocol: &'static str,
    codecs: CodecFactory,
    ctx: Arc<IngestContext>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = socket.local_addr() {
        events::ListenerStarted {
            protocol,
            addr: &addr,
        }
        .emit();
    }
    let socket = Arc::new(socket);
    let tracker = tokio_util::task::TaskTracker::new();
    // Datagrams in flight are capped like connections: a flood waits in the
    // socket buffer (and overflows there) instead of growing tasks without bound.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(ctx.limits.max_connections));
    let mut datagram = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut datagram) => match r {
                Ok(x) => x,
                Err(e) => {
                    events::StageFailed { stage: "udp_receive", error: &e }.emit();
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let mut buf = BytesMut::from(&datagram[..n]);
        let mut codec = codecs();
        let (ctx, socket) = (Arc::clone(&ctx), Arc::clone(&socket));
        // One task per datagram: a slow commit must not hold up the next sender.
        tracker.spawn(async move {
            let judge = codec.judge();
            let mut out = BytesMut::new();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let unparsed = unparsed_reason(&*codec, &frame);
                        let slot = handle(&ctx, protocol, judge, &peer, frame, unparsed).await;
                        let answer = match slot {
                            Slot::Ready(answer) => answer,
                            Slot::Committing(mut owed) => {
                                let waited = owed.settled().await;
                                owed.answer(waited, judge)
                            }
                        };
                        if let Some(a) = answer {
                            out.extend_from_slice(&a);
                        }
                    }
                    Ok(None) => {
                        if !buf.is_empty() {
                            let detail = "datagram ends inside a frame";
                            reject(&ctx, protocol, &peer, "incomplete", &detail, &buf).await;
                        }
                        break;
                    }
                    Err(e) => {
                        reject(&ctx, protocol, &peer, e.reason, &e.detail, &buf).await;
                        if let Some(r) = e.reply {
                            out.extend_from_slice(&r);
                        }
                        break;
                    }
                }
            }
            if !out.is_empty() {
                let _ = socket.send_to(&out, peer).await;
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Frames read but not yet answered, per connection: past this many the
/// connection stops reading until answers go out.
const IN_FLIGHT_PER_CONNECTION: usize = 64;

/// What one read takes from the socket at most. On the stack for the read
/// only: an idle connection holds no read buffer.
const READ_CHUNK: usize = 2048;

/// The answer owed to one frame, in the order the frames arrived.
enum Slot {
    /// Known: send these bytes (`None`: nothing to send).
    Ready(Option<Bytes>),
    /// Waiting for the frame's records to be committed. Boxed: a connection
    /// task's size is set by its largest state, idle or not.
    Committing(Box<Owed>),
}

/// The frame being looked up and submitted. Boxed: the handling future (a
/// directory miss reads the database) is large, and inline it would make
/// every idle connection that large too.
type Handling<'a> = Pin<Box<dyn Future<Output = Slot> + Send + 'a>>;

/// One device's connection, for as long as it lasts.
struct Connection {
    ctx: Arc<IngestContext>,
    codec: Box<dyn Codec>,
    peer: SocketAddr,
}

/// What woke a connection up.
enum Step {
    Shutdown,
    Handled(Slot),
    Settled(Settled),
    Io(Io),
    TimedOut,
}

/// What the socket did.
enum Io {
    Wrote(usize),
    Flushed,
    WriteFailed,
    /// This many bytes were read; 0: the peer closed its side.
    Read(usize),
    ReadFailed,
}

impl Connection {
    /// Serve the connection (after a TLS handshake, when `tls`); say why it
    /// ended. Most of a city's pendants are connected and silent: this
    /// future is what each of them costs.
    async fn run(
        mut self,
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) {
        let mut stream = stream;
        let reason = 'served: {
            if self.ctx.limits.proxy_header {
                // Boxed, and done before serving: the task is no larger
                // for it once the device's bytes flow.
                let limit = self.ctx.limits.frame_timeout;
                let header = tokio::time::timeout(limit, proxy::read_header(&mut stream));
                match Box::pin(header).await {
                    Ok(Ok(Some(device))) => self.peer = device,
                    // The balancer's own check: it keeps its address.
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        events::ConnectionRefused {
                            protocol: self.codec.protocol(),
                            reason: e.reason(),
                        }
                        .emit();
                        break 'served e.reason();
                    }
                    Err(_) => break 'served "proxy_header_timeout",
                }
            }
            match tls {
                None => self.converse(stream, &shutdown).await,
                // Boxed: a plain connection's task stays as small as it was.
                Some(acceptor) => Box::pin(self.over_tls(acceptor, stream, &shutdown)).await,
            }
        };
        events::ConnectionClosed {
            protocol: self.codec.protocol(),
            peer: &self.peer,
            reason,
        }
        .emit();
    }

    async fn over_tls(
        &mut self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        shutdown: &CancellationToken,
    ) -> &'static str {
        let handshake =
            tokio::time::timeout(self.ctx.limits.frame_timeout, acceptor.accept(stream));
        match handshake.await {
            Ok(Ok(tls)) => self.converse(tls, shutdown).await,
            Ok(Err(e)) => {
                events::TlsRefused {
                    protocol: self.codec.protocol(),
                    peer: &self.peer,
                    error: &e,
                }
                .emit();
                "tls_handshake_failed"
            }
            Err(_) => "tls_handshake_timeout",
        }
    }

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
    async fn converse<S>(&mut self, mut stream: S, shutdown: &CancellationToken) -> &'static str
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Connection { ctx, codec, peer } = self;
        let (ctx, peer): (&IngestContext, &SocketAddr) = (ctx, peer);
        let limits = &ctx.limits;
        let protocol = codec.protocol();
        let judge = codec.judge();
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut unflushed = false;
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
                let failed = match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let unparsed = unparsed_reason(&**codec, &frame);
                        handling = Some(Box::pin(handle(
                            ctx, protocol, judge, peer, frame, unparsed,
                        )));
                        None
                    }
                    Ok(None) if buf.len() > codec.max_frame_len() => Some(FramingError {
                        reason: "too_long",
                        detail: "no frame within the size cap".into(),
                        reply: None,
                    }),
                    Ok(None) => None,
                    Err(e) => Some(e),
                };
                if let Some(e) = failed {
                    if e.reply.is_some() {
                        owed.push_back(Slot::Ready(e.reply.clone()));
                    }
                    let kept = std::mem::take(&mut buf);
                    // Moved into the box: held across the await inline, the
                    // error would enlarge every connection's task.
                    Box::pin(async move {
                        reject(ctx, protocol, peer, e.reason, &e.detail, &kept).await;
                    })
                    .await;
                    ended = Some("framing_error");
                }
            }
            while let Some(Slot::Ready(_)) = owed.front() {
                if let Some(Slot::Ready(Some(answer))) = owed.pop_front() {
                    out.extend_from_slice(&answer);
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
                && !unflushed
            {
                // A clean end: FIN on plain TCP, close_notify over TLS.
                let _ = stream.shutdown().await;
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
            let io = reading || !out.is_empty() || unflushed;
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if ended.is_none() => Step::Shutdown,
                slot = async { handling.as_mut().expect("checked").await }, if handling.is_some() => {
                    Step::Handled(slot)
                }
                settled = oldest_commit(&mut owed), if !owed.is_empty() => Step::Settled(settled),
                r = poll_fn(|cx| poll_io(cx, &mut stream, &mut buf, &out, unflushed, reading)), if io => {
                    Step::Io(r)
                }
                _ = &mut timer, if reading => Step::TimedOut,
            };
            match step {
                Step::Shutdown => ended = Some("shutdown"),
                Step::Handled(slot) => {
                    handling = None;
                    owed.push_back(slot);
                }
                Step::Settled(settled) => {
                    if let Some(Slot::Committing(o)) = owed.pop_front() {
                        owed.push_front(Slot::Ready(o.answer(settled, judge)));
                    }
                }
                Step::Io(Io::Wrote(n)) => {
                    out.advance(n);
                    unflushed = true;
                }
                Step::Io(Io::Flushed) => unflushed = false,
                Step::Io(Io::WriteFailed) => return "write_failed",
                Step::Io(Io::Read(0)) if buf.is_empty() => ended = Some("closed_by_peer"),
                Step::Io(Io::Read(0)) => {
                    let detail = "peer closed mid-frame";
                    Box::pin(reject(ctx, protocol, peer, "incomplete", &detail, &buf)).await;
                    buf = BytesMut::new();
                    ended = Some("closed_mid_frame");
                }
                Step::Io(Io::Read(_)) => armed = false,
                Step::Io(Io::ReadFailed) => ended = Some("read_failed"),
                Step::TimedOut => {
                    armed = false;
                    if buf.is_empty() {
                        ended = Some("idle_timeout");
                    } else {
                        let detail = "frame not completed in time";
                        Box::pin(reject(ctx, protocol, peer, "incomplete", &detail, &buf)).await;
                        buf = BytesMut::new();
                        ended = Some("frame_timeout");
                    }
                }
            }
        }
    }
}

/// Write what is owed (then flush it: over TLS it may otherwise wait in the
/// session's buffer), else read what came. Reads go through a buffer on the
/// stack, so a connection waiting for bytes holds none of its own.
fn poll_io<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    stream: &mut S,
    buf: &mut BytesMut,
    out: &[u8],
    unflushed: bool,
    reading: bool,
) -> Poll<Io> {
    if !out.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, out) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Io::WriteFailed),
            Poll::Ready(Ok(n)) => return Poll::Ready(Io::Wrote(n)),
            Poll::Pending => {}
        }
    } else if unflushed {
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Io::Flushed),
            Poll::Ready(Err(_)) => return Poll::Ready(Io::WriteFailed),
            Poll::Pending => {}
        }
    }
    if reading {
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(stream).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                return Poll::Ready(Io::Read(read.filled().len()));
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Io::ReadFailed),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// The oldest frame's commits; the answers after it wait their turn.
async fn oldest_commit(owed: &mut VecDeque<Slot>) -> Settled {
    match owed.front_mut() {
        Some(Slot::Committing(o)) => o.settled().await,
        _ => std::future::pending().await,
    }
}

/// Give an emptied buffer's memory back: most connections are idle most of the time.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

/// A commit's outcome, or `None` once the database is away.
async fn commit_or_away(
    commit: &mut PendingCommit,
    database: &mut watch::Receiver<bool>,
) -> Option<Result<CommitOutcome, StoreError>> {
    tokio::select! {
        biased;
        outcome = commit => Some(outcome),
        Ok(_) = database.wait_for(|up| !*up) => None,
    }
}

/// How far a frame's commits went.
enum Settled {
    /// Every record's commit has an outcome.
    Committed,
    /// The database went away first, and the protocol has an answer for that.
    DatabaseAway,
}

/// A frame's answer, owed once its records are committed.
struct Owed {
    /// Commits not yet settled, oldest first.
    pending: Vec<PendingCommit>,
    /// Every record reached the writer and every settled commit held.
    stored: bool,
    /// How many settled commits found the record stored before.
    duplicates: usize,
    records: usize,
    reply: ReplyPlan,
    serial: Option<u32>,
    auth: Option<AuthStatus>,
    clock_skew: bool,
    device: Option<Arc<DeviceRow>>,
    /// The database's state, when the protocol has an answer for "cannot
    /// store now" and there is a commit to wait for.
    database: Option<watch::Receiver<bool>>,
}

impl Owed {
    /// Wait for the commits, in order. While the database is away the
    /// records stay held by the writer and are committed when it returns;
    /// the answer waits for that — unless the protocol has a "cannot process
    /// now" answer (DC-09's DUH), which goes out at once instead.
    ///
    /// Cancel-safe: each outcome is taken in as it arrives, so a connection
    /// woken by something else loses none.
    async fn settled(&mut self) -> Settled {
        while let Some(commit) = self.pending.first_mut() {
            let outcome = match &mut self.database {
                // Boxed: waiting on the database's state would enlarge every
                // idle connection's task.
                Some(database) => match Box::pin(commit_or_away(commit, database)).await {
                    Some(outcome) => outcome,
                    None => return Settled::DatabaseAway,
                },
                None => commit.await,
            };
            self.pending.remove(0);
            self.take(outcome);
        }
        Settled::Committed
    }

    fn take(&mut self, outcome: Result<CommitOutcome, StoreError>) {
        match outcome {
            Ok(CommitOutcome::Duplicate) => self.duplicates += 1,
            Ok(_) => {}
            Err(_) => self.stored = false,
        }
    }

    /// The bytes the outcome calls for.
    fn answer(self, settled: Settled, judge: &dyn Judge) -> Option<Bytes> {
        let (ok, failed) = match self.reply {
            ReplyPlan::None => return None,
            ReplyPlan::AfterCommit { ok, failed } => (ok, failed),
            ReplyPlan::Judged => {
                let fate = match (self.stored, self.duplicates) {
                    (false, _) => Fate::NotStored,
                    (true, d) if d > 0 && d == self.records => Fate::Duplicate,
                    (true, _) => Fate::Stored,
                };
                return judge.answer(&Judgement {
                    serial: self.serial,
                    auth: self.auth,
                    fate,
                    clock_skew: self.clock_skew,
                    key: self.device.as_deref().map(|d| d.secret.as_slice()),
                    server_time_ms: now_ms() as u64,
                });
            }
        };
        match settled {
            Settled::DatabaseAway => failed,
            // Not stored (refused for good, or the server stopped with the
            // database away): silence, so the device sends it again.
            Settled::Committed => self.stored.then_some(ok),
        }
    }
}

/// The reason a frame that was not understood is counted under, if it was not.
fn unparsed_reason(codec: &dyn Codec, frame: &Frame) -> Option<&'static str> {
    frame
        .parse_error
        .is_some()
        .then(|| codec.unparsed_reason(frame))
}

/// Keep what the frame says (or why it could not be understood), tell who
/// sent it, and submit its records for commit.
async fn handle(
    ctx: &IngestContext,
    protocol: &'static str,
    judge: &'static dyn Judge,
    peer: &SocketAddr,
    frame: Frame,
    unparsed: Option<&'static str>,
) -> Slot {
    if let (Some(reason), Some(why)) = (unparsed, &frame.parse_error) {
        reject(ctx, protocol, peer, reason, why, &frame.raw).await;
    }
    if frame.integrity != Integrity::Intact {
        events::FrameRejected {
            protocol,
            peer,
            reason: frame.integrity.as_str(),
            detail: &"kept and processed by the protocol's policy",
        }
        .emit();
    }
    let judged = matches!(frame.reply, ReplyPlan::Judged);
    let (device, auth) = match &frame.device {
        Some(id) if judged || !frame.observations.is_empty() => {
            match ctx.device_patiently(id.as_str()).await {
                Ok(row) => {
                    // A device is provisioned for one protocol: its id heard
                    // over another is a stranger's.
                    let row = row.filter(|d| d.protocol == protocol);
                    let key = row.as_deref().map(|d| d.secret.as_slice());
                    let auth = judge.authenticate(&frame, key);
                    (row, Some(auth))
                }
                // The server is stopping with the database away: the sender
                // cannot be checked. Its alarms are still kept, unverified.
                Err(_) => (None, None),
            }
        }
        _ => (None, Some(AuthStatus::UnknownDevice)),
    };
    let now = now_ms();
    let window = ctx.limits.clock_window.as_millis() as i64;
    let clock_skew = frame.observations.iter().any(|o| {
        o.device_time_ms
            .is_some_and(|t| (t as i64 - now).abs() > window)
    });
    let records = records(
        protocol,
        peer,
        &frame,
        auth.unwrap_or(AuthStatus::UnknownDevice),
        now,
    );
    let mut stored = true;
    let mut pending = Vec::with_capacity(records.len());
    let count = records.len();
    for record in records {
        match ctx.writer.submit(record).await {
            Ok(p) => pending.push(p),
            Err(_) => stored = false,
        }
    }
    let answers_while_down = matches!(
        frame.reply,
        ReplyPlan::AfterCommit {
            failed: Some(_),
            ..
        }
    );
    Slot::Committing(Box::new(Owed {
        database: (answers_while_down && !pending.is_empty())
            .then(|| ctx.writer.stats().database_state()),
        pending,
        stored,
        duplicates: 0,
        records: count,
        reply: frame.reply,
        serial: frame.serial,
        auth,
        clock_skew,
        device,
    }))
}

/// One alarm record per observation.
fn records(
    protocol: &'static str,
    peer: &SocketAddr,
    frame: &Frame,
    auth: AuthStatus,
    now: i64,
) -> Vec<AlarmRecord> {
    if frame.observations.is_empty() {
        return Vec::new();
    }
    let device_id = match &frame.device {
        Some(d) => d.as_str().to_owned(),
        // Frames before a login name no device: keep them under the peer.
        None => format!("unidentified@{}", peer.ip()),
    };
    if auth != AuthStatus::Verified {
        events::UnverifiedEvent {
            protocol,
            device: &device_id,
            auth: auth.as_str(),
            kind: &frame.summary,
        }
        .emit();
    }
    let (key, window) = dedup_of(protocol, &device_id, frame);
    frame
        .observations
        .iter()
        .enumerate()
        .map(|(i, o)| AlarmRecord {
            received_at: now,
            protocol,
            peer: peer.to_string(),
            device_id: device_id.clone(),
            seq: frame.serial.map_or(-1, i64::from),
            kind: o.kind,
            device_time: o.device_time_ms.map(|t| t as i64),
            battery: o.battery_pct.map(i64::from),
            location: o.location,
            auth,
            raw: frame.raw.to_vec(),
            decoded: serde_json::json!({
                "summary": frame.summary,
                "code": o.code,
                "integrity": frame.integrity.as_str(),
                "kind": o.kind.name(),
                "signal": o.signal,
                "battery_pct": o.battery_pct,
                "device_time_ms": o.device_time_ms,
                "location": o.location.map(|l| serde_json::json!({
                    "lat": l.lat, "lon": l.lon, "accuracy_m": l.accuracy_m
                })),
            })
            .to_string(),
            dedup_key: format!("{key}:{i}"),
            retry_window_ms: Some(window),
        })
        .collect()
}

/// What makes two frames from one device the same event (protocol/DEDUP.md):
/// the same counter and the same content — the codec's event key where a
/// retransmission's bytes change (DC-09), else the raw bytes — within a
/// window that is long when the content carries the device's own time of
/// the event. A counter that restarted or wrapped with other content is a
/// new event; so is the same content under the next counter.
pub fn dedup_of(protocol: &str, device_id: &str, frame: &Frame) -> (String, i64) {
    let timed = frame.event_key.is_none()
        && !frame.observations.is_empty()
        && frame
            .observations
            .iter()
            .all(|o| o.device_time_ms.is_some());
    let content = frame.event_key.as_deref().unwrap_or(&frame.raw);
    let digest = hex::encode(&Sha256::digest(content)[..12]);
    let serial = frame
        .serial
        .map_or_else(|| "-".to_owned(), |s| s.to_string());
    let window = super::retry_window(timed);
    (format!("{protocol}:{device_id}:s{serial}:{digest}"), window)
}

/// Keep bytes that could not be taken, with the reason, and count them.
async fn reject(
    ctx: &IngestContext,
    protocol: &'static str,
    peer: &SocketAddr,
    reason: &'static str,
    detail: &(dyn std::fmt::Display + Sync),
    raw: &[u8],
) {
    events::FrameRejected {
        protocol,
        peer,
        reason,
        detail,
    }
    .emit();
    let kept = raw[..raw.len().min(64 * 1024)].to_vec();
    let why = format!("{reason}: {detail}");
    if let Err(e) = ctx
        .store_rejected(protocol, peer.to_string(), why, kept)
        .await
    {
        events::StageFailed {
            stage: "store_rejected_frame",
            error: &e,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingantong_protocol::gt06::Gt06Codec;
    use pingantong_protocol::native::NativeCodec;

    /// What one silent pendant costs the server is mostly its connection's
    /// task (the rest: the socket's readiness slot). Measured with tokio's
    /// task header and cache-line padding on top, the task is ~900 bytes
    /// here; wrapped once more in an async block it would double. The same
    /// for every protocol: the codec lives behind a pointer.
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
        let codecs: [Box<dyn Codec>; 2] = [
            Box::new(NativeCodec),
            Box::new(Gt06Codec::with_system_clock()),
        ];
        for codec in codecs {
            let _pendant = TcpStream::connect(addr).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let permit = Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .unwrap();
            let protocol = codec.protocol();
            let connection = Connection {
                ctx: Arc::clone(&ctx),
                codec,
                peer,
            };
            let task = super::super::holding(
                connection.run(stream, None, CancellationToken::new()),
                permit,
            );
            let size = std::mem::size_of_val(&task);
            assert!(
                size <= 1_024,
                "an idle {protocol} connection's task holds {size} bytes (budget 1,024)"
            );
        }
    }
}
