#!/usr/bin/env bash
# Run every test of the workspace, with the services they need, then a short
# demo as a smoke test. Fails if the PostgreSQL or Mosquitto tests did not run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ops/services.sh
# Each PostgreSQL test works in a schema of its own; drop those earlier runs left
# behind (one statement each: a single transaction would run out of locks).
pg="psql -h 127.0.0.1 -U postgres -d test -q"
$pg -Atc "SELECT format('DROP SCHEMA %I CASCADE;', nspname) FROM pg_namespace
          WHERE nspname ~ '^(t|crash)_[0-9a-f]{16}\$'" 2>/dev/null | $pg >/dev/null 2>&1 || true

# The browser test (tests/pipeline/browser.rs) drives Debian's Chromium with
# Playwright from npm (node 20 and npm come with the machine); a CJK font makes
# its screenshots legible. Installed when missing, quietly.
pkgs=()
command -v chromium >/dev/null || pkgs+=(chromium)
# HAProxy (Debian's) in front of two servers: tests/pipeline/cluster.rs
# starts and stops its own, on loopback ports.
command -v haproxy >/dev/null || pkgs+=(haproxy)
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || pkgs+=(fonts-wqy-microhei)
if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "installing ${pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ] ||
   [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error >/dev/null
fi

# Two SIA DC-09 transmitters from PyPI that we did not write (tests/peers/dc09/):
# tests/pipeline/devices.rs sends their messages, plain and encrypted, to the
# server and lets them judge its answers.
peers=target/peers/dc09
[ -x "$peers/bin/python" ] || python3 -m venv "$peers"
"$peers/bin/pip" install -q --disable-pip-version-check -r tests/peers/dc09/requirements.txt

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
mkdir -p target
log=target/test-output.log

cargo test --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"

# These exercise the real PostgreSQL and Mosquitto: they must have run and passed.
for t in native::sos_path_postgres_mosquitto native::retries_and_repeated_presses_postgres \
         native::unverified_senders_postgres crash::crash_postgres native::sos_path_sqlite_embedded_broker \
         incidents::incident_lifecycle_postgres mqtt::mqtt_event_to_carer_and_back_postgres_mosquitto \
         mqtt::mqtt_event_to_carer_and_back_sqlite_embedded mqtt::two_servers_with_a_shared_subscription_split_the_stream \
         mqtt::a_broker_restart_in_the_middle_of_a_stream_loses_nothing \
         mqtt::events_published_while_the_server_is_down_are_delivered_when_it_returns \
         notify::a_busy_webhook_is_retried_postgres \
         browser::operator_takes_an_sos_to_closed_in_headless_chromium browser::the_console_files_are_served \
         reports::history_against_an_independent_count_postgres reports::endpoints_by_role_postgres \
         devices::dc09_from_independent_transmitters_sqlite devices::dc09_from_independent_transmitters_postgres \
         dedup::every_distinct_event_once_sqlite dedup::every_distinct_event_once_postgres \
         dedup::over_the_wire::every_answer_follows_its_commit_sqlite dedup::over_the_wire::every_answer_follows_its_commit_postgres \
         outage::sqlite_locked_away_nothing_read_is_dropped outage::postgres_away_nothing_read_is_dropped \
         offers::an_ended_incident_takes_its_offer_back_postgres offers::one_live_offer_per_carer_and_a_job_in_order_postgres \
         console::an_open_feed_ends_at_log_out_and_when_the_account_is_disabled \
         model::incident_engine_model_sqlite model::incident_engine_model_postgres \
         mqtt_security::a_stranger_reads_nothing_and_raises_an_sos_only_in_quarantine \
         mqtt_security::a_device_speaks_only_for_itself_and_a_revoked_one_not_at_all \
         mqtt_security::a_carer_reads_and_answers_only_their_own_offers \
         mqtt_security::nobody_takes_over_the_servers_session \
         mqtt_security::mosquitto_is_kept_in_step_with_the_registry \
         mqtt_security::the_embedded_broker_speaks_tls \
         mqtt_security::retained_messages_carry_no_personal_data \
         auth::unused_sessions_end_sqlite auth::unused_sessions_end_postgres \
         registry::a_residents_data_is_exported_sqlite registry::a_residents_data_is_exported_postgres \
         auth::timeline_steps_are_sealed_sqlite auth::timeline_steps_are_sealed_postgres \
         at_rest::health_and_positions_are_sealed_and_read_back_sqlite \
         at_rest::health_and_positions_are_sealed_and_read_back_postgres \
         at_rest::plain_rows_are_sealed_and_keys_rotate_and_rewrap_sqlite \
         at_rest::plain_rows_are_sealed_and_keys_rotate_and_rewrap_postgres \
         at_rest::a_running_server_takes_up_a_rotation \
         at_rest::retention_purges_old_records_and_the_chain_still_verifies_sqlite \
         at_rest::retention_purges_old_records_and_the_chain_still_verifies_postgres \
         at_rest::retention_never_purges_over_an_altered_timeline \
         at_rest::a_purge_retires_an_earlier_purge_and_the_chain_verifies \
         auth::data_keys_from_the_command_line \
         devices::dc09_from_independent_transmitters_sqlite \
         devices::dc09_from_independent_transmitters_postgres \
         coverage::every_public_store_function_is_in_the_suite \
         incidents::presses_open_one_incident_and_fold_into_it::postgres \
         incidents::the_state_machine_moves_an_incident_and_writes_each_step::postgres \
         keys::an_export_holds_no_events_of_a_devices_former_resident::postgres \
         alarms::a_device_named_twice_in_one_presence_write_keeps_its_latest_report::postgres \
         cluster::two_servers_share_supervision_without_false_or_double_alarms \
         cluster::devices_reach_a_live_server_through_haproxy \
         cluster::a_server_killed_under_load_loses_nothing_and_raises_no_false_alarm; do
    if ! grep -q "^test $t \.\.\. ok$" "$log"; then
        echo "ops/test.sh: required test $t did not run and pass" >&2
        exit 1
    fi
done

# The alerting rules, checked and unit-tested by Prometheus's own promtool.
echo "== alert rules (promtool)"
bash ops/check-alerts.sh

# Every metric the alerts and the Grafana dashboard name is one the server emits.
python3 ops/check-metrics.py

# The balancer configuration shipped for a cluster, checked by HAProxy itself.
echo "== balancer configuration (haproxy -c)"
haproxy -c -q -f ops/haproxy.cfg

# The API against its own OpenAPI document, fuzzed by an independent tool.
echo "== API fuzz (schemathesis)"
bash ops/api-fuzz.sh 20

# The README's first command, short: the whole path on embedded defaults, nothing
# lost, and the console it prints answering while it runs.
echo "== demo smoke run"
# `cargo test` builds the binaries of packages without tests only as test harnesses:
# build them as programs (the demo here, the simulators for the smoke below).
cargo build --workspace --bins -q
target/debug/pingantong-demo --duration 4 --clients 50 --alarm-rate 5 --json \
    >target/demo-smoke.json 2>target/demo-smoke.err &
demo=$!
console=""
for _ in $(seq 1 100); do
    console=$(grep -o 'console: http://[0-9.:]*/' target/demo-smoke.err | cut -d' ' -f2 || true)
    [ -n "$console" ] && break
    sleep 0.1
done
page=$(curl -fsS --max-time 5 "$console" || true)
wait "$demo"
cat target/demo-smoke.json
grep -q '"alarms_lost":0' target/demo-smoke.json
if ! grep -q '<meta charset="utf-8">' <<<"$page"; then
    echo "ops/test.sh: the demo's console (${console:-no address printed}) did not answer" >&2
    cat target/demo-smoke.err >&2
    exit 1
fi
echo "demo: 1 passed, 0 failed"

# The end-to-end benchmark, small: 1,000 pendants for a few seconds on SQLite with
# the embedded broker and on PostgreSQL through Mosquitto. It asserts that nothing
# was lost and every alarm was acknowledged, never a timing.
echo "== end-to-end smoke (benches/smoke.sh)"
BIN=target/debug bash benches/smoke.sh 1000 5 100 20
