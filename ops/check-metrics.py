#!/usr/bin/env python3
"""Every metric the alerts (ops/alerts.yml) and the Grafana dashboard
(ops/grafana-dashboard.json) name is one the server emits: a rule or a panel
over a metric that does not exist would stay silent for ever."""
import json
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
emitted = set()
for path in (root / "src").rglob("*.rs"):
    emitted.update(re.findall(r'(?:counter|gauge|histogram)!\(\s*"(pat_[a-z0-9_]+)"', path.read_text()))
if not emitted:
    sys.exit("check-metrics: no metric found in src/ (the pattern is stale)")

named = {}
dashboard = json.loads((root / "ops" / "grafana-dashboard.json").read_text())
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        for m in re.findall(r"\bpat_[a-z0-9_]+", target["expr"]):
            named.setdefault(m, []).append(f'dashboard: {panel["title"]}')
alerts = (root / "ops" / "alerts.yml").read_text()
for m in re.findall(r"expr:.*", alerts):
    for name in re.findall(r"\bpat_[a-z0-9_]+", m):
        named.setdefault(name, []).append("alerts.yml")

def base(name):
    # A histogram is exported as _bucket, _sum and _count series.
    return re.sub(r"_(bucket|sum|count)$", "", name)

missing = {m: where for m, where in named.items() if m not in emitted and base(m) not in emitted}
if missing:
    for m, where in sorted(missing.items()):
        print(f"check-metrics: {m} is not emitted by the server (named in {', '.join(sorted(set(where)))})")
    sys.exit(1)
print(f"check-metrics: {len(named)} metrics named by the alerts and the dashboard, all emitted")
