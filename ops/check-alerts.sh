#!/usr/bin/env bash
# Check the alerting rules (ops/alerts.yml) and run their unit tests
# (ops/alerts.test.yml) with promtool, from Debian's `prometheus` package
# (installed when missing and run as root; otherwise skipped with a note).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing prometheus (for promtool)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "ops/check-alerts.sh: promtool missing (apt-get install prometheus); not checked" >&2
        exit 0
    fi
fi
promtool check rules alerts.yml
promtool test rules alerts.test.yml
