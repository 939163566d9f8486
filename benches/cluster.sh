#!/usr/bin/env bash
# The standard benchmark suite: a fresh local 3-node cluster (release build,
# N=3, loopback only), each scenario for a fixed time, the ceiling (same
# client against GET /health/live) in the same run. Writes
# $BENCH_OUT/results.{md,json}, the cluster's CPU per operation (all
# three nodes, from /proc; the bench client is another process), and the
# pictures: $BENCH_OUT/report/index.html (throughput and latency over time
# and HDR percentile curves per scenario). Bounded: about 3 minutes with
# the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
duration=${BENCH_DURATION:-20s}
out=${BENCH_OUT:-benches/results}
port=${BENCH_PORT:-28443}
concurrency=${BENCH_CONCURRENCY:-64}
keys=${BENCH_KEYS:-100000}
protocol=${BENCH_PROTOCOL:-http1}

dev_cluster "$port"
# BENCH_READ_FANOUT=all: GETs ask all N replicas (Dynamo's way), to compare
# with the default quorum fan-out.
if [ -n "${BENCH_READ_FANOUT:-}" ]; then
  sed -i "s/^read_fanout = .*/read_fanout = \"$BENCH_READ_FANOUT\"/" "$work"/dev/node*.toml
  grep -q "^read_fanout = \"$BENCH_READ_FANOUT\"" "$work"/dev/node1.toml
fi
dev_up

mkdir -p "$out"
rm -rf "$out/report"
run() {
  local name=$1; shift
  echo "== $name" >&2
  # The CPU count starts when the 2 s warm-up ends (as the measured ops do).
  (sleep 2; cpu >"$work/$name.cpu0") &
  "$bin" bench --cluster "$work/dev/cluster.json" --json --quiet --name "$name" --report "$out/report" \
    --concurrency "$concurrency" --keys "$keys" --protocol "$protocol" --warmup 2s "$@" >"$work/$name.json"
  echo "$(cat "$work/$name.cpu0") $(cpu)" >"$work/$name.cpu"
}
run ceiling --ceiling --duration "$duration"
# Blind PUTs of an existing key add siblings, so each write scenario has its
# own key space; reads run on a freshly preloaded one (one version per key).
run put-w2 --workload put --w 2 --key-prefix put-w2 --duration "$duration"
run put-w1 --workload put --w 1 --key-prefix put-w1 --duration "$duration"
run put-dw1 --workload put --w 2 --dw 1 --key-prefix put-dw1 --duration "$duration"
echo "== preload" >&2
"$bin" bench --cluster "$work/dev/cluster.json" --json --quiet --name preload --workload get --preload \
  --requests 1 --concurrency "$concurrency" --keys "$keys" --key-prefix kv >/dev/null
run get-r2 --workload get --r 2 --key-prefix kv --duration "$duration"
run get-r1 --workload get --r 1 --key-prefix kv --duration "$duration"
run mixed-90-10-zipf --workload mixed:90 --distribution zipf:0.99 --key-prefix kv --duration "$duration"
run ceiling-after --ceiling --duration "$duration"

python3 - "$work" "$out" <<'PY'
import json, os, platform, subprocess, sys
work, out = sys.argv[1], sys.argv[2]
names = ["ceiling", "put-w2", "put-w1", "put-dw1", "get-r2", "get-r1", "mixed-90-10-zipf", "ceiling-after"]
runs = [json.load(open(os.path.join(work, n + ".json"))) for n in names]
ceiling = runs[0]["ops_per_sec"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
lines = [
    f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
    f"3 nodes + load tool on the same machine, N=3, {runs[1]['concurrency']} requests in flight "
    f"(over {', '.join(runs[1].get('http_versions', {})) or runs[1]['protocol']}), "
    f"value {runs[1]['value_size']} B, {runs[1]['keys']} keys, {runs[1]['elapsed_s']:.0f} s per scenario.",
    "",
    "| scenario | ops/s | × ceiling | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | reads with siblings (max) | server CPU µs/op |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for n, r in zip(names, runs):
    l = r["latency"]
    before, after = map(float, open(os.path.join(work, n + ".cpu")).read().split())
    cpu_us = (after - before) * 1e6 / max(r["ops"], 1)
    lines.append(
        f"| {r['scenario']} ({r['consistency']}) | {r['ops_per_sec']:.0f} | {r['ops_per_sec'] / ceiling:.2f} | "
        f"{l['p50_ms']:.2f} | {l['p90_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {l['max_ms']:.1f} | "
        f"{r['errors']} | {r['reads_with_siblings']} ({r['max_siblings']}) | {cpu_us:.0f} |"
    )
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
# The per-second timelines and curves are in report/; the table's figures here.
json.dump([{k: v for k, v in r.items() if k not in ("timeline", "percentiles")} for r in runs],
          open(os.path.join(out, "results.json"), "w"), indent=2)
print("\n".join(lines))
PY
