#!/usr/bin/env bash
# The API as SDK users and a fuzzer see it, against a live dev cluster:
#  1. generate a Python client from openapi.yaml with openapi-python-client
#     and run tests/sdk/test_sdk.py with it, as generated (no hand-set
#     header): typed knobs, raw bytes, siblings from a 300 and as JSON,
#     resolve, conditional writes, delete; then the same with a second
#     generator, openapi-generator's `python` (a jar on PyPI; needs Java):
#     tests/sdk/test_sdk_generator.py;
#  2. tests/sdk/test_rejections.py: refusals (413 of a 17 MiB upload, 400,
#     405, 414, 412) with their JSON bodies over Python's http.client;
#  3. schemathesis with its default checks (settings in schemathesis.toml),
#     ~800 requests, over TLS verified with the cluster CA; any failure fails.
# Tools live in a venv at ${QKV_SDK_VENV:-.venv-sdk}; everything else in a
# temporary folder removed on exit, the cluster stopped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${QKV_SDK_VENV:-.venv-sdk}"
port="${SDK_TEST_PORT:-36443}"
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check openapi-python-client openapi-generator-cli schemathesis

echo "== generating the Python client"
mkdir -p "$work/lib"
(cd "$work" && "$OLDPWD/$venv/bin/openapi-python-client" generate --path "$OLDPWD/openapi.yaml" \
  --meta none --output-path lib/quorumkv_client >"$work/generate.log" 2>&1) || { cat "$work/generate.log"; exit 1; }
echo "== generating the second client (openapi-generator, python)"
"$venv/bin/openapi-generator-cli" generate -i openapi.yaml -g python -o "$work/generated" \
  --package-name qkv_generated >"$work/generate2.log" 2>&1 || { cat "$work/generate2.log"; exit 1; }
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/generated"

cargo build --release --quiet --bin quorumkv
bin=target/release/quorumkv
"$bin" dev --dir "$work/dev" --port "$port" --init-only >/dev/null
QUORUMKV_LOG=warn "$bin" dev --dir "$work/dev" --port "$port" >"$work/dev.log" 2>&1 &
pid=$!
. benches/common.sh
wait_ready "$work/dev/ca.pem" "$port"

echo "== SDK test"
QKV_URL="https://127.0.0.1:$port" QKV_CA="$work/dev/ca.pem" PYTHONPATH="$work/lib" \
  "$venv/bin/python" tests/sdk/test_sdk.py
echo "== SDK test, second generator"
QKV_URL="https://127.0.0.1:$port" QKV_CA="$work/dev/ca.pem" "$venv/bin/python" tests/sdk/test_sdk_generator.py

echo "== refusals as Python's http.client sees them"
QKV_URL="https://127.0.0.1:$port" QKV_CA="$work/dev/ca.pem" "$venv/bin/python" tests/sdk/test_rejections.py

echo "== schemathesis"
"$venv/bin/schemathesis" run openapi.yaml --url "https://127.0.0.1:$port" --tls-verify "$work/dev/ca.pem" \
  --max-examples 50 --seed 1 --no-color >"$work/schemathesis.log" 2>&1 || { cat "$work/schemathesis.log"; exit 1; }
grep -E "generated|passed" "$work/schemathesis.log" | tail -1
