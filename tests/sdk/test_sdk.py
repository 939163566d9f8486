"""The Python client openapi-python-client generates from openapi.yaml, used
as its README says a user would: typed knobs, the value as bytes, siblings
from a 300 and as JSON, a resolve with the causal context, conditional
writes, a delete. No header is set by hand: everything goes through the
generated functions' parameters.

Run by scripts/test-sdk.sh against a live dev cluster (QKV_URL, QKV_CA)."""

import email.parser
import io
import os
import sys
import uuid
from http import HTTPStatus

from quorumkv_client import Client
from quorumkv_client.api.keys import delete_key, get_key, get_versions, put_key
from quorumkv_client.models import Error, SiblingsView
from quorumkv_client.types import File

url, ca = os.environ["QKV_URL"], os.environ["QKV_CA"]
client = Client(base_url=url, verify_ssl=ca)
key = f"sdk/{uuid.uuid4()}"


def put(value: bytes, **params):
    return put_key.sync_detailed(key, client=client, body=File(payload=io.BytesIO(value)), **params)


def parts_of(response) -> list[tuple[str, bytes]]:
    """The parts of a 300's multipart/mixed body, with the standard library."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + response.content)
    return sorted((p.get_content_type(), p.get_payload(decode=True)) for p in message.get_payload())


# Two blind writes with typed knobs: the second is concurrent, a sibling.
r = put(b"left", w=3, value_content_type="text/plain")
assert r.status_code == HTTPStatus.NO_CONTENT, (r.status_code, r.content)
assert r.headers["Quorum-Report"].startswith("n=3; w=3; acked=3"), r.headers
r = put(b"right", w=3, value_content_type="text/x-right")
assert r.status_code == HTTPStatus.NO_CONTENT, (r.status_code, r.content)
assert r.headers["Sibling-Count"] == "2", r.headers

# The raw read answers 300; the generated client hands back status, headers
# and body, and the standard library splits the parts.
r = get_key.sync_detailed(key, client=client, r=2)
assert r.status_code == HTTPStatus.MULTIPLE_CHOICES, r.status_code
assert r.headers["Sibling-Count"] == "2" and r.headers["Causal-Context"], r.headers
assert parts_of(r) == [("text/plain", b"left"), ("text/x-right", b"right")], parts_of(r)
print(f"read 2 siblings of {key} from the 300")

# The JSON view is a typed model.
v = get_versions.sync(key, client=client, r=2)
assert isinstance(v, SiblingsView), v
assert sorted((s.content_type, s.value_base64) for s in v.siblings) == [
    ("text/plain", "bGVmdA=="),
    ("text/x-right", "cmlnaHQ="),
], v.siblings

# Resolve with the context: one value, read back as bytes with its type.
r = put(b"resolved", w=3, causal_context=v.context, value_content_type="text/plain")
assert r.status_code == HTTPStatus.NO_CONTENT, (r.status_code, r.content)
assert r.headers["Sibling-Count"] == "1" and r.headers["Causal-Context"], r.headers
r = get_key.sync_detailed(key, client=client, r=3)
assert r.status_code == HTTPStatus.OK, r.status_code
assert r.parsed.payload.read() == b"resolved", r.content
assert r.headers["content-type"] == "text/plain", r.headers
etag = r.headers["etag"]
print("resolved to one value with the context")

# Conditional writes: create-only fails on a live key, If-Match passes with
# the current tag and fails with a stale one, each with a typed error.
r = put(b"again", w=3, if_none_match="*")
assert r.status_code == HTTPStatus.PRECONDITION_FAILED, r.status_code
assert isinstance(r.parsed, Error) and r.parsed.error == "precondition_failed", r.parsed
r = put(b"replaced", w=3, if_match=etag)
assert r.status_code == HTTPStatus.NO_CONTENT, (r.status_code, r.content)
r = put(b"lost update", w=3, if_match=etag)
assert r.status_code == HTTPStatus.PRECONDITION_FAILED, r.status_code
assert get_key.sync(key, client=client, r=3).payload.read() == b"replaced"
print("conditional writes: 412 on a stale tag, 204 on the current one")

# A bad knob is a typed 400.
r = put(b"x", w=4)
assert r.status_code == HTTPStatus.BAD_REQUEST, r.status_code
assert isinstance(r.parsed, Error) and r.parsed.error == "invalid_consistency", r.parsed

# Delete with the context of the last read; the key then reads 404.
ctx = get_versions.sync(key, client=client, r=3).context
r = delete_key.sync_detailed(key, client=client, causal_context=ctx, w=3)
assert r.status_code == HTTPStatus.NO_CONTENT, (r.status_code, r.content)
r = get_key.sync_detailed(key, client=client, r=3)
assert r.status_code == HTTPStatus.NOT_FOUND, r.status_code
assert isinstance(r.parsed, Error) and r.parsed.error == "not_found", r.parsed
print("deleted")
sys.exit(0)
