//! The device listeners as one table: which protocol is heard on which kind
//! of socket, where the settings put it, and what reads its bytes.
//!
//! A new device protocol is a [`Codec`] in the protocol crate and a row in
//! [`DEVICE_LISTENERS`]; binding, the addresses a test reads back and serving
//! follow from the table.

use std::net::SocketAddr;
use std::sync::Arc;

use pingantong_protocol::Codec;
use pingantong_protocol::eview::EviewCodec;
use pingantong_protocol::gt06::Gt06Codec;
use pingantong_protocol::h02::H02Codec;
use pingantong_protocol::native::{self, NativeCodec};
use pingantong_protocol::sia_dc09::{self, KeyLookup, SiaDc09Codec};
use pingantong_protocol::watch::WatchCodec;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::directory::Directory;
use crate::ingest::IngestContext;
use crate::ingest::device::{self, CodecFactory};

const SIA_DC09: &str = "sia_dc09";

/// How a device's bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    /// Each datagram is answered to its sender. Bound on the port the same
    /// protocol's TCP listener got, so one number serves both.
    Udp,
    /// TCP under TLS, with the console's certificate.
    Tls,
}

/// One row of the table.
pub struct Row {
    pub protocol: &'static str,
    pub transport: Transport,
    /// Where the settings put it; `None`: not configured, not bound.
    pub addr: fn(&Settings) -> Option<SocketAddr>,
    /// Makes its codecs, one per connection or datagram (given the device
    /// directory, which DC-09's account keys are read from).
    pub codecs: fn(&Arc<Directory>) -> CodecFactory,
}

fn codecs(f: fn() -> Box<dyn Codec>) -> CodecFactory {
    Arc::new(f)
}

/// DC-09 codecs decrypt with the account's key without waiting: every
/// account is in memory (preloaded before the listeners start; new ones join
/// at the directory's next sweep).
fn dc09_codecs(directory: &Arc<Directory>) -> CodecFactory {
    let dir = Arc::clone(directory);
    let keys: KeyLookup = Arc::new(move |account: &str| {
        dir.cached_device(account)
            .filter(|d| d.protocol == SIA_DC09 && !d.secret.is_empty())
            .map(|d| d.secret.clone())
    });
    let clock: sia_dc09::Clock = Arc::new(crate::store::now_ms);
    Arc::new(move || Box::new(SiaDc09Codec::new(Arc::clone(&keys), Arc::clone(&clock))))
}

/// Every device listener. A UDP row comes after its protocol's TCP row.
pub const DEVICE_LISTENERS: &[Row] = &[
    Row {
        protocol: native::PROTOCOL,
        transport: Transport::Tcp,
        addr: |s| Some(s.devices.native_addr),
        codecs: |_| codecs(|| Box::new(NativeCodec)),
    },
    Row {
        protocol: "gt06",
        transport: Transport::Tcp,
        addr: |s| Some(s.devices.gt06_addr),
        codecs: |_| codecs(|| Box::new(Gt06Codec::with_system_clock())),
    },
    Row {
        protocol: "watch",
        transport: Transport::Tcp,
        addr: |s| Some(s.devices.watch_addr),
        codecs: |_| codecs(|| Box::new(WatchCodec::new())),
    },
    Row {
        protocol: "h02",
        transport: Transport::Tcp,
        addr: |s| Some(s.devices.h02_addr),
        codecs: |_| codecs(|| Box::new(H02Codec::new())),
    },
    Row {
        protocol: "h02",
        transport: Transport::Udp,
        addr: |s| Some(s.devices.h02_addr),
        codecs: |_| codecs(|| Box::new(H02Codec::new())),
    },
    Row {
        protocol: "eview",
        transport: Transport::Tcp,
        addr: |s| Some(s.devices.eview_addr),
        codecs: |_| codecs(|| Box::new(EviewCodec::new())),
    },
    Row {
        protocol: SIA_DC09,
        transport: Transport::Tcp,
        addr: |s| Some(s.devices.dc09_addr),
        codecs: dc09_codecs,
    },
    Row {
        protocol: SIA_DC09,
        transport: Transport::Tls,
        addr: |s| s.devices.dc09_tls_addr,
        codecs: dc09_codecs,
    },
    Row {
        protocol: SIA_DC09,
        transport: Transport::Udp,
        addr: |s| Some(s.devices.dc09_addr),
        codecs: dc09_codecs,
    },
];

enum Socket {
    Stream(TcpListener),
    Datagram(UdpSocket),
}

/// A row's socket, bound.
pub struct Bound {
    pub row: &'static Row,
    pub addr: SocketAddr,
    socket: Socket,
}

/// The device listeners, bound: where each one is.
pub struct DeviceListeners(Vec<Bound>);

impl DeviceListeners {
    /// Bind every configured row, in the table's order.
    pub async fn bind(settings: &Settings) -> Result<Self, BindError> {
        let mut bound: Vec<Bound> = Vec::with_capacity(DEVICE_LISTENERS.len());
        for row in DEVICE_LISTENERS {
            let Some(wanted) = (row.addr)(settings) else {
                continue;
            };
            let (socket, addr) = match row.transport {
                Transport::Tcp | Transport::Tls => {
                    let l = bind_tcp(wanted).await?;
                    let addr = local(&l, wanted)?;
                    (Socket::Stream(l), addr)
                }
                Transport::Udp => {
                    let port = bound
                        .iter()
                        .find(|b| {
                            b.row.protocol == row.protocol && b.row.transport == Transport::Tcp
                        })
                        .map_or(wanted.port(), |tcp| tcp.addr.port());
                    let at = SocketAddr::new(wanted.ip(), port);
                    let bind_err = |source| BindError { addr: at, source };
                    let s = UdpSocket::bind(at).await.map_err(bind_err)?;
                    let addr = s.local_addr().map_err(bind_err)?;
                    (Socket::Datagram(s), addr)
                }
            };
            bound.push(Bound { row, addr, socket });
        }
        Ok(Self(bound))
    }

    /// Where `protocol` is heard over `transport`, if it is.
    pub fn addr(&self, protocol: &str, transport: Transport) -> Option<SocketAddr> {
        self.0
            .iter()
            .find(|b| b.row.protocol == protocol && b.row.transport == transport)
            .map(|b| b.addr)
    }

    /// Serve every listener on the device runtime `on` until `shutdown`; the
    /// tasks end once their connections have finished.
    pub fn serve(
        self,
        ctx: &Arc<IngestContext>,
        tls: Option<Arc<rustls::ServerConfig>>,
        on: &tokio::runtime::Handle,
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::with_capacity(self.0.len());
        for Bound { row, socket, .. } in self.0 {
            let (ctx, stop, protocol) = (Arc::clone(ctx), shutdown.clone(), row.protocol);
            let codecs = (row.codecs)(&ctx.directory);
            let task = match (row.transport, socket) {
                (Transport::Tcp, Socket::Stream(l)) => on_devices(on, l, protocol, move |l| {
                    device::serve_tcp(l, protocol, codecs, ctx, stop)
                }),
                (Transport::Tls, Socket::Stream(l)) => {
                    // Settings refuse a TLS listener without a certificate.
                    let Some(tls) = tls.clone() else { continue };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    on_devices(on, l, protocol, move |l| {
                        device::serve_tls(l, protocol, codecs, acceptor, ctx, stop)
                    })
                }
                (Transport::Udp, Socket::Datagram(s)) => on_devices(on, s, protocol, move |s| {
                    device::serve_udp(s, protocol, codecs, ctx, stop)
                }),
                _ => unreachable!("{protocol}: a row bound to the wrong kind of socket"),
            };
            tasks.push(task);
        }
        tasks
    }
}

/// A socket that could not be bound (or whose address cannot be read).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Connections waiting to be accepted, per listener (the kernel caps it at
/// `net.core.somaxconn`, 4096 on current Linux). A city reconnecting at once
/// after a power cut sends thousands of SYNs in a second: past a full queue
/// the kernel drops them, and each of those devices waits out a SYN
/// retransmission (1 s, then 3 s) before it can even try again.
const ACCEPT_BACKLOG: u32 = 65_535;

pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server rebinds at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(ACCEPT_BACKLOG)
    };
    bind().map_err(|source| BindError { addr, source })
}

pub fn local(l: &TcpListener, wanted: SocketAddr) -> Result<SocketAddr, BindError> {
    l.local_addr().map_err(|source| BindError {
        addr: wanted,
        source,
    })
}

/// A socket bound on one runtime, moved to another: its readiness is then
/// watched by that runtime's I/O loop.
trait Rehome: Sized + Send + 'static {
    type Std: Send + 'static;
    fn leave(self) -> std::io::Result<Self::Std>;
    fn arrive(std: Self::Std) -> std::io::Result<Self>;
}

impl Rehome for TcpListener {
    type Std = std::net::TcpListener;
    fn leave(self) -> std::io::Result<Self::Std> {
        self.into_std()
    }
    fn arrive(std: Self::Std) -> std::io::Result<Self> {
        TcpListener::from_std(std)
    }
}

impl Rehome for UdpSocket {
    type Std = std::net::UdpSocket;
    fn leave(self) -> std::io::Result<Self::Std> {
        self.into_std()
    }
    fn arrive(std: Self::Std) -> std::io::Result<Self> {
        UdpSocket::from_std(std)
    }
}

/// Serve `socket` on the device runtime.
fn on_devices<S, F, Fut>(
    on: &tokio::runtime::Handle,
    socket: S,
    protocol: &'static str,
    serve: F,
) -> tokio::task::JoinHandle<()>
where
    S: Rehome,
    F: FnOnce(S) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let moved = socket.leave();
    on.spawn(async move {
        match moved.and_then(S::arrive) {
            Ok(socket) => serve(socket).await,
            Err(e) => {
                crate::telemetry::events::StageFailed {
                    stage: protocol,
                    error: &e,
                }
                .emit();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every protocol a UDP row names is heard over TCP first, so the
    /// datagram socket can take the TCP listener's port.
    #[test]
    fn each_udp_row_follows_its_tcp_row() {
        for (i, row) in DEVICE_LISTENERS.iter().enumerate() {
            if row.transport == Transport::Udp {
                assert!(
                    DEVICE_LISTENERS[..i]
                        .iter()
                        .any(|r| r.protocol == row.protocol && r.transport == Transport::Tcp),
                    "{}'s UDP row comes before its TCP row",
                    row.protocol
                );
            }
        }
    }

    /// Bound on port 0, each protocol's datagram socket shares its TCP port,
    /// and an unconfigured row (DC-09 over TLS) is not bound.
    #[tokio::test]
    async fn binding_follows_the_table() {
        let settings = Settings::default().on_free_loopback_ports();
        let bound = DeviceListeners::bind(&settings).await.unwrap();
        for protocol in ["h02", SIA_DC09] {
            let tcp = bound.addr(protocol, Transport::Tcp).unwrap();
            let udp = bound.addr(protocol, Transport::Udp).unwrap();
            assert_ne!(tcp.port(), 0);
            assert_eq!(tcp.port(), udp.port(), "{protocol}");
        }
        assert_eq!(bound.addr(SIA_DC09, Transport::Tls), None);
        assert_eq!(bound.0.len(), DEVICE_LISTENERS.len() - 1);
    }
}
