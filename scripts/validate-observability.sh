#!/usr/bin/env bash
# Validates deploy/prometheus and deploy/grafana offline:
#  - promtool check rules on the alert rules, promtool test rules with
#    alerts.test.yml (each alert fires on the series meant to fire it);
#  - the Grafana dashboard's shape (unique panel ids, a datasource and a
#    PromQL target on every panel), every panel query parsed by promtool,
#    and every quorumkv_* metric the dashboard and the alerts name listed in
#    the README's metrics table (which tools/tests/it/observe.rs checks against a
#    live node's /metrics), so neither can query a metric that does not exist.
# promtool comes from Debian's prometheus package, unpacked into .tools/
# without installing it (no daemon is started).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$PWD/.tools"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

promtool=$(command -v promtool || true)
if [[ -z "$promtool" ]]; then
  promtool="$tools/promtool"
  if [[ ! -x "$promtool" ]]; then
    mkdir -p "$tools"
    (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } \
      && dpkg-deb -x prometheus_*.deb unpacked && cp unpacked/usr/bin/promtool "$promtool")
  fi
fi

(cd deploy/prometheus && "$promtool" check rules alerts.yml && "$promtool" test rules alerts.test.yml)

python3 - "$work/dashboard-rules.yml" <<'PY'
import json, re, sys
out = sys.argv[1]
readme = open("README.md", encoding="utf-8").read()
listed = set(re.findall(r"^\| `(quorumkv_[a-z_]+)` \|", readme, re.M))
assert listed, "README has no metrics table"

def metrics_in(expr):
    names = set()
    for m in re.findall(r"\bquorumkv_[a-z_]+", expr):
        for suffix in ("_bucket", "_count", "_sum"):
            if m.endswith(suffix) and m[: -len(suffix)] in listed:
                m = m[: -len(suffix)]
        names.add(m)
    return names

d = json.load(open("deploy/grafana/quorumkv.json", encoding="utf-8"))
for field in ("uid", "title", "panels", "schemaVersion"):
    assert field in d, f"dashboard lacks {field}"
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
exprs = []
for p in d["panels"]:
    assert p.get("datasource", {}).get("type") == "prometheus", f"panel {p['title']}: no Prometheus datasource"
    assert {"h", "w", "x", "y"} <= set(p.get("gridPos", {})), f"panel {p['title']}: no gridPos"
    assert p.get("targets"), f"panel {p['title']}: no query"
    for t in p["targets"]:
        assert t.get("expr"), f"panel {p['title']}: empty query"
        exprs.append(t["expr"])
used = set().union(*map(metrics_in, exprs))
unknown = used - listed
assert not unknown, f"the dashboard queries metrics the node does not export: {sorted(unknown)}"
wanted = {"quorumkv_requests_total", "quorumkv_request_duration_seconds", "quorumkv_quorum_failures_total",
          "quorumkv_read_siblings", "quorumkv_hints_queued", "quorumkv_anti_entropy_rounds_total",
          "quorumkv_rocksdb_size_bytes", "quorumkv_rocksdb_pending_compaction_bytes"}
assert wanted <= used, f"the dashboard misses {sorted(wanted - used)}"
alerts = open("deploy/prometheus/alerts.yml", encoding="utf-8").read()
unknown = metrics_in(alerts) - listed
assert not unknown, f"the alerts use metrics the node does not export: {sorted(unknown)}"
# Grafana's variables, replaced by what they expand to, so promtool can parse each query.
rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
         for i, e in enumerate(exprs)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(out, "w"))
print(f"dashboard: {len(d['panels'])} panels, {len(exprs)} queries over {len(used)} metrics")
PY
"$promtool" check rules "$work/dashboard-rules.yml" | grep SUCCESS
