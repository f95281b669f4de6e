//! Start the real server on loopback ports with a fresh database, and talk to it.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingantong::api::auth::hash_password;
use pingantong::domain::Role;
use pingantong::store::{Db, NewCarer, NewClient, NewDevice, NewProvider, NewUser};
use pingantong::{Application, Settings};
use pingantong_protocol::native::{self, Reply};
use pingantong_protocol::{AlarmEvent, DeviceId, EventKind, Location};
use pingantong_sim::carer::{self, CarerStats};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MOSQUITTO_URL: &str = "mqtt://127.0.0.1:1883";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Embedded,
    Mosquitto,
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::rng().random::<u64>())
}

/// Settings for a test server: loopback ports, a fresh database, short sweeps.
/// How a test opens a database of its own, with the master key kept in `dir`
/// (as a server given `--data-dir dir` finds it).
pub fn store_config(
    url: String,
    schema: Option<String>,
    dir: &std::path::Path,
) -> pingantong::store::StoreConfig {
    pingantong::store::StoreConfig {
        url,
        schema,
        max_connections: 2,
        master_key: Arc::new(pingantong::vault::MasterKey::configured_or_kept(None, dir).unwrap()),
    }
}

pub fn test_settings(backend: Backend, broker: Broker, dir: &std::path::Path) -> Settings {
    let tag = unique("t");
    let mut s = Settings::default().on_free_loopback_ports();
    s.data_dir = dir.to_owned();
    s.database.url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(POSTGRES_URL.into()),
    };
    s.database.schema = (backend == Backend::Postgres).then(|| tag.clone());
    s.mqtt.url = (broker == Broker::Mosquitto).then(|| MOSQUITTO_URL.into());
    // Topics and client ids unique per test: Mosquitto is shared.
    s.mqtt.topic_prefix = format!("pat-{tag}");
    s.instance_id = format!("pat-{tag}");
    s.stages.cache_refresh_ms = 100;
    s.stages.recovery_sweep_ms = 200;
    s
}

/// Supervision of every protocol on beats every `secs`, `missed` of them
/// and `grace_secs` allowed, looked at every `tick_ms`.
pub fn supervise(s: &mut Settings, secs: u64, missed: u32, grace_secs: u64, tick_ms: u64) {
    s.supervision.heartbeat_secs = pingantong::supervision::default_intervals()
        .into_keys()
        .map(|p| (p, secs))
        .collect();
    s.supervision.heartbeat_default_secs = secs;
    s.supervision.heartbeat_missed = missed;
    s.supervision.heartbeat_grace_secs = grace_secs;
    s.supervision.tick_ms = tick_ms;
}

pub struct TestApp {
    pub settings: Settings,
    pub mqtt: pingantong::dispatch::MqttEndpoint,
    /// The embedded broker's `mqtts` listener, if configured.
    pub mqtts: Option<std::net::SocketAddr>,
    pub native: std::net::SocketAddr,
    pub addrs: pingantong::app::ListenAddrs,
    pub db: Db,
    pub carers: Arc<CarerStats>,
    carer_task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn(backend: Backend, broker: Broker) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(backend, broker, dir.path());
        Self::spawn_with(settings, Some(dir)).await
    }

    pub async fn spawn_with(settings: Settings, dir: Option<tempfile::TempDir>) -> Self {
        Self::start(settings, dir, true).await
    }

    /// Start without waiting for the carer simulator (the broker may be down).
    pub async fn spawn_unwaited(settings: Settings, dir: Option<tempfile::TempDir>) -> Self {
        Self::start(settings, dir, false).await
    }

    /// Start with deadlines on `clock` (see [`ManualClock`]).
    pub async fn spawn_with_clock(
        settings: Settings,
        dir: Option<tempfile::TempDir>,
        clock: &ManualClock,
    ) -> Self {
        Self::start_clocked(settings, dir, true, Some(clock.as_clock())).await
    }

    async fn start(settings: Settings, dir: Option<tempfile::TempDir>, wait: bool) -> Self {
        Self::start_clocked(settings, dir, wait, None).await
    }

    async fn start_clocked(
        settings: Settings,
        dir: Option<tempfile::TempDir>,
        wait: bool,
        clock: Option<pingantong::incident::Clock>,
    ) -> Self {
        let mut app = Application::build(settings.clone())
            .await
            .expect("server builds");
        if let Some(c) = clock {
            app.set_clock(c);
        }
        let native = app.native_addr();
        let addrs = app.addrs();
        let db = app.db().clone();
        let mqtt = app.mqtt().clone();
        let mqtts = app.mqtts_addr();
        // The harness's MQTT clients (the carer simulator, probes) watch and
        // speak for everyone: a server's credential. Security tests use
        // devices' and carers' own (`MqttProbe::connect_as`).
        let monitor = app
            .mqtt_login(
                &pingantong::mqtt::acl::Principal::Server(unique("monitor")),
                "system:test",
            )
            .await
            .expect("monitor credential");
        if app.embedded_broker() {
            MONITORS.insert(mqtt.port, monitor.clone());
        }
        let carers = Arc::new(CarerStats::default());
        let carer_task = carer::spawn(
            &mqtt.host,
            mqtt.port,
            &settings.mqtt.topic_prefix,
            &unique("carer"),
            Arc::clone(&carers),
            None,
            Some(monitor),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let t = tokio::time::Instant::now();
        while wait && !carers.subscribed.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "carer simulator never subscribed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self {
            settings,
            mqtt,
            mqtts,
            native,
            addrs,
            db,
            carers,
            carer_task,
            shutdown,
            server,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(20)).await;
    }

    pub async fn stop_within(self, limit: Duration) {
        self.carer_task.abort();
        self.shutdown.cancel();
        tokio::time::timeout(limit, self.server)
            .await
            .unwrap_or_else(|_| panic!("server stops within {limit:?}"))
            .unwrap();
    }
}

/// A resident with a pendant, and two providers' carers at known distances.
#[derive(Clone)]
pub struct City {
    pub client_id: i64,
    pub device: String,
    pub secret: Vec<u8>,
    pub near_carer: i64,
    pub far_carer: i64,
    pub other_provider_carer: i64,
}

pub async fn seed_small_city(db: &Db) -> City {
    let client_id = db
        .insert_client(&NewClient {
            name: "陈秀英".into(),
            address: "广州市越秀区北京街 12号 301室".into(),
            district: "越秀区".into(),
            street: "北京街".into(),
            lat: Some(23.1291),
            lon: Some(113.2644),
            language: "yue".into(),
            medical_notes: "高血压；房颤".into(),
            medications: "华法林 3mg".into(),
            allergies: "青霉素".into(),
            key_safe: "4711".into(),
            birth_year: Some(1938),
            subsidy_category: Some("living_alone".into()),
        })
        .await
        .unwrap();
    let device = unique("PT").replace('_', "-");
    let secret = b"test secret for this pendant....".to_vec();
    db.upsert_device(&NewDevice {
        id: device.clone(),
        protocol: "native".into(),
        secret: secret.clone(),
        client_id: Some(client_id),
    })
    .await
    .unwrap();
    let contracted = db
        .insert_provider(&NewProvider {
            name: "越秀区颐康中心".into(),
            service_types: "home_visit".into(),
            capacity: 10,
            coverage: vec![("越秀区".into(), None)],
            rank: 0,
        })
        .await
        .unwrap();
    let other = db
        .insert_provider(&NewProvider {
            name: "应急援助队".into(),
            service_types: "emergency_response".into(),
            capacity: 10,
            coverage: vec![("越秀区".into(), None)],
            rank: 9,
        })
        .await
        .unwrap();
    let carer = |provider_id, lat, lon| NewCarer {
        provider_id,
        name: "carer".into(),
        phone: String::new(),
        lat,
        lon,
        on_duty: true,
    };
    let far_carer = db
        .insert_carer(&carer(contracted, 23.20, 113.30))
        .await
        .unwrap();
    let near_carer = db
        .insert_carer(&carer(contracted, 23.1300, 113.2650))
        .await
        .unwrap();
    // Nearest of all, but not of the contracted provider.
    let other_provider_carer = db
        .insert_carer(&carer(other, 23.1291, 113.2644))
        .await
        .unwrap();
    City {
        client_id,
        device,
        secret,
        near_carer,
        far_carer,
        other_provider_carer,
    }
}

pub fn event(device: &str, seq: u32, kind: EventKind) -> AlarmEvent {
    AlarmEvent {
        device: DeviceId::parse(device).unwrap(),
        seq,
        kind,
        device_time_ms: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        ),
        battery_pct: Some(77),
        location: Some(Location {
            lat: 23.1291,
            lon: 113.2644,
            accuracy_m: Some(15),
        }),
    }
}

pub fn frame(e: &AlarmEvent, secret: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    native::encode_event(e, secret, &mut b);
    b
}

/// A pendant's connection.
pub struct Device {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Device {
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Next reply, with whether its tag verified against `secret`; `None` once closed.
    pub async fn reply(&mut self, secret: &[u8]) -> Option<(Reply, bool)> {
        loop {
            if let Some(raw) = native::split_frame(&mut self.buf).unwrap() {
                return Some(Reply::parse(&raw, secret).unwrap());
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("a reply within 10 s");
            // A reset (the server closed with our bytes unread) is a close too.
            if n.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    pub async fn send(&mut self, e: &AlarmEvent, secret: &[u8]) -> (Reply, bool) {
        self.send_raw(&frame(e, secret)).await;
        self.reply(secret).await.expect("server answered")
    }
}

/// Poll `f` until it returns `Some`, for up to 10 s.
/// The newest incident's id, once there is one.
pub async fn newest_incident(db: &Db) -> i64 {
    eventually("the incident", || async {
        db.incidents_overview().await.unwrap().last().map(|i| i.0)
    })
    .await
}

pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_for(what, Duration::from_secs(10), f).await
}

/// Poll `f` until it returns `Some`, for up to `limit`.
pub async fn eventually_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The monitor credential of each embedded broker a test started, by port:
/// what `MqttProbe::connect` logs in with there.
static MONITORS: std::sync::LazyLock<dashmap::DashMap<u16, (String, String)>> =
    std::sync::LazyLock::new(dashmap::DashMap::new);

impl TestApp {
    /// The key the server derives MQTT passwords from (kept in its data directory).
    fn credential_key(&self) -> pingantong::mqtt::credential::CredentialKey {
        pingantong::mqtt::credential::CredentialKey::configured_or_kept(
            self.settings
                .mqtt
                .credential_key
                .as_ref()
                .map(|k| k.expose()),
            &self.settings.data_dir,
        )
        .expect("credential key")
    }

    /// Provision an MQTT device for the small city's resident; returns its id.
    pub async fn mqtt_device(&self, city: &City) -> String {
        let id = unique("GW").replace('_', "-");
        self.db
            .upsert_device(&pingantong::store::NewDevice {
                id: id.clone(),
                protocol: "mqtt".into(),
                secret: Vec::new(),
                client_id: Some(city.client_id),
            })
            .await
            .unwrap();
        id
    }

    /// Issue MQTT credentials for registered devices: device id → password.
    pub async fn device_passwords(
        &self,
        ids: &[String],
    ) -> std::collections::HashMap<String, String> {
        let key = self.credential_key();
        self.db
            .issue_device_credentials(ids, "system:test")
            .await
            .expect("device credentials")
            .into_iter()
            .map(|(id, g)| {
                let pass = key.password(&format!("devices/{id}"), g);
                (id, pass)
            })
            .collect()
    }

    /// Issue one principal's MQTT credential: (username, password).
    pub async fn mqtt_login(&self, p: &pingantong::mqtt::acl::Principal) -> (String, String) {
        let key = self.credential_key();
        let g = self
            .db
            .issue_mqtt_credential(p, "system:test")
            .await
            .expect("credential");
        let user = p.username().expect("a named principal");
        let pass = key.password(&user, g);
        (user, pass)
    }
}

/// An MQTT client for tests: everything it receives lands in `received`.
pub struct MqttProbe {
    pub client: rumqttc::AsyncClient,
    pub received: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    pub connected: Arc<std::sync::atomic::AtomicBool>,
    /// The broker's answers: `connack:<code>` for each CONNACK or refusal,
    /// `suback:ok` / `suback:refused` for each filter of each SUBACK.
    pub answers: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttProbe {
    /// Connect with a persistent session (clean session off) and subscribe to
    /// `filters` on every connect without a session.
    pub async fn connect(host: &str, port: u16, filters: &[String]) -> Self {
        let login = MONITORS.get(&port).map(|l| l.clone());
        Self::connect_as(host, port, filters, &unique("probe"), login).await
    }

    /// As `connect`, with this client id and these credentials (none: anonymous).
    pub async fn connect_as(
        host: &str,
        port: u16,
        filters: &[String],
        client_id: &str,
        login: Option<(String, String)>,
    ) -> Self {
        let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        if let Some((user, pass)) = login {
            opts.set_credentials(user, pass);
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (rx, up, c, subs, said) = (
            Arc::clone(&received),
            Arc::clone(&connected),
            client.clone(),
            filters.to_vec(),
            Arc::clone(&answers),
        );
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                        said.lock().unwrap().push(format!("connack:{:?}", ack.code));
                        if !ack.session_present {
                            for f in &subs {
                                let _ = c.subscribe(f.clone(), rumqttc::QoS::AtLeastOnce).await;
                            }
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) => {
                        for code in &ack.return_codes {
                            said.lock().unwrap().push(
                                match code {
                                    rumqttc::SubscribeReasonCode::Failure => "suback:refused",
                                    _ => "suback:ok",
                                }
                                .into(),
                            );
                        }
                        up.store(true, std::sync::atomic::Ordering::Release);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v =
                            serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                        rx.lock().unwrap().push((p.topic.clone(), v));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let rumqttc::ConnectionError::ConnectionRefused(code) = e {
                            said.lock().unwrap().push(format!("connack:{code:?}"));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                }
            }
        });
        let probe = Self {
            client,
            received,
            connected,
            answers,
            task,
        };
        if !filters.is_empty() {
            eventually("the probe subscribed", || async {
                probe
                    .connected
                    .load(std::sync::atomic::Ordering::Acquire)
                    .then_some(())
            })
            .await;
        }
        probe
    }

    pub async fn publish(&self, topic: &str, body: serde_json::Value) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
            .await
            .unwrap();
    }

    pub fn on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Drop for MqttProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Broker address of a test app's settings.
pub fn broker_of(app: &TestApp) -> (String, u16) {
    (app.mqtt.host.clone(), app.mqtt.port)
}

/// A plain HTTP/1.1 GET over loopback: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an HTTP answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A Mosquitto of the test's own on a free port, so it can be stopped and
/// started without touching the machine's broker.
pub struct OwnMosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnMosquitto {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// A broker that only lets `user` in with `password`.
    pub fn start_with_password(user: &str, password: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_with(port, Some((user, password)))
    }

    /// A broker that speaks only TLS, with a certificate for 127.0.0.1 signed by
    /// a throw-away CA. Returns the broker and the CA's PEM file.
    pub fn start_tls() -> (Self, std::path::PathBuf) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let certs = tempfile::tempdir().unwrap().keep();
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&certs)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(ok.success(), "openssl {args:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Ping An Tong test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            certs.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let tls = format!(
            "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nallow_anonymous true\n",
            certs.display()
        );
        (Self::start_with_config(port, tls), certs.join("ca.pem"))
    }

    /// A broker with the dynamic-security plugin, `admin` its administrator,
    /// as `ops/mosquitto.conf` sets one up: no anonymous clients, client ids
    /// replaced by usernames (no session takeover).
    pub fn start_dynsec(admin: &str, password: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir()
            .unwrap()
            .keep()
            .join("dynamic-security.json");
        let ok = std::process::Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&store)
            .args([admin, password])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mosquitto_ctrl is installed with mosquitto");
        assert!(ok.success(), "mosquitto_ctrl dynsec init");
        let plugin = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
            .iter()
            .map(|a| format!("/usr/lib/{a}/mosquitto_dynamic_security.so"))
            .find(|p| std::path::Path::new(p).exists())
            .expect("Mosquitto's dynamic-security plugin is installed with mosquitto");
        Self::start_with_config(
            port,
            format!(
                "allow_anonymous false\nuse_username_as_clientid true\n\
                 plugin {plugin}\nplugin_opt_config_file {}\n",
                store.display()
            ),
        )
    }

    fn start_with(port: u16, login: Option<(&str, &str)>) -> Self {
        let access = match login {
            None => "allow_anonymous true\n".to_owned(),
            Some((user, password)) => {
                let file = tempfile::tempdir().unwrap().keep().join("passwords");
                let ok = std::process::Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .status()
                    .expect("mosquitto_passwd is installed with mosquitto");
                assert!(ok.success());
                format!("allow_anonymous false\npassword_file {}\n", file.display())
            }
        };
        Self::start_with_config(port, access)
    }

    fn start_with_config(port: u16, access: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // Run as the user that owns the test's files (the keys, the
                // persistence file): a broker that drops to `mosquitto` cannot read them.
                "user {}\nlistener {port} 127.0.0.1\n{access}set_tcp_nodelay true\n\
                 persistence true\npersistence_location {}/\nlog_dest none\n",
                std::env::var("USER").unwrap_or_else(|_| "root".into()),
                dir.path().display()
            ),
        )
        .unwrap();
        let mut m = Self {
            port,
            dir,
            child: None,
        };
        m.run();
        m
    }

    fn run(&mut self) {
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto is installed (ops/services.sh installs it)");
        self.child = Some(child);
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stop as an operator would (SIGTERM: Mosquitto saves its sessions), then start again.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Stop as an operator would (SIGTERM: Mosquitto saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Start again after [`OwnMosquitto::stop`], on the same port and sessions.
    pub fn start_again(&mut self) {
        self.run();
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A clock the test moves by hand: deadlines fire when the test says so, not
/// after real minutes.
#[derive(Clone)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicI64>);

impl ManualClock {
    pub fn starting_now() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicI64::new(
            pingantong::store::now_ms(),
        )))
    }

    pub fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(d.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn as_clock(&self) -> pingantong::incident::Clock {
        let t = Arc::clone(&self.0);
        Arc::new(move || t.load(std::sync::atomic::Ordering::SeqCst))
    }
}

// Console accounts and the HTTP API.

pub const PASSWORD: &str = "correct horse battery";

pub async fn add_user(db: &Db, username: &str, role: Role) {
    let hash = hash_password(PASSWORD).unwrap();
    db.add_user(
        &NewUser {
            username,
            password_hash: &hash,
            role,
            carer_id: None,
            provider_id: None,
        },
        "test",
    )
    .await
    .unwrap();
}

/// A console account for a carer (role carer, naming the carer).
pub async fn add_carer_user(db: &Db, username: &str, carer_id: i64) {
    let hash = hash_password(PASSWORD).unwrap();
    db.add_user(
        &NewUser {
            username,
            password_hash: &hash,
            role: Role::Carer,
            carer_id: Some(carer_id),
            provider_id: None,
        },
        "test",
    )
    .await
    .unwrap();
}

/// The HTTP side of a test server.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn of(app: &TestApp) -> Self {
        Self {
            base: format!("http://{}", app.addrs.http),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Log in: (status, JSON body).
    pub async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/api/v1/session"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn token(&self, username: &str) -> String {
        let (status, body) = self.login(username, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// POST a JSON body with a token: (status, JSON body or null).
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn logout(&self, token: &str) -> StatusCode {
        self.http
            .delete(self.url("/api/v1/session"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }
}
