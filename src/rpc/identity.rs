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
use std::sync::Arc;

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

/// Which member a client certificate names, if any.
pub fn classify(certs: Option<&[CertificateDer<'_>]>, members: &[String]) -> Caller {
    let Some(leaf) = certs.and_then(|c| c.first()) else { return Caller::Operator };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return Caller::Operator };
    members
        .iter()
        .find(|id| {
            DnsName::try_from(id.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name)).is_ok())
        })
        .map_or(Caller::Operator, |id| Caller::Node(id.clone()))
}

/// The TLS acceptor of the peer port, plus the classification.
#[derive(Clone)]
pub struct IdentifyingAcceptor {
    inner: RustlsAcceptor<NoDelayAcceptor>,
    members: Arc<Vec<String>>,
}

impl IdentifyingAcceptor {
    pub fn new(inner: RustlsAcceptor<NoDelayAcceptor>, members: Vec<String>) -> Self {
        IdentifyingAcceptor { inner, members: Arc::new(members) }
    }
}

type Stream = tokio_rustls::server::TlsStream<TcpStream>;
type Accepted<S> = (Stream, axum::middleware::AddExtension<S, Caller>);

impl<S: Send + 'static> Accept<TcpStream, S> for IdentifyingAcceptor {
    type Stream = Stream;
    type Service = axum::middleware::AddExtension<S, Caller>;
    type Future = Pin<Box<dyn Future<Output = io::Result<Accepted<S>>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let handshake = self.inner.accept(stream, service);
        let members = self.members.clone();
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            let caller = classify(stream.get_ref().1.peer_certificates(), &members);
            Ok((stream, axum::Extension(caller).layer(service)))
        })
    }
}

/// Middleware of the RPC routes: only a member's certificate gets through.
pub async fn require_node(request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(Caller::Node(_)) => next.run(request).await,
        _ => (
            StatusCode::FORBIDDEN,
            "this certificate names no member of the cluster; only nodes may call replica RPCs",
        )
            .into_response(),
    }
}
