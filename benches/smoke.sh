#!/usr/bin/env bash
# The end-to-end benchmark, small and fast, as a correctness check: PENDANTS
# pendants pressing for SECONDS against the server on SQLite with its embedded
# broker, then on PostgreSQL through Mosquitto, with console-probe pressing
# PROBES more one at a time. Fails unless every alarm was acknowledged, none
# was lost, every probe press reached the operators' live feed and a carer's
# offer, and the server counted at least as many committed alarms (and noted
# heartbeats) as the pendants saw acknowledged. It asserts no timing: the figures are printed only.
#
#   benches/smoke.sh [PENDANTS=1000] [SECONDS=5] [PRESSES_PER_SECOND=100] [PROBES=20]
#
# BIN (environment) is the folder holding pingantong, pendant-sim and
# console-probe (default target/debug, as `cargo test --workspace --all-targets`
# leaves them). Loopback only; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
pendants=${1:-1000}
seconds=${2:-5}
rate=${3:-100}
probes=${4:-20}
bin=${BIN:-target/debug}
ulimit -n "$(( (pendants + probes) * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
for b in pingantong pingantong-demo pendant-sim console-probe; do
    [ -x "$bin/$b" ] || { echo "benches/smoke.sh: $bin/$b is missing (cargo build --workspace)" >&2; exit 2; }
done
password="smoke-$$-console"
seed="smoke-$$"
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name, broker host:port or "embedded", server args...
    local name=$1 broker=$2; shift 2
    local port http mqtt
    port=$(free_port); http=$(free_port)
    # A topic prefix of its own, so nothing crosses with anything else on a shared broker.
    printf '[mqtt]\ntopic_prefix = "smoke-%s-%s"\n' "$$" "$name" >"$work/$name.toml"
    local broker_args=()
    if [ "$broker" = embedded ]; then
        mqtt=127.0.0.1:$(free_port)
        broker_args=(--embedded-mqtt-addr "$mqtt")
    else
        mqtt=$broker
        broker_args=(--mqtt-url "mqtt://$broker")
    fi
    "$bin/pingantong-demo" seed --clients "$((pendants + probes))" --secret-seed "$seed" "$@" >/dev/null
    PAT_NEW_PASSWORD="$password" "$bin/pingantong" user add --username "probe-$name" --role operator "$@" >/dev/null
    # The console probe answers for every carer: a server's MQTT credential.
    local probe_mqtt
    probe_mqtt=$("$bin/pingantong" mqtt-credential issue --username "servers/probe-$name" "$@" 2>/dev/null)
    RUST_LOG=warn "$bin/pingantong" serve --config "$work/$name.toml" --native-addr "127.0.0.1:$port" \
        --http-addr "127.0.0.1:$http" --gt06-addr 127.0.0.1:0 --watch-addr 127.0.0.1:0 \
        --h02-addr 127.0.0.1:0 --eview-addr 127.0.0.1:0 --dc09-addr 127.0.0.1:0 \
        "${broker_args[@]}" "$@" >"$work/$name.log" 2>&1 &
    server_pid=$!
    local up=
    for _ in $(seq 1 300); do grep -q "serving" "$work/$name.log" && { up=1; break; }; sleep 0.1; done
    if [ -z "$up" ]; then echo "smoke $name: the server did not start" >&2; cat "$work/$name.log" >&2; exit 1; fi
    timeout "$((seconds + 60))" "$bin/pendant-sim" --addr "127.0.0.1:$port" --pendants "$pendants" \
        --secret-seed "$seed" --alarm-rate "$rate" --heartbeat-secs 2 --duration-secs "$seconds" \
        --json 2>/dev/null >"$work/$name.json" || true
    PAT_MQTT_USERNAME="servers/probe-$name" PAT_MQTT_PASSWORD="$probe_mqtt" \
        PAT_PROBE_PASSWORD="$password" timeout 60 "$bin/console-probe" \
        --native "127.0.0.1:$port" --http "http://127.0.0.1:$http" --mqtt "$mqtt" \
        --mqtt-prefix "smoke-$$-$name" --user "probe-$name" --secret-seed "$seed" \
        --first "$((pendants + 1))" --presses "$probes" --pause-ms 10 --wait-secs 30 --json \
        >"$work/$name.probe.json" 2>"$work/$name.probe.err" || true
    curl -fsS --max-time 5 "http://127.0.0.1:$http/metrics" >"$work/$name.metrics" || true
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
    python3 - "$name" "$work/$name.json" "$work/$name.probe.json" "$work/$name.metrics" "$probes" <<'PY' ||
import json, re, sys
name, fleet, probe, metrics, probes = sys.argv[1:]
probes = int(probes)
bad = []
try:
    f = json.load(open(fleet))
except ValueError:
    sys.exit(f"smoke {name}: pendant-sim printed no result")
try:
    p = json.load(open(probe))
except ValueError:
    p = {}
text = open(metrics).read()
def total(name):
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))
committed = total("pat_events_committed_total")
noted = total("pat_heartbeats_noted_total")
if f["alarms_sent"] == 0:
    bad.append("no alarm was pressed")
if f["alarms_acked"] != f["alarms_sent"] or f["alarms_lost"] != 0 or f["alarms_refused"] != 0:
    bad.append(f"alarms sent {f['alarms_sent']}, acked {f['alarms_acked']}, refused {f['alarms_refused']}, lost {f['alarms_lost']}")
if f["heartbeats_acked"] == 0:
    bad.append("no heartbeat was acknowledged")
for key, missed in (("ack_ms", None), ("console_ms", "missed_console"), ("offer_ms", "missed_offer")):
    seen = p.get(key, {}).get("n", 0)
    if seen != probes or (missed and p.get(missed, 0) != 0):
        bad.append(f"probe {key}: {seen} of {probes} seen, {p.get(missed, 0) if missed else 0} missed")
# Every acknowledged alarm was committed first; every acknowledged heartbeat
# was at least noted as its device's latest report.
if committed < f["alarms_acked"] + probes:
    bad.append(f"server counted {committed:.0f} committed events, pendants saw {f['alarms_acked']} alarms acked")
if noted + committed < f["alarms_acked"] + f["heartbeats_acked"] + probes:
    bad.append(f"server noted {noted:.0f} heartbeats and committed {committed:.0f} events, "
               f"pendants saw {f['alarms_acked'] + f['heartbeats_acked']} answers")
a = f["ack_ms"]
print(f"smoke {name}: {f['alarms_acked']}/{f['alarms_sent']} alarms acked, {f['heartbeats_acked']} heartbeats acked, "
      f"{committed:.0f} events committed, {noted:.0f} heartbeats noted; probe {p.get('console_ms', {}).get('n', 0)}/{probes} on the feed, "
      f"{p.get('offer_ms', {}).get('n', 0)}/{probes} offered "
      f"(press→ACK p50 {a['p50']:.1f} ms, p99 {a['p99']:.1f} ms; not asserted)")
if bad:
    sys.exit(f"smoke {name} FAILED: " + "; ".join(bad))
PY
    { cat "$work/$name.log" "$work/$name.probe.err" >&2; exit 1; }
}

bash ops/services.sh >/dev/null
run sqlite embedded --data-dir "$work/sqlite"
schema="smoke_$$"
run postgres 127.0.0.1:1883 --database-url postgres://postgres@127.0.0.1:5432/test --database-schema "$schema"
psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1 || true
echo "smoke: 2 passed, 0 failed"
