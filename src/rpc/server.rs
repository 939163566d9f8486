//! The peer port's server side: a table of endpoints, each a route and a
//! typed handler registered by the subsystem that owns the message
//! (`replica` its reads and merges, `coordinator` forwarded writes,
//! `anti_entropy` exchanges and hellos), as Garage's `rpc` lets each table
//! register its endpoint. This module only decodes, calls and encodes, so
//! the transport imports none of the subsystems that use it.
//!
//! Mutual TLS is enforced by the listener (see `tls::peer_server_config`);
//! only a member's certificate reaches an endpoint ([`super::identity`]).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::routes;
use super::codec::{self, CONTENT_TYPE, CodecError};
use super::identity::{Caller, Identity, require_node};

/// Why an endpoint did not run: the status tells the caller whether the
/// request was looked at (see `RpcError::not_delivered` for 425).
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: Cow<'static, str>,
}

impl Refusal {
    /// Refused before any work, so the caller may send it elsewhere (425).
    pub fn too_early(message: &'static str) -> Refusal {
        Refusal { status: StatusCode::TOO_EARLY, message: message.into() }
    }

    pub fn forbidden(message: &'static str) -> Refusal {
        Refusal { status: StatusCode::FORBIDDEN, message: message.into() }
    }

    /// The local replica failed (its disk, most likely): logged here, 503.
    pub fn unavailable(error: impl std::fmt::Display) -> Refusal {
        tracing::error!(%error, "peer request failed locally");
        Refusal { status: StatusCode::SERVICE_UNAVAILABLE, message: "replica unavailable".into() }
    }

    /// A body that does not decode: 400, or 415 when it is in another
    /// wire format (a node of another version), which the caller counts
    /// as not delivered, since nothing was looked at, and so can try
    /// another replica.
    fn undecodable(error: CodecError) -> Refusal {
        let status = match error {
            CodecError::UnknownFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal { status, message: error.to_string().into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// The RPC routes of the peer port, filled by the subsystems at start.
/// Told of the layout digest every member's call carries (`membership`
/// implements it: a digest unlike its own means one of the two is behind).
pub trait LayoutWatch: Send + Sync + 'static {
    fn heard(&self, peer: &str, tag: &[u8]);
}

pub struct Endpoints {
    router: Router,
    watch: Option<Arc<dyn LayoutWatch>>,
    /// Routes any CA-signed certificate may call (a joining node's).
    open: Router,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints::new()
    }
}

impl Endpoints {
    /// The table with `ping` in it. A ping ignores its body, so a node of
    /// another wire format still counts as reachable.
    pub fn new() -> Endpoints {
        let ping = || async { reply(&()) };
        Endpoints { router: Router::new().route(routes::PING, post(ping)), watch: None, open: Router::new() }
    }

    /// Reports the layout digest of every later-registered route's calls
    /// to `watch`.
    pub fn watch_layout(&mut self, watch: Arc<dyn LayoutWatch>) {
        self.watch = Some(watch);
    }

    /// Serves `route` with `handler`, which gets the calling member's id and
    /// the decoded request; a body that does not decode is a 400.
    pub fn add<Req, Resp, F, Fut>(&mut self, route: &'static str, handler: F)
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(String, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Refusal>> + Send + 'static,
    {
        let watch = self.watch.clone();
        let serve = move |identity: Option<Extension<Arc<Identity>>>, headers: HeaderMap, body: Bytes| async move {
            // `require_node` let only members through; this names which one.
            let Some(Caller::Node(from)) = identity.map(|Extension(i)| i.caller()) else {
                return Refusal::forbidden("only nodes may call replica RPCs").into_response();
            };
            if let (Some(watch), Some(tag)) = (&watch, headers.get(routes_header())) {
                watch.heard(&from, tag.as_bytes());
            }
            let request: Req = match codec::decode(&body) {
                Ok(request) => request,
                Err(e) => return Refusal::undecodable(e).into_response(),
            };
            match handler(from, request).await {
                Ok(answer) => reply(&answer),
                Err(refusal) => refusal.into_response(),
            }
        };
        self.router = std::mem::take(&mut self.router).route(route, post(serve));
    }

    /// Serves `route` to any certificate the CA signed, not only members':
    /// `handler` gets the caller's [`Identity`] to check what it claims.
    pub fn add_open<Req, Resp, F, Fut>(&mut self, route: &'static str, handler: F)
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(Arc<Identity>, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Refusal>> + Send + 'static,
    {
        let serve = move |identity: Option<Extension<Arc<Identity>>>, body: Bytes| async move {
            let Some(Extension(identity)) = identity else {
                return Refusal::forbidden("no client certificate").into_response();
            };
            let request: Req = match codec::decode(&body) {
                Ok(request) => request,
                Err(e) => return Refusal::undecodable(e).into_response(),
            };
            match handler(identity, request).await {
                Ok(answer) => reply(&answer),
                Err(refusal) => refusal.into_response(),
            }
        };
        self.open = std::mem::take(&mut self.open).route(route, post(serve));
    }

    /// The peer port's app: the endpoints, for members only, and `open`,
    /// the routes any CA-signed certificate may call (with the fallback).
    /// `max_body`: a replicated object may hold several siblings of
    /// `max_value_bytes`.
    pub fn into_router(self, open: Router, max_body: usize) -> Router {
        self.router
            .route_layer(axum::middleware::from_fn(require_node))
            .merge(self.open)
            .merge(open)
            .layer(DefaultBodyLimit::max(max_body))
    }
}

fn routes_header() -> &'static str {
    super::client::LAYOUT_HEADER
}

fn reply<T: Serialize>(message: &T) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], codec::encode(message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_another_wire_format_is_refused_as_not_looked_at() {
        let other = codec::decode::<u8>(&[codec::encode(&1u8)[0].wrapping_add(1), 1]).unwrap_err();
        assert_eq!(Refusal::undecodable(other).status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let garbled = codec::decode::<String>(&[codec::encode(&1u8)[0], 0xff]).unwrap_err();
        assert_eq!(Refusal::undecodable(garbled).status, StatusCode::BAD_REQUEST);
        let answered = super::super::client::RpcError::Status { peer: "b".into(), status: 415 };
        assert!(answered.not_delivered(), "the caller may send it to another replica");
    }
}
