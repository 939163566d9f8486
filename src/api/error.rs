//! Every way a client request can fail, and the one mapping from those
//! failures to HTTP status and JSON body. Internals never reach the body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use axum::http::HeaderValue;

use crate::coordinator::{CoordinatorError, QuorumKind};
use crate::replica::LimitError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidKey(String),
    #[error("key is {0} bytes; the limit is 1024")]
    KeyTooLong(usize),
    #[error("{0}")]
    InvalidConsistency(String),
    #[error("Causal-Context is not a valid context token: {0}")]
    InvalidContext(String),
    #[error("Content-MD5 must be the base64 of a 16-byte MD5 digest")]
    InvalidContentMd5,
    #[error("Content-MD5 does not match the body; nothing was stored")]
    ContentMd5Mismatch,
    #[error("value exceeds the limit of {limit} bytes")]
    ValueTooLarge { limit: usize },
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidContentType(String),
    #[error("{0}")]
    InvalidPrecondition(String),
    #[error("{header} failed against what a quorum read sees; nothing was stored")]
    PreconditionFailed { header: &'static str, current: Option<String> },
    #[error("no live value for this key")]
    NotFound,
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("node is not ready")]
    NotReady,
    #[error("{0} is not a member of the layout")]
    NotMember(String),
    #[error("{0}")]
    LayoutRefused(String),
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::KeyTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound | ApiError::NoRoute | ApiError::NotMember(_) => StatusCode::NOT_FOUND,
            ApiError::LayoutRefused(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Coordinator(CoordinatorError::Limit(LimitError::Siblings { .. })) => {
                StatusCode::CONFLICT
            }
            ApiError::Coordinator(CoordinatorError::Limit(LimitError::ObjectBytes { .. })) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Coordinator(CoordinatorError::ForgedContext(_)) => StatusCode::BAD_REQUEST,
            ApiError::NotReady | ApiError::Coordinator(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidKey(_) => "invalid_key",
            ApiError::KeyTooLong(_) => "key_too_long",
            ApiError::InvalidConsistency(_) => "invalid_consistency",
            ApiError::InvalidContext(_) => "invalid_causal_context",
            ApiError::InvalidContentMd5 => "invalid_content_md5",
            ApiError::ContentMd5Mismatch => "content_md5_mismatch",
            ApiError::ValueTooLarge { .. } => "value_too_large",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidContentType(_) => "invalid_content_type",
            ApiError::InvalidPrecondition(_) => "invalid_precondition",
            ApiError::PreconditionFailed { .. } => "precondition_failed",
            ApiError::NotFound => "not_found",
            // Distinct from a missing key, so a client can tell a node
            // without the route (older, or a wrong URL) from a 404 key.
            ApiError::NoRoute => "no_route",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::NotReady => "not_ready",
            ApiError::NotMember(_) => "not_a_member",
            ApiError::LayoutRefused(_) => "layout_change_refused",
            ApiError::Coordinator(CoordinatorError::QuorumNotMet { .. }) => "quorum_not_met",
            ApiError::Coordinator(CoordinatorError::DigestMismatch) => "value_corrupted_in_transit",
            ApiError::Coordinator(CoordinatorError::CorruptLocal) => "replica_corrupt",
            ApiError::Coordinator(CoordinatorError::ForgedContext(_)) => "invalid_causal_context",
            ApiError::Coordinator(CoordinatorError::Limit(LimitError::Siblings { .. })) => {
                "too_many_siblings"
            }
            ApiError::Coordinator(CoordinatorError::Limit(LimitError::ObjectBytes { .. })) => {
                "object_too_large"
            }
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({ "error": self.code(), "message": self.to_string() });
        if let ApiError::Coordinator(CoordinatorError::QuorumNotMet { kind, required, answered, n }) = self {
            body["kind"] = json!(kind.as_str());
            body["required"] = json!(required);
            body["answered"] = json!(answered);
            body["n"] = json!(n);
        }
        match self {
            ApiError::PreconditionFailed { header, current } => {
                body["condition"] = json!(header);
                body["current_etag"] = json!(current);
            }
            ApiError::Coordinator(CoordinatorError::Limit(LimitError::Siblings { siblings, limit })) => {
                body["limit"] = json!("max_siblings");
                body["max"] = json!(limit);
                body["siblings"] = json!(siblings);
            }
            ApiError::Coordinator(CoordinatorError::Limit(LimitError::ObjectBytes {
                bytes,
                siblings,
                limit,
            })) => {
                body["limit"] = json!("max_object_bytes");
                body["max"] = json!(limit);
                body["bytes"] = json!(bytes);
                body["siblings"] = json!(siblings);
            }
            _ => {}
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let ApiError::Coordinator(CoordinatorError::QuorumNotMet { kind, required, answered, n }) = self {
            let got = if matches!(kind, QuorumKind::R | QuorumKind::Pr) { "answered" } else { "acked" };
            let report = format!("n={n}; {}={required}; {got}={answered}", kind.as_str());
            if let Ok(v) = HeaderValue::from_str(&report) {
                response.headers_mut().insert(super::view::QUORUM_REPORT, v);
            }
            // For the metrics middleware.
            response.extensions_mut().insert(kind);
        }
        response
    }
}
