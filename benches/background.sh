#!/usr/bin/env bash
# Does background work stall the foreground? On a local 3-node cluster of
# separate `serve` processes (loopback only, bounded: ~3 minutes), PUT W=2
# and GET R=2 latency:
#  1. quiet: default repair settings;
#  2. during full tree rebuilds: every node rebuilding 16 partition trees
#     per anti-entropy round (every 100 ms; tree_rebuild_secs=1 makes every
#     tree due), back to back, for the whole run;
#  3. during a hint flood: node3 was down while N=2 writes queued hints for
#     it on the others; it is back and the hints are being handed off (at
#     the default 8 MiB/s per node) while the load runs.
# Blind PUTs of an existing key add siblings, so each PUT run writes its own
# key space; the GETs read the preloaded one (one version per key).
# Writes $BENCH_OUT/background.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
duration=${BENCH_DURATION:-15s}
out=${BENCH_OUT:-benches/results}
keys=${BENCH_KEYS:-100000}

serve_cluster "${BENCH_PORT:-28443}"
export QUORUMKV_DRAIN_DELAY_MS=0
up() { for i in 0 1 2; do start "$i"; done; for i in 0 1 2; do ready "$i"; done; }
down() { term 0 & term 1 & term 2 & wait; }
stat() { stats "$1" | python3 -c "import json,sys; s=json.load(sys.stdin)['stats']; print($2)"; }
rebuilt() { echo $(( $(stat 0 "s['anti_entropy']['trees_rebuilt']") + $(stat 1 "s['anti_entropy']['trees_rebuilt']") + $(stat 2 "s['anti_entropy']['trees_rebuilt']") )); }
hints() { echo $(( $(stat 0 "s['hints']['queued'].get('node3', 0)") + $(stat 1 "s['hints']['queued'].get('node3', 0)") )); }
bench() {
  local name=$1; shift
  echo "== $name" >&2
  "$bin" bench --url "$(url 0)" --url "$(url 1)" --cacert "$ca" --json --quiet --name "$name" "$@" >"$work/$name.json"
}

up
echo "== preload $keys keys" >&2
"$bin" bench --url "$(url 0)" --url "$(url 1)" --url "$(url 2)" --cacert "$ca" --quiet --json --name preload \
  --workload get --preload --requests 1 --key-prefix data --keys "$keys" >"$work/preload.json"
bench ceiling --ceiling --duration "$duration"
bench quiet-put --workload put --w 2 --key-prefix quiet --keys "$keys" --duration "$duration"
bench quiet-get --workload get --r 2 --key-prefix data --keys "$keys" --duration "$duration"

down
export QUORUMKV_TREE_REBUILD_SECS=1 QUORUMKV_ANTI_ENTROPY_INTERVAL_MS=100
up
r0=$(rebuilt)
bench rebuild-put --workload put --w 2 --key-prefix rebuild --keys "$keys" --duration "$duration"
bench rebuild-get --workload get --r 2 --key-prefix data --keys "$keys" --duration "$duration"
r1=$(rebuilt)
down
unset QUORUMKV_TREE_REBUILD_SECS QUORUMKV_ANTI_ENTROPY_INTERVAL_MS
up

# node3 down; N=2 writes whose home it is go to the third node as hints.
kill9 2
sleep 3
"$bin" bench --url "$(url 0)" --url "$(url 1)" --cacert "$ca" --quiet --json --name fill \
  --workload put --n 2 --w 2 --key-prefix hinted --keys "$keys" --duration "$duration" >"$work/fill.json"
h0=$(hints)
start 2; ready 2
t0=$(date +%s.%N)
bench flood-put --workload put --w 2 --key-prefix flood --keys "$keys" --duration "$duration"
h1=$(hints)
bench flood-get --workload get --r 2 --key-prefix data --keys "$keys" --duration "$duration"
h2=$(hints)
flood_s=$(python3 -c "import time; print(f'{time.time() - $t0:.0f}')")

python3 - "$work" "$out" "$r0" "$r1" "$h0" "$h1" "$h2" "$flood_s" "$duration" <<'PY'
import json, os, sys
work, out, r0, r1, h0, h1, h2, flood_s, duration = sys.argv[1:]
names = ["ceiling", "quiet-put", "quiet-get", "rebuild-put", "rebuild-get", "flood-put", "flood-get"]
runs = {n: json.load(open(os.path.join(work, n + ".json"))) for n in names}
ceiling = runs["ceiling"]["ops_per_sec"]
lines = ["| scenario | ops/s | × ceiling | p50 ms | p99 ms | p99.9 ms | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
for n, r in runs.items():
    l = r["latency"]
    lines.append(f"| {n} ({r['consistency']}) | {r['ops_per_sec']:.0f} | {r['ops_per_sec']/ceiling:.2f} | "
                 f"{l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {r['errors']} |")
lines += ["",
  f"Tree rebuilds: {int(r1) - int(r0)} partition trees rebuilt by the three nodes during the two "
  f"{duration} rebuild runs, {(int(r1) - int(r0)) / 3 / 1024:.0%} of each node's 1024 trees.",
  f"Hint flood: {h0} hints queued for node3 when it came back; {h1} left after flood-put, "
  f"{h2} after flood-get ({flood_s} s after its restart).",
]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "background.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
