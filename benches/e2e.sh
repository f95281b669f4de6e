#!/usr/bin/env bash
# End-to-end benchmark: the release server on SQLite and on PostgreSQL,
# PENDANTS pendants from pendant-sim, and this disk's fsync floor measured in
# the same run. While the fleet runs, console-probe presses PROBES more
# pendants one at a time and times press -> ACK, press -> the incident on the
# operators' live feed, press -> the offer on the carers' MQTT topic.
# Prints a Markdown table for benches/RESULTS.md.
#
#   benches/e2e.sh [PENDANTS] [SECONDS] [ALARMS_PER_SECOND] [FLOOD_PER_SECOND] [PROBES]
#
# The flood run adds FLOOD_PER_SECOND technical events (low battery) to the
# SQLite run, to time the presses through them.
#
# BACKENDS="sqlite postgres" (environment) picks the runs (default: sqlite sqlite_flood postgres);
# SCENARIO, SIM_ARGS, OUT_DIR and TAG: see below. PROTOCOL (default native) is what the fleet
# speaks, one protocol or a mix such as "native:3,gt06:1,mqtt:1" (the probes stay native).
# Loopback only; every run is bounded by SECONDS plus a grace period.
set -euo pipefail
cd "$(dirname "$0")/.."
pendants=${1:-1000}
seconds=${2:-30}
rate=${3:-50}
flood=${4:-5000}
probes=${5:-200}
heartbeat=${HEARTBEAT:-30}
backends=${BACKENDS:-sqlite sqlite_flood postgres}
# SCENARIO (a pendant-sim scenario file) replaces the rates; SIM_ARGS adds pendant-sim
# options (e.g. "--persistent 15000"); OUT_DIR keeps each run's full JSON, named TAG-run.
scenario=${SCENARIO:-}
protocol=${PROTOCOL:-native}
tag=${TAG:+$TAG-}
[ -n "${OUT_DIR:-}" ] && mkdir -p "$OUT_DIR"
# Each pendant holds a connection, at both ends of the loopback.
ulimit -n "$(( (pendants + probes) * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
password="bench-$$-console"
seed=${SEED:-bench-$$}

bash ops/services.sh >/dev/null
# BIN_DIR runs a build already made (say, to compare two versions of the server);
# SERVER_LOG sets the server's RUST_LOG (default warn; the log is kept in OUT_DIR).
bin=${BIN_DIR:-target/release}
[ -n "${BIN_DIR:-}" ] || cargo build --release --workspace -q
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# CPU seconds (user + system) and resident set (KiB, now and peak) of a process.
proc_stats() {
    python3 - "$1" <<'PY'
import os, sys
pid = sys.argv[1]
f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
st = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
kib = lambda k: int(st[k].split()[0])
print(f'{{"cpu_s": {cpu}, "rss_kib": {kib("VmRSS")}, "hwm_kib": {kib("VmHWM")}}}')
PY
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_backend() { # name, technical events/s, extra server args...
    local name=$1; shift
    local flood=$1; shift
    local port http mqtt
    port=$(free_port); http=$(free_port); mqtt=$(free_port)
    # SEED_CACHE keeps each SQLite city seeded once (by size and secret seed) and
    # copies it for every run: seeding 100,000 clients row by row takes minutes.
    local cached=
    if [ -n "${SEED_CACHE:-}" ] && [ "$1" = --data-dir ]; then
        cached="$SEED_CACHE/sqlite-$((pendants + probes))-$seed"
        [ "$protocol" = native ] || cached="$cached-${protocol//[:,]/_}"
    fi
    if [ -n "$cached" ] && [ -d "$cached" ]; then
        cp -a "$cached" "$2"
    else
        "$bin/pingantong-demo" seed --clients "$((pendants + probes))" --secret-seed "$seed" \
            --protocol "$protocol" --native-from "$((pendants + 1))" "$@" >/dev/null
        if [ -n "$cached" ]; then mkdir -p "$SEED_CACHE"; cp -a "$2" "$cached"; fi
    fi
    PAT_NEW_PASSWORD="$password" "$bin/pingantong" user add --username "probe-$name" --role operator "$@" >/dev/null
    # MQTT credentials: the pendants' own (written by seed into the data directory, `data` unless
    # --data-dir), and a server's for the console probe, which answers for every carer.
    local data=data
    [ "$1" = --data-dir ] && data=$2
    local probe_mqtt
    probe_mqtt=$("$bin/pingantong" mqtt-credential issue --username "servers/probe-$name" "$@" 2>/dev/null)
    # Every device listener on a port of its own; the fleet is told those of its protocols.
    local listeners=() to=(--addr "native=127.0.0.1:$port") p a
    for p in gt06 watch h02 eview dc09; do
        a=127.0.0.1:$(free_port)
        listeners+=("--$p-addr" "$a")
        case ",$protocol" in *",$p:"* | *",$p,"* | *",$p") to+=(--addr "$p=$a") ;; esac
        if [ "$p" = dc09 ]; then case ",$protocol" in *,dc09-plain*) to+=(--addr "dc09-plain=$a") ;; esac; fi
    done
    case ",$protocol" in *,native*) ;; *) to=("${to[@]:2}") ;; esac
    RUST_LOG=${SERVER_LOG:-warn} "$bin/pingantong" serve --native-addr "127.0.0.1:$port" \
        --embedded-mqtt-addr "127.0.0.1:$mqtt" --http-addr "127.0.0.1:$http" "${listeners[@]}" \
        "$@" >"$work/$name.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 600); do grep -q "serving" "$work/$name.log" && break; sleep 0.1; done
    local load=(--alarm-rate "$rate" --heartbeat-secs "$heartbeat" --duration-secs "$seconds" --technical-rate "$flood")
    [ -n "$scenario" ] && load=(--scenario "$scenario")
    # shellcheck disable=SC2086 # SIM_ARGS is a list of words
    local creds=()
    [ -f "$data/seed-mqtt-credentials.txt" ] && creds=(--mqtt-credentials "$data/seed-mqtt-credentials.txt")
    "$bin/pendant-sim" "${to[@]}" "${creds[@]}" --protocol "$protocol" --mqtt-url "mqtt://127.0.0.1:$mqtt" \
        --pendants "$pendants" --secret-seed "$seed" \
        "${load[@]}" ${SIM_ARGS:-} --json --out "$work/$name.full.json" \
        2>/dev/null >"$work/$name.json" &
    local fleet=$!
    local before
    before=$(proc_stats "$server_pid")
    sleep 2 # the fleet connecting and pressing
    PAT_MQTT_USERNAME="servers/probe-$name" PAT_MQTT_PASSWORD="$probe_mqtt" \
        PAT_PROBE_PASSWORD="$password" timeout "$((seconds + 60))" "$bin/console-probe" \
        --native "127.0.0.1:$port" --http "http://127.0.0.1:$http" --mqtt "127.0.0.1:$mqtt" \
        --user "probe-$name" --secret-seed "$seed" --first "$((pendants + 1))" --presses "$probes" \
        --pause-ms 20 --json >"$work/$name.probe.json" || echo '{}' >"$work/$name.probe.json"
    wait "$fleet" || true # a run that lost alarms is reported, not aborted
    printf '{"before": %s, "after": %s}\n' "$before" "$(proc_stats "$server_pid")" >"$work/$name.server.json"
    # A server still working through a backlog of incidents may take minutes to
    # stop; its alarms are committed, so after 30 s it is killed (and said so).
    kill "$server_pid"
    for _ in $(seq 1 300); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "e2e.sh: $name: the server had not stopped 30 s after SIGTERM; killed" >&2
        kill -9 "$server_pid"
    fi
    wait "$server_pid" 2>/dev/null || true; server_pid=
    cat "$work/$name.json" "$work/$name.probe.json" >&2
    if [ -n "${OUT_DIR:-}" ]; then
        for f in full.json probe.json server.json log; do cp "$work/$name.$f" "$OUT_DIR/$tag$name.$f" 2>/dev/null || true; done
    fi
}

fsync=$("$bin/fsync-probe" --dir "$work" --count 2000 --json)
for b in $backends; do
    case $b in
        sqlite) run_backend sqlite 0 --data-dir "$work/sqlite" ;;
        sqlite_flood) run_backend sqlite_flood "$flood" --data-dir "$work/sqlite_flood" ;;
        postgres)
            run_backend postgres 0 --database-url postgres://postgres@127.0.0.1:5432/test --database-schema "bench_$$"
            psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA bench_$$ CASCADE" >/dev/null 2>&1 || true ;;
        *) echo "unknown backend $b" >&2; exit 2 ;;
    esac
done
fsync_after=$("$bin/fsync-probe" --dir "$work" --count 2000 --json)

python3 - "$work" "$fsync" "$fsync_after" "$pendants" "$seconds" "$rate" "$heartbeat" "$flood" "$probes" "$backends" <<'PY'
import json, sys
work, f1, f2, pendants, seconds, rate, hb, flood, probes, backends = sys.argv[1:]
backends = backends.split()
f1, f2 = json.loads(f1), json.loads(f2)
print(f"{pendants} pendants, {rate} presses/s, heartbeat {hb} s, {seconds} s per run; "
      f"sqlite_flood adds {flood} technical events/s; {probes} probe presses each, one at a time, "
      f"timed to the ACK, the operators' live feed and the carers' MQTT offer\n")
print("| measured | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | alarms sent / acked / lost | other events acked |")
print("|---|---|---|---|---|---|---|---|")
print(f"| fsync floor (512 B + fdatasync), before | {f1['p50_ms']:.3f} | | {f1['p99_ms']:.3f} | | {f1['max_ms']:.3f} | | |")
for name in backends:
    r = json.load(open(f"{work}/{name}.json"))
    a = r["ack_ms"]
    print(f"| press → ACK, {name} | {a['p50']:.3f} | {a['p90']:.3f} | {a['p99']:.3f} | {a['p999']:.3f} | {a['max']:.3f} "
          f"| {r['alarms_sent']} / {r['alarms_acked']} / {r['alarms_lost']} | {r['heartbeats_acked']} |")
for name in backends:
    p = json.load(open(f"{work}/{name}.probe.json"))
    for key, what in (("ack_ms", "probe press → ACK"), ("console_ms", "press → operators' live feed"),
                      ("offer_ms", "press → carer's offer (MQTT)")):
        if key not in p:
            print(f"| {what}, {name} | probe failed | | | | | | |")
            continue
        h = p[key]
        missed = p.get("missed_console" if key == "console_ms" else "missed_offer", 0) if key != "ack_ms" else 0
        print(f"| {what}, {name} | {h['p50']:.3f} | {h['p90']:.3f} | {h['p99']:.3f} | | {h['max']:.3f} "
              f"| {h['n']} seen, {missed} missed | |")
print(f"| fsync floor, after | {f2['p50_ms']:.3f} | | {f2['p99_ms']:.3f} | | {f2['max_ms']:.3f} | | |")
# The server's own cost while the fleet ran: CPU time per frame it answered
# (alarms, heartbeats, technical events) and its resident set.
print("\n| run | frames answered | frames/s | server CPU s | CPU µs per frame | RSS MiB (peak) |")
print("|---|---|---|---|---|---|")
for name in backends:
    r = json.load(open(f"{work}/{name}.json"))
    s = json.load(open(f"{work}/{name}.server.json"))
    frames = r["alarms_acked"] + r["heartbeats_acked"]
    cpu = s["after"]["cpu_s"] - s["before"]["cpu_s"]
    print(f"| {name} | {frames} | {frames / float(seconds):.0f} | {cpu:.2f} | {cpu / max(frames, 1) * 1e6:.1f} "
          f"| {s['after']['rss_kib'] / 1024:.1f} ({s['after']['hwm_kib'] / 1024:.1f}) |")
PY
