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
if [ $# -lt 1 ]; then
  echo "usage: $0 NAME [BENCH-ARGS...]  (not --duration, --keys, --concurrency, --json: set here)" >&2
  exit 2
fi
name=$1; shift
out=${PROFILE_OUT:-benches/results}
port=${BENCH_PORT:-28643}
keys=${BENCH_KEYS:-100000}
freq=${PROFILE_HZ:-149}
command -v perf >/dev/null || { echo "perf is not installed (apt install linux-perf)" >&2; exit 1; }
dev_cluster "$port"
dev_up
load=
trap 'if [ -n "$load" ]; then kill "$load" 2>/dev/null || true; fi; dev_cleanup' EXIT
mkdir -p "$out"
bench() {
  "$bin" bench --cluster "$work/dev/cluster.json" --concurrency 64 --keys "$keys" --quiet "$@"
}
# PRELOAD=1 writes every key once under the prefix `kv` (read scenarios
# then pass --key-prefix kv).
if [ -n "${PRELOAD:-}" ]; then bench --workload get --preload --requests 1 --key-prefix kv >/dev/null; fi
# The bench's own errors do not stop the profile: the summary says them.
bench "$@" --duration 24s --max-errors 1000000000 --json >"$out/profile-$name.json" &
load=$!
sleep 5.5
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# The window is the script's own 12 s: perf starts before it and writes its
# file after it, so neither counts in the CPU or the operations.
perf record -q -F "$freq" --call-graph dwarf,16384 -p "$pid" -o "$out/profile-$name.data" -- sleep 13 &
perf_pid=$!
sleep 0.5
t0=$(ticks)
sleep 12
t1=$(ticks)
wait $perf_pid
wait $load || true
load=
# Operations completed in the same window: the bench's per-second
# timeline counts from its start, so seconds 6 to 17 (the warm-up is 0).
python3 - "$out/profile-$name.json" "$((t1 - t0))" "$(getconf CLK_TCK)" "$name" >"$work/us" <<'PY'
import json, sys
summary, ticks, hz, name = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ops = sum(s["ops"] for s in summary["timeline"] if 6 <= s["t_s"] < 18)
us = ticks / hz / max(ops, 1) * 1e6
versions = " ".join(f"{v}:{n}" for v, n in summary.get("http_versions", {}).items())
print(f"{us:.0f}")
print(f"{name}: {ops / 12:.0f} ops/s in the sampled 12 s (over {versions or '-'}), cluster CPU {us:.0f} µs/op (perf's own cost included)", file=sys.stderr)
PY
perf script -i "$out/profile-$name.data" 2>/dev/null | python3 benches/profile_split.py "$(cat "$work/us")"
