#!/usr/bin/env bash
# Join and leave under load: a local 3-node dev cluster holding KEYS keys
# serves a mixed load (90 % reads, W=2/R=2) in 10-second segments while a
# fourth node joins (started with seeds only, no command) and then leaves
# (`quorumkv cluster leave --wait`, then stopped). The load is open loop at
# RESIZE_RATE ops/s (default 1000), or, with RESIZE_RATE=0, closed loop over
# RESIZE_CONNS connections (default 24, as in the issue's comparison), which
# shows what the moves cost in throughput. RESIZE_SEGMENT sets the length
# of a segment in seconds (default 10). RESIZE_GOVERNOR=off turns the
# background governor off on every node (the transfer then runs at the
# fixed anti_entropy_bytes_per_sec).
# Each segment's throughput, p50/p99 and errors are printed, with how long
# each move took and how many keys the new node pulled against how many it
# holds at the end. Loopback only; bounded (about 3 minutes by default).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
rate=${RESIZE_RATE:-1000}
conns=${RESIZE_CONNS:-24}
secs=${RESIZE_SEGMENT:-10}
if [ "$rate" = 0 ]; then load=(--concurrency "$conns"); else load=(--rate "$rate" --concurrency 32); fi
keys=${RESIZE_KEYS:-20000}
port=${RESIZE_PORT:-29443}
dev_cluster "$port"
if [ "${RESIZE_GOVERNOR:-on}" = off ]; then
  # node4's config is made from node1's, so it inherits this.
  sed -i 's/^enabled = true$/enabled = false/' "$work"/dev/node*.toml
fi
node4=
cleanup() {
  [ -n "$node4" ] && kill "$node4" 2>/dev/null || true
  dev_down
  wait 2>/dev/null || true
  [ -n "${RESIZE_KEEP:-}" ] && cp -r "$work" "$RESIZE_KEEP"
  rm -rf "$work"
}
trap cleanup EXIT
DEV_LOG=${RESIZE_LOG:-warn} dev_up
c() { curl -sS --cacert "$ca" --max-time 10 "$@"; }
view() { c "https://127.0.0.1:$port/cluster"; }
versions() { view | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["layout"]["versions"]))'; }

# The load goes to the first three nodes (the ones that stay), as a client
# behind a fixed list or a load balancer would.
targets=()
for i in 0 1 2; do targets+=(--url "https://127.0.0.1:$((port + i))"); done
seg=0
segment() { # segment LABEL: one 10 s open-loop segment, JSON kept
  seg=$((seg + 1))
  "$bin" bench "${targets[@]}" --cacert "$ca" --json --quiet --name "$1" --workload "${RESIZE_WORKLOAD:-mixed:90}" \
    --key-prefix scale --keys "$keys" "${load[@]}" --duration "${secs}s" >"$work/seg-$seg.json"
  echo "$1" >"$work/seg-$seg.label"
}

echo "== preload $keys keys" >&2
"$bin" bench --cluster "$work/dev/cluster.json" --json --quiet --name preload --workload get --preload \
  --key-prefix scale --keys "$keys" --requests 1 --concurrency 32 >/dev/null
segment before
segment before

# Keys moved by exchanges, summed over the nodes at URLS: each key that
# moves is counted once, by the side that sent or fetched it.
moved() {
  local total=0 n
  for u in "$@"; do
    n=$(c "$u/cluster" | python3 -c 'import json,sys; a=json.load(sys.stdin)["stats"]["anti_entropy"]; print(a["keys_pulled"] + a["keys_pushed"])')
    total=$((total + n))
  done
  echo "$total"
}
first3=("https://127.0.0.1:$port" "https://127.0.0.1:$((port + 1))" "https://127.0.0.1:$((port + 2))")
moved_before=$(moved "${first3[@]}")
echo "== node4 joins (seeds only)" >&2
"$bin" dev --dir "$work/dev" --port "$port" --nodes 4 --init-only >/dev/null
start=$(date +%s.%N)
QUORUMKV_LOG=${RESIZE_LOG:-warn} "$bin" serve --config "$work/dev/node4.toml" >"$work/node4.log" 2>&1 &
node4=$!
for _ in $(seq 1 $((300 / secs))); do
  segment joining
  [ "$(versions)" = 1 ] && [ "$(view | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')" = 4 ] && break
done
join_s=$(python3 -c "import time; print(round(time.time() - $start))")
node4_url=$(python3 -c 'import json,sys; print([n for n in json.load(open(sys.argv[1]))["nodes"] if n["id"] == "node4"][0]["client_url"])' "$work/dev/cluster.json")
c "$node4_url/cluster" >"$work/node4-after-join.json"
echo $(( $(moved "${first3[@]}" "$node4_url") - moved_before )) >"$work/moved"
segment after-join

echo "== node4 leaves" >&2
start=$(date +%s.%N)
"$bin" cluster leave node4 --wait --url "https://127.0.0.1:$port" --cacert "$ca" >"$work/leave.log" &
leave=$!
for _ in $(seq 1 $((300 / secs))); do
  segment leaving
  kill -0 "$leave" 2>/dev/null || break
done
wait "$leave"
leave_s=$(python3 -c "import time; print(round(time.time() - $start))")
kill "$node4"; wait "$node4" 2>/dev/null || true; node4=
segment after-leave

python3 - "$work" "$seg" "$keys" "$join_s" "$leave_s" <<'PY'
import json, os, sys
work, n, keys, join_s, leave_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
moved = int(open(os.path.join(work, "moved")).read())
print(f"| segment ({os.environ.get('RESIZE_SEGMENT', '10')} s) | ops/s | p50 ms | p99 ms | errors |")
print("|---|---:|---:|---:|---:|")
for i in range(1, n + 1):
    r = json.load(open(os.path.join(work, f"seg-{i}.json")))
    label = open(os.path.join(work, f"seg-{i}.label")).read().strip()
    l = r["latency"]
    print(f"| {label} | {r['ops_per_sec']:.0f} | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {r['errors']} |")
v = json.load(open(os.path.join(work, "node4-after-join.json")))
me = [m for m in v["members"] if m["id"] == "node4"][0]
held = keys * me["partitions"] / v["partitions"]
print()
print(f"join: {join_s} s until one version was in force; leave: {leave_s} s until node4 was drained")
print(f"keys moved during the join: {moved}; node4 homes {me['partitions']} of {v['partitions']} partitions "
      f"(~{held:.0f} of the {keys} preloaded keys): {moved / max(held, 1):.2f}x what it holds")
PY
