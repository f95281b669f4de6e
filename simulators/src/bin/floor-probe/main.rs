//! floor-probe: the floors under the server's press → ACK latency, measured in one run — a disk
//! fsync, a loopback TCP round trip, one SQLite and one PostgreSQL commit, and an MQTT broker's
//! publish → deliver — each one at a time, with HDR percentiles; and, to read peers against,
//! a DC-09 receiver's ACK round trip one message at a time.

mod dc09;
mod disk;
mod mqtt;
mod sql;
mod tcp;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Measure the floors a dispatch server stands on. Every measurement is bounded by its count
/// and by --budget-secs; the first few samples of each warm the path up and are not counted.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory on the data disk (fsync and the SQLite file go here; both are removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Samples per measurement (each one at a time).
    #[arg(long, default_value_t = 2000)]
    count: u32,
    /// Samples of the loopback round trip (cheap, so more of them).
    #[arg(long, default_value_t = 20_000)]
    tcp_count: u32,
    /// PostgreSQL to measure one commit against, e.g. postgres://postgres@127.0.0.1:5432/test.
    /// A throw-away schema is created and dropped. Without it the measurement is skipped.
    #[arg(long)]
    database_url: Option<String>,
    /// MQTT broker (host:port) to time QoS 1 publish → deliver through; may be given several times.
    #[arg(long = "mqtt")]
    mqtt: Vec<String>,
    /// DC-09 receiver (host:port) to time plain ADM-CID → ACK through, one message at a time;
    /// may be given several times. The account must be one the receiver knows.
    #[arg(long = "dc09")]
    dc09: Vec<String>,
    #[arg(long, default_value = "A00001")]
    dc09_account: String,
    /// Stop any one measurement after this long, with the samples it has.
    #[arg(long, default_value_t = 60.0)]
    budget_secs: f64,
    /// Measurements to run (comma-separated): fsync, tcp, sqlite, postgres, mqtt, dc09.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fsync,tcp,sqlite,postgres,mqtt,dc09"
    )]
    only: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Samples not counted at the start of every measurement (first syncs allocate blocks, first
/// messages on a fresh socket take tens of milliseconds).
const WARM_UP: u32 = 50;

/// Collects latencies in microseconds until the count or the time budget runs out.
pub struct Meter {
    hist: Histogram<u64>,
    count: u32,
    seen: u32,
    deadline: std::time::Instant,
    /// When the first counted sample started, and the last one ended.
    span: Option<(std::time::Instant, std::time::Instant)>,
}

impl Meter {
    fn new(count: u32, budget: Duration) -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            count,
            seen: 0,
            deadline: std::time::Instant::now() + budget,
            span: None,
        }
    }

    /// Whether another sample is wanted.
    pub fn more(&self) -> bool {
        self.hist.len() < u64::from(self.count) && std::time::Instant::now() < self.deadline
    }

    /// Record one sample (the warm-up ones are dropped).
    pub fn record(&mut self, took: Duration) {
        self.seen += 1;
        if self.seen > WARM_UP {
            let _ = self.hist.record(took.as_micros().max(1) as u64);
            let end = std::time::Instant::now();
            let first = self.span.map_or(end - took, |(f, _)| f);
            self.span = Some((first, end));
        }
    }

    fn summary(&self) -> Value {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        // One at a time, so this is also the ceiling of one client doing it back to back.
        let per_s = self.span.map_or(0.0, |(f, l)| {
            self.hist.len() as f64 / l.duration_since(f).as_secs_f64().max(1e-9)
        });
        json!({
            "count": self.hist.len(),
            "per_s": per_s.round(),
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "max_ms": self.hist.max() as f64 / 1000.0,
        })
    }
}

fn outcome(r: Result<Meter, String>) -> Value {
    match r {
        Ok(m) if m.hist.is_empty() => json!({"error": "no samples within the budget"}),
        Ok(m) => m.summary(),
        Err(e) => json!({"error": e}),
    }
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let budget = Duration::from_secs_f64(a.budget_secs);
    let wants = |name: &str| a.only.iter().any(|o| o == name);
    let meter = |count| Meter::new(count, budget);
    let mut out = serde_json::Map::new();
    if wants("fsync") {
        out.insert("fsync".into(), outcome(disk::fsync(&a.dir, meter(a.count))));
    }
    if wants("tcp") {
        out.insert(
            "tcp_rtt".into(),
            outcome(tcp::round_trip(meter(a.tcp_count)).await),
        );
    }
    if wants("sqlite") {
        let r = sql::sqlite_commit(&a.dir, meter(a.count)).await;
        out.insert("sqlite_commit".into(), outcome(r));
    }
    if wants("postgres") {
        let v = match &a.database_url {
            Some(url) => outcome(sql::postgres_commit(url, meter(a.count)).await),
            None => json!({"skipped": "no --database-url given"}),
        };
        out.insert("postgres_commit".into(), v);
    }
    if wants("mqtt") {
        let mut brokers = serde_json::Map::new();
        for addr in &a.mqtt {
            let r = mqtt::publish_deliver(addr, meter(a.count)).await;
            brokers.insert(addr.clone(), outcome(r));
        }
        if a.mqtt.is_empty() {
            out.insert("mqtt".into(), json!({"skipped": "no --mqtt broker given"}));
        } else {
            out.insert("mqtt".into(), Value::Object(brokers));
        }
    }
    if wants("dc09") && !a.dc09.is_empty() {
        let mut receivers = serde_json::Map::new();
        for addr in &a.dc09 {
            let r = dc09::ack_round_trip(addr, &a.dc09_account, meter(a.count)).await;
            receivers.insert(addr.clone(), outcome(r));
        }
        out.insert("dc09".into(), Value::Object(receivers));
    }
    if a.json {
        println!("{}", Value::Object(out));
    } else {
        print_table(&out);
    }
}

fn print_table(out: &serde_json::Map<String, Value>) {
    println!(
        "{:<36} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "floor", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "per s"
    );
    let mut rows: Vec<(String, &Value)> = Vec::new();
    for (k, v) in out {
        if (k == "mqtt" || k == "dc09") && v.get("skipped").is_none() {
            for (addr, b) in v.as_object().into_iter().flatten() {
                rows.push((format!("{k} {addr}"), b));
            }
        } else {
            rows.push((k.clone(), v));
        }
    }
    for (name, v) in rows {
        if let Some(why) = v.get("skipped").or(v.get("error")) {
            println!("{name:<36} {}", why.as_str().unwrap_or_default());
            continue;
        }
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{name:<36} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.0}",
            v["count"],
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("max_ms"),
            f("per_s")
        );
    }
}
