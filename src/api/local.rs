//! `GET /local/keys/{key}` on the peer port: this node's own copy of a key,
//! as JSON, for operators and tests. Any certificate of the cluster CA may
//! read it (the RPC routes next to it are for members only). It is served
//! on the peer port but belongs to the API: it parses keys and renders
//! objects the way `/keys` does.

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::keys::key_from_path;
use super::view;
use crate::coordinator::Coordinator;

/// The peer port's open routes, with its fallback.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/local/keys/{*key}", get(local_key))
        .fallback(|| async { ApiError::NoRoute })
        .with_state(coordinator)
}

async fn local_key(State(coordinator): State<Coordinator>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_from_path(&uri, "/local/keys/")?;
    let partition = coordinator.membership().layout().partition_of(&key);
    let object = coordinator.replica().read(partition, key.clone()).await.map_err(|_| ApiError::NotReady)?;
    match object {
        Some(object) if !object.siblings().is_empty() => {
            Ok(axum::Json(view::local_view(&key, &object)).into_response())
        }
        _ => Err(ApiError::NotFound),
    }
}
