#!/usr/bin/env bash
# Memory per idle connected pendant: the release server's resident set before
# and after PENDANTS native pendants connect and stay connected without a
# word (their first heartbeat is an hour away). Prints one Markdown table row.
#
#   benches/idle-rss.sh [PENDANTS=10000]
#
# Loopback only; bounded by the simulator's duration.
set -euo pipefail
cd "$(dirname "$0")/.."
pendants=${1:-10000}
seed="rss-$$"
# BIN_DIR runs a build already made (to compare two versions of the server).
bin=${BIN_DIR:-target/release}
[ -n "${BIN_DIR:-}" ] || cargo build --release --workspace -q
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(( pendants * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
"$bin/pingantong-demo" seed --clients "$pendants" --secret-seed "$seed" --data-dir "$work/db" >/dev/null
RUST_LOG=warn "$bin/pingantong" serve --data-dir "$work/db" --native-addr "127.0.0.1:$port" \
    --embedded-mqtt-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --gt06-addr 127.0.0.1:0 --watch-addr 127.0.0.1:0 \
    --h02-addr 127.0.0.1:0 --eview-addr 127.0.0.1:0 --dc09-addr 127.0.0.1:0 >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do grep -q "serving" "$work/serve.log" && break; sleep 0.1; done
sleep 2
rss() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }
conns() { ls "/proc/$server_pid/fd" | wc -l; }
before=$(rss); fds_before=$(conns)
"$bin/pendant-sim" --addr "127.0.0.1:$port" --pendants "$pendants" --secret-seed "$seed" \
    --alarm-rate 0 --heartbeat-secs 3600 --duration-secs 25 --json >"$work/sim.json" 2>/dev/null &
sim=$!
sleep 15
after=$(rss); fds_after=$(conns)
wait "$sim" || true
connected=$(( fds_after - fds_before ))
python3 - "$pendants" "$before" "$after" "$connected" <<'PY'
import sys
pendants, before, after, connected = map(int, sys.argv[1:])
per = (after - before) * 1024 / max(connected, 1)
print(f"| {pendants} idle pendants ({connected} connections open) | RSS {before/1024:.1f} → {after/1024:.1f} MiB "
      f"| **{per:.0f} bytes per connection** |")
PY
