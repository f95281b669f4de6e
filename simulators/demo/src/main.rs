//! `pingantong-demo`: the whole path on embedded defaults with a simulated
//! city (the default), or `seed`: provision such a city into a deployment's
//! database for `pendant-sim` and the benches.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pingantong::cli::ServerArgs;
use pingantong_sim::city::{CitySpec, seed_city};
use pingantong_sim::speaker::Mix;

#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    about = "Ping An Tong (平安通) with a simulated Guangzhou city: pendants, carers, operators"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

/// Run the whole path on embedded defaults with a simulated city, then summarise.
#[derive(Args)]
struct DemoArgs {
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
}

#[derive(Subcommand)]
enum Command {
    /// Provision a city (clients, pendants, providers, carers) for pendant-sim.
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own summary; the embedded broker logs every client
    // disconnect as an error (RUST_LOG brings both back).
    pingantong::telemetry::init(if cli.command.is_none() {
        "warn,rumqttd=off"
    } else {
        "info,rumqttd=off,sqlx=warn"
    });
    let result = match cli.command {
        None => run_demo(cli.demo).await,
        Some(Command::Seed {
            server,
            clients,
            secret_seed,
            protocol,
            native_from,
        }) => seed(server, clients, secret_seed, &protocol, native_from).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_demo(a: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(
        a.duration > 0.0 && a.heartbeat_secs > 0.0,
        "--duration and --heartbeat-secs must be positive"
    );
    let summary = demo::run(demo::DemoOptions {
        duration: Duration::from_secs_f64(a.duration),
        clients: a.clients,
        alarm_rate: a.alarm_rate,
        heartbeat: Duration::from_secs_f64(a.heartbeat_secs),
        json: a.json,
        data_dir: a.data_dir,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        demo::print(&summary);
    }
    anyhow::ensure!(
        summary.alarms_lost == 0,
        "{} alarms lost",
        summary.alarms_lost
    );
    Ok(())
}

async fn seed(
    server: ServerArgs,
    clients: usize,
    secret_seed: String,
    protocol: &str,
    native_from: Option<usize>,
) -> anyhow::Result<()> {
    let mix = Mix::parse(protocol).map_err(|e| anyhow::anyhow!("--protocol: {e}"))?;
    let db = server.connect().await?;
    let city = seed_city(
        &db,
        &CitySpec {
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
            settings.mqtt.credential_key.as_ref().map(|k| k.expose()),
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
    Ok(())
}
