//! Listeners: frames in, replies out. Each protocol module turns bytes into
//! [`AlarmRecord`]s, hands them to the store writer and answers the device only
//! once the writer says they are committed.

pub mod adapters;
pub mod device;
pub mod mqtt;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::directory::Directory;
use pingantong_store::writer::WriterHandle;
use pingantong_store::{Db, DeviceRow, StoreError};
use pingantong_telemetry::events;

pub use pingantong_store::AlarmRecord;

/// Limits every device connection lives under.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A connection with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// A frame begun must be complete within this time (slow or half-sent frames).
    pub frame_timeout: Duration,
    /// Device clocks further than this from the server's are flagged in the reply.
    pub clock_window: Duration,
    /// Every TCP connection starts with a PROXY protocol header (v2 or v1)
    /// naming the device's address: the listeners sit behind a balancer.
    pub proxy_header: bool,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(10),
            clock_window: Duration::from_secs(300),
            proxy_header: false,
        }
    }
}

/// How long a copy of an event that carries no time of its own is taken for a
/// retry of it: a watch's `LK`, a DC-09 message (its timestamp says when it
/// was sent, not when the event happened). Later, the same content is a new event.
const RETRY_WINDOW_MS: i64 = 120_000;
/// An event stamped by the device's own clock stays the same event for as
/// long as a device may hold it and send it again (after a day without a
/// network, say); a copy later than that is taken for a new one, so a clock
/// stuck at one value can never swallow a press for ever.
const TIMED_WINDOW_MS: i64 = 86_400_000;

/// The retry window for an event's dedup key (protocol/DEDUP.md): long when
/// the event carries the device's own time of it, short otherwise.
pub(crate) fn retry_window(timed: bool) -> i64 {
    if timed {
        TIMED_WINDOW_MS
    } else {
        RETRY_WINDOW_MS
    }
}

/// What a connection handler needs from the rest of the server.
pub struct IngestContext {
    pub writer: WriterHandle,
    pub directory: Arc<Directory>,
    pub db: Db,
    pub limits: ConnectionLimits,
    /// The runtime of the store, the stages and the API. Device connections
    /// may run on threads of their own; their database reads are sent here.
    pub core: tokio::runtime::Handle,
}

impl IngestContext {
    /// The provisioned, not retired device with this id: from memory, or on
    /// a miss read on the core runtime.
    pub async fn device(&self, id: &str) -> Result<Option<Arc<DeviceRow>>, StoreError> {
        if let Some(held) = self.directory.held(id) {
            return Ok(held);
        }
        let (directory, id) = (Arc::clone(&self.directory), id.to_owned());
        self.on_core(async move { directory.device(&id).await })
            .await
    }

    /// As [`device`](Self::device), waiting while the database is away: a
    /// frame read then is judged when the directory answers, never refused
    /// (nor taken for a stranger's) for want of it. Meanwhile the connection
    /// reads no further: backpressure on that one device. Gives up with the
    /// error only once the server stops holding (it is stopping).
    pub async fn device_patiently(&self, id: &str) -> Result<Option<Arc<DeviceRow>>, StoreError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.device(id).await {
                Ok(found) => return Ok(found),
                Err(e) if !e.is_unavailable() || self.writer.stats().stopping() => return Err(e),
                Err(e) => {
                    events::StageFailed {
                        stage: "device_directory",
                        error: &e,
                    }
                    .emit();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Keep a frame that could not be taken, for whoever looks into it.
    pub async fn store_rejected(
        &self,
        protocol: &'static str,
        peer: String,
        why: String,
        raw: Vec<u8>,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        self.on_core(async move { db.insert_rejected_frame(protocol, &peer, &why, &raw).await })
            .await
    }

    /// Database work for a device connection, run on the core runtime. A
    /// PostgreSQL connection is driven by the I/O loop of the runtime that
    /// opened it: opened from a device thread, the writer's commits on it
    /// would wait for that loop — busiest exactly when an alarm flood is on —
    /// and it would break when that runtime stops before the store does.
    async fn on_core<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.core
            .spawn(work)
            .await
            .map_err(|_| StoreError::CoreGone)?
    }
}

/// Accept connections on an already-bound listener until `shutdown`, one task
/// per connection, then wait for the open connections to finish their frames.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    protocol: &'static str,
    max_connections: usize,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                events::StageFailed {
                    stage: "accept",
                    error: &e,
                }
                .emit();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            events::ConnectionRefused {
                protocol,
                reason: "connection_cap",
            }
            .emit();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        events::ConnectionOpened { protocol }.emit();
        tracker.spawn(holding(handler(stream, peer, shutdown.clone()), permit));
    }
    tracker.close();
    tracker.wait().await;
}

/// A connection's task, which holds its place under the connection cap until
/// it ends. A combinator, not `async move { conn.await; drop(permit) }`: an
/// async block keeps both the future it captured and the one it awaits,
/// doubling the memory of every idle connection.
pub(crate) fn holding<F: Future<Output = ()>>(
    conn: F,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> {
    conn.map(move |()| drop(permit))
}
