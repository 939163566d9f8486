//! The public HTTPS API: routes, extractors, and the error → status mapping.
//! With `rpc`, the only module that sees HTTP types.

pub mod cluster;
pub mod error;
pub mod keys;
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::node::NodeState;
use error::ApiError;

/// The client-facing router; testable without a socket.
pub fn router(state: Arc<NodeState>) -> Router {
    let keys = Router::new()
        .route("/keys/{*key}", get(keys::get).put(keys::put).delete(keys::delete))
        .route("/keys", get(keys::missing_key).put(keys::missing_key).delete(keys::missing_key))
        .route("/keys/", get(keys::missing_key).put(keys::missing_key).delete(keys::missing_key))
        .layer(axum::middleware::map_response(view::ensure_key_headers));
    Router::new()
        .merge(keys)
        .route("/cluster", get(cluster::cluster))
        .route("/cluster/preference-list/{*key}", get(cluster::preference_list))
        .route("/health/live", get(cluster::live))
        .route("/health/ready", get(cluster::ready))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // The PUT handler enforces `max_value_bytes` itself, with a JSON 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
