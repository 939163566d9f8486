#!/usr/bin/env bash
# Issue 4's numbers, on a local 3-node cluster of separate `serve` processes
# (so one can be killed), loopback only, bounded (~3 minutes):
#  1. PUT W=2 throughput and latency with all nodes up, then with one of
#     three killed (writes keep going: sloppy quorum + hints);
#  2. the hints handed off once it is back;
#  3. anti-entropy bytes per round when replicas agree;
#  4. the time anti-entropy takes to refill a wiped node (KEYS keys of 1 KiB)
#     with no client reads.
# Writes $BENCH_OUT/repair.md. Anti-entropy runs every second here.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
duration=${BENCH_DURATION:-15s}
out=${BENCH_OUT:-benches/results}
keys=${BENCH_KEYS:-100000}

serve_cluster "${BENCH_PORT:-29443}"
# Anti-entropy every second (default 10 s) so the refill is timed, not the pauses.
export QUORUMKV_ANTI_ENTROPY_INTERVAL_MS=${AE_INTERVAL_MS:-1000}
stop() { kill9 "$1"; }
for i in 0 1 2; do start "$i"; done
for i in 0 1 2; do ready "$i"; done

bench() {
  local name=$1; shift
  echo "== $name" >&2
  "$bin" bench --url "$(url 0)" --url "$(url 1)" --cacert "$ca" --json --quiet --name "$name" "$@" >"$work/$name.json"
}
ae() { stats "$1" | python3 -c "import json,sys; s=json.load(sys.stdin)['stats']['anti_entropy']; print(s['$2'])"; }
# Waits (bounded) until every running node's last two exchanges found nothing to fix.
in_sync() {
  for _ in $(seq 1 1200); do
    local ok=1 i
    for i in "$@"; do [ "$(ae "$i" clean_in_a_row)" -ge 2 ] || ok=0; done
    [ "$ok" = 1 ] && return 0
    sleep 0.25
  done
  echo "replicas never agreed" >&2; return 1
}

# 1. Refill: KEYS keys of 1 KiB on every node, then node3 wiped and restarted.
echo "== preload $keys keys" >&2
"$bin" bench --url "$(url 0)" --url "$(url 1)" --url "$(url 2)" --cacert "$ca" --quiet --json --name preload \
  --workload get --preload --requests 1 --key-prefix refill --keys "$keys" >"$work/preload.json"
in_sync 0 1 2
# 2. Agreeing replicas: bytes per anti-entropy round (node1's counters).
r0=$(ae 0 rounds); b0=$(ae 0 bytes); d0=$(ae 0 partitions_differing)
while [ "$(ae 0 rounds)" -lt $((r0 + 3)) ]; do sleep 0.5; done
r1=$(ae 0 rounds); b1=$(ae 0 bytes); d1=$(ae 0 partitions_differing); c1=$(ae 0 partitions_compared)
stop 2
rm -rf "$work/dev/node3/data"
start 2; ready 2
t0=$(date +%s.%N)
in_sync 2
refill_s=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
pulled=$(ae 2 keys_pulled); pushed0=$(ae 0 keys_pushed); pushed1=$(ae 1 keys_pushed); bytes2=$(ae 2 bytes)
in_sync 0 1 2

# 3. Writes with all up, then with node3 killed.
bench ceiling --ceiling --duration "$duration"
bench all-up --workload put --w 2 --key-prefix up --duration "$duration"
stop 2
sleep 3
bench one-down --workload put --w 2 --key-prefix down --duration "$duration"
# With N=3 on three nodes there is no spare node to take a hint; with N=2 the
# third node stands in for the dead home of a key.
bench one-down-n2 --workload put --n 2 --w 2 --key-prefix down2 --duration "$duration"
queued() { stats "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["hints"]["queued"].get("node3", 0))'; }
queued=$(queued 0); queued1=$(queued 1)
start 2; ready 2
t0=$(date +%s.%N)
for _ in $(seq 1 600); do
  [ $(( $(queued 0) + $(queued 1) )) -eq 0 ] && break
  sleep 0.2
done
handoff_s=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")

python3 - "$work" "$out" "$queued" "$queued1" "$handoff_s" "$r0" "$r1" "$b0" "$b1" "$d0" "$d1" "$c1" \
  "$refill_s" "$pulled" "$pushed0" "$pushed1" "$bytes2" "$keys" <<'PY'
import json, os, sys
work, out, q0, q1, handoff_s, r0, r1, b0, b1, d0, d1, c1, refill_s, pulled, pushed0, pushed1, bytes2, keys = sys.argv[1:]
runs = {n: json.load(open(os.path.join(work, n + ".json"))) for n in ["ceiling", "all-up", "one-down", "one-down-n2"]}
ceiling = runs["ceiling"]["ops_per_sec"]
lines = ["| scenario | ops/s | × ceiling | p50 ms | p99 ms | p99.9 ms | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
for n, r in runs.items():
    l = r["latency"]
    lines.append(f"| {n} ({r['consistency']}) | {r['ops_per_sec']:.0f} | {r['ops_per_sec']/ceiling:.2f} | "
                 f"{l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {r['errors']} |")
rounds = int(r1) - int(r0)
shared = int(c1) // max(int(r1), 1)
lines += ["",
  f"Hints queued for node3 while it was down: {int(q0) + int(q1)}; all handed off {handoff_s} s after it was back.",
  f"Anti-entropy with replicas in agreement: {(int(b1) - int(b0)) / max(rounds, 1):.0f} bytes per round "
  f"({rounds} rounds, {int(d1) - int(d0)} partitions differing), about {shared} partitions compared per round.",
  f"Wiped node refilled by anti-entropy alone (rounds every {os.environ.get('QUORUMKV_ANTI_ENTROPY_INTERVAL_MS')} ms, "
  f"8 MiB/s cap per node): in sync {refill_s} s after restart, {keys} writes of 1 KiB "
  f"({pulled} keys pulled by it, {int(pushed0) + int(pushed1)} pushed by its peers, {int(bytes2) / 2**20:.0f} MiB counted by it).",
]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "repair.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
