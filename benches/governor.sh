#!/usr/bin/env bash
# Does the background governor keep the foreground's tail? On a local
# 3-node cluster of `serve` processes (loopback only, bounded: about 6
# minutes with the defaults), with the governor off and then on, a steady
# open-loop load (PUT W=2 and GET R=2 at GOV_RATE requests/s each, from two
# bench processes) runs for GOV_SECS seconds:
#  1. quiet: no background work (the reference);
#  2. hint flood: node3 was down while N=2 writes queued GOV_FILL_SECS of
#     hints for it; it is started again once the load's warm-up is over,
#     and the hints are handed off under the load;
#  3. refill: node3's directory was wiped; it is started empty once the
#     load's warm-up is over and refills from the others by anti-entropy.
# For each: the load's p50/p99/p99.9 and how long the background work took
# (hints left → 0, unsynced partitions → 0; polled each 0.5 s, at most
# GOV_WAIT seconds). The partition-transfer case is benches/resize.sh, run
# with RESIZE_GOVERNOR=off and on.
# Writes $BENCH_OUT/governor.md and, with every run drawn,
# $BENCH_OUT/governor-report/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
secs=${GOV_SECS:-20}
rate=${GOV_RATE:-1500}
fill=${GOV_FILL_SECS:-15}
keys=${GOV_KEYS:-100000}
wait_max=${GOV_WAIT:-240}
out=${BENCH_OUT:-benches/results}
report=$out/governor-report
rm -rf "$report"
mkdir -p "$out"

serve_cluster "${BENCH_PORT:-30443}"
export QUORUMKV_DRAIN_DELAY_MS=0
up() { for i in 0 1 2; do start "$i"; done; for i in 0 1 2; do ready "$i"; done; }
down() { term 0 & term 1 & term 2 & wait; }
stat() { stats "$1" | python3 -c "import json,sys; s=json.load(sys.stdin)['stats']; print($2)"; }
hints() { echo $(( $(stat 0 "s['hints']['queued'].get('node3', 0)") + $(stat 1 "s['hints']['queued'].get('node3', 0)") )); }
unsynced() { stat 2 "s['unsynced_partitions']"; }
# The load goes to node1 and node2 (node3 is the one that goes down and
# comes back), as a client behind a load balancer would see it.
nodes=(--url "$(url 0)" --url "$(url 1)")

# load NAME [then...]: PUT and GET at $rate/s each for $secs s (after a 2 s
# warm-up), side by side; the rest of the arguments run once the warm-up is over.
load() {
  local name=$1; shift
  echo "== $name" >&2
  "$bin" bench "${nodes[@]}" --cacert "$ca" --json --quiet --name "$name-put" --report "$report" \
    --workload put --w 2 --key-prefix "$name" --keys "$keys" --rate "$rate" --concurrency 48 --warmup 2s \
    --duration "${secs}s" >"$work/$name-put.json" &
  local put=$!
  "$bin" bench "${nodes[@]}" --cacert "$ca" --json --quiet --name "$name-get" --report "$report" \
    --workload get --r 2 --key-prefix data --keys "$keys" --rate "$rate" --concurrency 48 --warmup 2s \
    --duration "${secs}s" >"$work/$name-get.json" &
  local get=$!
  if [ $# -gt 0 ]; then sleep 2; "$@"; fi
  wait "$put" "$get"
}

# until_zero NAME FN: seconds from now until FN prints 0 (polled), into $work/NAME.secs.
until_zero() {
  local name=$1 fn=$2 t0 left
  t0=$(date +%s.%N)
  for _ in $(seq 1 $((wait_max * 2))); do
    left=$($fn 2>/dev/null || echo -1)
    [ "$left" = 0 ] && break
    sleep 0.5
  done
  python3 -c "import time; print(f'{time.time() - $t0:.1f}' if '$left' == '0' else 'not done in ${wait_max}s')" >"$work/$name.secs"
}

# restart_and_time NAME FN: starts node3, and times its background work
# in the background (its pid in $timer).
restart_and_time() { start 2; ready 2; until_zero "$1" "$2" & timer=$!; }

for mode in off on; do
  [ "$mode" = on ] && export QUORUMKV_GOVERNOR_ENABLED=true || export QUORUMKV_GOVERNOR_ENABLED=false
  rm -rf "$work/dev"
  "$bin" dev --dir "$work/dev" --port "$port" --init-only >/dev/null
  up
  echo "== governor $mode: preload $keys keys" >&2
  "$bin" bench "${nodes[@]}" --url "$(url 2)" --cacert "$ca" --quiet --json --name preload \
    --workload get --preload --requests 1 --key-prefix data --keys "$keys" >/dev/null
  load "quiet-$mode"

  kill9 2
  sleep 3
  "$bin" bench --url "$(url 0)" --url "$(url 1)" --cacert "$ca" --quiet --json --name fill \
    --workload put --n 2 --w 2 --key-prefix "hinted-$mode" --keys "$keys" --duration "${fill}s" >/dev/null
  hints >"$work/flood-$mode.hints"
  load "flood-$mode" restart_and_time "flood-$mode" hints
  wait "$timer"

  kill9 2
  rm -rf "$work/dev/node3/data"
  load "refill-$mode" restart_and_time "refill-$mode" unsynced
  wait "$timer"
  down
done

python3 - "$work" "$out" "$rate" "$secs" <<'PY'
import json, os, sys
work, out, rate, secs = sys.argv[1:]
lines = [
    f"Open loop, PUT W=2 and GET R=2 at {rate}/s each, {secs} s per case; background work as described in benches/governor.sh.",
    "",
    "| case | governor | PUT p50 | PUT p99 | PUT p99.9 | GET p50 | GET p99 | GET p99.9 | errors | background took |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
]
for case in ["quiet", "flood", "refill"]:
    for mode in ["off", "on"]:
        put = json.load(open(os.path.join(work, f"{case}-{mode}-put.json")))
        get = json.load(open(os.path.join(work, f"{case}-{mode}-get.json")))
        took = "-"
        path = os.path.join(work, f"{case}-{mode}.secs")
        if os.path.exists(path):
            took = open(path).read().strip() + " s"
        if case == "flood":
            took += f" ({open(os.path.join(work, f'flood-{mode}.hints')).read().strip()} hints)"
        p, g = put["latency"], get["latency"]
        lines.append(
            f"| {case} | {mode} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['p999_ms']:.2f} | "
            f"{g['p50_ms']:.2f} | {g['p99_ms']:.2f} | {g['p999_ms']:.2f} | {put['errors'] + get['errors']} | {took} |"
        )
open(os.path.join(out, "governor.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
