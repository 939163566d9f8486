#!/usr/bin/env bash
# The container test: builds the image from the repository's Dockerfile,
# starts docker-compose.yml's 3-node cluster, and checks it through the ports
# published on 127.0.0.1: write/read, a node stopped (W=2 still succeeds),
# SIGTERM drains and exits cleanly within 10 s, the node rejoins; then,
# under a write load, the cluster grows to 5 by starting two more containers
# (nothing else) and shrinks to 4 with `quorumkv cluster leave --wait` and
# stopping that container, with no failed request and every write readable.
#
# The machine has no image registry: the Debian base image is made here with
# debootstrap and `docker import` (once; reused while it exists), and the
# image packages the release binary the test run already built (build arg
# PREBUILT), so RocksDB is not compiled a second time. Everything the test
# creates (containers, networks, volumes, the image) is removed on exit,
# except the base image, kept under a private tag for the next run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# A private tag, so the official name is never shadowed on this host; kept
# between runs as a cache (delete it with `docker rmi` to rebuild).
base=quorumkv-test/debian:bookworm-slim
image=quorumkv:test-$$
project=qkvtest$$
work=$(mktemp -d)

compose() { QUORUMKV_IMAGE=$image docker-compose -p "$project" -f docker-compose.yml "$@"; }
dangling_before=$(docker images -q -f dangling=true | sort)
cleanup() {
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  docker rmi -f "$image" >/dev/null 2>&1 || true
  # The legacy builder leaves the build stage behind as an untagged image.
  comm -13 <(echo "$dangling_before") <(docker images -q -f dangling=true | sort) | xargs -r docker rmi >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work" target/docker
}
trap cleanup EXIT

if ! docker image inspect "$base" >/dev/null 2>&1; then
  echo "== making $base with debootstrap"
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
  # The machine's own Debian mirror (the only package source it may use).
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v '^[[:space:]]*#' \
    | grep -oE 'https?://[^ ]+' | head -1 || true)
  debootstrap --variant=minbase bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi
command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; }

echo "== image"
cargo build --release --quiet --bin quorumkv
mkdir -p target/docker
strip -o target/docker/quorumkv target/release/quorumkv
docker build -q --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" \
  --build-arg PREBUILT=target/docker/quorumkv -t "$image" . >/dev/null
[ "$(docker image inspect -f '{{.Config.User}}' "$image")" = "10001:10001" ] || { echo "image must run as non-root"; exit 1; }

echo "== cluster"
compose up -d --no-build >/dev/null 2>&1 || { compose logs; exit 1; }
# The CA the way the README says, which works with compose v1 (no `cp`) and v2.
for _ in $(seq 1 50); do
  compose exec -T node1 cat /certs/ca.pem >"$work/ca.pem" 2>/dev/null && [ -s "$work/ca.pem" ] && break
  sleep 0.2
done
[ -s "$work/ca.pem" ] || { echo "could not read the CA with exec -T node1 cat"; compose logs; exit 1; }
url() { echo "https://127.0.0.1:$((18443 + $1 - 1))"; }
c() { curl -sS --cacert "$work/ca.pem" --max-time 10 "$@"; }
wait_ready() {
  for _ in $(seq 1 150); do
    [ "$(c -o /dev/null -w '%{http_code}' "$(url "$1")/health/ready" 2>/dev/null)" = 200 ] && return 0
    sleep 0.2
  done
  echo "node$1 never became ready"; compose logs "node$1"; return 1
}
for i in 1 2 3; do wait_ready "$i"; done
expect() { # expect STATUS CURL-ARGS...
  local want=$1; shift
  local got; got=$(c -o "$work/body" -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || { echo "expected $want, got $got for $*: $(cat "$work/body")"; exit 1; }
}
expect 204 -X PUT -H 'w: 3' --data-binary 'from the host' "$(url 1)/keys/greeting"
expect 200 -H 'r: 3' -D "$work/headers" "$(url 2)/keys/greeting"
[ "$(cat "$work/body")" = "from the host" ] || { echo "wrong value: $(cat "$work/body")"; exit 1; }
ctx=$(grep -i '^causal-context:' "$work/headers" | cut -d' ' -f2 | tr -d '\r')

echo "== a node stops (SIGTERM)"
start=$(date +%s.%N)
compose stop -t 10 node3 >/dev/null 2>&1
took=$(python3 -c "import time; print(round(time.time() - $start, 1))")
code=$(docker inspect -f '{{.State.ExitCode}}' "${project}_node3_1")
[ "$code" = 0 ] || { echo "node3 exited $code after SIGTERM"; compose logs node3; exit 1; }
python3 -c "import sys; sys.exit(0 if $took < 10 else 1)" || { echo "node3 took ${took}s to stop"; exit 1; }
echo "node3 drained and exited 0 in ${took}s"
expect 204 -X PUT -H 'w: 2' -H "causal-context: $ctx" --data-binary 'one down' "$(url 1)/keys/greeting"
expect 200 -H 'r: 2' "$(url 2)/keys/greeting"
[ "$(cat "$work/body")" = "one down" ] || { echo "wrong value: $(cat "$work/body")"; exit 1; }
expect 503 -X PUT -H 'w: 3' --data-binary 'all three' "$(url 1)/keys/other"

echo "== it rejoins"
compose start node3 >/dev/null 2>&1
wait_ready 3
for _ in $(seq 1 100); do
  c -o "$work/body" -H 'r: 3' "$(url 3)/keys/greeting" && [ "$(cat "$work/body")" = "one down" ] && break
  sleep 0.2
done
[ "$(cat "$work/body")" = "one down" ] || { echo "node3 never caught up: $(cat "$work/body")"; exit 1; }
# The image's HEALTHCHECK (`quorumkv health`) turns the container healthy.
for _ in $(seq 1 60); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "${project}_node1_1")
  [ "$health" = healthy ] && break
  sleep 0.5
done
[ "$health" = healthy ] || { echo "node1's health check says $health"; exit 1; }
echo "== grows 3 -> 5 and shrinks to 4 under load"
# The load: distinct keys, W=2, through the first three nodes; bounded.
load() {
  local i=0 code
  : >"$work/acked"; : >"$work/failed"
  while [ ! -e "$work/stop" ] && [ "$i" -lt 12000 ]; do
    code=$(c -o /dev/null -w '%{http_code}' -X PUT -H 'w: 2' --data-binary "value-$i" \
      "$(url $((i % 3 + 1)))/keys/scale-$i" 2>/dev/null || true)
    if [ "$code" = 204 ]; then echo "$i" >>"$work/acked"; else echo "$i $code" >>"$work/failed"; fi
    i=$((i + 1))
  done
}
load & loadpid=$!
# members EXPECTED: the layout as node1 sees it has that many members and
# one version in force (every partition moved).
settled() {
  local want=$1
  for _ in $(seq 1 300); do
    c "$(url 1)/cluster" 2>/dev/null | python3 -c "
import json, sys
v = json.load(sys.stdin)
sys.exit(0 if len(v['members']) == $want and len(v['layout']['versions']) == 1 else 1)" && return 0
    sleep 0.5
  done
  echo "the layout never settled on $want members:"; c "$(url 1)/cluster"; compose logs --tail 30; return 1
}
sleep 2
start=$(date +%s)
compose --profile scale up -d --no-build node4 node5 >/dev/null 2>&1 || { compose logs; exit 1; }
settled 5
echo "joined: 5 members, partitions moved, in $(( $(date +%s) - start )) s"
start=$(date +%s)
compose exec -T node5 quorumkv cluster leave node5 --wait --timeout-secs 150 \
  || { echo "leave --wait failed"; compose logs --tail 30 node5; exit 1; }
compose --profile scale stop -t 10 node5 >/dev/null 2>&1
settled 4
echo "node5 left and was stopped in $(( $(date +%s) - start )) s"
sleep 2
touch "$work/stop"; wait "$loadpid"
acked=$(wc -l <"$work/acked"); failed=$(wc -l <"$work/failed")
[ "$failed" = 0 ] || { echo "$failed requests failed during the resize:"; head "$work/failed"; exit 1; }
while read -r i; do
  body=$(c -H 'r: 2' "$(url $((i % 3 + 1)))/keys/scale-$i") || { echo "scale-$i unreadable"; exit 1; }
  [ "$body" = "value-$i" ] || { echo "scale-$i reads '$body'"; exit 1; }
done <"$work/acked"
echo "$acked writes during the resize, 0 failed, all readable"
echo "containers: ok"
