#!/usr/bin/env bash
# MQTT alarm -> carer offer through Mosquitto (its own, with TCP_NODELAY; BROKER=system: 127.0.0.1:1883): the release
# server (SQLite, commit before routing) against the peer a user could pick
# instead, a Node-RED flow (MQTT in -> profile lookup -> MQTT out), as shipped
# and tuned (TCP_NODELAY). mqtt-probe feeds each the same presses from the same
# city: one at a time (latency), then open loop at RATE presses/s for SECONDS
# (throughput). Prints a Markdown table for benches/RESULTS.md.
#
#   benches/mqtt-peers.sh [PRESSES=300] [RATE=1000] [SECONDS=5]
#
# Every run has its own topic prefix, so nothing crosses between runs.
# Loopback only; every wait is bounded; every process started here is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
presses=${1:-300}
rate=${2:-1000}
seconds=${3:-5}
warmup=20
# BROKER=system uses the machine's Mosquitto (127.0.0.1:1883) as configured; by
# default a Mosquitto of the run's own is started with set_tcp_nodelay, since
# Mosquitto's default (Nagle on) adds a delayed-ACK wait to every hop for both
# dispatchers alike and would measure the broker, not them.
broker=127.0.0.1:1883
run="bench-$$"

bash ops/services.sh >/dev/null
cargo build --release -q -p pingantong --bin pingantong
cargo build --release -q -p pingantong-demo
cargo build --release -q -p pingantong-sim --bin mqtt-probe
bin=target/release
peer=target/peers/node-red
if ! cmp -s benches/peers/node-red/package-lock.json "$peer/package-lock.json" \
    || [ ! -d "$peer/node_modules/node-red" ]; then
    mkdir -p "$peer"
    cp benches/peers/node-red/package.json benches/peers/node-red/package-lock.json "$peer/"
    timeout 600 npm ci --prefix "$peer" --no-audit --no-fund --omit=dev >/dev/null
fi

work=$(mktemp -d)
pid=
broker_pid=
if [ "${BROKER:-own}" = own ]; then
    bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n' "$bport" \
        >"$work/mosquitto.conf"
    mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    broker_pid=$!
    broker=127.0.0.1:$bport
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && break; sleep 0.1; done
fi
broker_clean=()
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
cleanup() {
    stop
    # Leave nothing of ours on the broker: the server's retained status and its
    # persistent session (a clean-session connect with its client id drops it).
    for c in "${broker_clean[@]}"; do
        timeout 5 mosquitto_pub -h 127.0.0.1 -p "${broker##*:}" -r -n -q 1 -t "$c/status" >/dev/null 2>&1 || true
        timeout 5 mosquitto_sub -h 127.0.0.1 -p "${broker##*:}" -i "${c##*/}" -t "$c/none" -E >/dev/null 2>&1 || true
    done
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # file, text, seconds
    for _ in $(seq 1 $(($3 * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "mqtt-peers.sh: no '$2' in $1 after $3 s" >&2
    cat "$1" >&2
    return 1
}

# One city for everyone: every press uses a device of its own (a second press
# of the same device folds into its open incident), plus room for the few
# clients whose name and address repeat another's (the probe skips them).
load=$(python3 -c "import math; print(math.ceil($rate * $seconds))")
clients=$(( (warmup + presses + load) * 21 / 20 + 100 ))
"$bin/pingantong-demo" seed --data-dir "$work/db" --clients "$clients" --protocol mqtt \
    --secret-seed "$run" >/dev/null
python3 - "$work/db/pingantong.db" "$work/city.json" <<'PY'
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
q = lambda sql: db.execute(sql).fetchall()
clients = {d: {"name": n, "address": a, "district": di, "street": st, "lat": la, "lon": lo,
               "medical_notes": mn, "medications": me}
           for d, n, a, di, st, la, lo, mn, me in q(
               "SELECT d.id, c.name, c.address, c.district, c.street, c.lat, c.lon, "
               "c.medical_notes, c.medications FROM devices d JOIN clients c ON c.id = d.client_id")}
carers = [{"id": i, "provider_id": p, "lat": la, "lon": lo, "on_duty": bool(on)}
          for i, p, la, lo, on in q("SELECT id, provider_id, lat, lon, on_duty FROM carers WHERE busy = 0")]
coverage = [{"provider_id": p, "district": d, "street": s, "rank": r}
            for p, d, s, r in q("SELECT provider_id, district, street, rank FROM provider_coverage")]
json.dump({"clients": clients, "carers": carers, "coverage": coverage},
          open(sys.argv[2], "w"), ensure_ascii=False)
PY

probe() { # name, prefix
    local name=$1 prefix=$2
    timeout $((presses * 6 + warmup * 6 + 60)) "$bin/mqtt-probe" --mqtt "$broker" --mqtt-prefix "$prefix" \
        --clients "$work/city.json" --first 1 --warmup "$warmup" --presses "$presses" --pause-ms 10 \
        --json >"$work/$name.latency.json" || echo '{}' >"$work/$name.latency.json"
    local next
    next=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('next_first', 0))" \
        "$work/$name.latency.json")
    [ "$next" -gt 0 ] || next=$((warmup + presses + 1 + clients / 20))
    timeout $((seconds + 90)) "$bin/mqtt-probe" --mqtt "$broker" --mqtt-prefix "$prefix" \
        --clients "$work/city.json" --first "$next" --rate "$rate" --secs "$seconds" --grace-secs 30 \
        --json >"$work/$name.load.json" || echo '{}' >"$work/$name.load.json"
    cat "$work/$name.latency.json" "$work/$name.load.json" >&2
}

# Our server: SQLite in the seeded directory, Mosquitto as its broker.
prefix="$run-pat"
instance="$run-pat"
broker_clean+=("$prefix/v1/server/$instance")
printf '[mqtt]\ntopic_prefix = "%s"\n' "$prefix" >"$work/pat.toml"
RUST_LOG=warn "$bin/pingantong" serve --config "$work/pat.toml" --data-dir "$work/db" \
    --mqtt-url "mqtt://$broker" --instance-id "$instance" \
    --native-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --gt06-addr 127.0.0.1:0 --watch-addr 127.0.0.1:0 \
    --h02-addr 127.0.0.1:0 --eview-addr 127.0.0.1:0 --dc09-addr 127.0.0.1:0 >"$work/pat.log" 2>&1 &
pid=$!
wait_for "$work/pat.log" "serving" 30
timeout 20 mosquitto_sub -h 127.0.0.1 -p "${broker##*:}" -t "$prefix/v1/server/$instance/status" -C 1 \
    | grep -q online || { echo "mqtt-peers.sh: the server never said online" >&2; exit 1; }
probe pingantong "$prefix"
stop

# Node-RED, as shipped and tuned.
for variant in shipped tuned; do
    settings=settings.js
    [ "$variant" = tuned ] && settings=settings-tuned.js
    prefix="$run-nr-$variant"
    mkdir -p "$work/nr-$variant"
    PAT_CITY_FILE="$work/city.json" PAT_PREFIX="$prefix" PAT_EVENTS_TOPIC="$prefix/v1/devices/+/events" \
        PAT_MQTT_PORT="${broker##*:}" PAT_MQTT_CLIENT_ID="$prefix" \
        node "$peer/node_modules/node-red/red.js" -s "benches/peers/node-red/$settings" \
        -u "$work/nr-$variant" >"$work/nr-$variant.log" 2>&1 &
    pid=$!
    wait_for "$work/nr-$variant.log" "Connected to broker" 60
    sleep 1 # its subscription follows the connection
    probe "node-red-$variant" "$prefix"
    stop
done

python3 - "$work" "$presses" "$warmup" "$rate" "$seconds" "$broker" "${BROKER:-own}" <<'PY'
import json, sys
work, presses, warmup, rate, seconds, broker, which = sys.argv[1:]
runs = [("pingantong", "Ping An Tong (SQLite, commit, then route)"),
        ("node-red-shipped", "Node-RED 4, as shipped"),
        ("node-red-tuned", "Node-RED 4, TCP_NODELAY")]
res = {n: (json.load(open(f"{work}/{n}.latency.json")), json.load(open(f"{work}/{n}.load.json")))
       for n, _ in runs}
how = "the run's own, set_tcp_nodelay true" if which == "own" else "the machine's, as configured"
print(f"Press → carer's offer through Mosquitto {broker} ({how}), QoS 1. Latency: {presses} presses one "
      f"at a time after {warmup} warm-up presses. Load: {rate} presses/s open loop for {seconds} s, "
      f"each timed from when it was due.\n")
print("| dispatcher | p50 ms | p90 ms | p99 ms | max ms | offers / missed "
      "| under load: offers/s | p50 ms | p99 ms | offers / missed |")
print("|---|---|---|---|---|---|---|---|---|---|")
def cell(h, k):
    return f"{h[k]:.3f}" if h and h.get("n") else "—"
for n, label in runs:
    lat, load = res[n]
    h, g = lat.get("latency_ms"), load.get("latency_ms")
    ops = load.get("offers_per_sec")
    print(f"| {label} | {cell(h, 'p50')} | {cell(h, 'p90')} | {cell(h, 'p99')} | {cell(h, 'max')} "
          f"| {lat.get('offers', '—')} / {lat.get('missed', '—')} "
          f"| {f'{ops:.0f}' if ops is not None else '—'} | {cell(g, 'p50')} | {cell(g, 'p99')} "
          f"| {load.get('offers', '—')} / {load.get('missed', '—')} |")
print()
ours_lat, ours_load = res["pingantong"]
for n, label in runs[1:]:
    lat, load = res[n]
    try:
        p = ours_lat["latency_ms"]["p50"] / lat["latency_ms"]["p50"]
        t = ours_load["offers_per_sec"] / load["offers_per_sec"]
        print(f"- against {label}: p50 × {p:.2f} (target ≤ 1), offers/s × {t:.2f} (target ≥ 2)")
    except (KeyError, TypeError, ZeroDivisionError):
        print(f"- against {label}: no ratio (a run failed)")
PY
