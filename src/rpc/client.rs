//! Calls to other nodes' peer ports: HTTPS with mutual TLS over one pooled
//! HTTP/2 connection per peer, a deadline on every call.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, CONTENT_TYPE};
use super::faults::Faults;
use super::metrics::RpcMetrics;

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
    /// A batch of `replica::ReadRequest`s (registered by `replica`).
    pub const READ: &str = "/rpc/read";
    /// A batch of `replica::ReplicateRequest`s.
    pub const REPLICATE: &str = "/rpc/replicate";
    pub const PUT: &str = "/rpc/put";
    pub const PING: &str = "/rpc/ping";
    /// An `anti_entropy::recovery::Hello` from a starting node.
    pub const HELLO: &str = "/rpc/hello";
    /// An `anti_entropy::AeRequest`.
    pub const ANTI_ENTROPY: &str = "/rpc/ae";
    /// Gossip: a `membership::history::History`, answered with the merge.
    pub const LAYOUT: &str = "/rpc/layout";
    /// A node asking a seed for the layout (and to join it); open to any
    /// CA-signed certificate, which must name the joining id.
    pub const JOIN: &str = "/rpc/join";
}

/// What the client tells of every call's outcome, so this node's view of
/// each peer's reachability is learned from real traffic. `membership`
/// implements it: the transport sits below the member list, which uses it
/// to probe.
pub trait Reachability: Send + Sync + 'static {
    /// A monotonic clock in ms, read when a call starts.
    fn clock_ms(&self) -> u64;
    /// A call to `peer` that started at `started_ms` reached it or not.
    fn observe(&self, peer: &str, reached: bool, started_ms: u64);
    /// The peer-port base URL of member `peer` in the current layout.
    fn url_of(&self, peer: &str) -> Option<String>;
    /// This node's layout digest, sent with every call ([`LAYOUT_HEADER`])
    /// so a peer that holds another layout exchanges with this node.
    fn layout_tag(&self) -> Option<String> {
        None
    }
}

/// The header carrying the caller's layout digest on every peer call.
pub const LAYOUT_HEADER: &str = "quorumkv-layout";

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// Kept to build a client pinned to other addresses ([`PeerClient::call_seed`]).
    /// Behind an `Arc`: a client is cloned per replica batch and with every
    /// coordinator, and a `ClientConfig` clone copies its ALPN list.
    tls: Arc<rustls::ClientConfig>,
    local_ip: Option<std::net::IpAddr>,
    reachability: Arc<dyn Reachability>,
    faults: Faults,
    metrics: RpcMetrics,
}

impl PeerClient {
    /// `local_ip`: the address calls leave from (the peer listener's, when
    /// it names one), so per-node firewall rules can tell nodes apart.
    /// Peers are named by id; `reachability` knows their URLs.
    pub fn new(
        tls: rustls::ClientConfig,
        reachability: Arc<dyn Reachability>,
        local_ip: Option<std::net::IpAddr>,
        metrics: RpcMetrics,
    ) -> Result<Self, RpcError> {
        let http = http_client(tls.clone(), local_ip, None)?;
        Ok(PeerClient {
            http,
            tls: Arc::new(tls),
            local_ip,
            reachability,
            faults: Faults::default(),
            metrics,
        })
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
        let started = self.reachability.clock_ms();
        let timer = std::time::Instant::now();
        let result = self.call_inner(peer, route, request, timeout).await;
        self.metrics.observe(peer, route, timer.elapsed().as_secs_f64());
        let reached = !matches!(
            result,
            Err(RpcError::Connect { .. } | RpcError::Transport { .. } | RpcError::Timeout { .. })
        );
        self.reachability.observe(peer, reached, started);
        result
    }

    /// Calls `route` at a base URL rather than a member (a seed, before
    /// this node knows the cluster); reachability is not updated.
    pub async fn call_url<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        route: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        call_with(&self.http, base, route, request, timeout).await
    }

    /// [`PeerClient::call_url`] for a seed, skipping this host's own
    /// addresses: a seed name that every node shares (a Kubernetes headless
    /// Service publishing not-ready pods, a compose network alias) resolves
    /// to this node too, sorted first (longest matching prefix), and its
    /// peer port is bound but not serving yet, so the call would hang in
    /// the TLS handshake until it timed out, every time.
    pub async fn call_seed<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        route: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let Some((host, addrs)) = others_of(base).await else {
            return self.call_url(base, route, request, timeout).await;
        };
        let pinned = http_client((*self.tls).clone(), self.local_ip, Some((&host, &addrs)))?;
        call_with(&pinned, base, route, request, timeout).await
    }
}

/// The peer HTTP client: HTTP/2 over mutual TLS; `pin` resolves one host
/// name to the given addresses.
fn http_client(
    tls: rustls::ClientConfig,
    local_ip: Option<std::net::IpAddr>,
    pin: Option<(&str, &[std::net::SocketAddr])>,
) -> Result<reqwest::Client, RpcError> {
    let mut builder = reqwest::Client::builder()
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
        .no_proxy();
    if let Some((host, addrs)) = pin {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    builder.build().map_err(|e| RpcError::Build(e.to_string()))
}

/// The host of `base` and its addresses that are not this host's own, if
/// it has some of both (else the URL is called as it is).
async fn others_of(base: &str) -> Option<(String, Vec<std::net::SocketAddr>)> {
    let url = reqwest::Url::parse(base).ok()?;
    let host = url.host_str()?.to_string();
    let port = url.port_or_known_default()?;
    let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port)).await.ok()?.collect();
    // Only a local address can be bound.
    let others: Vec<std::net::SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| std::net::UdpSocket::bind(std::net::SocketAddr::new(a.ip(), 0)).is_err())
        .collect();
    (!others.is_empty() && others.len() < all.len()).then_some((host, others))
}

async fn call_with<Req: Serialize, Resp: DeserializeOwned>(
    http: &reqwest::Client,
    base: &str,
    route: &'static str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, RpcError> {
    {
        let peer = base.to_string();
        let work = async {
            let response = http
                .post(format!("{}{route}", base.trim_end_matches('/')))
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(codec::encode(request))
                .send()
                .await
                .map_err(|e| RpcError::Connect { peer: peer.clone(), reason: error_chain(&e) })?;
            let status = response.status();
            if !status.is_success() {
                return Err(RpcError::Status { peer: peer.clone(), status: status.as_u16() });
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| RpcError::Transport { peer: peer.clone(), reason: error_chain(&e) })?;
            codec::decode(&body).map_err(|e| RpcError::Body { peer: peer.clone(), reason: e.to_string() })
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(RpcError::Timeout { peer: peer.clone(), ms: timeout.as_millis() }))
    }
}

impl PeerClient {
    async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        route: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let base = self.reachability.url_of(peer).ok_or_else(|| RpcError::UnknownPeer(peer.to_string()))?;
        if self.faults.is_cut(peer) {
            return Err(RpcError::Connect {
                peer: peer.to_string(),
                reason: "cut by fault injection".into(),
            });
        }
        if self.faults.stalls(peer, route) {
            tokio::time::sleep(timeout).await;
            return Err(RpcError::Timeout { peer: peer.to_string(), ms: timeout.as_millis() });
        }
        let mut send = self
            .http
            .post(format!("{}{route}", base.trim_end_matches('/')))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE);
        if let Some(tag) = self.reachability.layout_tag() {
            send = send.header(LAYOUT_HEADER, tag);
        }
        let send = send.body(codec::encode(request)).send();
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
            // Refused before any work (see `rpc::server`): 425 by a starting
            // node, 415 by a node of another wire format.
            || matches!(self, RpcError::Status { status: 425 | 415, .. })
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
