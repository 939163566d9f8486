#!/usr/bin/env bash
# Membership at scale, simulated (no sockets, deterministic): a join into
# clusters of 100, 1 000 and 10 000 members, with the library's own layout
# history, gossip exchange and ring. Prints the Markdown table the README
# quotes; SIM_MEMBERS overrides the sizes. About 10 minutes on 2 cores,
# most of it the 10 000-member run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin quorumkv
exec target/release/quorumkv sim --members "${SIM_MEMBERS:-100,1000,10000}" "$@"
