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
         reports::history_against_an_independent_count_postgres reports::endpoints_by_role_postgres; do
    if ! grep -q "^test $t \.\.\. ok$" "$log"; then
        echo "ops/test.sh: required test $t did not run and pass" >&2
        exit 1
    fi
done

# The README's first command, short: the whole path on embedded defaults, nothing lost.
echo "== demo smoke run"
target/debug/pingantong demo --duration 3 --clients 50 --alarm-rate 5 --json | tee target/demo-smoke.json
grep -q '"alarms_lost":0' target/demo-smoke.json
echo "demo: 1 passed, 0 failed"
