"""A second generator: the Python client openapi-generator (the
OpenAPITools jar, `-g python`) makes from openapi.yaml, used as a user
would. It differs from openapi-python-client where this API is delicate: it
asks for `Accept: application/json` on every call (the value must still
come back as stored), lets the caller choose the request's Content-Type
(`_content_type`), and raises for any status outside 2xx, so a 300 arrives
as an exception carrying status, headers and body. Its ApiResponse turns the
headers into a plain dict, so names are as the server sends them: lowercase
(HTTP/2 style). No header is set by hand.

Run by scripts/test-sdk.sh against a live dev cluster (QKV_URL, QKV_CA)."""

import json
import os
import sys
import uuid

import qkv_generated as sdk
from qkv_generated.api.keys_api import KeysApi
from qkv_generated.exceptions import ApiException, BadRequestException, NotFoundException

api = KeysApi(sdk.ApiClient(sdk.Configuration(host=os.environ["QKV_URL"], ssl_ca_cert=os.environ["QKV_CA"])))
key = f"sdk-gen/{uuid.uuid4()}"


def raised(call) -> ApiException:
    try:
        call()
    except ApiException as e:
        return e
    raise AssertionError("expected an error answer")


# A stored JSON document comes back as itself, although the client asks for JSON.
doc = json.dumps({"siblings": [], "context": "not ours"}).encode()
r = api.put_key_with_http_info(key, body=doc, w=3, value_content_type="application/json")
assert r.status_code == 204, r.status_code
r = api.get_key_with_http_info(key, r=3)
assert r.status_code == 200 and bytes(r.data) == doc, (r.status_code, r.data)
assert r.headers["content-type"] == "application/json", r.headers
print("a JSON value reads back as stored")

# A concurrent blind write with the caller's Content-Type: siblings.
r = api.put_key_with_http_info(key, body=b"plain", w=3, _content_type="text/plain")
assert r.status_code == 204 and r.headers["sibling-count"] == "2", (r.status_code, r.headers)
e = raised(lambda: api.get_key(key, r=3))
assert e.status == 300, e.status
assert e.headers["sibling-count"] == "2" and e.headers["causal-context"], e.headers
assert e.headers["content-type"].startswith("multipart/mixed; boundary="), e.headers
v = api.get_versions(key, r=3)
assert sorted(s.content_type for s in v.siblings) == ["application/json", "text/plain"], v.siblings
print("siblings: a 300 with its headers, and the JSON view as a model")

# Resolve them, then a conditional write with the read's ETag.
r = api.put_key_with_http_info(key, body=b"one", w=3, causal_context=v.context, _content_type="text/plain")
assert r.status_code == 204 and r.headers["sibling-count"] == "1", (r.status_code, r.headers)
r = api.get_key_with_http_info(key, r=3)
assert bytes(r.data) == b"one" and r.headers["content-type"] == "text/plain", (r.data, r.headers)
etag = r.headers["etag"]
assert api.put_key_with_http_info(key, body=b"two", w=3, if_match=etag).status_code == 204
e = raised(lambda: api.put_key(key, body=b"stale", w=3, if_match=etag))
assert e.status == 412 and e.data.error == "precondition_failed", (e.status, e.data)
e = raised(lambda: api.put_key(key, body=b"x", w=4))
assert isinstance(e, BadRequestException) and e.data.error == "invalid_consistency", e.data
print("conditional write: 204 with the current tag, 412 with a stale one")

ctx = api.get_versions(key, r=3).context
assert api.delete_key_with_http_info(key, causal_context=ctx, w=3).status_code == 204
e = raised(lambda: api.get_key(key, r=3))
assert isinstance(e, NotFoundException) and e.data.error == "not_found", e.data
print("deleted")
sys.exit(0)
