//! Application start-up: bind every port, connect the store, wire the stages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::gate::{Gate, GateConfig};
use crate::broker::{self, BrokerError};
use crate::cluster::Membership;
use crate::config::{ConfigError, Settings};
use crate::directory::Directory;
use crate::dispatch::{Dispatcher, MqttEndpoint};
use crate::incident::{Clock, IncidentStage, StageConfig};
use crate::ingest::{self, IngestContext};
use crate::listeners::{BindError, DeviceListeners, Transport, bind_tcp, local};
use crate::mqtt::credential::CredentialKey;
use crate::mqtt::{self, LinkConfig};
use crate::notify::{Channel, EmailChannel, MqttChannel, Notifier, WebhookChannel};
use crate::rules::{Rules, RulesError};
use crate::stages::{self, Phase, Stages};
use crate::store::{Db, StoreError, writer};
use crate::supervision::Supervision;

/// How often SQLite's write-ahead log is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::JoinError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("notification channel: {0}")]
    Notify(String),
    #[error("{0}")]
    DataKey(String),
    #[error(transparent)]
    Tls(#[from] crate::api::listener::TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Where each listener is bound (port 0 in the settings: read the real one here).
#[derive(Debug, Clone, Copy)]
pub struct ListenAddrs {
    pub http: SocketAddr,
    pub native: SocketAddr,
    pub gt06: SocketAddr,
    pub watch: SocketAddr,
    pub h02: SocketAddr,
    pub h02_udp: SocketAddr,
    pub eview: SocketAddr,
    pub dc09: SocketAddr,
    pub dc09_udp: SocketAddr,
    /// DC-09 over TLS, when configured.
    pub dc09_tls: Option<SocketAddr>,
}

/// A server with its ports bound and its database migrated, not yet running.
pub struct Application {
    settings: Settings,
    db: Db,
    /// This server's lease among the servers sharing the database.
    cluster: Arc<Membership>,
    http: TcpListener,
    devices: DeviceListeners,
    addrs: ListenAddrs,
    /// Where MQTT clients connect (the gate, with the embedded broker).
    mqtt: MqttEndpoint,
    /// The embedded broker itself and the credential it takes: the server's
    /// own session goes there directly, past the gate.
    embedded_inner: Option<(MqttEndpoint, (String, String))>,
    /// The embedded broker's gate and its bound listeners (plain, TLS), until it runs.
    gate: Option<(Arc<Gate>, TcpListener, Option<TcpListener>)>,
    /// Where the embedded broker takes `mqtts`, if it does.
    mqtts_addr: Option<SocketAddr>,
    credential_key: CredentialKey,
    mqtt_ca_pem: Option<Vec<u8>>,
    embedded_broker: bool,
    clock: Clock,
    rules: Arc<Rules>,
    /// Family notice channels that need no broker (webhook, e-mail).
    notice_channels: Vec<Arc<dyn Channel>>,
    /// HTTPS for the console and API, when a certificate is configured.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        settings.validate()?;
        // Rules and channels first: a mistake in them stops the start here,
        // before any port is bound.
        let rules = Arc::new(Rules::load(settings.rules_file.as_deref())?);
        let timeout = settings.retry_policy().attempt_timeout;
        let mut notice_channels: Vec<Arc<dyn Channel>> = vec![Arc::new(
            WebhookChannel::new(settings.notify.webhook_secret.clone(), timeout)
                .map_err(|e| AppError::Notify(format!("webhook client: {e}")))?,
        )];
        // A certificate that cannot be used stops the start, naming the file.
        let tls = match (&settings.http.tls_cert, &settings.http.tls_key) {
            (Some(cert), Some(key)) => Some(crate::api::listener::load(cert, key)?),
            _ => None,
        };
        if let Some(url) = &settings.notify.smtp_url {
            notice_channels.push(Arc::new(
                EmailChannel::new(url.expose(), &settings.notify.mail_from, timeout)
                    .map_err(AppError::Notify)?,
            ));
        }
        if settings.database.url.is_none() {
            std::fs::create_dir_all(&settings.data_dir).map_err(|source| AppError::DataDir {
                path: settings.data_dir.clone(),
                source,
            })?;
        }
        let store = settings
            .store_config(settings.database.max_connections)
            .map_err(|e| AppError::DataKey(e.to_string()))?;
        let db = Db::connect(&store).await?;
        // Before any port is bound: a second server with a running one's
        // instance id stops here, saying so.
        let cluster = Membership::join(
            &db,
            &settings.instance_id,
            Duration::from_millis(settings.stages.server_lease_ms),
        )
        .await?;
        let http = bind_tcp(settings.http.addr).await?;
        let devices = DeviceListeners::bind(&settings).await?;
        // Every row of the table but DC-09 over TLS is always configured.
        let at = |protocol, transport| {
            devices
                .addr(protocol, transport)
                .expect("the listener table binds every protocol")
        };
        let addrs = ListenAddrs {
            http: local(&http, settings.http.addr)?,
            native: at(pingantong_protocol::native::PROTOCOL, Transport::Tcp),
            gt06: at("gt06", Transport::Tcp),
            watch: at("watch", Transport::Tcp),
            h02: at("h02", Transport::Tcp),
            h02_udp: at("h02", Transport::Udp),
            eview: at("eview", Transport::Tcp),
            dc09: at("sia_dc09", Transport::Tcp),
            dc09_udp: at("sia_dc09", Transport::Udp),
            dc09_tls: devices.addr("sia_dc09", Transport::Tls),
        };
        let credential_key = CredentialKey::configured_or_kept(
            settings.mqtt.credential_key.as_ref().map(|k| k.expose()),
            &settings.data_dir,
        )
        .map_err(|source| AppError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
        let (mqtt, embedded_inner, gate) = match &settings.mqtt.url {
            Some(url) => (
                MqttEndpoint::parse(url).map_err(|why| ConfigError::Invalid {
                    field: "mqtt.url",
                    why,
                })?,
                None,
                None,
            ),
            None => {
                // The broker takes one random credential, made anew at each start.
                let login = ("pingantong-gate".to_owned(), {
                    let mut raw = [0u8; 24];
                    rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
                    raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
                });
                let inner_login = login.clone();
                let inner = tokio::task::spawn_blocking(move || {
                    broker::start_embedded(([127, 0, 0, 1], 0).into(), inner_login)
                })
                .await
                .expect("broker start-up does not panic")?;
                let listener = bind_tcp(settings.mqtt.embedded_addr).await?;
                let addr = local(&listener, settings.mqtt.embedded_addr)?;
                let tls_listener = match settings.mqtt.embedded_mqtts_addr {
                    Some(want) => Some(bind_tcp(want).await?),
                    None => None,
                };
                let gate = Gate::new(
                    GateConfig {
                        prefix: settings.mqtt.topic_prefix.clone(),
                        server_ids: vec![settings.instance_id.clone()],
                        quarantine: settings.mqtt.quarantine,
                        inner,
                        inner_login: login.clone(),
                        adapters: settings.mqtt.adapters.clone(),
                    },
                    db.clone(),
                    credential_key.clone(),
                );
                let endpoint = |a: SocketAddr| MqttEndpoint {
                    host: a.ip().to_string(),
                    port: a.port(),
                    tls: false,
                };
                (
                    endpoint(addr),
                    Some((endpoint(inner), login)),
                    Some((gate, listener, tls_listener)),
                )
            }
        };
        let embedded_broker = embedded_inner.is_some();
        let mqtts_addr = match (&gate, settings.mqtt.embedded_mqtts_addr) {
            (Some((_, _, Some(l))), Some(wanted)) => Some(local(l, wanted)?),
            _ => None,
        };
        let mqtt_ca_pem = match &settings.mqtt.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Self {
            cluster,
            clock: Arc::new(crate::store::now_ms),
            rules,
            notice_channels,
            tls,
            mqtt_ca_pem,
            settings,
            db,
            http,
            devices,
            addrs,
            mqtt,
            embedded_inner,
            gate,
            mqtts_addr,
            credential_key,
            embedded_broker,
        })
    }

    pub fn native_addr(&self) -> SocketAddr {
        self.addrs.native
    }

    /// Run deadlines (claim alerts, offer timeouts) on this clock instead of
    /// the system's: lets a test move time without waiting for it.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Every listener's bound address.
    pub fn addrs(&self) -> ListenAddrs {
        self.addrs
    }

    pub fn mqtt(&self) -> &MqttEndpoint {
        &self.mqtt
    }

    /// Issue (or rotate) `principal`'s MQTT credential: its username and password.
    pub async fn mqtt_login(
        &self,
        principal: &crate::mqtt::acl::Principal,
        actor: &str,
    ) -> Result<(String, String), crate::store::CredentialError> {
        let generation = self.db.issue_mqtt_credential(principal, actor).await?;
        let username = principal.username().unwrap_or_default();
        let password = self.credential_key.password(&username, generation);
        Ok((username, password))
    }

    /// Where the embedded broker takes `mqtts`, if configured.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts_addr
    }

    pub fn embedded_broker(&self) -> bool {
        self.embedded_broker
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Run until `shutdown`, then stop in phases: stop accepting and let
    /// connections finish their frames; commit what is queued; let the
    /// incident stage finish; close the database.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let s = &self.settings;
        let mut stages = Stages::new();
        let inner = stages.inner.clone();
        // Clients reach the embedded broker through its gate; the server goes
        // straight in with the broker's own credential.
        let sessions = self.gate.as_ref().map(|(g, _, _)| g.sessions());
        // The gate closes last, after the server's goodbye has passed through it.
        if let Some((gate, listener, tls_listener)) = self.gate {
            let gate_stop = stages.gate.clone();
            if let Some((l, tls)) = tls_listener.zip(self.tls.clone()) {
                let mqtts = Arc::clone(&gate).serve(l, Some(tls), gate_stop.clone());
                stages.add(Phase::Gate, "gate_mqtts", tokio::spawn(mqtts));
            }
            let plain = gate.serve(listener, None, gate_stop);
            stages.add(Phase::Gate, "gate", tokio::spawn(plain));
        }
        let (link_endpoint, link_credentials) = match &self.embedded_inner {
            Some((endpoint, login)) => (endpoint.clone(), Some(login.clone())),
            None => (
                self.mqtt.clone(),
                s.mqtt
                    .username
                    .clone()
                    .zip(s.mqtt.password.as_ref().map(|p| p.expose().to_owned())),
            ),
        };
        let link = mqtt::connect(
            &LinkConfig {
                endpoint: link_endpoint,
                client_id: s.instance_id.clone(),
                prefix: s.mqtt.topic_prefix.clone(),
                share_group: s.mqtt.share_group.clone(),
                credentials: link_credentials,
                extra_filters: s.mqtt.adapters.iter().map(|a| a.filter()).collect(),
                ca_pem: self.mqtt_ca_pem.clone(),
                dynsec: s.mqtt.dynsec && self.embedded_inner.is_none(),
            },
            inner.clone(),
        );
        stages.add(Phase::Behind, "mqtt_link", link.task);
        // An external Mosquitto kept in step with the registry's credentials.
        if s.mqtt.dynsec && self.embedded_inner.is_none() {
            let dynsec = tokio::spawn(crate::broker::dynsec::run(
                self.db.clone(),
                self.credential_key.clone(),
                crate::broker::dynsec::DynsecConfig {
                    prefix: s.mqtt.topic_prefix.clone(),
                    adapter_filters: s.mqtt.adapters.iter().map(|a| a.filter()).collect(),
                    quarantine: s.mqtt.quarantine,
                    server_username: s.mqtt.username.clone().unwrap_or_default(),
                },
                link.client.clone(),
                link.status.clone(),
                link.control_responses,
                inner.clone(),
            ));
            stages.add(Phase::Behind, "mqtt_credentials", dynsec);
        }
        // Before any alarm is planned: a city just loaded and never analyzed
        // would be read by full scans (see store::statistics).
        if let Err(e) = self.db.refresh_statistics().await {
            crate::telemetry::events::StageFailed {
                stage: "planner_statistics",
                error: &e,
            }
            .emit();
        }
        let directory = Directory::new(self.db.clone());
        // Before any listener: a city reconnecting after a restart finds
        // every device in memory.
        match directory.preload().await {
            Ok(devices) => tracing::info!(devices, "directory loaded"),
            Err(e) => crate::telemetry::events::StageFailed {
                stage: "directory_preload",
                error: &e,
            }
            .emit(),
        }
        let refresher = directory.spawn_refresher(
            Duration::from_millis(s.stages.cache_refresh_ms),
            inner.clone(),
        );
        stages.add(Phase::Behind, "directory_refresher", refresher);
        let supervision = Supervision::new(
            s.heartbeats(),
            Arc::clone(&directory),
            Arc::clone(&self.clock),
            Arc::clone(&self.cluster),
        );
        // Before the first report is committed, so no device is watched twice.
        if let Err(e) = supervision.restore(&self.db).await {
            crate::telemetry::events::StageFailed {
                stage: "supervision_restore",
                error: &e,
            }
            .emit();
        }
        // Before the first commit: no alarm's commit copies the log.
        match self
            .db
            .spawn_checkpointer(CHECKPOINT_EVERY, inner.clone())
            .await
        {
            Ok(Some(task)) => stages.add(Phase::Checkpointer, "wal_checkpointer", task),
            Ok(None) => {}
            Err(e) => {
                // The writer keeps checkpointing in its commits.
                crate::telemetry::events::StageFailed {
                    stage: "wal_checkpointer",
                    error: &e,
                }
                .emit();
            }
        }
        let (urgent_tx, urgent_rx) = mpsc::channel(10_000);
        let (other_tx, other_rx) = mpsc::channel(10_000);
        let (writer, writer_task) = writer::spawn(
            self.db.clone(),
            s.database.commit_batch_max,
            Arc::clone(&self.rules),
            writer::HandOver {
                urgent: urgent_tx,
                other: other_tx,
                supervision: Some(Arc::clone(&supervision) as Arc<dyn writer::Heard>),
            },
        );
        // Renewed until the stages behind the writer stop; then the others
        // take over this server's share at once.
        let membership = Arc::clone(&self.cluster).spawn(
            self.db.clone(),
            writer.stats().database_state(),
            inner.clone(),
        );
        stages.add(Phase::Behind, "cluster_lease", membership);
        // Stops with the listeners: it holds a writer handle, and the writer
        // finishes only when every handle is gone.
        let supervision_task = supervision.spawn(
            self.db.clone(),
            writer.clone(),
            Duration::from_millis(s.supervision.tick_ms),
            shutdown.clone(),
        );
        let dispatcher = Dispatcher::new(
            self.db.clone(),
            link.client.clone(),
            link.status.clone(),
            s.mqtt.topic_prefix.clone(),
        );
        let notices = Arc::new(tokio::sync::Notify::new());
        let timeline_changed = Arc::new(tokio::sync::Notify::new());
        let stage = IncidentStage::new(
            self.db.clone(),
            Arc::clone(&directory),
            dispatcher.clone(),
            StageConfig {
                rules: Arc::clone(&self.rules),
                escalation: s.escalation(),
                cascade: s.notify.cascade,
                notices: Arc::clone(&notices),
                timeline: Arc::clone(&timeline_changed),
                acks: writer.load(),
            },
            Arc::clone(&self.clock),
        );
        let sweep = Duration::from_millis(s.stages.recovery_sweep_ms);
        let (stage_handle, commands) = crate::incident::StageHandle::channel();
        let stage_task = stage.spawn(
            urgent_rx,
            other_rx,
            link.carer_replies,
            commands,
            sweep,
            inner.clone(),
        );
        let mut channels = self.notice_channels.clone();
        channels.push(Arc::new(MqttChannel::new(dispatcher.clone())));
        let notifier = Notifier::new(
            self.db.clone(),
            channels,
            s.retry_policy(),
            dispatcher,
            Arc::clone(&self.clock),
        );
        let notify_task = notifier.spawn(notices, sweep, inner.clone());
        let anchor_task = crate::anchor::spawn(
            self.db.clone(),
            s.data_dir.clone(),
            s.keys.audit_key.clone(),
            inner.clone(),
        );
        let housekeeping_task =
            crate::housekeeping::spawn(self.db.clone(), s.retention_policy(), inner.clone());
        // The database's state, kept apart from the writer's handles: the
        // writer stops when the last handle goes.
        let store = writer.load();
        let ctx = Arc::new(IngestContext {
            writer,
            directory,
            db: self.db.clone(),
            limits: s.limits(),
            core: tokio::runtime::Handle::current(),
        });
        let device_threads = DeviceThreads::start(s.devices.threads);
        let mqtt_ingest = tokio::spawn(ingest::mqtt::run(
            link.device_events,
            Arc::clone(&ctx),
            link.client.clone(),
            s.mqtt.topic_prefix.clone(),
            s.instance_id.clone(),
        ));
        let adapters = tokio::spawn(ingest::mqtt::run_adapters(
            link.adapter_events,
            Arc::clone(&ctx),
            link.client.clone(),
            s.mqtt.adapters.clone(),
            s.instance_id.clone(),
        ));
        let feed = match crate::api::Feed::new(
            self.db.clone(),
            Arc::clone(&timeline_changed),
            shutdown.clone(),
        )
        .await
        {
            Ok(feed) => feed,
            // The database went away between start-up and here: nothing works
            // without it, and the listeners are not serving yet.
            Err(e) => {
                crate::telemetry::events::StageFailed {
                    stage: "feed",
                    error: &e,
                }
                .emit();
                inner.cancel();
                return;
            }
        };
        let feed_task = feed.spawn(inner.clone());
        let http = tokio::spawn(crate::api::serve(
            self.http,
            crate::api::ApiContext {
                db: self.db.clone(),
                mqtt: link.status.clone(),
                store: ctx.writer.load(),
                auth: s.auth(),
                stage: stage_handle,
                feed,
                sla: s.sla,
                tls: self.tls.clone(),
                mqtt_credentials: crate::api::mqtt_credentials::MqttCredentials {
                    db: self.db.clone(),
                    key: self.credential_key.clone(),
                    sessions,
                },
                cluster: Arc::clone(&self.cluster),
            },
            shutdown.clone(),
        ));
        for task in self
            .devices
            .serve(&ctx, self.tls.clone(), &device_threads.handle(), &shutdown)
        {
            stages.add(Phase::Devices, "device_listener", task);
        }
        stages.add(Phase::Api, "http", http);
        stages.add(Phase::MqttIngest, "mqtt_ingest", mqtt_ingest);
        stages.add(Phase::MqttIngest, "mqtt_adapters", adapters);
        stages.add(Phase::Supervision, "supervision", supervision_task);
        stages.add(Phase::Writer, "writer", writer_task);
        stages.add(Phase::Behind, "incident_stage", stage_task);
        stages.add(Phase::Behind, "notifier", notify_task);
        stages.add(Phase::Behind, "feed", feed_task);
        stages.add(Phase::Behind, "anchor", anchor_task);
        stages.add(Phase::Behind, "housekeeping", housekeeping_task);
        // The device connections' own handles (the context's writer among
        // them) now live in the listener tasks alone.
        drop(ctx);

        shutdown.cancelled().await;
        // Stopping while the database is away: what is held cannot be
        // committed, and nobody was answered for it, so after the drain the
        // writer stops holding and the stop ends (the devices send again; the
        // broker keeps MQTT's events). Held, it would wait for ever.
        let watch = tokio::spawn(async move {
            tokio::time::sleep(stages::DRAIN_DEADLINE).await;
            if !store.database_up() {
                tracing::warn!(
                    held = store.held(),
                    "stopping with the database away; held records are given up"
                );
            }
            store.stop_holding();
        });
        stages.add(Phase::WriterWatch, "writer_watch", watch);
        stages.stop().await;
        self.db.close().await;
        // Last: connection tasks still running past the drain deadline end
        // here, once what they submitted has been committed.
        drop(device_threads);
    }
}

/// The runtime device connections are served on: threads of their own, so
/// that a flood of frames queues behind itself and not in front of the
/// writer, the incident stage and the live feed that an SOS needs next.
/// Stopped in the background when dropped (a runtime may not be dropped
/// from async code).
struct DeviceThreads(Option<tokio::runtime::Runtime>);

impl DeviceThreads {
    /// `threads` workers; 0, or threads the system will not give: the
    /// current runtime.
    fn start(threads: usize) -> Self {
        if threads == 0 {
            return Self(None);
        }
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pat-devices")
            .enable_all()
            .build()
        {
            Ok(rt) => Self(Some(rt)),
            Err(e) => {
                crate::telemetry::events::StageFailed {
                    stage: "device_threads",
                    error: &e,
                }
                .emit();
                Self(None)
            }
        }
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone())
    }
}

impl Drop for DeviceThreads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections the kernel completes while the server is busy elsewhere
    /// (here: never accepting) are only as many as the accept queue holds.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue_instead_of_being_dropped() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // tokio's own listeners queue 1024: the burst must be larger.
        let burst = somaxconn.min(2_000);
        assert!(
            burst > 1_100,
            "net.core.somaxconn is {somaxconn}: raise it (sysctl) to queue a reconnecting city"
        );
        let _ = crate::open_files::raise();
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..burst {
            connects.spawn(async move {
                // A dropped SYN is retried after 1 s and 3 s, and finds the
                // queue still full: 5 s tells queued from dropped.
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .ok()
                .and_then(Result::ok)
            });
        }
        let mut open = Vec::new();
        while let Some(c) = connects.join_next().await {
            open.extend(c.unwrap());
        }
        assert_eq!(
            open.len(),
            burst,
            "connections dropped at a full accept queue"
        );
        drop(listener);
    }
}
