//! fsync-probe: the durability floor of a disk — how long one small write plus
//! fdatasync takes — to read next to the server's press → ACK latency.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory on the disk to measure (the database's).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, default_value_t = 2000)]
    count: u32,
    #[arg(long)]
    json: bool,
}

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let path = a.dir.join(format!(".fsync-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 512];
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    // The first syncs allocate blocks; do not count them.
    for i in 0..(a.count + 50) {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        if i >= 50 {
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        }
    }
    drop(f);
    std::fs::remove_file(&path)?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"count": a.count, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0})
        );
    } else {
        println!(
            "write 512 B + fdatasync x{}: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            a.count,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    }
    Ok(())
}
