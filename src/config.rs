//! Settings in layers, each over the one before: defaults, a TOML file, then
//! what the command line says (its flags, or the `PAT_*` environment variables
//! standing in for them), merged by figment rather than copied field by field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::ConnectionLimits;
use crate::ingest::adapters::AdapterConfig;
pub use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<figment::Error>,
    },
    #[error("invalid setting {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// Every setting, in sections as the TOML file writes them (`[database]`,
/// `[devices]`, `[mqtt]`, …). Every field has a default: a file says only
/// what differs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the SQLite database and the kept keys live.
    pub data_dir: PathBuf,
    /// Names this server instance (MQTT client id); unique per instance.
    pub instance_id: String,
    /// Routing rules per event kind (see ops/rules.example.toml); unset: the built-in rules.
    pub rules_file: Option<PathBuf>,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub devices: DeviceSettings,
    pub mqtt: MqttSettings,
    pub stages: StageSettings,
    pub notify: NotifySettings,
    pub keys: KeySettings,
    pub retention: RetentionSettings,
    pub supervision: SupervisionSettings,
    /// Service-level targets the city's reports measure against.
    pub sla: crate::sla::SlaTargets,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path` or `postgres://…`; default: SQLite under `data_dir`.
    pub url: Option<String>,
    /// PostgreSQL schema to use (created if missing).
    pub schema: Option<String>,
    pub max_connections: u32,
    /// Largest number of events written in one commit.
    pub commit_batch_max: usize,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            schema: None,
            max_connections: 8,
            commit_batch_max: 512,
        }
    }
}

/// `[http]`: health, readiness, metrics, the console and its API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// HTTPS for the console and API: a PEM certificate chain and its private
    /// key (both or neither). Unset: plain HTTP, for loopback and demos.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long a console log-in lasts: one call-centre shift.
    pub session_ttl_secs: u64,
    /// A console session unused this long ends; an open console (its live
    /// feed) counts as use.
    pub session_idle_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: ([127, 0, 0, 1], 8080).into(),
            tls_cert: None,
            tls_key: None,
            session_ttl_secs: 12 * 3600,
            session_idle_secs: 30 * 60,
        }
    }
}

/// `[devices]`: where devices connect, and the limits their connections live under.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSettings {
    /// Native pendant protocol listener.
    pub native_addr: SocketAddr,
    /// GT06 (Concox/Jimi) listener, TCP.
    pub gt06_addr: SocketAddr,
    /// 3G/4G watch protocol listener, TCP.
    pub watch_addr: SocketAddr,
    /// H02 listener, TCP and UDP on the same port.
    pub h02_addr: SocketAddr,
    /// Eview (Minifinder2) listener, TCP.
    pub eview_addr: SocketAddr,
    /// SIA DC-09 receiver, TCP and UDP on the same port.
    pub dc09_addr: SocketAddr,
    /// SIA DC-09 over TLS (TCP), with the console's certificate
    /// (`http.tls_cert`, `http.tls_key`): for transmitters or tunnels
    /// (stunnel) that speak TLS; unset: none.
    pub dc09_tls_addr: Option<SocketAddr>,
    pub max_connections: usize,
    /// Worker threads of the runtime that serves device connections, apart
    /// from the store writer, the incident stage, the feed and the API; 0: one
    /// runtime for everything. Default: one per CPU.
    pub threads: usize,
    pub idle_timeout_secs: u64,
    pub frame_timeout_secs: u64,
    pub clock_window_secs: u64,
    /// The TCP listeners sit behind a load balancer that sends the PROXY
    /// protocol (HAProxy's `send-proxy-v2`): every connection must start
    /// with its header, which names the device's address. Keep the
    /// listeners reachable from the balancer only.
    pub proxy_protocol: bool,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        let limits = ConnectionLimits::default();
        Self {
            native_addr: ([127, 0, 0, 1], 7700).into(),
            gt06_addr: ([127, 0, 0, 1], 5023).into(),
            watch_addr: ([127, 0, 0, 1], 5093).into(),
            h02_addr: ([127, 0, 0, 1], 5013).into(),
            eview_addr: ([127, 0, 0, 1], 5250).into(),
            dc09_addr: ([127, 0, 0, 1], 5070).into(),
            dc09_tls_addr: None,
            max_connections: limits.max_connections,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            frame_timeout_secs: limits.frame_timeout.as_secs(),
            clock_window_secs: limits.clock_window.as_secs(),
            proxy_protocol: false,
        }
    }
}

/// `[mqtt]`: the broker devices, carers and servers meet on.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// External broker (`mqtt://host:port`); unset: start the embedded broker.
    pub url: Option<String>,
    /// Where the embedded broker listens (1883 is left to a system broker).
    pub embedded_addr: SocketAddr,
    /// Where the embedded broker also listens over TLS (`mqtts`), with the
    /// console's certificate (`http.tls_cert`, `http.tls_key`); unset: no `mqtts`.
    pub embedded_mqtts_addr: Option<SocketAddr>,
    /// First topic level of everything the server publishes.
    pub topic_prefix: String,
    /// Servers with the same group split device traffic (`$share/<group>/…`).
    pub share_group: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Let MQTT clients without credentials raise events under
    /// `<prefix>/v1/quarantine/<client id>/events` (stored unverified; an SOS
    /// still reaches an operator). Embedded broker; for Mosquitto see `ops/mosquitto.conf`.
    pub quarantine: bool,
    /// Every MQTT password is derived from it (HMAC). Unset: a key made on
    /// first start and kept in `data_dir/mqtt-credential.key`. Servers sharing
    /// a broker must share it.
    pub credential_key: Option<Secret>,
    /// Keep the external broker's (Mosquitto's) dynamic-security clients and
    /// roles in step with the registry's credentials; the server's account
    /// (`username`) must be the plugin's admin (`ops/mosquitto.conf`).
    pub dynsec: bool,
    /// PEM file of the authorities that sign the broker's certificate; required with `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Zigbee2MQTT / Tasmota / Shelly buttons and the devices they are provisioned as.
    pub adapters: Vec<AdapterConfig>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            url: None,
            embedded_addr: ([127, 0, 0, 1], 11883).into(),
            embedded_mqtts_addr: None,
            topic_prefix: "pingantong".into(),
            share_group: None,
            username: None,
            password: None,
            quarantine: true,
            credential_key: None,
            dynsec: false,
            ca_file: None,
            adapters: Vec::new(),
        }
    }
}

/// `[stages]`: how the stages after the commit keep time.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageSettings {
    /// How often the device directory picks up registry changes.
    pub cache_refresh_ms: u64,
    /// How often work a stage missed (a crash, the database away) is looked for.
    pub recovery_sweep_ms: u64,
    /// An incident no operator claimed in this time alerts the supervisors.
    pub claim_alert_secs: u64,
    /// …and the alert repeats this often while it stays unclaimed.
    pub claim_reminder_secs: u64,
    /// An offer no carer accepted in this time goes to the next carer.
    pub offer_timeout_secs: u64,
    /// A server that has not renewed its lease for this long is taken for
    /// gone by the others, which take up its share of the work.
    pub server_lease_ms: u64,
}

impl Default for StageSettings {
    fn default() -> Self {
        Self {
            cache_refresh_ms: 2_000,
            recovery_sweep_ms: 2_000,
            claim_alert_secs: 60,
            claim_reminder_secs: 60,
            offer_timeout_secs: 90,
            server_lease_ms: 10_000,
        }
    }
}

/// `[notify]`: family notices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// `until_reached` (in order, until one contact is reached) or `everyone`.
    pub cascade: crate::store::Cascade,
    /// Attempts per contact before the next contact is tried and the supervisors told.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time up to `retry_max_secs`.
    pub retry_secs: u64,
    pub retry_max_secs: u64,
    /// Signs webhook notices (`X-PingAnTong-Signature: sha256=…`).
    pub webhook_secret: Option<Secret>,
    /// `smtp://host:port`, `smtp://host:587?tls=required` or `smtps://user:pass@host`; unset: no e-mail.
    pub smtp_url: Option<Secret>,
    pub mail_from: String,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            cascade: crate::store::Cascade::UntilReached,
            max_attempts: 5,
            retry_secs: 5,
            retry_max_secs: 300,
            webhook_secret: None,
            smtp_url: None,
            mail_from: "Ping An Tong <alarms@pingantong.invalid>".into(),
        }
    }
}

/// `[keys]`: what signs and seals the server's records.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Signs the audit log's head written to `data_dir/audit-head.json`
    /// (HMAC-SHA256), so `audit verify` can tell a removed newest entry.
    pub audit_key: Option<Secret>,
    /// Wraps the keys that seal residents' health data, positions and frames
    /// in the database (README, "Encryption at rest"): 64 hex digits, or any
    /// text of 32 characters or more. Unset: a key made on first start and
    /// kept in `data_dir/data.key`. Every server of one database needs the same.
    pub data_key: Option<Secret>,
}

/// `[retention]`: how long personal records are kept (README, "Retention").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a frame is kept as received (the event stays, its bytes go);
    /// 0 keeps them for ever.
    pub frames_days: u32,
    /// Days the positions devices report are kept (alarms and last reports).
    pub positions_days: u32,
    /// Days after it closed that an incident keeps its timeline, hand-offs
    /// and notices (its figures stay for the city's reports).
    pub closed_incidents_days: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            frames_days: 180,
            positions_days: 180,
            closed_incidents_days: 1825,
        }
    }
}

/// `[supervision]`: when a silent device is taken for offline.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionSettings {
    /// Expected seconds between two reports of a device, per protocol (a
    /// device's own `heartbeat_secs` overrides it).
    pub heartbeat_secs: std::collections::BTreeMap<String, u64>,
    /// For protocols not in `heartbeat_secs`.
    pub heartbeat_default_secs: u64,
    /// A device is offline after this many missed reports…
    pub heartbeat_missed: u32,
    /// …plus this many seconds.
    pub heartbeat_grace_secs: u64,
    /// How often the deadlines are checked.
    pub tick_ms: u64,
    /// A device that sends periodic tests and then misses one by this many
    /// hours raises "missed test"; 0 turns it off.
    pub periodic_test_hours: u64,
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        Self {
            heartbeat_secs: crate::supervision::default_intervals(),
            heartbeat_default_secs: 300,
            heartbeat_missed: 2,
            heartbeat_grace_secs: 30,
            tick_ms: 1_000,
            periodic_test_hours: 25,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            instance_id: "pingantong-1".into(),
            rules_file: None,
            database: DatabaseSettings::default(),
            http: HttpSettings::default(),
            devices: DeviceSettings::default(),
            mqtt: MqttSettings::default(),
            stages: StageSettings::default(),
            notify: NotifySettings::default(),
            keys: KeySettings::default(),
            retention: RetentionSettings::default(),
            supervision: SupervisionSettings::default(),
            sla: crate::sla::SlaTargets::default(),
        }
    }
}

impl Settings {
    /// Defaults overlaid with the file, if any.
    /// Defaults, then the TOML file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::layered(file, None::<&()>)
    }

    /// Defaults, then the TOML file, then `overrides`: any value that
    /// serialises as a table of settings' names (a field left out, as a
    /// `None` flag is, keeps what the layers below said).
    pub fn layered(
        file: Option<&Path>,
        overrides: Option<&impl serde::Serialize>,
    ) -> Result<Self, ConfigError> {
        use figment::Figment;
        use figment::providers::{Format, Serialized, Toml};
        // Every field has its default (`#[serde(default)]`): the layers
        // only say what differs.
        let mut layers = Figment::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            layers = layers.merge(Toml::string(&text));
        }
        if let Some(o) = overrides {
            layers = layers.merge(Serialized::defaults(o));
        }
        layers.extract().map_err(|source| ConfigError::Parse {
            path: file.map_or_else(|| PathBuf::from("(command line)"), Path::to_owned),
            source: Box::new(source),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, why: &str| {
            Err(ConfigError::Invalid {
                field,
                why: why.to_owned(),
            })
        };
        if self.devices.max_connections == 0 {
            return invalid("devices.max_connections", "must be at least 1");
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return invalid(
                "http.tls_cert/http.tls_key",
                "give both the certificate and its key, or neither",
            );
        }
        if self.devices.threads > 1_024 {
            return invalid("devices.threads", "must be at most 1024");
        }
        if self.database.commit_batch_max == 0 || self.database.commit_batch_max > 2_000 {
            return invalid("database.commit_batch_max", "must be between 1 and 2000");
        }
        if self.stages.claim_alert_secs == 0
            || self.stages.claim_reminder_secs == 0
            || self.stages.offer_timeout_secs == 0
        {
            return invalid(
                "stages.claim_alert_secs/claim_reminder_secs/offer_timeout_secs",
                "must be at least 1",
            );
        }
        if !(1_000..=600_000).contains(&self.stages.server_lease_ms) {
            return invalid("stages.server_lease_ms", "must be between 1000 and 600000");
        }
        if self.instance_id.is_empty()
            || !self
                .instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return invalid(
                "instance_id",
                "must be letters, digits, '-', '_' or '.', and unique per server",
            );
        }
        if self.notify.max_attempts == 0
            || self.notify.retry_secs == 0
            || self.notify.retry_max_secs < self.notify.retry_secs
        {
            return invalid(
                "notify.max_attempts/retry_secs/retry_max_secs",
                "at least one attempt, a retry of at least 1 s, and a cap not below it",
            );
        }
        if self.supervision.heartbeat_default_secs == 0
            || self.supervision.heartbeat_missed == 0
            || self.supervision.tick_ms == 0
            || self.supervision.heartbeat_secs.values().any(|s| *s == 0)
        {
            return invalid(
                "supervision.heartbeat_secs/heartbeat_default_secs/heartbeat_missed/tick_ms",
                "must be at least 1",
            );
        }
        if self
            .notify
            .mail_from
            .parse::<lettre::message::Mailbox>()
            .is_err()
        {
            return invalid(
                "notify.mail_from",
                "must be an address like Name <user@host>",
            );
        }
        if let Some(url) = &self.notify.smtp_url
            && !(url.expose().starts_with("smtp://") || url.expose().starts_with("smtps://"))
        {
            return invalid("notify.smtp_url", "must start with smtp:// or smtps://");
        }
        if self.http.session_ttl_secs == 0 || self.http.session_ttl_secs > 7 * 24 * 3600 {
            return invalid(
                "http.session_ttl_secs",
                "must be between 1 and 604800 (a week)",
            );
        }
        if self.http.session_idle_secs == 0
            || self.http.session_idle_secs > self.http.session_ttl_secs
        {
            return invalid(
                "http.session_idle_secs",
                "must be between 1 and http.session_ttl_secs",
            );
        }
        if let Err(why) = self.sla.check() {
            return invalid("sla", &why);
        }
        if self.devices.idle_timeout_secs == 0 || self.devices.frame_timeout_secs == 0 {
            return invalid(
                "devices.idle_timeout_secs/frame_timeout_secs",
                "must be at least 1",
            );
        }
        if self.mqtt.topic_prefix.is_empty()
            || self.mqtt.topic_prefix.contains(['+', '#'])
            || self.mqtt.topic_prefix.ends_with('/')
        {
            return invalid(
                "mqtt.topic_prefix",
                "must be non-empty, without + # or a trailing /",
            );
        }
        if let Some(g) = &self.mqtt.share_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return invalid("mqtt.share_group", "must be non-empty, without / + #");
        }
        for a in &self.mqtt.adapters {
            if a.source.is_empty() || a.source.contains(['/', '+', '#']) {
                return invalid("mqtt.adapters.source", "must be non-empty, without / + #");
            }
            if pingantong_protocol::DeviceId::parse(&a.device).is_err() {
                return invalid("mqtt.adapters.device", "must be a valid device id");
            }
        }
        if self.mqtt.embedded_mqtts_addr.is_some() && self.http.tls_cert.is_none() {
            return invalid(
                "mqtt.embedded_mqtts_addr",
                "mqtts needs the certificate and key (http.tls_cert, http.tls_key)",
            );
        }
        if self.devices.dc09_tls_addr.is_some() && self.http.tls_cert.is_none() {
            return invalid(
                "devices.dc09_tls_addr",
                "DC-09 over TLS needs the certificate and key (http.tls_cert, http.tls_key)",
            );
        }
        if self.mqtt.dynsec && (self.mqtt.url.is_none() || self.mqtt.username.is_none()) {
            return invalid(
                "mqtt.dynsec",
                "needs mqtt.url (an external Mosquitto) and the admin's mqtt.username/mqtt.password",
            );
        }
        if self.mqtt.username.is_some() != self.mqtt.password.is_some() {
            return invalid("mqtt.username/mqtt.password", "set both or neither");
        }
        if let Some(url) = &self.mqtt.url {
            let endpoint =
                crate::dispatch::MqttEndpoint::parse(url).map_err(|why| ConfigError::Invalid {
                    field: "mqtt.url",
                    why,
                })?;
            if endpoint.tls && self.mqtt.ca_file.is_none() {
                return invalid(
                    "mqtt.ca_file",
                    "mqtts:// needs the CA that signs the broker's certificate \
                     (e.g. /etc/ssl/certs/ca-certificates.crt)",
                );
            }
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:") || url.starts_with("postgres"))
        {
            return invalid("database.url", "must start with sqlite: or postgres://");
        }
        Ok(())
    }

    pub fn retention_policy(&self) -> crate::store::RetentionPolicy {
        crate::store::RetentionPolicy {
            frames_days: self.retention.frames_days,
            positions_days: self.retention.positions_days,
            closed_incidents_days: self.retention.closed_incidents_days,
        }
    }

    /// How to open the store these settings name: its URL, schema and the
    /// master key of its data keys (configured, or kept in `data_dir`).
    pub fn store_config(
        &self,
        max_connections: u32,
    ) -> Result<crate::store::StoreConfig, Box<dyn std::error::Error + Send + Sync>> {
        let master = crate::vault::MasterKey::configured_or_kept(
            self.keys.data_key.as_ref(),
            &self.data_dir,
        )
        .map_err(|e| format!("data_key: {e}"))?;
        Ok(crate::store::StoreConfig {
            url: self.database_url(),
            schema: self.database.schema.clone(),
            max_connections,
            master_key: std::sync::Arc::new(master),
        })
    }

    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.data_dir.join("pingantong.db").display())
        })
    }

    /// Every listener (devices, HTTP, embedded broker) on a free loopback port:
    /// for the demo and tests, which must not collide with a running server.
    pub fn on_free_loopback_ports(self) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut s = self;
        s.http.addr = any;
        s.mqtt.embedded_addr = any;
        let d = &mut s.devices;
        for addr in [
            &mut d.native_addr,
            &mut d.gt06_addr,
            &mut d.watch_addr,
            &mut d.h02_addr,
            &mut d.eview_addr,
            &mut d.dc09_addr,
        ] {
            *addr = any;
        }
        s
    }

    pub fn escalation(&self) -> crate::incident::Escalation {
        crate::incident::Escalation {
            claim_after_ms: self.stages.claim_alert_secs as i64 * 1000,
            offer_after_ms: self.stages.offer_timeout_secs as i64 * 1000,
            remind_every_ms: self.stages.claim_reminder_secs as i64 * 1000,
        }
    }

    pub fn retry_policy(&self) -> crate::notify::RetryPolicy {
        crate::notify::RetryPolicy {
            max_attempts: i64::from(self.notify.max_attempts),
            first_delay_ms: self.notify.retry_secs as i64 * 1000,
            max_delay_ms: self.notify.retry_max_secs as i64 * 1000,
            ..Default::default()
        }
    }

    pub fn heartbeats(&self) -> crate::supervision::Heartbeats {
        let mut per_protocol = crate::supervision::default_intervals();
        per_protocol.extend(self.supervision.heartbeat_secs.clone());
        crate::supervision::Heartbeats {
            per_protocol,
            default_secs: self.supervision.heartbeat_default_secs,
            missed: self.supervision.heartbeat_missed,
            grace_secs: self.supervision.heartbeat_grace_secs,
            periodic_test_hours: self.supervision.periodic_test_hours,
        }
    }

    pub fn auth(&self) -> crate::api::AuthConfig {
        crate::api::AuthConfig {
            session_ttl: Duration::from_secs(self.http.session_ttl_secs),
            session_idle: Duration::from_secs(self.http.session_idle_secs),
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.devices.max_connections,
            idle_timeout: Duration::from_secs(self.devices.idle_timeout_secs),
            frame_timeout: Duration::from_secs(self.devices.frame_timeout_secs),
            clock_window: Duration::from_secs(self.devices.clock_window_secs),
            proxy_header: self.devices.proxy_protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat.toml");
        std::fs::write(
            &path,
            "[devices]\nnative_addr = \"127.0.0.1:9000\"\n\n[database]\ncommit_batch_max = 64\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.devices.native_addr.port(), 9000);
        assert_eq!(s.database.commit_batch_max, 64);
        assert_eq!(s.mqtt.topic_prefix, "pingantong");

        std::fs::write(&path, "[devices]\nnativ_addr = \"127.0.0.1:9000\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("nativ_addr"), "{err}");
    }

    #[test]
    fn sla_targets_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat.toml");
        std::fs::write(&path, "[sla]\nanswer_secs = 30\nattend_pct = 95.0\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.sla.answer_secs, 30);
        assert_eq!(s.sla.attend_pct, 95.0);
        assert_eq!(s.sla.answer_max_secs, 180, "the rest keep their defaults");
        assert!(s.validate().is_ok());
        std::fs::write(&path, "[sla]\nanswer_secs = 300\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("sla"));
        std::fs::write(&path, "[sla]\nanswer_sec = 30\n").unwrap();
        assert!(
            Settings::load(Some(&path)).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn adapter_table_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat.toml");
        std::fs::write(
            &path,
            "[[mqtt.adapters]]\nkind = \"zigbee2mqtt\"\nsource = \"hall_sos\"\ndevice = \"Z2M-1\"\n\n\
             [[mqtt.adapters]]\nkind = \"tasmota\"\nsource = \"t/x\"\ndevice = \"T-1\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.mqtt.adapters.len(), 2);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("mqtt.adapters.source")
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = Settings::default();
        s.mqtt.url = Some("http://x".into());
        assert!(s.validate().unwrap_err().to_string().contains("mqtt.url"));
        let mut s = Settings::default();
        s.database.commit_batch_max = 0;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("database.commit_batch_max")
        );
        assert!(Settings::default().validate().is_ok());
        let mut s = Settings::default();
        s.mqtt.password = Some(Secret::new("hunter2"));
        assert!(
            !format!("{s:?}").contains("hunter2"),
            "secrets are never printed"
        );
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("mqtt.username")
        );
    }
}
