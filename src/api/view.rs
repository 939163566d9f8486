//! How a key's versions are shown to clients: the raw value (one sibling),
//! `multipart/mixed` (several), or the JSON view SDKs prefer.
//!
//! **Add-wins.** A tombstone concurrent with a live value is not shown: the
//! live values are the answer, and the tombstone stays in the causal
//! context, so a write with that context supersedes it too. Only when every
//! version is a tombstone does the key read as deleted (`404`). Without this
//! rule, put → delete → blind put answers `300` with a "deleted" part next to
//! the new value, and a user who re-creates a key is left resolving a delete.
//! The peer port's `/local/keys` shows a replica's raw versions, tombstones
//! included, for operators and tests.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use crate::storage::{Object, StoredValue};

pub const CAUSAL_CONTEXT: HeaderName = HeaderName::from_static("causal-context");
pub const SIBLING_COUNT: HeaderName = HeaderName::from_static("sibling-count");
pub const QUORUM_REPORT: HeaderName = HeaderName::from_static("quorum-report");

/// The JSON view of a key's versions.
#[derive(Debug, Serialize)]
pub struct SiblingsView {
    pub key: String,
    pub context: String,
    pub siblings: Vec<SiblingView>,
}

#[derive(Debug, Serialize)]
pub struct SiblingView {
    pub value_base64: String,
    pub content_type: String,
    pub etag: String,
    pub last_modified: String,
    pub deleted: bool,
}

pub fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The context token of an object; empty when nothing is stored.
pub fn context_token(object: &Object) -> String {
    if object.clock().is_empty() { String::new() } else { object.clock().to_token() }
}

/// The versions a client is shown (add-wins): the live ones. Empty when
/// every version is a tombstone (or nothing is stored).
pub fn visible(object: &Object) -> Vec<&StoredValue> {
    object.siblings().iter().map(|s| &s.value).filter(|v| !v.deleted).collect()
}

/// The JSON view of a replica's raw versions, tombstones included.
pub fn local_view(key: &[u8], object: &Object) -> SiblingsView {
    view_of(key, object, object.siblings().iter().map(|s| &s.value).collect())
}

fn view_of(key: &[u8], object: &Object, versions: Vec<&StoredValue>) -> SiblingsView {
    SiblingsView {
        key: String::from_utf8_lossy(key).into_owned(),
        context: context_token(object),
        siblings: versions
            .into_iter()
            .map(|v| SiblingView {
                value_base64: base64::engine::general_purpose::STANDARD.encode(&v.bytes),
                content_type: v.content_type.clone(),
                etag: v.etag(),
                last_modified: http_date(v.modified_ms),
                deleted: v.deleted,
            })
            .collect(),
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// Headers every key response carries: context, sibling count, quorum report.
pub fn key_headers(headers: &mut HeaderMap, object: &Object, siblings: usize, report: &str) {
    let token = context_token(object);
    if !token.is_empty() {
        headers.insert(CAUSAL_CONTEXT, header_value(&token));
    }
    write_headers(headers, siblings, report);
}

/// Sibling count and quorum report without a context.
pub fn write_headers(headers: &mut HeaderMap, siblings: usize, report: &str) {
    headers.insert(SIBLING_COUNT, HeaderValue::from(siblings));
    headers.insert(QUORUM_REPORT, header_value(report));
}

/// `/keys` error responses carry the two headers too: no version was
/// returned, and a failed quorum says what it got (set by `ApiError`);
/// anything refused before replicas were asked reports `none`.
pub async fn ensure_key_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(SIBLING_COUNT) {
        headers.insert(SIBLING_COUNT, HeaderValue::from(0));
    }
    if !headers.contains_key(QUORUM_REPORT) {
        headers.insert(QUORUM_REPORT, HeaderValue::from_static("none"));
    }
    response
}

fn value_headers(headers: &mut HeaderMap, v: &StoredValue) {
    headers.insert(header::CONTENT_TYPE, header_value(&v.content_type));
    headers.insert(header::ETAG, header_value(&v.etag()));
    headers.insert(header::LAST_MODIFIED, header_value(&http_date(v.modified_ms)));
}

/// 200 with the one visible value as the body.
pub fn single(object: &Object, value: &StoredValue, report: &str) -> Response {
    let mut response = Response::new(Body::from(value.bytes.clone()));
    value_headers(response.headers_mut(), value);
    key_headers(response.headers_mut(), object, 1, report);
    response
}

/// 300 Multiple Choices with one `multipart/mixed` part per visible sibling.
pub fn multipart(object: &Object, visible: &[&StoredValue], report: &str) -> Response {
    let boundary = pick_boundary(visible);
    let mut body = Vec::with_capacity(visible.iter().map(|v| v.bytes.len() + 200).sum());
    for v in visible {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(format!("Content-Type: {}\r\n", v.content_type).as_bytes());
        body.extend_from_slice(format!("ETag: {}\r\n", v.etag()).as_bytes());
        body.extend_from_slice(format!("Last-Modified: {}\r\n", http_date(v.modified_ms)).as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&v.bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::MULTIPLE_CHOICES;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header_value(&format!("multipart/mixed; boundary={boundary}")));
    key_headers(response.headers_mut(), object, visible.len(), report);
    entity_tag_header(response.headers_mut(), visible);
    response
}

/// 300 and JSON answers carry the key's entity tag (see
/// `precondition::entity_tag`) for `If-Match`; the raw 200 carries the
/// value's, which is the same tag.
fn entity_tag_header(headers: &mut HeaderMap, visible: &[&StoredValue]) {
    if let Some(tag) = super::precondition::entity_tag(visible) {
        headers.insert(header::ETAG, header_value(&tag));
    }
}

/// A random boundary that occurs in none of the values (RFC 2046 §5.1.1).
fn pick_boundary(visible: &[&StoredValue]) -> String {
    loop {
        let boundary = format!("qkv{:032x}", rand::random::<u128>());
        let needle = boundary.as_bytes();
        let clash = visible.iter().any(|v| v.bytes.windows(needle.len()).any(|w| w == needle));
        if !clash {
            return boundary;
        }
    }
}

/// 200 with the JSON view (always, whatever the sibling count).
pub fn json(key: &[u8], object: &Object, report: &str) -> Response {
    let visible = visible(object);
    let mut response = axum::Json(view_of(key, object, visible.clone())).into_response();
    key_headers(response.headers_mut(), object, visible.len(), report);
    entity_tag_header(response.headers_mut(), &visible);
    response
}
