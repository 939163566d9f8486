#!/usr/bin/env bash
# Does throughput hold from a small to a large key space, and how much memory
# does a node use holding 1M keys? Three `quorumkv serve` processes (one per
# node, so each node's RSS is its own), loopback only, bounded in time
# (~6 minutes with the defaults). Writes $BENCH_OUT/scale.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
duration=${BENCH_DURATION:-15s}
out=${BENCH_OUT:-benches/results}
port=${BENCH_PORT:-38443}
small=${SCALE_SMALL:-10000}
large=${SCALE_LARGE:-1000000}

cargo build --release --quiet
bin=target/release/quorumkv
work=$(mktemp -d)
"$bin" dev --dir "$work/dev" --port "$port" --init-only >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for i in 1 2 3; do
  QUORUMKV_LOG=warn "$bin" serve --config "$work/dev/node$i.toml" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
wait_ready "$work/dev/ca.pem" "$port"

bench() { "$bin" bench --cluster "$work/dev/cluster.json" --json --quiet "$@"; }
rss() { for p in "${pids[@]}"; do awk '/VmRSS/ {printf "%d ", $2/1024}' "/proc/$p/status"; done; }
row() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency"]
print("| %s | %s | %.0f | %.2f | %.2f | %d |" % (sys.argv[1], r["workload"], r["ops_per_sec"], l["p50_ms"], l["p99_ms"], r["errors"]))
' "$1"
}

lines=("| keys | workload | ops/s | p50 ms | p99 ms | errors |" "|---:|---|---:|---:|---:|---:|")
for keys in "$small" "$large"; do
  echo "== $keys keys: preload" >&2
  start=$(date +%s)
  bench --workload put --w 2 --keys "$keys" --key-prefix "s$keys" --preload --requests 1 >/dev/null
  echo "   preload took $(( $(date +%s) - start )) s; node RSS MiB: $(rss)" >&2
  lines+=("$(bench --workload get --r 2 --keys "$keys" --key-prefix "s$keys" --duration "$duration" | row "$keys")")
  lines+=("$(bench --workload mixed:90 --keys "$keys" --key-prefix "s$keys" --duration "$duration" | row "$keys")")
done
lines+=("" "Resident memory after holding $large keys of 1 KiB (plus $small), per node: $(rss)MiB (block cache 128 MiB).")
mkdir -p "$out"
printf '%s\n' "${lines[@]}" | tee "$out/scale.md"
