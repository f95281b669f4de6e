#!/usr/bin/env bash
# The floors under press → ACK, measured one at a time in one run (floor-probe): this disk's
# fsync, a loopback TCP round trip, one SQLite commit, one PostgreSQL commit, and QoS 1
# publish → deliver through each MQTT broker. Prints a table, or with --json one object.
#
#   benches/floors.sh [COUNT=2000] [DIR=target] [--json]
#
# DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test; empty skips PostgreSQL) and
# MQTT (default "127.0.0.1:1883"; a space-separated list, e.g. add a running server's embedded
# broker) in the environment. Loopback only; every measurement stops at COUNT samples or 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-2000}
dir=${2:-target}
json=${3:-}
database_url=${DATABASE_URL-postgres://postgres@127.0.0.1:5432/test}
brokers=${MQTT-127.0.0.1:1883}

bash ops/services.sh >/dev/null
cargo build --release -q -p pingantong-sim --bin floor-probe
mkdir -p "$dir"
args=(--dir "$dir" --count "$count" --tcp-count "$(( count * 10 ))" --budget-secs 60)
[ -n "$database_url" ] && args+=(--database-url "$database_url")
for b in $brokers; do args+=(--mqtt "$b"); done
[ "$json" = --json ] && args+=(--json)
exec "${CARGO_TARGET_DIR:-target}/release/floor-probe" "${args[@]}"
