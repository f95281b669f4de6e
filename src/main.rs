//! The `pingantong` command: serve, demo, seed, audit, user, report.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pingantong::api::auth::hash_password;
use pingantong::demo::{self, DemoOptions, seed};
use pingantong::domain::Role;
use pingantong::sla::{self, Format, Grouping, Month, output};
use pingantong::store::{Db, NewUser};
use pingantong::{Application, Settings};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Ping An Tong (平安通): emergency alarm server for elderly people living alone"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (config file, then PAT_* environment, then flags).
    Serve(ServerArgs),
    /// Run the whole path on embedded defaults with a simulated city, then summarise.
    Demo {
        /// Seconds of simulated traffic.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        #[arg(long, default_value_t = 300)]
        clients: usize,
        /// Presses per second across the fleet.
        #[arg(long, default_value_t = 2.0)]
        alarm_rate: f64,
        #[arg(long, default_value_t = 10.0)]
        heartbeat_secs: f64,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Keep the database in this directory instead of a temporary one.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Provision a demo city (clients, pendants, providers, carers) for pendant-sim.
    Seed {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, env = "PAT_SECRET_SEED", default_value = "demo")]
        secret_seed: String,
        /// What the pendants speak: native, gt06, watch, h02, eview, dc09, mqtt, or a mix
        /// shared out by pendant number, e.g. `native:3,gt06:1,mqtt:1` (as `pendant-sim
        /// --protocol` takes it).
        #[arg(long, default_value = "native")]
        protocol: String,
        /// Pendants numbered from N on are native whatever --protocol says (for console-probe
        /// beside a mixed fleet).
        #[arg(long, value_name = "N")]
        native_from: Option<usize>,
    },
    /// Check the routing rules (built-in, or the rules file) and print them.
    Rules {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Operator console accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// MQTT credentials of devices, carers' phones and servers.
    #[command(subcommand)]
    MqttCredential(MqttCredentialCommand),
    /// The keys that seal health data, positions and frames in the database.
    #[command(subcommand)]
    DataKey(DataKeyCommand),
    /// The city's monthly service report (China Standard Time months), or its breach list.
    Report {
        #[command(flatten)]
        server: ServerArgs,
        /// YYYY-MM.
        #[arg(long)]
        month: String,
        #[arg(long, default_value = "json", value_parser = ["json", "csv"])]
        format: String,
        /// How the rows are cut.
        #[arg(long, default_value = "provider",
              value_parser = ["provider", "district", "street", "category"])]
        by: String,
        /// Every incident over a limit instead of the figures (`--by` does not apply).
        #[arg(long)]
        breaches: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every entry's hash and link, first to last; exit 1 at the first break.
    Verify(ServerArgs),
}

#[derive(Subcommand)]
enum DataKeyCommand {
    /// The data keys (never the keys themselves): which master key wraps
    /// each, and whether every value is sealed under the newest.
    List(ServerArgs),
    /// Make a new data key current: running servers seal with it within a
    /// minute and re-seal every stored value under it, then delete the old keys.
    Rotate {
        #[command(flatten)]
        server: ServerArgs,
        /// No server is running on this database: the key is current at once
        /// and every value is re-sealed by this command.
        #[arg(long)]
        offline: bool,
    },
    /// Wrap every data key with a new master key (from PAT_NEW_DATA_KEY or
    /// the first line of standard input). No stored value changes; give the
    /// servers the new key (`data_key`) before they next start.
    Rewrap(ServerArgs),
}

#[derive(Subcommand)]
enum MqttCredentialCommand {
    /// Issue a credential, or rotate it (the old password stops working), and
    /// print its password: the only time it is shown.
    Issue {
        #[command(flatten)]
        server: ServerArgs,
        /// `devices/<device id>`, `carers/<carer id>` or `servers/<name>`.
        #[arg(long)]
        username: String,
    },
    /// Revoke a credential: it cannot connect again.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        username: String,
    },
    /// Every credential issued (never a password).
    List(ServerArgs),
    /// Push every credential to the external broker again (`mqtt_dynsec`):
    /// after its store was lost or replaced.
    Resync(ServerArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password comes from PAT_NEW_PASSWORD or standard
    /// input (one line), never from a flag: flags show in `ps`.
    Add {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
            Role::ALL.map(|r| r.as_str())
        ))]
        role: String,
        /// The carer this account is (required with --role carer).
        #[arg(long)]
        carer_id: Option<i64>,
        /// The provider whose staff this account belongs to (a carer's by default).
        #[arg(long)]
        provider_id: Option<i64>,
    },
    /// Every account: name, role, state, open sessions.
    List(ServerArgs),
    /// Disable an account: its sessions and live feeds stop at once.
    Disable {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        username: String,
    },
    /// Enable a disabled account again.
    Enable {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        username: String,
    },
    /// Lift a log-in lock (after too many failed log-ins) before its time.
    Unlock {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        username: String,
    },
    /// Give an account a new password (from PAT_NEW_PASSWORD or standard
    /// input); its open sessions end.
    ResetPassword {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        username: String,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// TOML settings file.
    #[arg(long, env = "PAT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "PAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://path or postgres://user@host/db
    #[arg(long, env = "PAT_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "PAT_DATABASE_SCHEMA")]
    database_schema: Option<String>,
    #[arg(long, env = "PAT_NATIVE_ADDR")]
    native_addr: Option<SocketAddr>,
    /// Health, readiness, metrics and the console API.
    #[arg(long, env = "PAT_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_GT06_ADDR")]
    gt06_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_WATCH_ADDR")]
    watch_addr: Option<SocketAddr>,
    /// TCP and UDP.
    #[arg(long, env = "PAT_H02_ADDR")]
    h02_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_EVIEW_ADDR")]
    eview_addr: Option<SocketAddr>,
    /// SIA DC-09 receiver, TCP and UDP.
    #[arg(long, env = "PAT_DC09_ADDR")]
    dc09_addr: Option<SocketAddr>,
    /// SIA DC-09 over TLS (TCP), with --tls-cert and --tls-key.
    #[arg(long, env = "PAT_DC09_TLS_ADDR")]
    dc09_tls_addr: Option<SocketAddr>,
    /// External broker; without it an embedded broker is started.
    #[arg(long, env = "PAT_MQTT_URL")]
    mqtt_url: Option<String>,
    #[arg(long, env = "PAT_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// Better given in the environment than on the command line.
    #[arg(long, env = "PAT_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// PEM CA file for an mqtts:// broker.
    #[arg(long, env = "PAT_MQTT_CA_FILE")]
    mqtt_ca_file: Option<PathBuf>,
    /// Servers with the same group split device traffic ($share/<group>/…).
    #[arg(long, env = "PAT_MQTT_SHARE_GROUP")]
    mqtt_share_group: Option<String>,
    #[arg(long, env = "PAT_EMBEDDED_MQTT_ADDR")]
    embedded_mqtt_addr: Option<SocketAddr>,
    /// Where the embedded broker also takes `mqtts` (needs --tls-cert and --tls-key).
    #[arg(long, env = "PAT_EMBEDDED_MQTTS_ADDR")]
    embedded_mqtts_addr: Option<SocketAddr>,
    #[arg(long, env = "PAT_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Routing rules per event kind (see ops/rules.example.toml).
    #[arg(long, env = "PAT_RULES_FILE")]
    rules_file: Option<PathBuf>,
    /// Mail server for family notices: smtp://host:port, smtps://user:pass@host.
    #[arg(long, env = "PAT_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// Signs webhook notices (X-PingAnTong-Signature).
    #[arg(long, env = "PAT_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// HTTPS for the console and API: PEM certificate chain (with --tls-key).
    #[arg(long, env = "PAT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "PAT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Signs the audit log's head (data_dir/audit-head.json).
    #[arg(long, env = "PAT_AUDIT_KEY", hide_env_values = true)]
    audit_key: Option<String>,
    /// Key every MQTT password is derived from (default: kept in data_dir/mqtt-credential.key).
    #[arg(long, env = "PAT_MQTT_CREDENTIAL_KEY", hide_env_values = true)]
    mqtt_credential_key: Option<String>,
    /// Wraps the keys that seal health data and positions (default: kept in data_dir/data.key).
    #[arg(long, env = "PAT_DATA_KEY", hide_env_values = true)]
    data_key: Option<String>,
}

impl ServerArgs {
    /// Connect to the database these settings name (creating the data
    /// directory of a default SQLite database).
    async fn connect(&self) -> anyhow::Result<Db> {
        let s = self.settings()?;
        if s.database_url.is_none() {
            std::fs::create_dir_all(&s.data_dir)?;
        }
        let cfg = s.store_config(2).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Db::connect(&cfg).await?)
    }

    fn settings(&self) -> anyhow::Result<Settings> {
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
            s.mqtt_password = Some(pingantong::config::Secret::new(v.clone()));
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
            s.smtp_url = Some(pingantong::config::Secret::new(v.clone()));
        }
        if let Some(v) = &self.webhook_secret {
            s.webhook_secret = Some(pingantong::config::Secret::new(v.clone()));
        }
        if let Some(v) = &self.tls_cert {
            s.tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            s.tls_key = Some(v.clone());
        }
        if let Some(v) = &self.audit_key {
            s.audit_key = Some(pingantong::config::Secret::new(v.clone()));
        }
        if let Some(v) = &self.mqtt_credential_key {
            s.mqtt_credential_key = Some(pingantong::config::Secret::new(v.clone()));
        }
        if let Some(v) = &self.data_key {
            s.data_key = Some(pingantong::config::Secret::new(v.clone()));
        }
        s.validate()?;
        Ok(s)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Demo { .. });
    // The embedded broker logs every client disconnect as an error; RUST_LOG
    // brings it back when the broker itself is being looked at.
    pingantong::telemetry::init(if quiet {
        "warn,rumqttd=off"
    } else {
        "info,rumqttd=off,sqlx=warn"
    });
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            // Before anything opens a file: every device connection is one.
            let open_files = pingantong::open_files::raise();
            let max_connections = settings.max_connections;
            let app = Application::build(settings).await?;
            // Now that the metrics recorder is installed.
            pingantong::open_files::report(open_files, max_connections);
            let a = app.addrs();
            println!(
                "pingantong serving: native={} gt06={} watch={} h02={} (tcp+udp) eview={} dc09={} (tcp+udp) http={} mqtt={}{} database={}",
                a.native,
                a.gt06,
                a.watch,
                a.h02,
                a.eview,
                a.dc09,
                a.http,
                app.mqtt().url(),
                if app.embedded_broker() {
                    " (embedded)"
                } else {
                    ""
                },
                app.db().backend()
            );
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                stop.cancel();
            });
            app.run_until_stopped(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            duration,
            clients,
            alarm_rate,
            heartbeat_secs,
            json,
            data_dir,
        } => {
            anyhow::ensure!(clients > 0, "--clients must be at least 1");
            anyhow::ensure!(
                duration > 0.0 && heartbeat_secs > 0.0,
                "--duration and --heartbeat-secs must be positive"
            );
            let summary = demo::run(DemoOptions {
                duration: Duration::from_secs_f64(duration),
                clients,
                alarm_rate,
                heartbeat: Duration::from_secs_f64(heartbeat_secs),
                json,
                data_dir,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                demo::print(&summary);
            }
            anyhow::ensure!(
                summary.alarms_lost == 0,
                "{} alarms lost",
                summary.alarms_lost
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed {
            server,
            clients,
            secret_seed,
            protocol,
            native_from,
        } => {
            let mix = pingantong_sim::speaker::Mix::parse(&protocol)
                .map_err(|e| anyhow::anyhow!("--protocol: {e}"))?;
            let db = server.connect().await?;
            let city = seed::seed_city(
                &db,
                &seed::CitySpec {
                    clients,
                    carers_per_provider: 8,
                    secret_seed,
                    protocol: mix.clone(),
                    native_from,
                },
            )
            .await?;
            // A bulk load: the server must not plan its first alarms blind.
            db.refresh_statistics().await?;
            if !city.mqtt_credentials.is_empty() {
                // For pendant-sim --mqtt-credentials: readable by this user only.
                let settings = server.settings()?;
                let key = pingantong::mqtt::credential::CredentialKey::configured_or_kept(
                    settings.mqtt_credential_key.as_ref().map(|k| k.expose()),
                    &settings.data_dir,
                )?;
                let path = settings.data_dir.join("seed-mqtt-credentials.txt");
                let lines: String = city
                    .mqtt_credentials
                    .iter()
                    .map(|(id, g)| format!("{id} {}\n", key.password(&format!("devices/{id}"), *g)))
                    .collect();
                pingantong::secret::write_private(&path, &lines)?;
                eprintln!(
                    "MQTT pendants' credentials in {} (pendant-sim --mqtt-credentials)",
                    path.display()
                );
            }
            println!(
                "seeded {} clients with {mix} pendants {}..{}, {} providers, {} carers into {}",
                city.clients,
                city.devices.first().map_or("-", |d| d.as_str()),
                city.devices.last().map_or("-", |d| d.as_str()),
                city.providers,
                city.carers,
                db.backend()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify(server)) => {
            let settings = server.settings()?;
            let db = server.connect().await?;
            let report = db.verify_audit_chain().await;
            // The head written outside the database, if the server wrote one:
            // removing the newest entries leaves a chain that verifies alone.
            let path = settings.data_dir.join(pingantong::anchor::FILE);
            let anchored = match report.as_ref().map(|r| r.is_ok()) {
                Ok(true) if path.exists() => {
                    let cp = pingantong::anchor::read(&path).map_err(anyhow::Error::msg)?;
                    Some(pingantong::anchor::check(&db, &cp, settings.audit_key.as_ref()).await)
                }
                _ => None,
            };
            db.close().await;
            let report = report?;
            if let Some(b) = report.broken {
                println!("audit chain broken at entry {}: {}", b.id, b.fault);
                return Ok(ExitCode::FAILURE);
            }
            use pingantong::anchor::Verdict;
            Ok(match anchored.transpose()? {
                None => {
                    println!("audit chain ok: {} entries", report.entries);
                    ExitCode::SUCCESS
                }
                Some(Verdict::Holds) => {
                    println!(
                        "audit chain ok: {} entries; the head in {} holds{}",
                        report.entries,
                        path.display(),
                        if settings.audit_key.is_some() {
                            " (signature verified)"
                        } else {
                            " (unsigned: no audit_key)"
                        }
                    );
                    ExitCode::SUCCESS
                }
                Some(Verdict::BadSignature) => {
                    println!(
                        "audit head {} is not signed with this audit_key: it cannot be trusted",
                        path.display()
                    );
                    ExitCode::FAILURE
                }
                Some(Verdict::HeadGone { head_id, at }) => {
                    println!(
                        "audit chain cut short: entry {head_id}, the head recorded at {at} in {}, is gone or changed (newest entries removed)",
                        path.display()
                    );
                    ExitCode::FAILURE
                }
                Some(Verdict::Shorter { entries, now }) => {
                    println!(
                        "audit chain cut short: {now} entries, the head in {} counted {entries}",
                        path.display()
                    );
                    ExitCode::FAILURE
                }
            })
        }
        Command::User(UserCommand::Add {
            server,
            username,
            role,
            carer_id,
            provider_id,
        }) => {
            let role =
                Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role:?}"))?;
            let password = new_password()?;
            let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
            let db = server.connect().await?;
            let actor = cli_actor();
            let added = db
                .add_user(
                    &NewUser {
                        username: &username,
                        password_hash: &hash,
                        role,
                        carer_id,
                        provider_id,
                    },
                    &actor,
                )
                .await;
            db.close().await;
            let id = added?;
            println!("added user {username:?} (role {role}) with id {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::MqttCredential(MqttCredentialCommand::Issue { server, username }) => {
            let principal = pingantong::mqtt::acl::Principal::from_username(&username)?;
            let settings = server.settings()?;
            let key = pingantong::mqtt::credential::CredentialKey::configured_or_kept(
                settings.mqtt_credential_key.as_ref().map(|k| k.expose()),
                &settings.data_dir,
            )?;
            let db = server.connect().await?;
            let issued = db.issue_mqtt_credential(&principal, &cli_actor()).await;
            db.close().await;
            let generation = issued?;
            // Only the password on standard output, so a script can take it.
            eprintln!(
                "issued {username} (generation {generation}); a running server ends its live sessions within seconds"
            );
            println!("{}", key.password(&username, generation));
            Ok(ExitCode::SUCCESS)
        }
        Command::DataKey(DataKeyCommand::List(server)) => {
            let db = server.connect().await?;
            let keys = db.data_keys().await;
            db.close().await;
            println!(
                "{:>4} {:<14} {:<25} {:<25} {:<8}",
                "id", "master key", "created", "seals from", "all sealed"
            );
            for k in keys? {
                println!(
                    "{:>4} {:<14} {:<25} {:<25} {:<8}",
                    k.id,
                    k.master,
                    pingantong::sla::month::format_cst(k.created_at),
                    pingantong::sla::month::format_cst(k.active_from),
                    if k.sealed_all_at.is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DataKey(DataKeyCommand::Rotate { server, offline }) => {
            let db = server.connect().await?;
            let rotated = db.rotate_data_key(&cli_actor(), offline).await;
            let id = match rotated {
                Ok(id) => id,
                Err(e) => {
                    db.close().await;
                    return Err(e.into());
                }
            };
            if offline {
                let report = db.reseal().await;
                db.close().await;
                let report = report?;
                println!(
                    "data key {id} is current; {} values re-sealed, keys {:?} deleted",
                    report.resealed, report.retired
                );
            } else {
                db.close().await;
                println!(
                    "data key {id} added: running servers seal with it from {} s on and \
                     re-seal every value under it (see `data-key list`)",
                    pingantong::store::ACTIVATE_AFTER_MS / 1000
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DataKey(DataKeyCommand::Rewrap(server)) => {
            let text = match std::env::var("PAT_NEW_DATA_KEY") {
                Ok(v) => v,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let new = pingantong::vault::MasterKey::from_secret(&pingantong::config::Secret::new(
                text.trim(),
            ))?;
            let db = server.connect().await?;
            let n = db.rewrap_data_keys(&new, &cli_actor()).await;
            db.close().await;
            println!(
                "{} data keys now wrapped by master key {}: set it as `data_key` on every server",
                n?,
                new.fingerprint()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::MqttCredential(MqttCredentialCommand::Revoke { server, username }) => {
            let db = server.connect().await?;
            let done = db.revoke_mqtt_credential(&username, &cli_actor()).await;
            db.close().await;
            done?;
            println!("revoked {username}: it cannot connect again");
            Ok(ExitCode::SUCCESS)
        }
        Command::MqttCredential(MqttCredentialCommand::Resync(server)) => {
            let db = server.connect().await?;
            let n = db.forget_mqtt_credential_sync().await;
            db.close().await;
            println!(
                "{} credentials will be pushed to the broker by the running server",
                n?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::MqttCredential(MqttCredentialCommand::List(server)) => {
            let db = server.connect().await?;
            let rows = db.mqtt_credentials().await;
            db.close().await;
            println!("{:<44} {:>10} {:<8}", "username", "generation", "state");
            for r in rows? {
                let state = if r.revoked { "revoked" } else { "live" };
                println!("{:<44} {:>10} {:<8}", r.username, r.generation, state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::List(server)) => {
            let db = server.connect().await?;
            let users = db.list_users().await;
            db.close().await;
            println!(
                "{:<24} {:<10} {:<9} {:>8}",
                "username", "role", "state", "sessions"
            );
            for u in users? {
                let state = if u.disabled { "disabled" } else { "enabled" };
                println!(
                    "{:<24} {:<10} {:<9} {:>8}",
                    u.username, u.role, state, u.live_sessions
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::Disable { server, username }) => {
            let db = server.connect().await?;
            let done = db.set_user_disabled(&username, true, &cli_actor()).await;
            db.close().await;
            done?;
            println!("disabled user {username:?}: its sessions have ended");
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::Enable { server, username }) => {
            let db = server.connect().await?;
            let done = db.set_user_disabled(&username, false, &cli_actor()).await;
            db.close().await;
            done?;
            println!("enabled user {username:?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::Unlock { server, username }) => {
            let db = server.connect().await?;
            let done = db.unlock_user(&username, &cli_actor()).await;
            db.close().await;
            done?;
            println!("unlocked user {username:?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::ResetPassword { server, username }) => {
            let password = new_password()?;
            let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await??;
            let db = server.connect().await?;
            let done = db.reset_password(&username, &hash, &cli_actor()).await;
            db.close().await;
            done?;
            println!("new password for user {username:?}: its open sessions have ended");
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            server,
            month,
            format,
            by,
            breaches,
        } => {
            let month: Month = month.parse()?;
            let format: Format = format.parse()?;
            let by: Grouping = by.parse()?;
            let targets = server.settings()?.sla;
            let db = server.connect().await?;
            let now = pingantong::store::now_ms();
            let text = if breaches {
                sla::breach_list(&db, month, &targets, now)
                    .await
                    .map(|l| output::render_breaches(&l, format))
            } else {
                sla::monthly_report(&db, month, by, &targets, now)
                    .await
                    .map(|r| output::render_report(&r, format))
            };
            db.close().await;
            print!("{}", text?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { server } => {
            let s = server.settings()?;
            let rules = pingantong::rules::Rules::load(s.rules_file.as_deref())?;
            match &s.rules_file {
                Some(f) => println!("rules from {} over the built-in rules:", f.display()),
                None => println!("built-in rules:"),
            }
            print!("{}", rules.describe(s.escalation()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The new account's password: `PAT_NEW_PASSWORD`, else one line of standard
/// input (not echoed when it is a terminal).
/// How the audit log names a change made on the command line.
fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

fn new_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("PAT_NEW_PASSWORD") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    if tty {
        eprint!("new password: ");
        stty("-echo");
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if tty {
        stty("echo");
        eprintln!();
    }
    read?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    anyhow::ensure!(
        !password.is_empty(),
        "no password: set PAT_NEW_PASSWORD or give it on standard input"
    );
    Ok(password.to_owned())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
