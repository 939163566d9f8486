#!/usr/bin/env bash
# The whole test suite (the README's test command). One cargo profile
# (release) for everything, so RocksDB's C++ is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== format"
cargo fmt --check

echo "== clippy"
cargo clippy --release --all-targets -- -D warnings

echo "== module layers (imports point down the ARCHITECTURE.md diagram)"
python3 scripts/check-layers.py

echo "== OpenAPI spec"
./scripts/validate-openapi.sh

echo "== Kubernetes manifests"
./scripts/validate-k8s.sh

echo "== Prometheus alert rules and Grafana dashboard"
./scripts/validate-observability.sh

echo "== tests"
cargo test --release --all-targets

echo "== nemesis (kill -9, SIGSTOP, partitions, wiped and older data directories)"
./scripts/nemesis.sh

echo "== SDK and API fuzzing"
./scripts/test-sdk.sh

echo "== containers"
./scripts/test-containers.sh
