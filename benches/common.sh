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
