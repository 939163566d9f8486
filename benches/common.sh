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

# serve_cluster PORT: a 3-node dev cluster of separate `serve` processes (so
# one can be killed), release build, in a fresh temporary directory. Sets
# bin, work, ca; defines start I, kill9 I, term I, url I, stats I, ready I
# and an EXIT trap that kills them all and removes the directory.
serve_cluster() {
  port=$1
  cargo build --release --quiet
  bin=$PWD/target/release/quorumkv
  work=$(mktemp -d)
  "$bin" dev --dir "$work/dev" --port "$port" --init-only >/dev/null
  ca=$work/dev/ca.pem
  pids=(0 0 0)
  trap 'for i in 0 1 2; do kill9 "$i"; done; rm -rf "$work"' EXIT
}
start() { QUORUMKV_LOG=warn "$bin" serve --config "$work/dev/node$(($1 + 1)).toml" >>"$work/node$1.log" 2>&1 & pids[$1]=$!; }
kill9() { kill -9 "${pids[$1]}" 2>/dev/null || true; wait "${pids[$1]}" 2>/dev/null || true; }
term() { kill -TERM "${pids[$1]}" 2>/dev/null || true; wait "${pids[$1]}" 2>/dev/null || true; }
url() { echo "https://127.0.0.1:$((port + $1))"; }
stats() { curl -fsS --cacert "$ca" "$(url "$1")/cluster"; }
ready() { for _ in $(seq 1 100); do curl -fsS --cacert "$ca" "$(url "$1")/health/ready" >/dev/null 2>&1 && return; sleep 0.2; done; }
