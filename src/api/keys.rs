//! `GET/PUT/DELETE /keys/{key}`: turn HTTP into a coordinator call and its
//! outcome back into HTTP.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;

use super::AppState;
use super::error::ApiError;
use super::precondition::Preconditions;
use super::view;
use crate::coordinator::{Consistency, Knob, KnobRequest, Outcome};
use crate::storage::{Object, StoredValue};
use crate::util::now_ms;
use crate::version::VersionVector;

pub const MAX_KEY_BYTES: usize = 1024;

/// The key is the raw rest of the path after `prefix`, percent-decoded to
/// bytes (any byte is allowed, `/` included).
pub fn key_from_path(uri: &Uri, prefix: &str) -> Result<Bytes, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(ApiError::InvalidKey("key must be 1 to 1024 bytes; got an empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::KeyTooLong(key.len()));
    }
    Ok(Bytes::from(key))
}

fn knobs(headers: &HeaderMap) -> Result<KnobRequest, ApiError> {
    let one = |name: &str| -> Result<Option<Knob>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().ok().and_then(Knob::parse).map(Some).ok_or_else(|| {
                ApiError::InvalidConsistency(format!(
                    "header {name} must be a non-negative integer, one, quorum or all"
                ))
            }),
        }
    };
    Ok(KnobRequest {
        n: one("n")?,
        r: one("r")?,
        w: one("w")?,
        pr: one("pr")?,
        pw: one("pw")?,
        dw: one("dw")?,
    })
}

fn consistency(state: &AppState, headers: &HeaderMap) -> Result<Consistency, ApiError> {
    state.coordinator.consistency(&knobs(headers)?).map_err(|e| ApiError::InvalidConsistency(e.0))
}

fn context(headers: &HeaderMap) -> Result<VersionVector, ApiError> {
    match headers.get(&view::CAUSAL_CONTEXT) {
        None => Ok(VersionVector::new()),
        Some(v) => {
            let text = v.to_str().map_err(|_| ApiError::InvalidContext("not ASCII".into()))?.trim();
            if text.is_empty() {
                return Ok(VersionVector::new());
            }
            VersionVector::from_token(text).map_err(|e| ApiError::InvalidContext(e.to_string()))
        }
    }
}

fn ensure_ready(state: &AppState) -> Result<(), ApiError> {
    if state.is_ready() { Ok(()) } else { Err(ApiError::NotReady) }
}

/// The quorum read both GET routes make: the key, the merged object and
/// the quorum report.
async fn read(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    prefix: &str,
) -> Result<(Bytes, Object, String), ApiError> {
    let key = key_from_path(uri, prefix)?;
    let c = consistency(state, headers)?;
    ensure_ready(state)?;
    let Outcome { object, report } = state.coordinator.get(key.clone(), c).await?;
    Ok((key, object, report.to_string()))
}

fn not_found(object: &Object, report: &str) -> Response {
    let mut response = ApiError::NotFound.into_response();
    view::key_headers(response.headers_mut(), object, 0, report);
    response
}

/// `GET /keys/{key}`: the value as stored, whatever the request's `Accept`
/// says (a stored JSON document comes back as itself, as in Riak), or the
/// siblings as `multipart/mixed`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, object, report) = read(&state, &uri, &headers, "/keys/").await?;
    Ok(match view::visible(&object).as_slice() {
        [] => not_found(&object, &report),
        [one] => view::single(&object, one, &report),
        many => view::multipart(&object, many, &report),
    })
}

/// `GET /versions/{key}`: the same read as JSON, one entry per live
/// version, for clients that want siblings as data (generated SDKs, the
/// CLI) rather than multipart.
pub async fn versions(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, object, report) = read(&state, &uri, &headers, "/versions/").await?;
    Ok(if view::visible(&object).is_empty() {
        not_found(&object, &report)
    } else {
        view::json(&key, &object, &report)
    })
}

/// The media type stored with a value: `Value-Content-Type` (for clients
/// that cannot choose the request's `Content-Type`, such as an SDK
/// generated from openapi.yaml), else `Content-Type`, else octet-stream.
/// It must parse as a concrete `type/subtype[; params]`: reads send it back
/// as their `Content-Type`, and a client must be able to parse that.
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let given = headers.get(VALUE_CONTENT_TYPE).map(|v| ("Value-Content-Type", v));
    let Some((name, value)) =
        given.or_else(|| headers.get(header::CONTENT_TYPE).map(|v| ("Content-Type", v)))
    else {
        return Ok("application/octet-stream".to_string());
    };
    let text = value.to_str().map(str::trim).unwrap_or("");
    match text.parse::<mime::Mime>() {
        Ok(m) if m.type_() != mime::STAR && m.subtype() != mime::STAR => Ok(text.to_string()),
        _ => Err(ApiError::InvalidContentType(format!(
            "{name} must be a media type such as text/plain or application/json; got {text:?}"
        ))),
    }
}

const VALUE_CONTENT_TYPE: header::HeaderName = header::HeaderName::from_static("value-content-type");

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.max_value_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::ValueTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::ValueTooLarge { limit };
            }
            source = s.source();
        }
        ApiError::InvalidBody(format!("could not read the request body: {e}"))
    })
}

fn check_md5(headers: &HeaderMap, digest: &[u8; 16]) -> Result<(), ApiError> {
    let Some(v) = headers.get("content-md5") else { return Ok(()) };
    let claimed = v
        .to_str()
        .ok()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s.trim()).ok())
        .filter(|d| d.len() == 16)
        .ok_or(ApiError::InvalidContentMd5)?;
    if claimed.as_slice() != digest {
        return Err(ApiError::ContentMd5Mismatch);
    }
    Ok(())
}

/// `204`. The context is returned only when what a reader would now be
/// shown is exactly this write: this PUT's value alone, or nothing after a
/// DELETE (add-wins hides the tombstones it then covers). Otherwise the
/// clock would also cover a concurrent value this client never saw (a PUT
/// that landed next to this one, or a value a DELETE lost to), and a next
/// write with it would silently drop that value; the client reads instead.
fn written(outcome: Outcome, wrote: &StoredValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let visible = view::visible(&outcome.object);
    let report = outcome.report.to_string();
    let only_this = match visible.as_slice() {
        [] => wrote.deleted,
        [one] => !wrote.deleted && *one == wrote,
        _ => false,
    };
    if only_this {
        view::key_headers(response.headers_mut(), &outcome.object, visible.len(), &report);
    } else {
        view::write_headers(response.headers_mut(), visible.len(), &report);
    }
    response
}

pub async fn put(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_from_path(&uri, "/keys/")?;
    let c = consistency(&state, &headers)?;
    let ctx = context(&headers)?;
    let content_type = content_type(&headers)?;
    let conditions = Preconditions::from_headers(&headers)?;
    ensure_ready(&state)?;
    // Conditions first: a 412 is answered before the body is uploaded
    // (with `Expect: 100-continue`, before the client sends it at all).
    let adopt = conditions.names_what_it_replaces();
    let ctx = write_context(&state, &key, c, ctx, &conditions, false, adopt).await?;
    let value = read_body(&state, &headers, body).await?;
    state.metrics.observe_value(value.len());
    let stored = StoredValue::new(value, content_type, now_ms(), false);
    check_md5(&headers, &stored.digest)?;
    let outcome = state.coordinator.put(key, ctx, stored.clone(), c).await?;
    Ok(written(outcome, &stored))
}

/// The context a write goes out with, after the one read it may need: a
/// read at the request's R/PR is made when there are preconditions (checked
/// against what it shows; a failed read fails the write) or, with
/// `blind_read`, when the request has no `Causal-Context`. Without one, the
/// read's clock is adopted only when `adopt`: a PUT whose condition names
/// what it replaces (`If-Match` tags; `If-None-Match: *`, which passes only
/// over tombstones), or any DELETE (which deletes what a read sees, as Riak
/// does: a tombstone concurrent with everything would leave the values
/// readable next to it). `If-Unmodified-Since` alone does not say which
/// values a PUT replaces, so it stays a sibling as a blind PUT would.
async fn write_context(
    state: &AppState,
    key: &Bytes,
    c: Consistency,
    ctx: VersionVector,
    conditions: &Preconditions,
    blind_read: bool,
    adopt: bool,
) -> Result<VersionVector, ApiError> {
    if conditions.is_empty() && !(blind_read && ctx.is_empty()) {
        return Ok(ctx);
    }
    let seen = state.coordinator.get(key.clone(), c).await?.object;
    conditions.check(&view::visible(&seen))?;
    Ok(if ctx.is_empty() && adopt { seen.clock().clone() } else { ctx })
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from_path(&uri, "/keys/")?;
    let c = consistency(&state, &headers)?;
    let ctx = context(&headers)?;
    let conditions = Preconditions::from_headers(&headers)?;
    ensure_ready(&state)?;
    let ctx = write_context(&state, &key, c, ctx, &conditions, true, true).await?;
    let tombstone = StoredValue::new(Bytes::new(), "application/octet-stream".into(), now_ms(), true);
    let outcome = state.coordinator.put(key, ctx, tombstone.clone(), c).await?;
    Ok(written(outcome, &tombstone))
}

/// `/keys`, `/versions` (or with a trailing `/`) with no key.
pub async fn missing_key() -> ApiError {
    ApiError::InvalidKey("key must be 1 to 1024 bytes; got an empty key".into())
}
