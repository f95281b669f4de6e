//! Third-party device protocols (GT06, Watch, SIA DC-09, H02, Eview) over TCP
//! and UDP, driven through the protocol crate's [`Codec`] trait.
//!
//! Each frame's observations become alarm records; the frame's reply goes out
//! only after they are committed. A frame that reports nothing (a login, a
//! link test) is answered at once: there is nothing to wait for.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pingantong_protocol::{Codec, Frame, Integrity, ReplyPlan};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{IngestContext, Read};
use pingantong_store::writer::PendingCommit;
use pingantong_store::{AlarmRecord, AuthStatus, now_ms};
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
            let ctx = Arc::clone(&ctx);
            let codec = codecs();
            let tls = tls.clone();
            async move {
                let reason = match tls {
                    None => run_connection(&ctx, codec, stream, peer, stop).await,
                    // Boxed: a plain connection's task stays as small as it was.
                    Some(acceptor) => {
                        Box::pin(async {
                            let handshake = tokio::time::timeout(
                                ctx.limits.frame_timeout,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(tls)) => run_connection(&ctx, codec, tls, peer, stop).await,
                                Ok(Err(e)) => {
                                    events::TlsRefused {
                                        protocol,
                                        peer: &peer,
                                        error: &e,
                                    }
                                    .emit();
                                    "tls_handshake_failed"
                                }
                                Err(_) => "tls_handshake_timeout",
                            }
                        })
                        .await
                    }
                };
                events::ConnectionClosed {
                    protocol,
                    peer: &peer,
                    reason,
                }
                .emit();
            }
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
            let mut out = BytesMut::new();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        take_frame(&ctx, protocol, &peer, frame)
                            .await
                            .settle(&mut out)
                            .await
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

/// Frames read but not yet answered, per connection.
const IN_FLIGHT_PER_CONNECTION: usize = 64;

/// What a connection owes its device, in arrival order.
enum Answer {
    Frame(Owed),
    /// A framing error's reply (the connection closes after it).
    Bytes(bytes::Bytes),
}

/// Reading and answering run side by side (as for native pendants): a frame
/// is submitted as soon as it is read; answers go out in order as commits complete.
async fn run_connection<S>(
    ctx: &IngestContext,
    mut codec: Box<dyn Codec>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> &'static str
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let protocol = codec.protocol();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (answers, mut owed) = tokio::sync::mpsc::channel::<Answer>(IN_FLIGHT_PER_CONNECTION);
    let answering = tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(128);
        while let Some(a) = owed.recv().await {
            match a {
                Answer::Frame(o) => o.settle(&mut out).await,
                Answer::Bytes(b) => out.extend_from_slice(&b),
            }
            if !out.is_empty() {
                // Flushed: over TLS the bytes may otherwise wait in the
                // session's buffer (a no-op on plain TCP).
                if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                    return false;
                }
                out.clear();
            }
        }
        // A clean end (TLS close_notify; FIN on plain TCP).
        let _ = wr.shutdown().await;
        true
    });
    let mut buf = BytesMut::with_capacity(512);
    let reason = 'read: loop {
        loop {
            let answer = match codec.decode(&mut buf) {
                Ok(Some(frame)) => Answer::Frame(take_frame(ctx, protocol, &peer, frame).await),
                Ok(None) => break,
                Err(e) => {
                    reject(ctx, protocol, &peer, e.reason, &e.detail, &buf).await;
                    if let Some(r) = e.reply {
                        let _ = answers.send(Answer::Bytes(r)).await;
                    }
                    break 'read "framing_error";
                }
            };
            if answers.send(answer).await.is_err() {
                break 'read "write_failed";
            }
        }
        if buf.len() > codec.max_frame_len() {
            let detail = "no frame within the size cap";
            reject(ctx, protocol, &peer, "too_long", &detail, &buf).await;
            break 'read "framing_error";
        }
        match super::read_more(&mut rd, &mut buf, &ctx.limits, &shutdown).await {
            Read::More => {}
            Read::Closed(reason) => break 'read reason,
            Read::Incomplete { reason, detail } => {
                reject(ctx, protocol, &peer, "incomplete", &detail, &buf).await;
                break 'read reason;
            }
        }
    };
    // Every frame read is answered before the connection closes.
    drop(answers);
    match answering.await {
        Ok(true) => reason,
        _ => "write_failed",
    }
}

/// A frame's answer, owed once its records are committed.
struct Owed {
    pending: Vec<PendingCommit>,
    /// Every record reached the writer (otherwise the frame is not stored).
    submitted: bool,
    reply: ReplyPlan,
    /// The database's state, when the protocol has an answer for "cannot
    /// store now" and there is a commit to wait for.
    database: Option<watch::Receiver<bool>>,
}

impl Owed {
    /// Wait for the commits and append the reply the outcome calls for.
    ///
    /// While the database is away the records stay held by the writer and
    /// are committed when it returns; the answer waits for that — unless
    /// the protocol has a "cannot process now" answer (DC-09's DUH), which
    /// goes out at once instead.
    async fn settle(self, out: &mut BytesMut) {
        let Owed {
            pending,
            submitted,
            reply,
            database,
        } = self;
        let committed = async move {
            let mut stored = submitted;
            for p in pending {
                stored &= p.wait().await.is_ok();
            }
            stored
        };
        let (ok, failed) = match &reply {
            ReplyPlan::AfterCommit { ok, failed } => (ok, failed.as_ref()),
            ReplyPlan::None => {
                committed.await;
                return;
            }
        };
        let stored = match (failed, database) {
            (Some(failed), Some(mut database)) => tokio::select! {
                biased;
                stored = committed => stored,
                Ok(_) = database.wait_for(|up| !*up) => {
                    out.extend_from_slice(failed);
                    return;
                }
            },
            _ => committed.await,
        };
        // Not stored (refused for good, or the server stopped with the
        // database away): silence, so the device sends it again.
        if stored {
            out.extend_from_slice(ok);
        }
    }
}

/// Keep what the frame says (or why it could not be understood) and submit
/// its records for commit.
async fn take_frame(
    ctx: &IngestContext,
    protocol: &'static str,
    peer: &SocketAddr,
    frame: Frame,
) -> Owed {
    if let Some(why) = &frame.parse_error {
        reject(ctx, protocol, peer, "unparsed", why, &frame.raw).await;
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
    let records = records(ctx, protocol, peer, &frame).await;
    let mut submitted = true;
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        match ctx.writer.submit(record).await {
            Ok(p) => pending.push(p),
            Err(_) => submitted = false,
        }
    }
    let answers_while_down = matches!(
        frame.reply,
        ReplyPlan::AfterCommit {
            failed: Some(_),
            ..
        }
    );
    Owed {
        database: (answers_while_down && !pending.is_empty())
            .then(|| ctx.writer.stats().database_state()),
        pending,
        submitted,
        reply: frame.reply,
    }
}

/// One alarm record per observation. A device is verified when its id is
/// provisioned for this protocol and the frame's checksum held: these
/// protocols carry no authentication, so the id is the only proof there is.
async fn records(
    ctx: &IngestContext,
    protocol: &'static str,
    peer: &SocketAddr,
    frame: &Frame,
) -> Vec<AlarmRecord> {
    if frame.observations.is_empty() {
        return Vec::new();
    }
    let device_id = match &frame.device {
        Some(d) => d.as_str().to_owned(),
        // Frames before a login name no device: keep them under the peer.
        None => format!("unidentified@{}", peer.ip()),
    };
    let auth = match &frame.device {
        // A frame whose own check failed may name the wrong device: its alarms
        // reach an operator, never a carer by themselves.
        Some(_) if frame.integrity == Integrity::BadChecksum => AuthStatus::BadTag,
        Some(d) => match ctx.device_patiently(d.as_str()).await {
            Ok(Some(row)) if row.protocol == protocol => AuthStatus::Verified,
            _ => AuthStatus::UnknownDevice,
        },
        None => AuthStatus::UnknownDevice,
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
    let now = now_ms();
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
    let digest = hex(&Sha256::digest(content)[..12]);
    let serial = frame
        .serial
        .map_or_else(|| "-".to_owned(), |s| s.to_string());
    let window = super::retry_window(timed);
    (format!("{protocol}:{device_id}:s{serial}:{digest}"), window)
}

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
