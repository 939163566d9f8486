# Shared by the benchmark scripts (sourced, not run).

# wait_ready CA FIRST_PORT: waits (at most ~20 s per node) until the three
# nodes of a dev cluster answer /health/ready.
wait_ready() {
  local ca=$1 port=$2 i
  for i in 0 1 2; do
    for _ in $(seq 1 100); do
      curl -fsS --cacert "$ca" "https://127.0.0.1:$((port + i))/health/ready" >/dev/null 2>&1 && break
      sleep 0.2
    done
  done
}

# release_bin: sets bin to $QUORUMKV_BIN when given (to compare two builds
# on one machine, alternating; a relative path is from the repository's
# root, where the scripts run), else to a fresh release build's binary.
release_bin() {
  if [ -n "${QUORUMKV_BIN:-}" ]; then
    bin=$(realpath -e "$QUORUMKV_BIN")
  else
    cargo build --release --quiet
    bin=$PWD/target/release/quorumkv
  fi
}

# dev_configs PORT: the release build (bin) and the configs of a 3-node dev
# cluster in a fresh temporary directory (work, ca, port). Both kinds of
# cluster below start from it.
dev_configs() {
  port=$1
  release_bin
  work=$(mktemp -d)
  "$bin" dev --dir "$work/dev" --port "$port" --init-only >/dev/null
  ca=$work/dev/ca.pem
}

# dev_cluster PORT: the release build and the configs of a 3-node dev
# cluster (N=3, loopback only) in a fresh temporary directory, not yet
# started. Sets bin, work, ca, port and pid=0, and an EXIT trap
# (dev_cleanup: stop the cluster, remove the directory). Then:
#   dev_up    starts the three nodes as one `dev` process (log level
#             $DEV_LOG, default warn, into $work/dev.log), sets pid and
#             waits until they are ready;
#   dev_down  stops it;
#   cpu       CPU seconds the running cluster has used so far.
dev_cluster() {
  dev_configs "$1"
  pid=0
  trap dev_cleanup EXIT
}
dev_up() {
  QUORUMKV_LOG=${DEV_LOG:-warn} "$bin" dev --dir "$work/dev" --port "$port" >>"$work/dev.log" 2>&1 &
  pid=$!
  wait_ready "$ca" "$port"
}
dev_down() {
  if [ "$pid" != 0 ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  pid=0
}
dev_cleanup() { dev_down; rm -rf "$work"; }
# CPU seconds (user + system) the processes PIDS... used so far.
cpu_of() {
  local p; for p in "$@"; do cat "/proc/$p/stat"; done |
    awk -v hz="$(getconf CLK_TCK)" '{s += $14 + $15} END {printf "%.2f", s / hz}'
}
cpu() { cpu_of "$pid"; }

# serve_cluster PORT: a 3-node dev cluster of separate `serve` processes (so
# one can be killed), release build, in a fresh temporary directory. Sets
# bin, work, ca; defines start I, kill9 I, term I, url I, stats I, ready I
# and an EXIT trap that kills them all and removes the directory.
serve_cluster() {
  dev_configs "$1"
  pids=(0 0 0)
  trap 'for i in 0 1 2; do kill9 "$i"; done; rm -rf "$work"' EXIT
}
start() { QUORUMKV_LOG=warn "$bin" serve --config "$work/dev/node$(($1 + 1)).toml" >>"$work/node$1.log" 2>&1 & pids[$1]=$!; }
kill9() { kill -9 "${pids[$1]}" 2>/dev/null || true; wait "${pids[$1]}" 2>/dev/null || true; }
term() { kill -TERM "${pids[$1]}" 2>/dev/null || true; wait "${pids[$1]}" 2>/dev/null || true; }
url() { echo "https://127.0.0.1:$((port + $1))"; }
stats() { curl -fsS --cacert "$ca" "$(url "$1")/cluster"; }
ready() { for _ in $(seq 1 100); do curl -fsS --cacert "$ca" "$(url "$1")/health/ready" >/dev/null 2>&1 && return; sleep 0.2; done; }
