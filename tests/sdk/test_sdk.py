"""The Python client generated from openapi.yaml, used as a user would:
put, read siblings as JSON, resolve them with the causal context, delete.

Run by scripts/test-sdk.sh against a live dev cluster (QKV_URL, QKV_CA)."""

import io
import os
import sys
import uuid

from quorumkv_client import Client
from quorumkv_client.api.keys import delete_key, get_key, put_key
from quorumkv_client.models import SiblingsView
from quorumkv_client.types import File

url, ca = os.environ["QKV_URL"], os.environ["QKV_CA"]
client = Client(base_url=url, verify_ssl=ca, headers={"Accept": "application/json"}, raise_on_unexpected_status=False)
key = f"sdk/{uuid.uuid4()}"


def put(value: bytes, **knobs):
    body = File(payload=io.BytesIO(value), mime_type="application/octet-stream")
    r = put_key.sync_detailed(key, client=client, body=body, **knobs)
    assert r.status_code == 204, (r.status_code, r.content)
    return r


def view() -> SiblingsView:
    r = get_key.sync_detailed(key, client=client, r="2")
    assert r.status_code == 200, (r.status_code, r.content)
    assert isinstance(r.parsed, SiblingsView), type(r.parsed)
    return r.parsed


put(b"left", w="3")
put(b"right", w="3")  # no context: concurrent, a sibling
v = view()
values = sorted(s.value_base64 for s in v.siblings)
assert len(values) == 2, values
print(f"read {len(values)} siblings of {key}")

put(b"resolved", w="3", causal_context=v.context)
v = view()
assert len(v.siblings) == 1 and v.siblings[0].value_base64 == "cmVzb2x2ZWQ=", v.siblings
print("resolved to one value with the context")

r = delete_key.sync_detailed(key, client=client, causal_context=v.context, w="3")
assert r.status_code == 204, (r.status_code, r.content)
r = get_key.sync_detailed(key, client=client, r="3")
assert r.status_code == 404, r.status_code
print("deleted")
sys.exit(0)
