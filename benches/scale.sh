#!/usr/bin/env bash
# Does throughput hold from a small to a large key space, and how much memory
# does a node use holding 1M keys? Three `quorumkv serve` processes (one per
# node, so each node's RSS is its own), loopback only, bounded in time
# (~6 minutes with the defaults). Each scenario: 64 connections, a 2 s
# warm-up left out, the three nodes' CPU per operation (from /proc, from
# the end of the warm-up), the KiB per operation the nodes read from the
# disk, and each node's RSS after it. Writes
# $BENCH_OUT/scale.md, with the large key space's figures as a share of
# the small one's (issue 13: within 15 %), and whether a node's peak RSS
# passed SCALE_RSS_BOUND MiB (default 512, issue 13's bound).
#
# Reads are measured on a settled store, as YCSB's run phase follows its
# load phase: after each preload the script waits (at most
# SCALE_SETTLE_MAX seconds) until RocksDB reports no compaction debt on any
# node, and says how long that took. SCALE_SETTLE_MAX=0 measures right
# after the load, with the load's compactions still running.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
duration=${BENCH_DURATION:-15s}
out=${BENCH_OUT:-benches/results}
port=${BENCH_PORT:-38443}
small=${SCALE_SMALL:-10000}
large=${SCALE_LARGE:-1000000}
settle_max=${SCALE_SETTLE_MAX:-600}

serve_cluster "$port"
for i in 0 1 2; do start "$i"; done
wait_ready "$ca" "$port"

# metric NAME I: node I's value of the unlabelled metric NAME (empty, and a
# failed status, when the node does not answer within 5 s).
metric() {
  curl -fsS -m 5 --cacert "$work/dev/ca.pem" "https://127.0.0.1:$((port + $2))/metrics" |
    awk -v name="$1" '$1 == name {print $2}'
}
# Bytes compaction still owes, summed over the three nodes (RocksDB's
# estimate); "unknown" when a node does not answer.
owed() {
  local i sum=0 v
  for i in 0 1 2; do
    v=$(metric quorumkv_rocksdb_pending_compaction_bytes "$i") || true
    [ -n "$v" ] || { echo unknown; return; }
    sum=$((sum + v))
  done
  echo "$sum"
}
# settle: waits until no node owes compaction (bounded by $settle_max s).
settle() {
  local start=$SECONDS
  while (( SECONDS - start < settle_max )) && [ "$(owed)" != 0 ]; do sleep 2; done
  echo "   settled after $((SECONDS - start)) s; compaction still owed: $(owed) bytes" >&2
}
bench() { "$bin" bench --cluster "$work/dev/cluster.json" --json --quiet --concurrency 64 "$@"; }
# status_mib FIELD PID: a /proc/PID/status memory field in MiB (empty when
# the process is gone).
status_mib() { awk -v f="$1:" '$1 == f {printf "%d", $2 / 1024}' "/proc/$2/status" 2>/dev/null || true; }
rss() { for p in "${pids[@]}"; do printf '%s ' "$(status_mib VmRSS "$p")"; done; }
cpu() { cpu_of "${pids[@]}"; }
# Bytes the three nodes made the kernel read from the disk so far
# (read_bytes in /proc/PID/io): reads the OS page cache could not serve.
# This VM may page out page cache it finds idle (see the README, "The page
# cache on this VM is trimmed"), and a run that reads the disk measures
# that, not the read path over cached files the issue is about.
disk() {
  local p; for p in "${pids[@]}"; do cat "/proc/$p/io"; done | awk '$1 == "read_bytes:" {s += $2} END {print s + 0}'
}
# run KEYS WORKLOAD ARGS...: one scenario, its row appended to $work/rows.
run() {
  local keys=$1 workload=$2; shift 2
  rm -f "$work/cpu0"
  (sleep 2; echo "$(cpu) $(disk)" >"$work/cpu0") &
  local sampler=$!
  bench --workload "$workload" --keys "$keys" --key-prefix "s$keys" --warmup 2s --duration "$duration" "$@" >"$work/run.json"
  local after; after="$(cpu) $(disk)"
  wait "$sampler"
  python3 - "$work/run.json" "$keys" "$workload" "$(cat "$work/cpu0")" "$after" "$(rss)" >>"$work/rows" <<'PY'
import json, sys
path, keys, workload, before, after, rss = sys.argv[1:]
(cpu0, disk0), (cpu1, disk1) = before.split(), after.split()
r = json.load(open(path))
l = r["latency"]
ops = max(r["ops"], 1)
cpu = (float(cpu1) - float(cpu0)) * 1e6 / ops
disk = (int(disk1) - int(disk0)) / 1024 / ops
print(f"{keys}\t{workload} ({r['consistency']})\t{r['ops_per_sec']:.0f}\t{l['p50_ms']:.2f}\t{l['p99_ms']:.2f}\t{cpu:.0f}\t{disk:.2f}\t{r['errors']}\t{rss.strip()}")
PY
}

: >"$work/rows"
for keys in "$small" "$large"; do
  echo "== $keys keys: preload" >&2
  start=$(date +%s)
  bench --workload put --w 2 --keys "$keys" --key-prefix "s$keys" --preload --requests 1 >/dev/null
  echo "   preload took $(( $(date +%s) - start )) s; node RSS MiB: $(rss)" >&2
  settle
  run "$keys" get --r 2
  run "$keys" mixed:90
done
mapfile -t lines < <(python3 - "$work/rows" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print("| keys | workload | ops/s | × small | p50 ms | p99 ms | CPU µs/op | disk read KiB/op | errors | node RSS MiB |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
small = {}
for keys, workload, ops, p50, p99, cpu, disk, errors, rss in rows:
    small.setdefault(workload, float(ops))
    print(f"| {keys} | {workload} | {ops} | {float(ops) / small[workload]:.2f} | {p50} | {p99} | {cpu} | {disk} | {errors} | {rss} |")
PY
)
lines+=("" "Resident memory after holding $large keys of 1 KiB (plus $small), per node: $(rss)MiB (block cache 128 MiB).")
# Issue 13's memory bound (also the StatefulSet's request) against each
# node's peak over the whole script (VmHWM, loads included), in words, so a
# build that grows past it, or a node that died, shows in the report.
bound=${SCALE_RSS_BOUND:-512}
peaks="" over=""
for i in 0 1 2; do
  hwm=$(status_mib VmHWM "${pids[$i]}")
  if [ -z "$hwm" ]; then
    peaks+="gone " over+=" node$((i + 1)) (not running)"
  else
    peaks+="$hwm "
    if [ "$hwm" -gt "$bound" ]; then over+=" node$((i + 1))"; fi
  fi
done
lines+=("Peak resident memory per node (VmHWM): ${peaks}MiB; $bound MiB bound: ${over:+OVER on}${over:-within}.")
# How much of each node's table files the OS page cache held at the end: a
# read of a block outside both caches goes to the disk, which is what a
# large key space costs on a machine whose page cache is short or trimmed.
# A file compaction removes between the glob and fincore's open, or no
# table file at all in a small run, must not cost the run its report.
if command -v fincore >/dev/null; then
  held=$(for i in 1 2 3; do
    { fincore -b -n -o RES,SIZE "$work/dev/node$i/data/"*.sst 2>/dev/null || true; } |
      awk '{r += $1; s += $2} END {printf "%d/%d ", r / 1048576, s / 1048576}'
  done)
  lines+=("Table files in the OS page cache at the end, per node (MiB held/MiB): ${held% }.")
fi
# Index and filter memory held outside the block cache, per node.
readers=$(for i in 0 1 2; do
  { metric quorumkv_rocksdb_table_readers_bytes "$i" 2>/dev/null || true; } | awk '{printf "%.1f ", $1 / 1048576}'
done)
lines+=("Indexes and filters outside the block cache, per node (MiB): ${readers% }.")
mkdir -p "$out"
printf '%s\n' "${lines[@]}" | tee "$out/scale.md"
