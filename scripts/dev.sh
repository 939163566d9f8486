#!/usr/bin/env bash
# Runs a local 3-node cluster (the README's run command); extra arguments go
# to `quorumkv dev` (e.g. --nodes 5).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --bin quorumkv -- dev "$@"
