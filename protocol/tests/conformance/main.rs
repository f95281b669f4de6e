//! Conformance: every real device frame in `tests/data/device-frames.jsonl`
//! decodes to what its `expect` block says and gets the reply its device
//! expects. Each protocol's checks live in its own module; each test prints how
//! many of that protocol's frames pass.

use serde_json::Value;

mod eview;
mod gt06;
mod h02;
mod sia_dc09;
mod watch;

fn rows(protocol: &str) -> Vec<Value> {
    let text = include_str!("../data/device-frames.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).expect("valid JSON line"))
        .filter(|v| v["protocol"] == protocol)
        .collect()
}

/// The frame's bytes, from hex or from (JSON-unescaped) text.
pub fn frame_bytes(row: &Value) -> Vec<u8> {
    let frame = row["frame"].as_str().expect("frame is a string");
    match row["encoding"].as_str() {
        Some("hex") => hex::decode(frame).expect("valid hex"),
        _ => frame.as_bytes().to_vec(),
    }
}

/// Run `check` on every frame of `protocol`, print the tally, fail on any miss.
pub fn run(protocol: &str, check: fn(&Value) -> Result<(), String>) {
    let rows = rows(protocol);
    assert!(!rows.is_empty(), "no {protocol} frames in the corpus");
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if let Err(e) = check(row) {
            failures.push(format!("  #{i} {}: {e}", row["frame"]));
        }
    }
    println!(
        "conformance {protocol}: {} of {} frames pass",
        rows.len() - failures.len(),
        rows.len()
    );
    assert!(
        failures.is_empty(),
        "{protocol} failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn gt06() {
    run("gt06", gt06::check);
}

#[test]
fn watch() {
    run("watch", watch::check);
}

#[test]
fn h02() {
    run("h02", h02::check);
}

#[test]
fn eview() {
    run("eview_minifinder2", eview::check);
}

#[test]
fn sia_dc09() {
    run("sia_dc09", sia_dc09::check);
}
