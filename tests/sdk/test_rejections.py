"""Refusals as Python's standard http.client (HTTP/1.1, no Expect:
100-continue) sees them: the documented status with its JSON body, even
when the server refuses before reading a 17 MiB upload.

Run by scripts/test-sdk.sh against a live dev cluster (QKV_URL, QKV_CA)."""

import http.client
import json
import os
import ssl
import sys
from urllib.parse import urlparse

url, ca = urlparse(os.environ["QKV_URL"]), os.environ["QKV_CA"]
tls = ssl.create_default_context(cafile=ca)


def call(method, path, body=None, headers=None):
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=tls, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


cases = [
    ("PUT", "/keys/py-big", b"y" * (17 << 20), {}, 413, "value_too_large"),
    ("PUT", "/keys/py-w", b"x" * (1 << 20), {"W": "4"}, 400, "invalid_consistency"),
    ("PATCH", "/keys/py-w", b"x" * (1 << 20), {}, 405, "method_not_allowed"),
    ("PUT", "/keys/" + "k" * 20_000, b"x" * (1 << 20), {}, 414, "key_too_long"),
    ("PUT", "/keys/py-cas", b"x", {"If-Match": '"00000000000000000000000000000000"'}, 412, "precondition_failed"),
]
for method, path, body, headers, status, code in cases:
    for attempt in range(3):
        got, raw = call(method, path, body, headers)
        assert got == status, (method, path[:40], got, raw[:200])
        assert json.loads(raw)["error"] == code, raw[:200]
    print(f"{method} {path[:24]}… → {status} {code}")

got, _ = call("GET", "/keys/py-big")
assert got == 404, f"nothing of the refused upload was stored: {got}"
sys.exit(0)
