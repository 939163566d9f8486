//! The peer port's routes: binary RPCs from other nodes, and
//! `GET /local/keys/{key}` for operators and tests. Mutual TLS is enforced
//! by the listener (see `tls::peer_server_config`), before any route runs.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::routes;
use super::codec::{self, CONTENT_TYPE};
use crate::anti_entropy::{self, AeRequest, AeResponse};
use crate::api::error::ApiError;
use crate::api::keys::key_from_path;
use crate::api::view;
use crate::coordinator::{ForwardPut, ForwardPutResponse};
use crate::node::NodeState;
use crate::replica::{ReadRequest, ReplicateRequest};

/// The RPC routes are for member nodes only ([`super::identity`]); an
/// operator's certificate may read `/local/keys` and nothing else.
pub fn router(state: Arc<NodeState>, max_body: usize) -> Router {
    Router::new()
        .route(routes::READ, post(read))
        .route(routes::REPLICATE, post(replicate))
        .route(routes::PUT, post(forward_put))
        .route(routes::PING, post(ping))
        .route(routes::HELLO, post(hello))
        .route(routes::ANTI_ENTROPY, post(ae_exchange))
        .route_layer(axum::middleware::from_fn(super::identity::require_node))
        .route("/local/keys/{*key}", get(local_key))
        .fallback(|| async { ApiError::NoRoute })
        // A replicated object can hold several siblings of max_value_bytes.
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn reply<T: Serialize>(message: &T) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], codec::encode(message)).into_response()
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    codec::decode(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "peer request failed locally");
    (StatusCode::SERVICE_UNAVAILABLE, "replica unavailable").into_response()
}

async fn read(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let requests: Vec<ReadRequest> = match decode(&body) {
        Ok(r) => r,
        Err(rejection) => return rejection.into_response(),
    };
    reply(&state.coordinator.replica().read_batch(&requests))
}

async fn replicate(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let requests: Vec<ReplicateRequest> = match decode(&body) {
        Ok(r) => r,
        Err(rejection) => return rejection.into_response(),
    };
    match state.coordinator.replica().apply_batch(requests).await {
        Ok(results) => reply(&results),
        Err(e) => unavailable(e),
    }
}

async fn forward_put(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let req: ForwardPut = match decode(&body) {
        Ok(r) => r,
        Err(rejection) => return rejection.into_response(),
    };
    // Not before this start's hello round: the node may learn its data is
    // an older copy and renew its actor epoch. Refused untouched (425),
    // so the forwarding node tries another replica.
    if state.coordinator.replica().storage().history_pending() {
        return (StatusCode::TOO_EARLY, "node is still greeting its peers").into_response();
    }
    let answer: ForwardPutResponse =
        state.coordinator.coordinate_put(req.key, req.context, req.value, req.consistency).await;
    reply(&answer)
}

async fn ae_exchange(State(state): State<Arc<NodeState>>, body: Bytes) -> Response {
    let request: AeRequest = match decode(&body) {
        Ok(r) => r,
        Err(rejection) => return rejection.into_response(),
    };
    let storage = state.coordinator.replica().storage().clone();
    let answer = tokio::task::spawn_blocking(move || anti_entropy::answer(&storage, request)).await;
    let answer: Result<AeResponse, String> = match answer {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    reply(&answer)
}

async fn hello(
    State(state): State<Arc<NodeState>>,
    caller: Option<axum::Extension<super::identity::Caller>>,
    body: Bytes,
) -> Response {
    let hello: anti_entropy::recovery::Hello = match decode(&body) {
        Ok(r) => r,
        Err(rejection) => return rejection.into_response(),
    };
    // A node speaks for itself only: its certificate must name `from`.
    let named = matches!(caller.as_deref(), Some(super::identity::Caller::Node(id)) if *id == hello.from);
    if !named {
        return (StatusCode::FORBIDDEN, "a hello must come from the node it names").into_response();
    }
    let storage = state.coordinator.replica().storage().clone();
    let answer =
        tokio::task::spawn_blocking(move || anti_entropy::recovery::answer_hello(&storage, &hello)).await;
    let answer: Result<anti_entropy::recovery::HelloAnswer, String> = match answer {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    reply(&answer)
}

async fn ping() -> Response {
    reply(&())
}

async fn local_key(State(state): State<Arc<NodeState>>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_from_path(&uri, "/local/keys/")?;
    let ring = state.coordinator.membership().ring();
    let object = state
        .coordinator
        .replica()
        .read(ring.partition_of(&key), key.clone())
        .await
        .map_err(|_| ApiError::NotReady)?;
    match object {
        Some(object) if !object.siblings().is_empty() => {
            Ok(axum::Json(view::local_view(&key, &object)).into_response())
        }
        _ => Err(ApiError::NotFound),
    }
}
