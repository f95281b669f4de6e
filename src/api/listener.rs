//! The HTTP listener, plain or TLS. With a certificate and key configured the
//! console and API speak only HTTPS: a plain-text request on the port fails
//! its handshake and is closed (refused, never answered in clear).
//!
//! Handshakes run in tasks of their own, so a client that opens a connection
//! and sends nothing holds up nobody else's; each has 10 s to finish.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key could not be used (said at start, naming the file).
#[derive(Debug, thiserror::Error)]
#[error("TLS {what} {path}: {why}")]
pub struct TlsError {
    what: &'static str,
    path: String,
    why: String,
}

/// The server's TLS configuration from a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let err = |what, path: &Path, why: String| TlsError {
        what,
        path: path.display().to_string(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(
            "certificate",
            cert,
            "no certificate in the file".into(),
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| err("private key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("certificate", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| err("certificate and key", cert, e.to_string()))?;
    Ok(Arc::new(config))
}

/// What `axum::serve` accepts from: plain TCP, or TLS streams whose
/// handshakes are done.
pub enum ApiListener {
    Plain(TcpListener),
    Tls {
        ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: SocketAddr,
    },
}

impl ApiListener {
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        shutdown: CancellationToken,
    ) -> Self {
        let Some(config) = tls else {
            return ApiListener::Plain(listener);
        };
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => {
                            // Out of descriptors and the like: wait, as axum does.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A failed handshake (plain HTTP, a wrong name) just closes.
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        ApiListener::Tls { ready, local }
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            ApiListener::Plain(l) => {
                let (io, addr) = axum::serve::Listener::accept(l).await;
                (Either::Left(io), addr)
            }
            ApiListener::Tls { ready, .. } => match ready.recv().await {
                Some((io, addr)) => (Either::Right(io), addr),
                // The accept loop ended (shutdown): nothing more will come.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match self {
            ApiListener::Plain(l) => l.local_addr(),
            ApiListener::Tls { local, .. } => Ok(*local),
        }
    }
}

/// The TCP socket under either kind of stream.
pub fn tcp_of(io: &mut Either<TcpStream, TlsStream<TcpStream>>) -> &TcpStream {
    match io {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}
