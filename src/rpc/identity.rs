//! Who is calling the peer port. The TLS handshake already proves the
//! client certificate was signed by the cluster CA; but the same CA also
//! signs operator certificates (the admin certificate `quorumkv dev` and
//! `quorumkv certs` write), and an operator must not be able to call the
//! RPCs that change replicas (`/rpc/replicate` would let it plant any
//! version, `/rpc/ae` reap keys).
//!
//! So each connection is classified once, after the handshake: a
//! certificate with a subject alternative name equal to a member id (node
//! certificates carry their id as a SAN) is a [`Caller::Node`]; any other
//! CA-signed certificate is a [`Caller::Operator`], which may only read
//! `GET /local/keys/{key}`. The classification rides on every request of
//! the connection as an extension, checked by [`require_node`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::{Accept, NoDelayAcceptor};
use axum_server::tls_rustls::RustlsAcceptor;
use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use tokio::net::TcpStream;
use tower_layer::Layer;

/// The kind of client on a peer-port connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A member of the cluster, by id.
    Node(String),
    /// A certificate of the cluster CA that names no member.
    Operator,
}

/// Which member a client certificate names, if any. A certificate valid
/// for more than one member id (a shared SAN such as `localhost`, or a
/// wildcard) names none of them: it cannot be told apart.
pub fn classify(certs: Option<&[CertificateDer<'_>]>, members: &[String]) -> Caller {
    let Some(leaf) = certs.and_then(|c| c.first()) else { return Caller::Operator };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return Caller::Operator };
    let mut named = members.iter().filter(|id| {
        DnsName::try_from(id.as_str())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name)).is_ok())
    });
    match (named.next(), named.next()) {
        (Some(id), None) => Caller::Node(id.clone()),
        _ => Caller::Operator,
    }
}

/// Who the members are right now: `membership` implements it, so a node
/// that joined after a connection was made is recognised on it.
pub trait Roster: Send + Sync + 'static {
    fn member_ids(&self) -> Vec<String>;
}

/// The client certificate of a peer-port connection, classified against
/// the roster when a request needs it: a member stays one for the
/// connection's life; any other certificate is looked at again per
/// request, since its node may have joined meanwhile.
pub struct Identity {
    cert: Option<CertificateDer<'static>>,
    roster: Arc<dyn Roster>,
    node: OnceLock<String>,
}

impl Identity {
    pub fn caller(&self) -> Caller {
        if let Some(id) = self.node.get() {
            return Caller::Node(id.clone());
        }
        let certs = self.cert.as_ref().map(std::slice::from_ref);
        let caller = classify(certs, &self.roster.member_ids());
        if let Caller::Node(id) = &caller {
            let _ = self.node.set(id.clone());
        }
        caller
    }

    /// Whether the certificate names `id` and no other member (a joining
    /// node proves its id so).
    pub fn names(&self, id: &str) -> bool {
        let Some(cert) = &self.cert else { return false };
        let mut ids = self.roster.member_ids();
        if !ids.iter().any(|m| m == id) {
            ids.push(id.to_string());
        }
        classify(Some(std::slice::from_ref(cert)), &ids) == Caller::Node(id.to_string())
    }
}

/// The TLS acceptor of the peer port, plus the classification.
#[derive(Clone)]
pub struct IdentifyingAcceptor {
    inner: RustlsAcceptor<NoDelayAcceptor>,
    roster: Arc<dyn Roster>,
}

impl IdentifyingAcceptor {
    pub fn new(inner: RustlsAcceptor<NoDelayAcceptor>, roster: Arc<dyn Roster>) -> Self {
        IdentifyingAcceptor { inner, roster }
    }
}

type Stream = tokio_rustls::server::TlsStream<TcpStream>;
type Accepted<S> = (Stream, axum::middleware::AddExtension<S, Arc<Identity>>);

impl<S: Send + 'static> Accept<TcpStream, S> for IdentifyingAcceptor {
    type Stream = Stream;
    type Service = axum::middleware::AddExtension<S, Arc<Identity>>;
    type Future = Pin<Box<dyn Future<Output = io::Result<Accepted<S>>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let handshake = self.inner.accept(stream, service);
        let roster = self.roster.clone();
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let identity = Arc::new(Identity { cert, roster, node: OnceLock::new() });
            Ok((stream, axum::Extension(identity).layer(service)))
        })
    }
}

/// Middleware of the RPC routes: only a member's certificate gets through.
pub async fn require_node(request: Request, next: Next) -> Response {
    match request.extensions().get::<Arc<Identity>>().map(|i| i.caller()) {
        Some(Caller::Node(_)) => next.run(request).await,
        _ => (
            StatusCode::FORBIDDEN,
            "this certificate names no member of the cluster; only nodes may call replica RPCs",
        )
            .into_response(),
    }
}
