//! Wiring and start order of one node: storage, membership, peer client,
//! coordinator, then the peer and public listeners. Shutdown runs the other
//! way and waits until RocksDB is closed, so the directory can be reopened.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum_server::Handle;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::anti_entropy::AntiEntropy;
use crate::api::AppState;
use crate::api::metrics::ApiMetrics;
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::governor::Governor;
use crate::handoff::Handoff;
use crate::membership::history::History;
use crate::membership::join::JoinRequest;
use crate::membership::{Membership, detector};
use crate::replica::Replica;
use crate::rpc::client::PeerClient;
use crate::rpc::faults::Faults;
use crate::rpc::metrics::RpcMetrics;
use crate::rpc::server::Endpoints;
use crate::storage::{Storage, StorageError};
use crate::worker::Workers;
use crate::{anti_entropy, api, coordinator, governor, membership, metrics, rpc, tls};

/// How long in-flight requests get to finish on shutdown (well inside a
/// Kubernetes grace period).
pub const DRAIN: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("ring: {0}")]
    Ring(#[from] crate::ring::RingError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot open data directory {path}: {source}")]
    Storage { path: String, source: StorageError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("peer client: {0}")]
    Rpc(#[from] rpc::client::RpcError),
    #[error("membership: {0}")]
    Membership(#[from] crate::membership::MembershipError),
    #[error("joining the cluster: {0}")]
    Join(#[from] crate::membership::join::JoinError),
    #[error(
        "this node was removed from the cluster (`cluster remove`): its data is stale; wipe its data directory to join again"
    )]
    Removed,
    #[error("the data directory belongs to cluster {stored:?}, the config names {configured:?}")]
    OtherCluster { stored: String, configured: String },
}

/// Pre-bound listeners, so tests can bind port 0 and learn the addresses
/// before writing the member list.
pub struct Listeners {
    pub client: std::net::TcpListener,
    pub peer: std::net::TcpListener,
}

impl Listeners {
    pub fn bind(client: SocketAddr, peer: SocketAddr) -> Result<Listeners, NodeError> {
        let bind = |addr| {
            let l = std::net::TcpListener::bind(addr).map_err(|source| NodeError::Bind { addr, source })?;
            l.set_nonblocking(true).map_err(|source| NodeError::Bind { addr, source })?;
            Ok::<_, NodeError>(l)
        };
        Ok(Listeners { client: bind(client)?, peer: bind(peer)? })
    }
}

pub struct Node {
    state: Arc<AppState>,
    /// Fault injection on this node's outgoing peer calls (tests).
    faults: Faults,
    storage: Weak<Storage>,
    handles: [Handle; 2],
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The background workers (failure detector, handoff, anti-entropy,
    /// GC, lease) and the tasks shutdown waits for (read repairs, probes).
    workers: Arc<Workers>,
    /// Cancels them too if the node is dropped without `shutdown`.
    _workers_guard: tokio_util::sync::DropGuard,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    drain_delay: Duration,
}

impl Node {
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let listeners = Listeners::bind(config.client_listen, config.peer_listen)?;
        Self::start_with(config, listeners).await
    }

    pub async fn start_with(config: Config, listeners: Listeners) -> Result<Node, NodeError> {
        config.validate()?;
        tls::install_default_provider();
        let public_tls = tls::public_server_config(&config.tls)?;
        let peer_tls = tls::peer_server_config(&config.tls)?;
        let peer_client_tls = tls::peer_client_config(&config.tls.ca, &config.tls.cert, &config.tls.key)?;

        let data_dir = config.data_dir.clone();
        let cache = config.block_cache_bytes;
        let storage = tokio::task::spawn_blocking(move || Storage::open(&data_dir, cache))
            .await
            .map_err(|e| NodeError::Storage {
                path: config.data_dir.display().to_string(),
                source: StorageError::CorruptMeta(e.to_string()),
            })?
            .map_err(|source| NodeError::Storage { path: config.data_dir.display().to_string(), source })?;
        let storage = Arc::new(storage);
        let local_ip = Some(config.peer_listen.ip()).filter(|ip| !ip.is_unspecified());
        let history = initial_history(&config, &storage, &peer_client_tls, local_ip).await?;
        let me = config.self_member()?;
        let membership = Arc::new(Membership::new(me, history, Some(storage.clone()))?);
        let workers = Arc::new(Workers::new());
        let replica = Replica::new(storage.clone(), &config.node_id, config.limits, workers.tasks().clone())
            .map_err(|source| NodeError::Storage { path: config.data_dir.display().to_string(), source })?;
        let rpc_metrics = RpcMetrics::default();
        let peers = PeerClient::new(peer_client_tls, membership.clone(), local_ip, rpc_metrics.clone())?;
        let detector_peers = peers.clone();
        let faults = peers.faults().clone();
        let governor = Governor::new(config.governor);
        let handoff = Handoff {
            storage: storage.clone(),
            membership: membership.clone(),
            peers: peers.clone(),
            window: Duration::from_secs(config.repair.hint_window_secs),
            pacer: governor.pacer(config.repair.handoff_bytes_per_sec),
            stats: Arc::default(),
        };
        let anti_entropy =
            AntiEntropy::new(replica.clone(), membership.clone(), peers.clone(), config.repair, &governor);
        let coordinator = Coordinator::new(
            membership,
            replica,
            peers,
            coordinator::Settings {
                defaults: config.defaults,
                max_n: config.max_n,
                timeout: Duration::from_millis(config.request_timeout_ms),
                read_repair: config.read_repair,
                read_fanout: config.read_fanout,
            },
            &workers,
        );
        // Each subsystem registers its own metrics and its own peer endpoints.
        let peer_ids: Vec<String> = coordinator.membership().peer_ids();
        let mut registry = metrics::registry();
        let api_metrics = ApiMetrics::new(&mut registry);
        rpc_metrics.register(&mut registry);
        rpc_metrics.prime(&peer_ids);
        coordinator.register_metrics(&mut registry);
        handoff.stats.register(&mut registry);
        governor.register(&mut registry);
        anti_entropy::metrics::register(&anti_entropy.stats, &mut registry);
        crate::storage::metrics::register(&storage, peer_ids, &mut registry);
        let mut endpoints = Endpoints::new();
        endpoints.watch_layout(coordinator.membership().clone());
        coordinator.replica().register_endpoints(&mut endpoints);
        coordinator.register_endpoints(&mut endpoints);
        anti_entropy::register_endpoints(
            coordinator.replica(),
            anti_entropy.answers(),
            faults.clone(),
            &mut endpoints,
        );
        membership::gossip::register_endpoints(coordinator.membership(), &mut endpoints);
        membership::join::register_endpoints(coordinator.membership(), coordinator.peers(), &mut endpoints);
        let local_routes = api::local::router(coordinator.clone());
        let state = Arc::new(AppState::new(
            coordinator,
            config.max_value_bytes,
            api_metrics,
            registry,
            api::Background {
                handoff: handoff.stats.clone(),
                anti_entropy: anti_entropy.stats.clone(),
                governor: governor.clone(),
            },
            workers.clone(),
        ));

        let roster: Arc<dyn rpc::identity::Roster> = state.coordinator.membership().clone();
        let client_addr = listener_addr(&listeners.client)?;
        let peer_addr = listener_addr(&listeners.peer)?;
        let handles = [Handle::new(), Handle::new()];
        // A replicated object is bounded by `max_object_bytes` for client
        // writes, but merges of concurrent writes by up to N coordinators
        // may pass it (merges are never refused): room for N of them, plus
        // a batch's worth.
        let peer_body_limit =
            config.limits.max_object_bytes.saturating_mul(config.max_n.max(2)).saturating_add(8 << 20);
        let peer_app = endpoints.into_router(local_routes, peer_body_limit);
        let client_app = api::router(state.clone());
        let mut servers = vec![tokio::spawn(
            tls_server(listeners.peer, peer_tls)
                .map(|tls| rpc::identity::IdentifyingAcceptor::new(tls, roster))
                .handle(handles[1].clone())
                .serve(peer_app.into_make_service()),
        )];
        // With the peer port up (peers starting at the same time greet each
        // other), before the public port: a node that lost its data learns
        // it from its peers here; until then a fresh directory's answers
        // do not count.
        membership::gossip::catch_up(state.coordinator.membership(), &detector_peers, Duration::from_secs(2))
            .await;
        if state.coordinator.membership().removed() {
            handles[1].shutdown();
            workers.cancel();
            return Err(NodeError::Removed);
        }
        let m = state.coordinator.membership();
        if config.auto_join && !config.seeds.is_empty() && !m.layout().is_member(m.self_id()) {
            if let Err(error) = membership::join::join_now(m, &detector_peers, m.self_member()).await {
                handles[1].shutdown();
                workers.cancel();
                return Err(NodeError::Join(error));
            }
            tracing::info!(version = m.layout().version(), "joined the cluster");
        }
        let greeted =
            anti_entropy::recovery::greet_peers(&storage, state.coordinator.membership(), &detector_peers)
                .await;
        if let Ok(count) = greeted {
            state.unsynced_at_start.store(count as u64, Ordering::Relaxed);
        }
        if let Err(source) = greeted {
            // Not serving with a history it could not settle: stop the peer port.
            handles[1].shutdown();
            workers.cancel();
            return Err(NodeError::Storage { path: config.data_dir.display().to_string(), source });
        }
        servers.push(tokio::spawn(
            tls_server(listeners.client, public_tls)
                .handle(handles[0].clone())
                .serve(client_app.into_make_service()),
        ));
        // Spawned last: nothing fallible remains, so it cannot outlive a
        // node that failed to start.
        let membership = state.coordinator.membership().clone();
        let gossip_peers = detector_peers.clone();
        let (gossip_membership, interval) =
            (membership.clone(), Duration::from_millis(config.gossip_interval_ms));
        // The longest a request started under an older layout can still be
        // running: a coordinated write (local write, then its deadline) and a
        // forwarded one's margin, with room for a slow disk.
        let grace = Duration::from_millis(config.request_timeout_ms) * 2 + Duration::from_secs(3);
        workers.start("gossip", |w| {
            membership::gossip::run(gossip_membership, gossip_peers, interval, grace, w)
        });
        workers.start("detector", |w| detector::run(membership, detector_peers, w));
        workers.start("handoff", |w| handoff.run(w));
        let compactions = storage.clone();
        let mut deferring = false;
        workers.start("governor", |w| {
            governor.run(w, move |share| {
                // Hysteresis: held off below a quarter, resumed from a half.
                deferring = if deferring {
                    share < governor::RESUME_COMPACTIONS_FROM
                } else {
                    share < governor::DEFER_COMPACTIONS_BELOW
                };
                // A change rewrites (and syncs) RocksDB's OPTIONS file.
                match crate::util::block_on_disk(|| compactions.defer_compactions(deferring)) {
                    Ok(deferred) => deferring = deferred,
                    Err(error) => tracing::warn!(%error, "cannot change RocksDB's compaction setting"),
                }
            })
        });
        workers.start("lease", |w| state.coordinator.replica().clone().keep_lease_ahead(w));
        // Runs even with anti-entropy off while partitions are unsynced.
        workers.start("anti_entropy", |w| anti_entropy.clone().run(w));
        let transfers = anti_entropy.clone();
        workers.start("transfer", |w| transfers.run_transfers(w));
        workers.start("gc", |w| anti_entropy.run_gc(w));
        state.mark_ready();
        tracing::info!(node = %config.node_id, %client_addr, %peer_addr, actor = state.coordinator.replica().actor(), "node serving");
        Ok(Node {
            storage: Arc::downgrade(&storage),
            state,
            faults,
            handles,
            servers,
            _workers_guard: workers.drop_guard(),
            workers,
            client_addr,
            peer_addr,
            drain_delay: Duration::from_millis(config.drain_delay_ms),
        })
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Fault injection on this node's outgoing peer calls (tests).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Announces the shutdown (readiness 503) while still serving for
    /// `drain_delay_ms`, then stops accepting, drains in-flight requests for
    /// up to [`DRAIN`], and waits (bounded) for the last reference to the
    /// database to go. Requests keep being served through the first phase
    /// (the clients a load balancer has not yet moved are not refused) and
    /// background work keeps running (a coordinator's hints stay deliverable).
    pub async fn shutdown(self) {
        self.state.mark_draining();
        if !self.drain_delay.is_zero() {
            tracing::info!(delay_ms = self.drain_delay.as_millis() as u64, "draining: readiness now 503");
            tokio::time::sleep(self.drain_delay).await;
        }
        // Background work stops first, as the requests drain.
        self.workers.cancel();
        for handle in &self.handles {
            handle.graceful_shutdown(Some(DRAIN));
        }
        for server in self.servers {
            let _ = server.await;
        }
        // Every worker, probe, read repair, orphaned replica call and
        // blocking storage call runs on the tracker.
        if !self.workers.shutdown(DRAIN).await {
            tracing::warn!("background tasks still running after the drain");
        }
        drop(self.state);
        // What the tracker cannot see: a request task hyper still runs after
        // a drain that ran out of time. Bounded, and normally already over.
        let deadline = tokio::time::Instant::now() + DRAIN;
        while self.storage.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.storage.strong_count() > 0 {
            tracing::warn!(
                "storage still referenced after shutdown; the database closes when the last task ends"
            );
        }
    }
}

/// An HTTPS server on `listener` with `TCP_NODELAY` on every connection:
/// without it small responses wait for the peer's delayed ACK (~40 ms).
fn tls_server(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> axum_server::Server<RustlsAcceptor<NoDelayAcceptor>> {
    let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(tls)).acceptor(NoDelayAcceptor::new());
    let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
    server
        .http_builder()
        .http2()
        .initial_stream_window_size(rpc::H2_STREAM_WINDOW)
        .initial_connection_window_size(rpc::H2_CONNECTION_WINDOW)
        // hyper's 16 KiB default refuses a long path with a bare 431 or a
        // REFUSED_STREAM before the API can answer its JSON 414.
        .max_header_list_size(MAX_HEADER_LIST_BYTES);
    server
}

/// Room for the longest path `http::Uri` can hold (64 KiB) with the usual
/// headers, so any key the stack can parse gets the API's JSON `414`; no
/// more, since each concurrent stream may hold this much.
const MAX_HEADER_LIST_BYTES: u32 = 128 * 1024;

/// The layout this node starts from: the one it stored; else, with seeds,
/// the one a seed gives (joining it unless `auto_join` is off, or, for one
/// of the first members, a new cluster if no seed answers); else a new
/// cluster of the configured members.
async fn initial_history(
    config: &Config,
    storage: &Storage,
    tls: &rustls::ClientConfig,
    local_ip: Option<std::net::IpAddr>,
) -> Result<History, NodeError> {
    if let Some(stored) = Membership::stored(storage)? {
        if stored.cluster() != config.cluster {
            return Err(NodeError::OtherCluster {
                stored: stored.cluster().to_string(),
                configured: config.cluster.clone(),
            });
        }
        return Ok(stored);
    }
    let max_n = u32::try_from(config.max_n).unwrap_or(u32::MAX);
    let initial = || History::initial(&config.cluster, config.partitions, max_n, &config.members);
    if config.seeds.is_empty() {
        return Ok(initial());
    }
    let me = config.self_member()?;
    let client = PeerClient::new(tls.clone(), Arc::new(NoPeers), local_ip, RpcMetrics::default())?;
    // Only the layout for now: the node asks to join once its peer port
    // serves (see `start_with`), so that writes to it succeed from the
    // moment it is in a replica set.
    let request = JoinRequest { cluster: config.cluster.clone(), member: me, join: false };
    tracing::info!(seeds = ?config.seeds, "fetching the cluster's layout from the seeds");
    let history = if config.joins() {
        membership::join::fetch(&client, &config.seeds, &request, SEED_PATIENCE).await?
    } else {
        // One of the first members with no stored layout: a new cluster
        // (its peers start too, and none has a layout to give), or this
        // member's directory was lost while the cluster moved on. Asking the
        // seeds first keeps the second from coordinating with the first
        // layout; the first waits `FIRST_MEMBER_PATIENCE` once.
        match membership::join::fetch(&client, &config.seeds, &request, FIRST_MEMBER_PATIENCE).await {
            Ok(history) => history,
            Err(crate::membership::join::JoinError::NoSeed { .. }) => return Ok(initial()),
            Err(refused) => return Err(refused.into()),
        }
    };
    if (history.partitions(), history.max_n()) != (config.partitions, max_n) {
        tracing::warn!(
            partitions = history.partitions(),
            max_n = history.max_n(),
            "the cluster's ring settings differ from this config's: the cluster's are used"
        );
    }
    Ok(history)
}

/// How long a joining node waits for a seed to answer before it gives up.
const SEED_PATIENCE: Duration = Duration::from_secs(120);
/// How long one of the first members without a stored layout asks its
/// seeds for the cluster's before it creates the cluster from `members`.
const FIRST_MEMBER_PATIENCE: Duration = Duration::from_secs(10);

/// The reachability of the client that asks seeds: it knows no member.
struct NoPeers;

impl rpc::client::Reachability for NoPeers {
    fn clock_ms(&self) -> u64 {
        0
    }
    fn observe(&self, _: &str, _: bool, _: u64) {}
    fn url_of(&self, _: &str) -> Option<String> {
        None
    }
}

fn listener_addr(l: &std::net::TcpListener) -> Result<SocketAddr, NodeError> {
    l.local_addr().map_err(|source| NodeError::Bind { addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })
}
