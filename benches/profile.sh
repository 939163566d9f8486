#!/usr/bin/env bash
# Where a request's CPU goes: a fresh local 3-node dev cluster (release
# build, one process), one `quorumkv bench` scenario, and `perf record`
# with DWARF call graphs over 12 s of it (6 s after the start). Prints the
# cluster's CPU per operation over the sampled window (from /proc) and the
# samples split into categories (benches/profile_split.py), in µs per op.
#
#   ./benches/profile.sh put --workload put --w 2
#   PRELOAD=1 ./benches/profile.sh get --workload get --r 2 --key-prefix kv
#
# Needs perf (Debian: linux-perf). Bounded: about 40 s, plus the report.
# The data stays in $PROFILE_OUT (default benches/results/profile-NAME.*).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
name=$1; shift
out=${PROFILE_OUT:-benches/results}
port=${BENCH_PORT:-28643}
keys=${BENCH_KEYS:-100000}
freq=${PROFILE_HZ:-149}
command -v perf >/dev/null || { echo "perf is not installed (apt install linux-perf)" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/quorumkv
work=$(mktemp -d)
"$bin" dev --dir "$work/dev" --port "$port" --init-only >/dev/null
QUORUMKV_LOG=warn "$bin" dev --dir "$work/dev" --port "$port" >"$work/dev.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
wait_ready "$work/dev/ca.pem" "$port"
mkdir -p "$out"
bench() {
  "$bin" bench --cluster "$work/dev/cluster.json" --concurrency 64 --keys "$keys" --quiet "$@"
}
if [ -n "${PRELOAD:-}" ]; then bench --workload get --preload --requests 1 --key-prefix kv >/dev/null; fi
bench "$@" --duration 24s --json >"$out/profile-$name.json" &
load=$!
sleep 6
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks)
perf record -q -F "$freq" --call-graph dwarf,16384 -p "$pid" -o "$out/profile-$name.data" -- sleep 12 >/dev/null 2>&1
t1=$(ticks)
wait $load
ops_per_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops_per_sec"])' "$out/profile-$name.json")
us=$(python3 -c 'import sys; t,o,hz=map(float,sys.argv[1:]); print(round(t/hz/(o*12)*1e6))' "$((t1 - t0))" "$ops_per_s" "$(getconf CLK_TCK)")
echo "$name: $(printf '%.0f' "$ops_per_s") ops/s, cluster CPU ${us} µs/op over the sampled 12 s (perf's own cost included)"
perf script -i "$out/profile-$name.data" 2>/dev/null | python3 benches/profile_split.py "$us"
