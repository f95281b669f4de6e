#!/usr/bin/env bash
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432
# (trust auth, database `test`) and Mosquitto on 127.0.0.1:1883.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 60); do
        port_open "$1" && return 0
        sleep 0.5
    done
    echo "ops/services.sh: nothing listens on 127.0.0.1:$1 after 30 s ($2)" >&2
    return 1
}

if ! port_open 5432; then
    echo "starting PostgreSQL"
    if ! command -v pg_ctlcluster >/dev/null; then
        echo "ops/services.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_port 5432 PostgreSQL
if command -v psql >/dev/null && ! psql -h 127.0.0.1 -U postgres -d test -qc 'select 1' >/dev/null 2>&1; then
    createdb -h 127.0.0.1 -U postgres test 2>/dev/null || true
fi

if ! port_open 1883; then
    echo "starting Mosquitto"
    if ! command -v mosquitto >/dev/null; then
        echo "ops/services.sh: Mosquitto is not installed (apt-get install mosquitto)" >&2
        exit 1
    fi
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
wait_port 1883 Mosquitto

# Tools the broker tests use to make their own brokers (password file, TLS certificates).
for tool in mosquitto_passwd openssl; do
    if ! command -v "$tool" >/dev/null; then
        echo "installing $tool"
        apt-get update -qq && apt-get install -y -qq mosquitto openssl >/dev/null
    fi
done
