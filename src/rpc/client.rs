//! Calls to other nodes' peer ports: HTTPS with mutual TLS over one pooled
//! HTTP/2 connection per peer, a deadline on every call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, CONTENT_TYPE};
use super::faults::Faults;
use crate::membership::Membership;
use crate::metrics::{RpcHistograms, RpcLabels};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// No connection could be made: the request was certainly not delivered.
    #[error("cannot connect to peer {peer}: {reason}")]
    Connect { peer: String, reason: String },
    #[error("peer {peer} unreachable: {reason}")]
    Transport { peer: String, reason: String },
    #[error("peer {peer} did not answer within {ms} ms")]
    Timeout { peer: String, ms: u128 },
    #[error("peer {peer} answered status {status}")]
    Status { peer: String, status: u16 },
    #[error("peer {peer} sent a bad body: {reason}")]
    Body { peer: String, reason: String },
    #[error("building the peer client: {0}")]
    Build(String),
}

/// The RPC routes of the peer port (the server side is [`super::server`]).
pub mod routes {
    /// A batch of [`crate::replica::ReadRequest`]s.
    pub const READ: &str = "/rpc/read";
    /// A batch of [`crate::replica::ReplicateRequest`]s.
    pub const REPLICATE: &str = "/rpc/replicate";
    pub const PUT: &str = "/rpc/put";
    pub const PING: &str = "/rpc/ping";
    /// An [`crate::anti_entropy::recovery::Hello`] from a starting node.
    pub const HELLO: &str = "/rpc/hello";
    /// An [`crate::anti_entropy::AeRequest`].
    pub const ANTI_ENTROPY: &str = "/rpc/ae";
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    urls: Arc<HashMap<String, String>>,
    membership: Arc<Membership>,
    faults: Faults,
    latency: RpcHistograms,
}

impl PeerClient {
    /// `local_ip`: the address calls leave from (the peer listener's, when
    /// it names one), so per-node firewall rules can tell nodes apart.
    pub fn new(
        tls: rustls::ClientConfig,
        membership: Arc<Membership>,
        local_ip: Option<std::net::IpAddr>,
        latency: RpcHistograms,
    ) -> Result<Self, RpcError> {
        let http = reqwest::Client::builder()
            .local_address(local_ip)
            .use_preconfigured_tls(tls)
            // Peers always speak HTTP/2: every call to one peer multiplexes
            // over one TLS connection instead of growing a pool.
            .http2_prior_knowledge()
            // Batched replica writes are large bodies: fixed large windows
            // avoid a WINDOW_UPDATE round trip every 64 KiB.
            .http2_initial_stream_window_size(super::H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(super::H2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| RpcError::Build(e.to_string()))?;
        let urls = membership
            .members()
            .iter()
            .map(|m| (m.id.clone(), m.peer_url.trim_end_matches('/').to_string()))
            .collect();
        Ok(PeerClient { http, urls: Arc::new(urls), membership, faults: Faults::default(), latency })
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Sends `request` to `peer`'s `route` and decodes its answer; the
    /// outcome also feeds this node's view of the peer's reachability.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        route: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let started = self.membership.now_ms();
        let timer = std::time::Instant::now();
        let result = self.call_inner(peer, route, request, timeout).await;
        let labels = RpcLabels { peer: peer.to_string(), route };
        self.latency.get_or_create(&labels).observe(timer.elapsed().as_secs_f64());
        let reached = !matches!(
            result,
            Err(RpcError::Connect { .. } | RpcError::Transport { .. } | RpcError::Timeout { .. })
        );
        self.membership.observe(peer, reached, started);
        result
    }

    async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        route: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let base = self.urls.get(peer).ok_or_else(|| RpcError::UnknownPeer(peer.to_string()))?;
        if self.faults.is_cut(peer) {
            return Err(RpcError::Connect {
                peer: peer.to_string(),
                reason: "cut by fault injection".into(),
            });
        }
        let send = self
            .http
            .post(format!("{base}{route}"))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(codec::encode(request))
            .send();
        let work = async {
            let response = send.await.map_err(|e| {
                let (peer, reason) = (peer.to_string(), error_chain(&e));
                if e.is_connect() {
                    RpcError::Connect { peer, reason }
                } else {
                    RpcError::Transport { peer, reason }
                }
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(RpcError::Status { peer: peer.to_string(), status: status.as_u16() });
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| RpcError::Transport { peer: peer.to_string(), reason: error_chain(&e) })?;
            codec::decode(&body).map_err(|e| RpcError::Body { peer: peer.to_string(), reason: e.to_string() })
        };
        let result = tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(RpcError::Timeout { peer: peer.to_string(), ms: timeout.as_millis() }));
        if self.faults.loses_reply(peer, route) {
            return Err(RpcError::Timeout { peer: peer.to_string(), ms: timeout.as_millis() });
        }
        result
    }
}

impl RpcError {
    /// True when the peer cannot have received the request, so sending it
    /// elsewhere cannot apply it twice.
    pub fn not_delivered(&self) -> bool {
        matches!(self, RpcError::UnknownPeer(_) | RpcError::Connect { .. } | RpcError::Build(_))
            // 425: refused before any work (a starting node), see `rpc::server`.
            || matches!(self, RpcError::Status { status: 425, .. })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
