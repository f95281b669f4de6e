//! The `pingantong` command: serve, rules, audit, user, MQTT credentials,
//! data keys, report. (The demo and `seed` are `pingantong-demo`'s.)

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand};
use pingantong::Application;
use pingantong::api::auth::hash_password;
use pingantong::cli::ServerArgs;
use pingantong::domain::Role;
use pingantong::sla::{self, Format, Grouping, Month, output};
use pingantong::store::NewUser;
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
        /// Parsed here: only a role's own name is taken.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
            Role::ALL.map(|r| r.as_str())
        ).map(|name| Role::parse(&name).expect("one of the roles' names")))]
        role: Role,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The embedded broker logs every client disconnect as an error; RUST_LOG
    // brings it back when the broker itself is being looked at.
    pingantong::telemetry::init("info,rumqttd=off,sqlx=warn");
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
            let max_connections = settings.devices.max_connections;
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
                    Some(
                        pingantong::anchor::check(&db, &cp, settings.keys.audit_key.as_ref()).await,
                    )
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
                        if settings.keys.audit_key.is_some() {
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
                settings.mqtt.credential_key.as_ref().map(|k| k.expose()),
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
