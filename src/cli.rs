//! The flags every command that touches a server's data shares: where the
//! settings file is and what to override in it. Used by `pingantong` and by
//! the demo's `seed`, so both read a deployment's settings the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::Settings;
use crate::store::Db;

/// Each flag overrides the setting of the same name in its section: the
/// flags given are one more layer over the file (`Settings::layered`),
/// serialised in the file's sections (`--database-url` is `[database] url`);
/// a flag left out is not in the layer.
#[derive(Args, Clone, serde::Serialize)]
pub struct ServerArgs {
    /// TOML settings file.
    #[arg(long, env = "PAT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[arg(long, env = "PAT_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "PAT_INSTANCE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Routing rules per event kind (see ops/rules.example.toml).
    #[arg(long, env = "PAT_RULES_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_file: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub devices: DeviceArgs,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `[database]`
#[derive(Args, Clone, serde::Serialize)]
pub struct DatabaseArgs {
    /// sqlite://path or postgres://user@host/db
    #[arg(id = "database_url", long = "database-url", env = "PAT_DATABASE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[arg(
        id = "database_schema",
        long = "database-schema",
        env = "PAT_DATABASE_SCHEMA"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// `[http]`
#[derive(Args, Clone, serde::Serialize)]
pub struct HttpArgs {
    /// Health, readiness, metrics and the console API.
    #[arg(id = "http_addr", long = "http-addr", env = "PAT_HTTP_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// HTTPS for the console and API: PEM certificate chain (with --tls-key).
    #[arg(long, env = "PAT_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "PAT_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// `[devices]`
#[derive(Args, Clone, serde::Serialize)]
pub struct DeviceArgs {
    #[arg(long, env = "PAT_NATIVE_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_GT06_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gt06_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_WATCH_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_addr: Option<SocketAddr>,
    /// TCP and UDP.
    #[arg(long, env = "PAT_H02_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h02_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_EVIEW_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eview_addr: Option<SocketAddr>,
    /// SIA DC-09 receiver, TCP and UDP.
    #[arg(long, env = "PAT_DC09_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dc09_addr: Option<SocketAddr>,
    /// SIA DC-09 over TLS (TCP), with --tls-cert and --tls-key.
    #[arg(long, env = "PAT_DC09_TLS_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dc09_tls_addr: Option<SocketAddr>,
}

/// `[mqtt]`
#[derive(Args, Clone, serde::Serialize)]
pub struct MqttArgs {
    /// External broker; without it an embedded broker is started.
    #[arg(id = "mqtt_url", long = "mqtt-url", env = "PAT_MQTT_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[arg(
        id = "mqtt_username",
        long = "mqtt-username",
        env = "PAT_MQTT_USERNAME"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Better given in the environment than on the command line.
    #[arg(
        id = "mqtt_password",
        long = "mqtt-password",
        env = "PAT_MQTT_PASSWORD",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM CA file for an mqtts:// broker.
    #[arg(id = "mqtt_ca_file", long = "mqtt-ca-file", env = "PAT_MQTT_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Servers with the same group split device traffic ($share/<group>/…).
    #[arg(
        id = "mqtt_share_group",
        long = "mqtt-share-group",
        env = "PAT_MQTT_SHARE_GROUP"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,
    #[arg(
        id = "embedded_mqtt_addr",
        long = "embedded-mqtt-addr",
        env = "PAT_EMBEDDED_MQTT_ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_addr: Option<SocketAddr>,
    /// Where the embedded broker also takes `mqtts` (needs --tls-cert and --tls-key).
    #[arg(
        id = "embedded_mqtts_addr",
        long = "embedded-mqtts-addr",
        env = "PAT_EMBEDDED_MQTTS_ADDR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_mqtts_addr: Option<SocketAddr>,
    /// Key every MQTT password is derived from (default: kept in data_dir/mqtt-credential.key).
    #[arg(
        id = "mqtt_credential_key",
        long = "mqtt-credential-key",
        env = "PAT_MQTT_CREDENTIAL_KEY",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_key: Option<String>,
}

/// `[notify]`
#[derive(Args, Clone, serde::Serialize)]
pub struct NotifyArgs {
    /// Mail server for family notices: smtp://host:port, smtps://user:pass@host.
    #[arg(long, env = "PAT_SMTP_URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// Signs webhook notices (X-PingAnTong-Signature).
    #[arg(long, env = "PAT_WEBHOOK_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// `[keys]`
#[derive(Args, Clone, serde::Serialize)]
pub struct KeyArgs {
    /// Signs the audit log's head (data_dir/audit-head.json).
    #[arg(long, env = "PAT_AUDIT_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_key: Option<String>,
    /// Wraps the keys that seal health data and positions (default: kept in data_dir/data.key).
    #[arg(long, env = "PAT_DATA_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
}

impl ServerArgs {
    /// Connect to the database these settings name (creating the data
    /// directory of a default SQLite database).
    pub async fn connect(&self) -> anyhow::Result<Db> {
        let s = self.settings()?;
        if s.database.url.is_none() {
            std::fs::create_dir_all(&s.data_dir)?;
        }
        let cfg = s.store_config(2).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Db::connect(&cfg).await?)
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        let s = Settings::layered(self.config.as_deref(), Some(self))?;
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    /// Flags are a layer over the file: what they give wins, what they leave
    /// out keeps the file's value, and a flag the file never mentions still
    /// applies (a secret among them).
    #[test]
    fn flags_lie_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pat.toml");
        std::fs::write(
            &path,
            "[devices]\nnative_addr = \"127.0.0.1:9000\"\ngt06_addr = \"127.0.0.1:9001\"\n\n\
             [database]\ncommit_batch_max = 64\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "pat",
            "--config",
            path.to_str().unwrap(),
            "--native-addr",
            "127.0.0.1:9100",
            "--mqtt-url",
            "mqtt://127.0.0.1:1883",
            "--mqtt-username",
            "servers/a",
            "--mqtt-password",
            "hunter2",
        ])
        .unwrap();
        let s = cli.server.settings().unwrap();
        assert_eq!(s.devices.native_addr.port(), 9100, "the flag wins");
        assert_eq!(
            s.devices.gt06_addr.port(),
            9001,
            "the file's where no flag is given"
        );
        assert_eq!(s.database.commit_batch_max, 64);
        assert_eq!(s.mqtt.url.as_deref(), Some("mqtt://127.0.0.1:1883"));
        assert_eq!(
            s.mqtt.password.as_ref().map(|p| p.expose()),
            Some("hunter2")
        );
        assert_eq!(
            s.devices.watch_addr,
            Settings::default().devices.watch_addr,
            "defaults below both"
        );

        // No file at all: defaults, then the flags.
        let cli = Cli::try_parse_from(["pat", "--data-dir", "/tmp/pat-x"]).unwrap();
        assert_eq!(
            cli.server.settings().unwrap().data_dir,
            PathBuf::from("/tmp/pat-x")
        );

        // A file that says something wrong is named in the error.
        std::fs::write(&path, "[devices]\nnativ_addr = \"127.0.0.1:9000\"\n").unwrap();
        let cli = Cli::try_parse_from(["pat", "--config", path.to_str().unwrap()]).unwrap();
        let err = cli.server.settings().unwrap_err().to_string();
        assert!(
            err.contains("nativ_addr") && err.contains("pat.toml"),
            "{err}"
        );
    }
}
