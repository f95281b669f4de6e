#!/usr/bin/env bash
# Every benchmark, in one run on this machine, and benches/RESULTS.md's
# "Latest full run" section (tables, targets, ratios) and benches/plots/*.svg
# written from what it measured:
#
#   benches/run.sh          # about 40 minutes
#   benches/run.sh quick    # the same steps, small (a check of the runner)
#
# In order: the floors (fsync, loopback round trip, SQLite and PostgreSQL
# commit, MQTT publish -> deliver); the fleet at 1,000 / 10,000 / 100,000
# pendants on SQLite and PostgreSQL with console-probe timing the ACK, the
# operators' live feed and the carer's offer; the typhoon storm scenario; a
# heartbeat-heavy run for frames/s; an alarm-only run for CPU per alarm;
# memory per idle connection; the peers (pysiaalarm for SIA DC-09, Node-RED
# for MQTT); the floors again. Raw results stay in target/bench-run/<time>/.
#
# Loopback only; every step is bounded in time. Nothing else should run on the
# machine meanwhile: server and load share its two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
out=target/bench-run/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
echo "benches/run.sh: raw results in $out" >&2

bash ops/services.sh >/dev/null
# The accept queue as ops/sysctl-pingantong.conf sets it for a deployment (the
# kernel's 4,096 drops handshakes when 15,000 pendants connect at once).
for key in net.core.somaxconn net.ipv4.tcp_max_syn_backlog; do
    if [ "$(sysctl -n "$key" 2>/dev/null || echo 0)" -lt 65535 ]; then
        sysctl -qw "$key=65535" 2>/dev/null && echo "benches/run.sh: $key raised to 65535 (ops/sysctl-pingantong.conf)" >&2 ||
            echo "benches/run.sh: $key is $(sysctl -n "$key" 2>/dev/null) and cannot be raised here: the accept rate will show it" >&2
    fi
done
# One secret seed for the whole run, so a seeded SQLite city is reused between runs.
export SEED=bench SEED_CACHE=target/bench-seed
cargo build --release --workspace -q

case $mode in
    full) k1=1000 k10=10000 k100=100000 persistent=15000 secs=30 big_secs=60 probes=200 floor_count=2000 rss_pendants=10000 ;;
    quick) k1=200 k10=1000 k100=5000 persistent=1000 secs=5 big_secs=8 probes=20 floor_count=200 rss_pendants=1000 ;;
    *) echo "usage: benches/run.sh [full|quick]" >&2; exit 2 ;;
esac

step() { echo "== $*" >&2; }
# A step that fails is noted and the run goes on: the report shows what is missing.
failed() { echo "benches/run.sh: step failed: $1" >&2; echo "$1" >>"$out/failed-steps.txt"; }

step floors, before
bash benches/floors.sh "$floor_count" "$out/floors" --json >"$out/floors-before.json" || failed "floors before"

step "fleet of $k1: SQLite, SQLite through a flood of technical events, PostgreSQL"
OUT_DIR=$out TAG=size$k1 BACKENDS="sqlite sqlite_flood postgres" \
    bash benches/e2e.sh "$k1" "$secs" 50 5000 "$probes" >"$out/e2e-$k1.md" || failed "e2e $k1"
step "fleet of $k10"
OUT_DIR=$out TAG=size$k10 BACKENDS="sqlite postgres" \
    bash benches/e2e.sh "$k10" "$secs" 50 0 "$probes" >"$out/e2e-$k10.md" || failed "e2e $k10"
# This machine's hard limit on open files (20,000 per process, see README) keeps
# the persistent connections at 15,000; the rest report over a connection each.
step "fleet of $k100 ($persistent holding connections), 1,000 presses/s"
OUT_DIR=$out TAG=size$k100 BACKENDS="sqlite postgres" SIM_ARGS="--persistent $persistent" \
    bash benches/e2e.sh "$k100" "$big_secs" 1000 0 "$probes" >"$out/e2e-$k100.md" || failed "e2e $k100"

step "storm: mass disconnect, reconnect and power-restored reports, SOS through it"
OUT_DIR=$out TAG=storm BACKENDS=sqlite SCENARIO=benches/scenarios/storm.toml \
    SIM_ARGS="--persistent $persistent" \
    bash benches/e2e.sh "$k100" 70 0 0 "$probes" >"$out/e2e-storm.md" || failed "e2e storm"

# The same seeded cities as above (same size with the probes' pendants), so no new seeding.
# Every 0.15 s: 66,700 frames/s offered, past the 50,000/s target.
step "frames/s: $k10 pendants beating every 0.15 s"
OUT_DIR=$out TAG=frames BACKENDS=sqlite HEARTBEAT=0.15 \
    bash benches/e2e.sh "$k10" 20 1 0 "$probes" >"$out/e2e-frames.md" || failed "e2e frames"
step "CPU per alarm: 1,000 presses/s, no heartbeats"
OUT_DIR=$out TAG=alarms BACKENDS=sqlite HEARTBEAT=3600 \
    bash benches/e2e.sh "$k1" 20 1000 0 "$probes" >"$out/e2e-alarms.md" || failed "e2e alarms"

step "mixed fleet: every device protocol and MQTT pendants side by side"
OUT_DIR=$out TAG=mixed BACKENDS="sqlite postgres" PROTOCOL="native:2,gt06:1,watch:1,h02:1,eview:1,dc09:1,mqtt:1" \
    bash benches/e2e.sh "$k1" "$secs" 50 0 "$probes" >"$out/e2e-mixed.md" || failed "e2e mixed"

step "memory per idle connection"
bash benches/idle-rss.sh "$rss_pendants" >"$out/idle-rss.md" || failed "idle RSS"

step "peer: pysiaalarm (SIA DC-09)"
bash benches/peers/pysiaalarm.sh >"$out/peer-pysiaalarm.md" || echo "pysiaalarm run failed" >"$out/peer-pysiaalarm.md"
step "peer: Node-RED (MQTT)"
# 10,000 presses/s: past what either dispatcher takes on these two cores, so
# the offers/s ratio is a ratio of capacities (at 4,000/s both kept up).
bash benches/mqtt-peers.sh 300 10000 5 >"$out/peer-node-red.md" || echo "Node-RED run failed" >"$out/peer-node-red.md"

step floors, after
bash benches/floors.sh "$floor_count" "$out/floors" --json >"$out/floors-after.json" || failed "floors after"

step report
python3 benches/report.py "$out" "$mode"
