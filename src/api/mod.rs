//! The public HTTPS API: routes, extractors, and the error → status mapping.
//! With `rpc`, the only module that sees HTTP types. [`local`] is the one
//! route of the peer port that is not an RPC.

pub mod cluster;
pub mod error;
pub mod keys;
pub mod local;
pub mod metrics;
pub mod precondition;
pub mod state;
pub mod unread;
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::coordinator::QuorumKind;
use error::ApiError;
pub use state::{AppState, Background};

/// The client-facing router; testable without a socket.
pub fn router(state: Arc<AppState>) -> Router {
    let drain_budget = unread::DrainBudget(state.max_value_bytes.saturating_mul(2).saturating_add(1 << 20));
    let keys = Router::new()
        .route("/keys/{*key}", get(keys::get).put(keys::put).delete(keys::delete))
        .route("/keys", get(keys::missing_key).put(keys::missing_key).delete(keys::missing_key))
        .route("/keys/", get(keys::missing_key).put(keys::missing_key).delete(keys::missing_key))
        .route("/versions/{*key}", get(keys::versions))
        .route("/versions", get(keys::missing_key))
        .route("/versions/", get(keys::missing_key))
        .layer(axum::middleware::map_response(view::ensure_key_headers))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record));
    Router::new()
        .merge(keys)
        .route("/cluster", get(cluster::cluster))
        .route("/cluster/preference-list/{*key}", get(cluster::preference_list))
        .route("/cluster/members/{id}/leave", axum::routing::post(cluster::leave))
        .route("/cluster/members/{id}/remove", axum::routing::post(cluster::remove))
        .route("/cluster/members/{id}/weight", axum::routing::post(cluster::weight))
        .route("/cluster/members/{id}/join", axum::routing::post(cluster::join))
        .route("/health/live", get(cluster::live))
        .route("/health/ready", get(cluster::ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // The PUT handler enforces `max_value_bytes` itself, with a JSON 413.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(drain_budget, unread::drain_unread))
        .with_state(state)
}

/// Counts and times every `/keys` request, and the siblings each read returned.
async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let operation = match *request.method() {
        Method::GET => "get",
        Method::PUT => "put",
        Method::DELETE => "delete",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.governor.observe(elapsed);
    let metrics = &state.metrics;
    metrics.observe_request(operation, status, elapsed.as_secs_f64());
    if let Some(kind) = response.extensions().get::<QuorumKind>() {
        metrics.observe_quorum_failure(kind.as_str());
    }
    if operation == "get" && (status == 200 || status == 300) {
        let siblings = response.headers().get(view::SIBLING_COUNT).and_then(|v| v.to_str().ok());
        if let Some(n) = siblings.and_then(|v| v.parse().ok()) {
            metrics.observe_siblings(n);
        }
    }
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], crate::metrics::encode(&state.registry)).into_response()
}
