//! Device supervision at city scale: memory per watched device and the cost
//! of a report and of a deadline check, with 100,000 devices reporting every
//! 30 s (about 3,300 reports a second). `cargo bench --bench supervision`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use pingantong::supervision::{Allowance, Watchlist};

/// Counts the bytes live on the heap, to measure what the watch list holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// 30 s heartbeats, offline after 2 missed + 30 s.
struct Every30s;

impl Allowance for Every30s {
    fn silence_ms(&self, _: &str, _: &str) -> i64 {
        90_000
    }
}

const DEVICES: usize = 100_000;

fn main() {
    let ids: Vec<String> = (0..DEVICES).map(|n| format!("PA{n:08}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut w = Watchlist::default();
    let t = Instant::now();
    for (n, id) in ids.iter().enumerate() {
        // Spread over the first 30 s, as a city's devices are.
        let at = (n as i64 * 30_000) / DEVICES as i64;
        w.seen(id, "native", at, at, &Every30s);
    }
    let first = t.elapsed();
    w.take_new();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "watch list: {DEVICES} devices in {:.1} MiB = {} bytes per device (first report {:.0} ns each)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / DEVICES,
        first.as_nanos() as f64 / DEVICES as f64
    );

    // Ten simulated minutes: every device reports every 30 s, and the
    // deadlines are checked every simulated second.
    let mut reports = 0u64;
    let mut report_time = std::time::Duration::ZERO;
    let mut check_time = std::time::Duration::ZERO;
    let mut worst_check = std::time::Duration::ZERO;
    let mut offline = 0usize;
    for second in 30..630i64 {
        let now = second * 1000;
        let t = Instant::now();
        // The devices whose 30 s slot falls in this second.
        let slot = (second % 30) as usize;
        for id in &ids[(slot * DEVICES / 30)..((slot + 1) * DEVICES / 30)] {
            w.seen(id, "native", now, now, &Every30s);
            reports += 1;
        }
        report_time += t.elapsed();
        let t = Instant::now();
        offline += w.overdue(now).len();
        let c = t.elapsed();
        check_time += c;
        worst_check = worst_check.max(c);
    }
    assert_eq!(offline, 0, "every device reported in time");
    println!(
        "steady state: {reports} reports, {:.0} ns each; 600 deadline checks, {:.0} µs each on average, {:.0} µs at worst; wheel entries {} (one per device)",
        report_time.as_nanos() as f64 / reports as f64,
        check_time.as_micros() as f64 / 600.0,
        worst_check.as_micros(),
        w.wheel_entries()
    );
    let per_second = DEVICES as f64 / 30.0;
    let cpu_per_second = report_time.as_secs_f64() / 600.0 + check_time.as_secs_f64() / 600.0;
    println!(
        "CPU: {:.2} ms per second of city time for {per_second:.0} reports/s = {:.3} % of one core",
        cpu_per_second * 1e3,
        cpu_per_second * 100.0
    );

    // A power cut: every device falls silent at once.
    let t = Instant::now();
    let mut down = 0;
    for second in 630..760 {
        down += w.overdue(second * 1000).len();
    }
    println!(
        "mass outage: {down} devices found offline in {:.1} ms of checks",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(down, DEVICES);
}
