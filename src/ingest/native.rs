//! The native pendant protocol over TCP (protocol/NATIVE.md).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pingantong_protocol::AlarmEvent;
use pingantong_protocol::native::{
    self, ACK_CLOCK_SKEW, ACK_DUPLICATE, EventFrame, NakReason, ParseError, RawFrame, Reply,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{IngestContext, Read};
use crate::store::writer::PendingCommit;
use crate::store::{AlarmRecord, AuthStatus, CommitOutcome, DeviceRow, now_ms};
use crate::telemetry::events;

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
        move |stream, peer, stop| {
            let ctx = Arc::clone(&ctx);
            async move {
                let reason = Connection { ctx, peer }.run(stream, stop).await;
                events::ConnectionClosed {
                    protocol: PROTOCOL,
                    peer: &peer,
                    reason,
                }
                .emit();
            }
        },
    )
    .await;
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

impl Connection {
    /// Returns why the connection ended.
    ///
    /// Reading and answering run side by side: a frame is submitted for commit
    /// as soon as it arrives, even while earlier frames of the same connection
    /// are still being committed, and answers go out in arrival order as their
    /// commits complete. An SOS behind a burst of routine frames therefore
    /// joins the very next commit instead of waiting for the burst's answers.
    async fn run(self, stream: TcpStream, shutdown: CancellationToken) -> &'static str {
        let (mut rd, mut wr) = stream.into_split();
        let (slots, mut owed) = tokio::sync::mpsc::channel::<Slot>(IN_FLIGHT_PER_CONNECTION);
        let answering = tokio::spawn(async move {
            let mut out = BytesMut::with_capacity(64);
            while let Some(slot) = owed.recv().await {
                let (reply, device) = settle(slot).await;
                reply.encode(device.as_deref().map(|d| d.secret.as_slice()), &mut out);
                if wr.write_all(&out).await.is_err() {
                    return false;
                }
                out.clear();
            }
            true
        });
        let reason = self.read_frames(&mut rd, &slots, &shutdown).await;
        // Every frame read is answered before the connection closes.
        drop(slots);
        match answering.await {
            Ok(true) => reason,
            _ => "write_failed",
        }
    }

    async fn read_frames(
        &self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        slots: &tokio::sync::mpsc::Sender<Slot>,
        shutdown: &CancellationToken,
    ) -> &'static str {
        let mut buf = BytesMut::with_capacity(256);
        loop {
            loop {
                let slot = match native::split_frame(&mut buf) {
                    // Boxed: the handling future (a directory miss reads the
                    // database) is large, and inline it would make every idle
                    // connection's task that large too.
                    Ok(Some(raw)) => Box::pin(self.handle(raw)).await,
                    Ok(None) => break,
                    Err(e) => {
                        Box::pin(self.reject("framing", &e, &buf)).await;
                        let _ = slots
                            .send(Slot::Ready(nak(0, NakReason::Malformed), None))
                            .await;
                        return "framing_error";
                    }
                };
                if slots.send(slot).await.is_err() {
                    return "write_failed";
                }
            }
            match super::read_more(rd, &mut buf, &self.ctx.limits, shutdown).await {
                Read::More => {}
                Read::Closed(reason) => return reason,
                Read::Incomplete { reason, detail } => {
                    Box::pin(self.reject("incomplete", &detail, &buf)).await;
                    return reason;
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
        let device = match self.ctx.directory.device(event.device.as_str()).await {
            Ok(d) => d,
            // Without the directory the frame cannot be checked; the store is
            // most likely down too, so ask the device to send it again.
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
        let kept = &raw[..raw.len().min(native::MAX_FRAME_LEN)];
        let why = format!("{reason}: {detail}");
        if let Err(e) = self
            .ctx
            .db
            .insert_rejected_frame(PROTOCOL, &self.peer.to_string(), &why, kept)
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

/// Wait for a slot's commit and decide the reply.
async fn settle(slot: Slot) -> (Reply, Option<Arc<DeviceRow>>) {
    let (seq, auth, skew, device, commit) = match slot {
        Slot::Ready(reply, device) => return (reply, device),
        Slot::Committing {
            seq,
            auth,
            skew,
            device,
            commit,
        } => (seq, auth, skew, device, commit),
    };
    let reply = match (commit.wait().await, auth) {
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
    // An unknown device's reply cannot be signed; a known one's always is.
    (reply, device)
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
