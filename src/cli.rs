//! The flags every command that touches a server's data shares: where the
//! settings file is and what to override in it. Used by `pingantong` and by
//! the demo's `seed`, so both read a deployment's settings the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::{Secret, Settings};
use crate::store::Db;

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// TOML settings file.
    #[arg(long, env = "PAT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "PAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://path or postgres://user@host/db
    #[arg(long, env = "PAT_DATABASE_URL")]
    pub database_url: Option<String>,
    #[arg(long, env = "PAT_DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
    #[arg(long, env = "PAT_NATIVE_ADDR")]
    pub native_addr: Option<SocketAddr>,
    /// Health, readiness, metrics and the console API.
    #[arg(long, env = "PAT_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_GT06_ADDR")]
    pub gt06_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_WATCH_ADDR")]
    pub watch_addr: Option<SocketAddr>,
    /// TCP and UDP.
    #[arg(long, env = "PAT_H02_ADDR")]
    pub h02_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_EVIEW_ADDR")]
    pub eview_addr: Option<SocketAddr>,
    /// SIA DC-09 receiver, TCP and UDP.
    #[arg(long, env = "PAT_DC09_ADDR")]
    pub dc09_addr: Option<SocketAddr>,
    /// SIA DC-09 over TLS (TCP), with --tls-cert and --tls-key.
    #[arg(long, env = "PAT_DC09_TLS_ADDR")]
    pub dc09_tls_addr: Option<SocketAddr>,
    /// External broker; without it an embedded broker is started.
    #[arg(long, env = "PAT_MQTT_URL")]
    pub mqtt_url: Option<String>,
    #[arg(long, env = "PAT_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// Better given in the environment than on the command line.
    #[arg(long, env = "PAT_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// PEM CA file for an mqtts:// broker.
    #[arg(long, env = "PAT_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Servers with the same group split device traffic ($share/<group>/…).
    #[arg(long, env = "PAT_MQTT_SHARE_GROUP")]
    pub mqtt_share_group: Option<String>,
    #[arg(long, env = "PAT_EMBEDDED_MQTT_ADDR")]
    pub embedded_mqtt_addr: Option<SocketAddr>,
    /// Where the embedded broker also takes `mqtts` (needs --tls-cert and --tls-key).
    #[arg(long, env = "PAT_EMBEDDED_MQTTS_ADDR")]
    pub embedded_mqtts_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Routing rules per event kind (see ops/rules.example.toml).
    #[arg(long, env = "PAT_RULES_FILE")]
    pub rules_file: Option<PathBuf>,
    /// Mail server for family notices: smtp://host:port, smtps://user:pass@host.
    #[arg(long, env = "PAT_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Signs webhook notices (X-PingAnTong-Signature).
    #[arg(long, env = "PAT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// HTTPS for the console and API: PEM certificate chain (with --tls-key).
    #[arg(long, env = "PAT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "PAT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Signs the audit log's head (data_dir/audit-head.json).
    #[arg(long, env = "PAT_AUDIT_KEY", hide_env_values = true)]
    pub audit_key: Option<String>,
    /// Key every MQTT password is derived from (default: kept in data_dir/mqtt-credential.key).
    #[arg(long, env = "PAT_MQTT_CREDENTIAL_KEY", hide_env_values = true)]
    pub mqtt_credential_key: Option<String>,
    /// Wraps the keys that seal health data and positions (default: kept in data_dir/data.key).
    #[arg(long, env = "PAT_DATA_KEY", hide_env_values = true)]
    pub data_key: Option<String>,
}

impl ServerArgs {
    /// Connect to the database these settings name (creating the data
    /// directory of a default SQLite database).
    pub async fn connect(&self) -> anyhow::Result<Db> {
        let s = self.settings()?;
        if s.database_url.is_none() {
            std::fs::create_dir_all(&s.data_dir)?;
        }
        let cfg = s.store_config(2).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Db::connect(&cfg).await?)
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut s = Settings::load(self.config.as_deref())?;
        if let Some(v) = &self.data_dir {
            s.data_dir = v.clone();
        }
        if let Some(v) = &self.database_url {
            s.database_url = Some(v.clone());
        }
        if let Some(v) = &self.database_schema {
            s.database_schema = Some(v.clone());
        }
        if let Some(v) = self.native_addr {
            s.native_addr = v;
        }
        for (flag, field) in [
            (self.http_addr, &mut s.http_addr),
            (self.gt06_addr, &mut s.gt06_addr),
            (self.watch_addr, &mut s.watch_addr),
            (self.h02_addr, &mut s.h02_addr),
            (self.eview_addr, &mut s.eview_addr),
            (self.dc09_addr, &mut s.dc09_addr),
        ] {
            if let Some(v) = flag {
                *field = v;
            }
        }
        if let Some(v) = &self.mqtt_url {
            s.mqtt_url = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_username {
            s.mqtt_username = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_password {
            s.mqtt_password = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.mqtt_ca_file {
            s.mqtt_ca_file = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_share_group {
            s.mqtt_share_group = Some(v.clone());
        }
        if let Some(v) = self.dc09_tls_addr {
            s.dc09_tls_addr = Some(v);
        }
        if let Some(v) = self.embedded_mqtts_addr {
            s.embedded_mqtts_addr = Some(v);
        }
        if let Some(v) = self.embedded_mqtt_addr {
            s.embedded_mqtt_addr = v;
        }
        if let Some(v) = &self.instance_id {
            s.instance_id = v.clone();
        }
        if let Some(v) = &self.rules_file {
            s.rules_file = Some(v.clone());
        }
        if let Some(v) = &self.smtp_url {
            s.smtp_url = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.webhook_secret {
            s.webhook_secret = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.tls_cert {
            s.tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            s.tls_key = Some(v.clone());
        }
        if let Some(v) = &self.audit_key {
            s.audit_key = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.mqtt_credential_key {
            s.mqtt_credential_key = Some(Secret::new(v.clone()));
        }
        if let Some(v) = &self.data_key {
            s.data_key = Some(Secret::new(v.clone()));
        }
        s.validate()?;
        Ok(s)
    }
}
