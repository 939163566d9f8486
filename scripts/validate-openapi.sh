#!/usr/bin/env bash
# Validate openapi.yaml with openapi-spec-validator, installed into a venv at
# ${QKV_VENV:-.venv} (relative to the repo root; created if missing).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${QKV_VENV:-.venv}"

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check openapi-spec-validator
"$venv/bin/openapi-spec-validator" openapi.yaml
