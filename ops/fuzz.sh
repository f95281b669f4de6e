#!/usr/bin/env bash
# Run every protocol fuzz target for SECONDS each (default 60) on stable Rust.
# Needs cargo-fuzz: `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../protocol/fuzz"
seconds=${1:-60}
for target in $(cargo fuzz list); do
    echo "== fuzzing $target for ${seconds}s"
    # -s none: no sanitizer, so it builds on stable without RUSTC_BOOTSTRAP.
    cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -max_len=512 2>&1 | tail -n 3
done
