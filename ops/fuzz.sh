#!/usr/bin/env bash
# Run every protocol fuzz target for SECONDS each (default 60) on stable Rust,
# or only the targets named after SECONDS. Needs cargo-fuzz: `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../protocol/fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
    # Text protocols carry frames up to ~4 KiB; the binary ones stay far below 512 bytes.
    case "$target" in
        watch|sia_dc09) max_len=4200 ;;
        *) max_len=512 ;;
    esac
    echo "== fuzzing $target for ${seconds}s (inputs up to $max_len bytes)"
    # -s none: no sanitizer, so it builds on stable without RUSTC_BOOTSTRAP.
    cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -max_len="$max_len" 2>&1 | tail -n 3
done
