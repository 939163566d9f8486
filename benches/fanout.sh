#!/usr/bin/env bash
# Reads that ask R replicas against reads that ask all N (`read_fanout`
# "quorum" and "all"), A/B on one preloaded 3-node dev cluster (loopback
# only): the cluster is restarted in each mode in turn, FANOUT_ROUNDS
# times, and runs GET R=2 and GET R=1 for BENCH_DURATION each (after a
# 2 s warm-up left out), with the cluster's CPU per operation (from /proc,
# from the end of the warm-up) and the speculative reads it made.
# Alternating on one data set keeps the VM's drift out of the comparison
# (about 6 minutes with the defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
duration=${BENCH_DURATION:-15s}
port=${BENCH_PORT:-29443}
keys=${BENCH_KEYS:-100000}
rounds=${FANOUT_ROUNDS:-2}

dev_cluster "$port"
up() {
  sed -i "s/^read_fanout = .*/read_fanout = \"$1\"/" "$work"/dev/node*.toml
  dev_up
}
bench() { "$bin" bench --cluster "$work/dev/cluster.json" --json --quiet --concurrency 64 --keys "$keys" --key-prefix kv "$@"; }

up quorum
bench --name preload --workload get --preload --requests 1 >/dev/null
dev_down
echo "| round | read_fanout | scenario | ops/s | p50 ms | p99 ms | CPU µs/op | errors |"
echo "|---:|---|---|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for mode in quorum all; do
    up "$mode"
    for r in 2 1; do
      (sleep 2; cpu >"$work/cpu0") &
      bench --name "get-r$r" --workload get --r "$r" --warmup 2s --duration "$duration" >"$work/run.json"
      after=$(cpu)
      python3 - "$work/run.json" "$round" "$mode" "$(cat "$work/cpu0")" "$after" <<'PY'
import json, sys
path, rnd, mode, before, after = sys.argv[1:]
r = json.load(open(path))
l = r["latency"]
cpu = (float(after) - float(before)) * 1e6 / max(r["ops"], 1)
print(f"| {rnd} | {mode} | {r['scenario']} | {r['ops_per_sec']:.0f} | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {cpu:.0f} | {r['errors']} |")
PY
    done
    spec=$(curl -fsS --cacert "$work/dev/ca.pem" "https://127.0.0.1:$port/cluster" |
      python3 -c "import json,sys; print(json.load(sys.stdin)['stats']['speculative_reads'])")
    echo "| $round | $mode | speculative reads (node1) | $spec | | | | |"
    dev_down
  done
done
