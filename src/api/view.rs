//! How a key's versions are shown to clients: the raw value (one sibling),
//! `multipart/mixed` (several), or the JSON view SDKs prefer. The JSON view
//! is also what the peer port's `/local/keys` answers.

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

pub fn siblings_view(key: &[u8], object: &Object) -> SiblingsView {
    SiblingsView {
        key: String::from_utf8_lossy(key).into_owned(),
        context: context_token(object),
        siblings: object
            .siblings()
            .iter()
            .map(|s| SiblingView {
                value_base64: base64::engine::general_purpose::STANDARD.encode(&s.value.value),
                content_type: s.value.content_type.clone(),
                etag: s.value.etag(),
                last_modified: http_date(s.value.modified_ms),
                deleted: s.value.deleted,
            })
            .collect(),
    }
}

/// True when at least one sibling is not a tombstone.
pub fn has_live(object: &Object) -> bool {
    object.siblings().iter().any(|s| !s.value.deleted)
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

/// 200 with the single sibling's value as the body.
pub fn single(object: &Object, report: &str) -> Response {
    let Some(sibling) = object.siblings().first() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = Response::new(Body::from(sibling.value.value.clone()));
    value_headers(response.headers_mut(), &sibling.value);
    key_headers(response.headers_mut(), object, 1, report);
    response
}

/// 300 Multiple Choices with one `multipart/mixed` part per sibling.
pub fn multipart(object: &Object, report: &str) -> Response {
    let boundary = pick_boundary(object);
    let mut body = Vec::with_capacity(object.siblings().iter().map(|s| s.value.value.len() + 200).sum());
    for s in object.siblings() {
        let v = &s.value;
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(format!("Content-Type: {}\r\n", v.content_type).as_bytes());
        body.extend_from_slice(format!("ETag: {}\r\n", v.etag()).as_bytes());
        body.extend_from_slice(format!("Last-Modified: {}\r\n", http_date(v.modified_ms)).as_bytes());
        if v.deleted {
            body.extend_from_slice(b"Deleted: true\r\n");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&v.value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::MULTIPLE_CHOICES;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header_value(&format!("multipart/mixed; boundary={boundary}")));
    key_headers(response.headers_mut(), object, object.siblings().len(), report);
    response
}

/// A random boundary that occurs in none of the values (RFC 2046 §5.1.1).
fn pick_boundary(object: &Object) -> String {
    loop {
        let boundary = format!("qkv{:032x}", rand::random::<u128>());
        let needle = boundary.as_bytes();
        let clash =
            object.siblings().iter().any(|s| s.value.value.windows(needle.len()).any(|w| w == needle));
        if !clash {
            return boundary;
        }
    }
}

/// 200 with the JSON view (always, whatever the sibling count).
pub fn json(key: &[u8], object: &Object, report: &str) -> Response {
    let mut response = axum::Json(siblings_view(key, object)).into_response();
    key_headers(response.headers_mut(), object, object.siblings().len(), report);
    response
}
