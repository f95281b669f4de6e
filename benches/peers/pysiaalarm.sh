#!/usr/bin/env bash
# Peer benchmark: pysiaalarm (the SIA DC-09 receiver Home Assistant uses) next to Ping An Tong's
# DC-09 listener, fed the same pendant-sim load (plain DC-09, ADM-CID, accounts A00001…):
# one connection and 1,000 connections, each at a moderate press rate (latency) and a high one
# (throughput). pysiaalarm only parses and ACKs — it stores nothing; Ping An Tong ACKs after the
# commit (SQLite, WAL, synchronous=FULL). Prints a Markdown table with ratios.
#
#   benches/peers/pysiaalarm.sh [SECONDS=15] [HIGH_RATE=20000] [MODERATE_RATE=100] [CONNECTIONS="1 1000"]
#
# NO_BUILD=1 (environment) uses the release binaries already built.
# Loopback only; every run is bounded by SECONDS plus pendant-sim's 15 s grace (and a timeout).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
high=${2:-20000}
moderate=${3:-100}
connections=${4:-1 1000}
most=1
for c in $connections; do [ "$c" -gt "$most" ] && most=$c; done
ulimit -n "$(( most * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
seed="peer-$$"

[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p pingantong -p pingantong-sim
bin=${CARGO_TARGET_DIR:-target}/release
venv=${CARGO_TARGET_DIR:-target}/peers/pysiaalarm
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r benches/peers/pysiaalarm/requirements.txt

work=$(mktemp -d)
server_pid=
peer_pid=
cleanup() {
    [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # log file, text
    for _ in $(seq 1 150); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

load() { # name, port, pendants, presses/s
    # pendant-sim exits 1 when alarms went unanswered; the JSON says how many.
    timeout "$(( seconds + 60 ))" "$bin/pendant-sim" --protocol dc09-plain --addr "127.0.0.1:$2" \
        --pendants "$3" --alarm-rate "$4" --heartbeat-secs 30 --duration-secs "$seconds" \
        --secret-seed "$seed" --json 2>/dev/null >"$work/$1.json" || true
    [ -s "$work/$1.json" ] || echo '{}' >"$work/$1.json"
}

# Ping An Tong: provisioned like the fleet (DC-09 accounts A00001…), serving on SQLite.
"$bin/pingantong" seed --clients "$most" --secret-seed "$seed" --protocol dc09 \
    --data-dir "$work/db" >/dev/null
ours_port=$(free_port)
RUST_LOG=warn "$bin/pingantong" serve --dc09-addr "127.0.0.1:$ours_port" \
    --native-addr 127.0.0.1:0 --embedded-mqtt-addr "127.0.0.1:$(free_port)" --http-addr 127.0.0.1:0 \
    --gt06-addr 127.0.0.1:0 --watch-addr 127.0.0.1:0 --h02-addr 127.0.0.1:0 --eview-addr 127.0.0.1:0 \
    --data-dir "$work/db" >"$work/server.log" 2>&1 &
server_pid=$!
wait_for "$work/server.log" serving

# One message at a time on one connection (a panel waits for each ACK): both receivers.
closed_port=$(free_port)
"$venv/bin/python" benches/peers/pysiaalarm/receiver.py "$closed_port" "$most" 300 \
    >"$work/closed.peer.counts" 2>"$work/closed.peer.log" &
peer_pid=$!
wait_for "$work/closed.peer.log" listening
echo "one at a time: pysiaalarm, Ping An Tong" >&2
timeout 300 "$bin/floor-probe" --only dc09 --dc09 "127.0.0.1:$closed_port" --dc09 "127.0.0.1:$ours_port" \
    --count 20000 --budget-secs "$seconds" --json >"$work/closed.json" || echo '{}' >"$work/closed.json"
kill -TERM "$peer_pid"; wait "$peer_pid" 2>/dev/null || true; peer_pid=

runs=
for c in $connections; do
    for rate in "$moderate" "$high"; do
        name="c${c}_r${rate}"
        runs="$runs $name"
        # pysiaalarm: a fresh receiver per run, stopped after it, its counts kept.
        port=$(free_port)
        "$venv/bin/python" benches/peers/pysiaalarm/receiver.py "$port" "$most" "$(( seconds + 120 ))" \
            >"$work/$name.peer.counts" 2>"$work/$name.peer.log" &
        peer_pid=$!
        wait_for "$work/$name.peer.log" listening
        echo "pysiaalarm: $c connections, $rate presses/s" >&2
        load "$name.peer" "$port" "$c" "$rate"
        kill -TERM "$peer_pid"; wait "$peer_pid" 2>/dev/null || true; peer_pid=
        echo "Ping An Tong: $c connections, $rate presses/s" >&2
        load "$name.ours" "$ours_port" "$c" "$rate"
    done
done
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=

python3 - "$work" "$seconds" "$runs" "$closed_port" "$ours_port" <<'PY'
import json, sys
work, seconds, runs = sys.argv[1], float(sys.argv[2]), sys.argv[3].split()
peer_addr, ours_addr = f"127.0.0.1:{sys.argv[4]}", f"127.0.0.1:{sys.argv[5]}"

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return {}

def rate(r):
    return r.get("alarms_acked", 0) / seconds

print(f"pendant-sim --protocol dc09-plain, {seconds:g} s per run, heartbeat (NULL) every 30 s per pendant. "
      "pysiaalarm ACKs before its callback runs and stores nothing; Ping An Tong ACKs after the SQLite commit.\n")
print("| connections | presses/s offered | receiver | alarms acked/s | sent / acked / lost | ACK p50 ms | p99 ms | max ms | retries | receiver errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
ratios = []
for name in runs:
    c, r = name[1:].split("_r")
    peer, ours = load(f"{work}/{name}.peer.json"), load(f"{work}/{name}.ours.json")
    counts = load(f"{work}/{name}.peer.counts").get("counts", {})
    errors = {k: v for k, v in counts.items() if k.startswith("error") and v}
    for who, res, err in (("pysiaalarm", peer, ", ".join(f"{k} {v}" for k, v in errors.items()) or "0"),
                          ("Ping An Tong", ours, "")):
        if not res:
            print(f"| {c} | {r} | {who} | run failed | | | | | | |")
            continue
        a = res["ack_ms"]
        print(f"| {c} | {r} | {who} | {rate(res):,.0f} | {res['alarms_sent']} / {res['alarms_acked']} / {res['alarms_lost']} "
              f"| {a['p50']:.3f} | {a['p99']:.3f} | {a['max']:.3f} | {res['retries']} | {err} |")
    if peer and ours:
        ratios.append((c, r, rate(ours) / max(rate(peer), 1e-9),
                       ours["ack_ms"]["p99"] / max(peer["ack_ms"]["p99"], 1e-6),
                       peer["alarms_acked"] * 100 >= max(peer["alarms_sent"], 1)))
closed = load(f"{work}/closed.json").get("dc09", {})
p, o = closed.get(peer_addr, {}), closed.get(ours_addr, {})
print("\nOne connection, one message at a time (floor-probe --dc09: send, wait for the ACK, send the next):\n")
print("| receiver | messages | ACK p50 ms | p90 ms | p99 ms | max ms | messages/s |")
print("|---|---|---|---|---|---|---|")
for who, r in (("pysiaalarm", p), ("Ping An Tong", o)):
    if "p50_ms" not in r:
        print(f"| {who} | {r.get('error', 'run failed')} | | | | | |")
    else:
        print(f"| {who} | {r['count']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} | {r['per_s']:,.0f} |")
print("\n| load | alarms acked/s, ours ÷ pysiaalarm | ACK p99, ours ÷ pysiaalarm |")
print("|---|---|---|")
if "p50_ms" in p and "p50_ms" in o:
    print(f"| 1 connection, one at a time | {o['per_s'] / max(p['per_s'], 1e-9):.2f} | {o['p99_ms'] / max(p['p99_ms'], 1e-6):.2f} |")
for c, r, t, l, peer_ok in ratios:
    if peer_ok:
        print(f"| {c} connections, {r} presses/s | {t:.2f} | {l:.2f} |")
    else:
        print(f"| {c} connections, {r} presses/s | no ratio: pysiaalarm acked under 1 % of the alarms | |")
PY
