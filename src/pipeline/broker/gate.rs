//! The embedded broker's gate: every client connects here, never to the
//! broker itself.
//!
//! rumqttd authenticates a CONNECT but has no per-topic rules, so the gate
//! stands in front of it on the public address: it checks each CONNECT against
//! the registry (`mqtt::credential`), then reads every packet the client sends
//! and lets through only what `mqtt::acl` allows that client. The broker
//! listens on loopback and takes only the gate's own random credential, so it
//! cannot be reached around the gate. What the broker sends back is passed on
//! unread, except the SUBACKs of subscriptions the gate trimmed.
//!
//! Each client's id is namespaced by its identity on the way in
//! (`devices/D-1|<client id>`), so one identity can never take over another's
//! session, and no client can take the server's (which connects to the broker
//! directly).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Login, Packet, PubAck, SubAck, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ingest::adapters::AdapterConfig;
use crate::mqtt::acl::{Principal, reserved_client_id};
use crate::mqtt::credential::CredentialKey;
use pingantong_protocol::DeviceId;
use pingantong_store::Db;
use pingantong_telemetry::events;

/// Largest packet a client may send (the broker's own limit, plus headers).
const MAX_PACKET: usize = 64 * 1024 + 512;
/// How often credentials changed elsewhere are looked for.
const CHANGE_SWEEP: Duration = Duration::from_secs(5);
/// A client that connects and says nothing is dropped after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gate needs to know.
pub struct GateConfig {
    pub prefix: String,
    /// Client ids only servers may use.
    pub server_ids: Vec<String>,
    /// Let clients without credentials raise events under the quarantine topic.
    pub quarantine: bool,
    /// Where the broker listens (loopback).
    pub inner: SocketAddr,
    /// The gate's credential on the broker.
    pub inner_login: (String, String),
    /// The bridges' topics (`mqtt_adapters`): what a `bridges/<name>` client may publish.
    pub adapters: Vec<AdapterConfig>,
}

/// The gate, shared by its connections and by whoever revokes credentials.
pub struct Gate {
    cfg: GateConfig,
    db: Db,
    key: CredentialKey,
    /// Connected identities, so a revoked or rotated credential is cut off at once.
    live: DashMap<String, CancellationToken>,
    /// The newest attempt per client id on the broker: an older attempt that
    /// is still being checked (its client gave up waiting and dialled again)
    /// must not reach the broker after the newer one and take its session.
    newest: DashMap<String, u64>,
    attempts: std::sync::atomic::AtomicU64,
}

/// A handle to cut off every connection of a username (after a revocation or rotation).
#[derive(Clone)]
pub struct Sessions(Arc<Gate>);

impl Sessions {
    pub fn end(&self, username: &str) {
        if let Some((_, token)) = self.0.live.remove(username) {
            token.cancel();
        }
    }
}

impl Gate {
    pub fn new(cfg: GateConfig, db: Db, key: CredentialKey) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            db,
            key,
            live: DashMap::new(),
            newest: DashMap::new(),
            attempts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn sessions(self: &Arc<Self>) -> Sessions {
        Sessions(Arc::clone(self))
    }

    /// Every few seconds, end the live sessions of credentials changed since
    /// the last look (rotated or revoked here, by another server or from the
    /// command line): they must connect again with what is valid now.
    async fn sweep_changes(self: Arc<Self>, shutdown: CancellationToken) {
        let mut since = pingantong_store::now_ms();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHANGE_SWEEP) => {}
            }
            match self.db.mqtt_credentials_changed_since(since).await {
                Ok(rows) => {
                    for (username, at) in rows {
                        self.sessions().end(&username);
                        since = since.max(at);
                    }
                }
                Err(e) => events::StageFailed {
                    stage: "mqtt_gate_sweep",
                    error: &e,
                }
                .emit(),
            }
        }
    }

    /// Accept clients until `shutdown`: in plain text, or over TLS (`mqtts`)
    /// when given a server configuration.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: CancellationToken,
    ) {
        // One sweep per gate, however many listeners it has.
        if tls.is_none() {
            tokio::spawn(Arc::clone(&self).sweep_changes(shutdown.clone()));
        }
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT gate: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let gate = Arc::clone(&self);
            let stop = shutdown.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let ended = match acceptor {
                    None => gate.connection(stream, peer, stop).await,
                    // A client that never finishes its handshake holds up nobody else.
                    Some(a) => {
                        match tokio::time::timeout(CONNECT_TIMEOUT, a.accept(stream)).await {
                            Ok(Ok(tls)) => gate.connection(tls, peer, stop).await,
                            Ok(Err(e)) => Err(e),
                            Err(_) => Ok(()),
                        }
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "MQTT gate: connection ended");
                }
            });
        }
    }

    /// The token that ends every live session of `who`.
    fn session_token(&self, who: &str, shutdown: &CancellationToken) -> CancellationToken {
        let mut live = self
            .live
            .entry(who.to_owned())
            .or_insert_with(|| shutdown.child_token());
        if live.is_cancelled() {
            *live = shutdown.child_token();
        }
        live.clone()
    }

    /// Decide who a CONNECT is, or why it is refused.
    async fn admit(
        &self,
        c: &mqttbytes::v4::Connect,
    ) -> Result<Principal, (ConnectReturnCode, &'static str)> {
        let server_ids: Vec<&str> = self.cfg.server_ids.iter().map(String::as_str).collect();
        if c.client_id.contains(['+', '#', '$', '/']) {
            // The broker refuses these (and, refusing one twice, rumqttd 0.20 stops accepting anyone).
            return Err((ConnectReturnCode::BadClientId, "bad_client_id"));
        }
        if c.client_id.is_empty() && !c.clean_session {
            // MQTT 3.1.1 §3.1.3.1: a kept session needs a name.
            return Err((ConnectReturnCode::BadClientId, "bad_client_id"));
        }
        let principal = match &c.login {
            Some(login) if !login.username.is_empty() => {
                let p = Principal::from_username(&login.username)
                    .map_err(|_| (ConnectReturnCode::BadUserNamePassword, "bad_credentials"))?;
                let generation = match self.db.mqtt_credential(&p).await {
                    Ok(Some(g)) => g,
                    Ok(None) => {
                        return Err((ConnectReturnCode::BadUserNamePassword, "bad_credentials"));
                    }
                    // The registry cannot answer: say so, the client retries.
                    Err(_) => return Err((ConnectReturnCode::ServiceUnavailable, "registry_down")),
                };
                if !self
                    .key
                    .verify(&login.username, generation, login.password.as_bytes())
                {
                    return Err((ConnectReturnCode::BadUserNamePassword, "bad_credentials"));
                }
                p
            }
            _ => {
                if !self.cfg.quarantine {
                    return Err((ConnectReturnCode::NotAuthorized, "anonymous"));
                }
                // The client id is the only name a quarantined device has.
                let id = DeviceId::parse(&c.client_id)
                    .map_err(|_| (ConnectReturnCode::BadClientId, "bad_client_id"))?;
                Principal::Quarantine(id)
            }
        };
        if !matches!(principal, Principal::Server(_))
            && reserved_client_id(&c.client_id, &server_ids)
        {
            return Err((ConnectReturnCode::BadClientId, "reserved_client_id"));
        }
        if let Some(will) = &c.last_will
            && !may_publish(&self.cfg, &principal, &will.topic)
        {
            return Err((ConnectReturnCode::NotAuthorized, "will_denied"));
        }
        Ok(principal)
    }

    async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
        self: Arc<Self>,
        mut client: S,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(1024);
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first =
            match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut client, &mut buf)).await {
                Ok(Ok(Some(p))) => p,
                _ => return Ok(()),
            };
        let Packet::Connect(mut connect) = first else {
            events::MqttConnectRefused {
                reason: "protocol",
                username: "",
                peer,
            }
            .emit();
            return Ok(());
        };
        let offered = connect
            .login
            .as_ref()
            .map(|l| l.username.clone())
            .unwrap_or_default();
        // Registered for cutting off before the registry is read: a rotation
        // or revocation committed after that read ends this session (one
        // before it refuses the CONNECT).
        let named = connect
            .login
            .as_ref()
            .and_then(|l| Principal::from_username(&l.username).ok())
            .and_then(|p| p.username());
        let registered = named.map(|who| self.session_token(&who, &shutdown));
        let principal = match self.admit(&connect).await {
            Ok(p) => p,
            Err((code, reason)) => {
                events::MqttConnectRefused {
                    reason,
                    username: &offered,
                    peer,
                }
                .emit();
                let mut out = BytesMut::new();
                let _ = ConnAck::new(code, false).write(&mut out);
                let _ = client.write_all(&out).await;
                return Ok(());
            }
        };
        let who = match &principal {
            Principal::Quarantine(id) => format!("quarantine/{id}"),
            p => p.username().unwrap_or_default(),
        };
        let token = match registered {
            Some(t) => t,
            None => self.session_token(&who, &shutdown),
        };
        // An empty client id asks for a fresh session: give it a unique one.
        let client_id = if connect.client_id.is_empty() {
            format!("anon-{:016x}", rand::random::<u64>())
        } else {
            connect.client_id.clone()
        };
        // rumqttd refuses `/` in a client id: the identity's kind is joined with `:`.
        connect.client_id = format!("{}|{client_id}", who.replacen('/', ":", 1));
        // Only the newest attempt under this id goes on to the broker.
        {
            let mut newest = self
                .newest
                .entry(connect.client_id.clone())
                .or_insert(attempt);
            if *newest > attempt {
                return Ok(());
            }
            *newest = attempt;
        }
        connect.login = Some(Login::new(
            self.cfg.inner_login.0.clone(),
            self.cfg.inner_login.1.clone(),
        ));
        let mut inner = TcpStream::connect(self.cfg.inner).await?;
        if self
            .newest
            .get(&connect.client_id)
            .is_some_and(|n| *n != attempt)
        {
            // A newer attempt arrived while this one was being checked.
            return Ok(());
        }
        let _ = inner.set_nodelay(true);
        let mut out = BytesMut::new();
        let connect_id = connect.client_id.clone();
        Packet::Connect(connect)
            .write(&mut out, MAX_PACKET)
            .map_err(std::io::Error::other)?;
        inner.write_all(&out).await?;
        // Take the broker's CONNACK before anything can close this link:
        // rumqttd 0.20 leaves a dead entry behind when its CONNACK cannot be
        // written, and panics on the next CONNECT with the same client id.
        let mut inner_buf = BytesMut::with_capacity(1024);
        let connack =
            match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut inner, &mut inner_buf))
                .await
            {
                Ok(Ok(Some(f))) => f,
                _ => return Ok(()),
            };
        if token.is_cancelled() || client.write_all(&connack).await.is_err() {
            return Ok(());
        }

        let inner_id = connect_id;
        let ended = pump(
            &self.cfg,
            &principal,
            &who,
            (client, buf),
            (inner, inner_buf),
            token,
        )
        .await;
        // Forgotten when done, unless a newer attempt holds the id by now.
        self.newest.remove_if(&inner_id, |_, n| *n == attempt);
        ended
    }
}

/// How often one session may write a denied-access warning: a client that
/// keeps publishing outside its topics would otherwise write a line per
/// packet. The metric counts every one.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One session's denied-access warnings, limited to one per [`WARN_EVERY`].
#[derive(Default)]
struct Warnings {
    last: Option<std::time::Instant>,
    held: u64,
}

impl Warnings {
    /// Whether to log one now, and how many were held back since the last.
    fn take(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < WARN_EVERY)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// Carry packets both ways until either side closes or `stop` fires.
async fn pump<S: AsyncRead + AsyncWrite + Unpin + Send>(
    cfg: &GateConfig,
    principal: &Principal,
    who: &str,
    (client, mut client_buf): (S, BytesMut),
    (inner, mut inner_buf): (TcpStream, BytesMut),
    stop: CancellationToken,
) -> std::io::Result<()> {
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut inner_rd, mut inner_wr) = inner.into_split();
    // SUBSCRIBE packet id -> which of its filters were granted, to widen the SUBACK.
    let trimmed: Arc<Mutex<HashMap<u16, Vec<bool>>>> = Arc::default();
    let (to_client, mut client_out) = mpsc::channel::<Bytes>(256);

    let writer = async move {
        while let Some(b) = client_out.recv().await {
            client_wr.write_all(&b).await?;
        }
        client_wr.shutdown().await
    };

    let down_trimmed = Arc::clone(&trimmed);
    let down_tx = to_client.clone();
    let downstream = async move {
        loop {
            let Some(frame) = read_frame(&mut inner_rd, &mut inner_buf).await? else {
                return Ok::<_, std::io::Error>(());
            };
            let frame = match widen_suback(&frame, &down_trimmed) {
                Some(b) => b,
                None => frame,
            };
            if down_tx.send(frame).await.is_err() {
                return Ok(());
            }
        }
    };

    let upstream = async move {
        let mut warnings = Warnings::default();
        loop {
            let Some(frame) = read_frame(&mut client_rd, &mut client_buf).await? else {
                return Ok::<_, std::io::Error>(());
            };
            let kind = frame[0] >> 4;
            // PUBLISH (3) and SUBSCRIBE (8) are judged; the rest pass as they are.
            if kind != 3 && kind != 8 {
                if kind == 1 {
                    // A second CONNECT is a protocol violation: close.
                    return Ok(());
                }
                inner_wr.write_all(&frame).await?;
                continue;
            }
            let mut b = BytesMut::from(&frame[..]);
            let packet = Packet::read(&mut b, MAX_PACKET).map_err(std::io::Error::other)?;
            match packet {
                Packet::Publish(mut p) => {
                    if !may_publish(cfg, principal, &p.topic) {
                        events::MqttDenied {
                            action: "publish",
                            who,
                            topic: &p.topic,
                            log: warnings.take(std::time::Instant::now()),
                        }
                        .emit();
                        match p.qos {
                            QoS::AtMostOnce => continue,
                            // As Mosquitto does on 3.1.1: acknowledged, not delivered.
                            QoS::AtLeastOnce => {
                                let mut out = BytesMut::new();
                                let _ = PubAck::new(p.pkid).write(&mut out);
                                if to_client.send(out.freeze()).await.is_err() {
                                    return Ok(());
                                }
                                continue;
                            }
                            QoS::ExactlyOnce => return Ok(()),
                        }
                    }
                    if p.retain && !matches!(principal, Principal::Server(_)) {
                        // Only servers leave messages on the broker for later readers.
                        p.retain = false;
                        let mut out = BytesMut::new();
                        Packet::Publish(p)
                            .write(&mut out, MAX_PACKET)
                            .map_err(std::io::Error::other)?;
                        inner_wr.write_all(&out).await?;
                    } else {
                        inner_wr.write_all(&frame).await?;
                    }
                }
                Packet::Subscribe(mut s) => {
                    let granted: Vec<bool> = s
                        .filters
                        .iter()
                        .map(|f| principal.may_subscribe(&cfg.prefix, &f.path))
                        .collect();
                    for (f, ok) in s.filters.iter().zip(&granted) {
                        if !ok {
                            events::MqttDenied {
                                action: "subscribe",
                                who,
                                topic: &f.path,
                                log: warnings.take(std::time::Instant::now()),
                            }
                            .emit();
                        }
                    }
                    if granted.iter().all(|g| *g) {
                        inner_wr.write_all(&frame).await?;
                    } else if !granted.iter().any(|g| *g) {
                        let mut out = BytesMut::new();
                        let codes = vec![SubscribeReasonCode::Failure; granted.len()];
                        let _ = SubAck::new(s.pkid, codes).write(&mut out);
                        if to_client.send(out.freeze()).await.is_err() {
                            return Ok(());
                        }
                    } else {
                        let mut keep = granted.iter();
                        s.filters.retain(|_| *keep.next().unwrap_or(&false));
                        trimmed.lock().expect("gate lock").insert(s.pkid, granted);
                        let mut out = BytesMut::new();
                        Packet::Subscribe(s)
                            .write(&mut out, MAX_PACKET)
                            .map_err(std::io::Error::other)?;
                        inner_wr.write_all(&out).await?;
                    }
                }
                _ => inner_wr.write_all(&frame).await?,
            }
        }
    };

    tokio::select! {
        r = upstream => r,
        r = downstream => r,
        r = writer => r,
        _ = stop.cancelled() => Ok(()),
    }
}

/// Whether `principal` may publish to `topic`: its own topics, and for a
/// bridge the adapters' topics.
fn may_publish(cfg: &GateConfig, principal: &Principal, topic: &str) -> bool {
    match principal {
        Principal::Bridge(_) => cfg.adapters.iter().any(|a| a.matches(topic)),
        p => p.may_publish(&cfg.prefix, topic),
    }
}

/// A SUBACK for a trimmed SUBSCRIBE, with a failure code in each refused filter's place.
fn widen_suback(frame: &Bytes, trimmed: &Mutex<HashMap<u16, Vec<bool>>>) -> Option<Bytes> {
    if frame[0] >> 4 != 9 {
        return None;
    }
    let mut b = BytesMut::from(&frame[..]);
    let Ok(Packet::SubAck(ack)) = Packet::read(&mut b, MAX_PACKET) else {
        return None;
    };
    let granted = trimmed.lock().expect("gate lock").remove(&ack.pkid)?;
    let mut codes = ack.return_codes.into_iter();
    let widened = granted
        .iter()
        .map(|ok| {
            if *ok {
                codes.next().unwrap_or(SubscribeReasonCode::Failure)
            } else {
                SubscribeReasonCode::Failure
            }
        })
        .collect();
    let mut out = BytesMut::new();
    SubAck::new(ack.pkid, widened).write(&mut out).ok()?;
    Some(out.freeze())
}

/// Read one whole MQTT frame (fixed header and all); `None` at a clean end.
async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Bytes>> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(h) => return Ok(Some(buf.split_to(h.frame_length()).freeze())),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Read and decode one packet.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    let Some(frame) = read_frame(rd, buf).await? else {
        return Ok(None);
    };
    let mut b = BytesMut::from(&frame[..]);
    Packet::read(&mut b, MAX_PACKET)
        .map(Some)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_warns_once_per_period_and_says_how_many_it_held() {
        let mut w = Warnings::default();
        let t0 = std::time::Instant::now();
        assert_eq!(w.take(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(w.take(t0 + std::time::Duration::from_secs(i)), None);
        }
        assert_eq!(w.take(t0 + WARN_EVERY), Some(5));
        assert_eq!(w.take(t0 + WARN_EVERY), None);
        assert_eq!(w.take(t0 + WARN_EVERY * 2), Some(1));
    }
}
