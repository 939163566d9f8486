#!/usr/bin/env bash
# The nemesis suite (tests/nemesis/nemesis.py): 5 `quorumkv serve`
# processes under kill -9, SIGSTOP, iptables partitions, a wiped and an
# older data directory, with a checker for lost and phantom writes.
#
#   scripts/nemesis.sh            self-test of the checker, then a short run (part of the test command)
#   scripts/nemesis.sh --long     a 12-minute run, for the figures in a PR note
#   scripts/nemesis.sh ARGS...    anything else goes to nemesis.py
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/quorumkv
[ -x "$bin" ] || cargo build --release --locked
py=tests/nemesis/nemesis.py
case "${1:-}" in
  --long)
    shift
    exec python3 "$py" --binary "$bin" --duration 720 --fault-secs 20 --calm-secs 5 --clients 8 "$@"
    ;;
  "")
    python3 "$py" --binary "$bin" --self-test --duration 10
    exec python3 "$py" --binary "$bin" --duration 100 --fault-secs 10 --calm-secs 3
    ;;
  *)
    exec python3 "$py" --binary "$bin" "$@"
    ;;
esac
