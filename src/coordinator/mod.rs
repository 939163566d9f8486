//! Quorum reads and writes: which replicas to ask, how many answers make a
//! quorum, how their answers merge. Knows nothing of HTTP.
//!
//! A GET may be coordinated by any node. A PUT or DELETE is coordinated by
//! one of the key's replicas (its dot names that replica), so a node outside
//! the preference list forwards the write to the first reachable one. When
//! homes are out of reach, fallbacks take their copies as hints (sloppy
//! quorum, see [`targets`]); only when every home is out of reach does the
//! receiving node coordinate the write itself, as a fallback.

pub mod consistency;
mod endpoints;
mod get;
mod put;
mod queues;
pub mod quorum;
mod read_repair;
mod speculate;
pub mod targets;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use consistency::{Consistency, ConsistencyError, Knob, KnobRequest};
use queues::PeerQueues;
use targets::plan;
pub use wire::{CoordinatorError, ForwardPut, ForwardPutResponse, Outcome, QuorumKind, QuorumReport};

use crate::config::{Defaults, ReadFanout};
use crate::membership::{Layout, Membership};
use crate::replica::Replica;
use crate::rpc::batch::{BatchLimits, Batcher};
use crate::rpc::client::{PeerClient, routes};
use crate::worker::Workers;

/// Most unanswered calls from this coordinator to one peer, including those
/// a request stopped waiting for (W < N). Waiting for a slot is the
/// backpressure that keeps a W=1 load from queueing replication work
/// without limit; a peer that looks down gets no wait, only a failure.
const MAX_PENDING_PER_PEER: usize = 1024;

/// Most read repairs in flight at once on one node.
const MAX_CONCURRENT_REPAIRS: usize = 512;

/// A node's coordinator: cheap to clone (one reference count), since every
/// request and every replica call it makes holds a copy.
#[derive(Clone)]
pub struct Coordinator(Arc<Shared>);

/// What every copy of a [`Coordinator`] shares. A request makes several
/// copies; copied field by field, each would take ~20 reference counts and
/// the peer client's TLS settings (a profile of GET R=2 had those clones
/// and their drops at ~2 % of its CPU samples).
pub struct Shared {
    membership: Arc<Membership>,
    replica: Replica,
    peers: PeerClient,
    /// One per peer, made when it is first called (members come and go).
    queues: Arc<RwLock<HashMap<String, PeerQueues>>>,
    limits: BatchLimits,
    defaults: Defaults,
    max_n: usize,
    timeout: Duration,
    /// Set when read repair is on; cancelled at shutdown.
    read_repair: Option<CancellationToken>,
    /// Where read repairs and calls no request waits for any more run, so
    /// shutdown waits for them (`worker::Workers::shutdown`).
    tasks: TaskTracker,
    /// Bounds the read repairs in flight (a repair is skipped when full).
    repair_slots: Arc<Semaphore>,
    /// Replicas brought up to date by read repair since start.
    read_repairs: Arc<AtomicU64>,
    read_fanout: ReadFanout,
    /// When a read asks a spare replica (quorum fan-out).
    hedge: Arc<speculate::HedgeDelay>,
    /// Spare replicas asked because the first ones were slow, since start.
    speculative_reads: Arc<AtomicU64>,
}

impl std::ops::Deref for Coordinator {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The coordinator's part of the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Knobs a request leaves out.
    pub defaults: Defaults,
    /// The largest `N` a request may ask for.
    pub max_n: usize,
    /// Deadline of a client request's replica calls.
    pub timeout: Duration,
    pub read_repair: bool,
    pub read_fanout: ReadFanout,
}

impl Coordinator {
    /// `background`: read repairs and the replica calls a request no longer
    /// waits for run on its tracker, so shutdown waits for them.
    pub fn new(
        membership: Arc<Membership>,
        replica: Replica,
        peers: PeerClient,
        settings: Settings,
        background: &Workers,
    ) -> Coordinator {
        let Settings { defaults, max_n, timeout, read_repair, read_fanout } = settings;
        let tasks = background.tasks().clone();
        let read_repair = read_repair.then(|| background.token());
        let limits = BatchLimits { max_batch: 256, max_bytes: 4 << 20, max_in_flight: 2, timeout };
        Coordinator(Arc::new(Shared {
            membership,
            replica,
            peers,
            queues: Arc::default(),
            limits,
            defaults,
            max_n,
            timeout,
            read_repair,
            tasks,
            repair_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_REPAIRS)),
            read_repairs: Arc::new(AtomicU64::new(0)),
            read_fanout,
            hedge: Arc::default(),
            speculative_reads: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// Replicas repaired by reads since this node started.
    pub fn read_repairs(&self) -> u64 {
        self.read_repairs.load(Ordering::Relaxed)
    }

    /// Spare replicas reads asked because their first replicas were slow.
    pub fn speculative_reads(&self) -> u64 {
        self.speculative_reads.load(Ordering::Relaxed)
    }

    /// Registers the coordinator's counters in `registry`.
    pub fn register_metrics(&self, registry: &mut crate::metrics::Registry) {
        read_repair::register(&self.read_repairs, &self.speculative_reads, registry);
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The client of the peer port (for membership changes made by the API).
    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// The queues to `node`, made on first use while it is a member.
    fn queues_of(&self, node: &str) -> Option<PeerQueues> {
        if let Some(q) = self.queues.read().unwrap_or_else(|e| e.into_inner()).get(node) {
            return Some(q.clone());
        }
        if node == self.membership.self_id() || !self.membership.layout().is_member(node) {
            return None;
        }
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        let q = queues.entry(node.to_string()).or_insert_with(|| PeerQueues {
            read: Batcher::spawn(self.peers.clone(), node.to_string(), routes::READ, self.limits),
            replicate: Batcher::spawn(self.peers.clone(), node.to_string(), routes::REPLICATE, self.limits),
            slots: Arc::new(Semaphore::new(MAX_PENDING_PER_PEER)),
        });
        Some(q.clone())
    }

    /// Resolves a request's knobs against this cluster's defaults and size.
    pub fn consistency(&self, knobs: &KnobRequest) -> Result<Consistency, ConsistencyError> {
        let limit = self.max_n.min(self.membership.layout().member_count());
        knobs.resolve(&self.defaults, limit)
    }

    /// The sloppy-quorum plan for `key`'s partition from this node's view.
    fn plan(&self, layout: &Layout, partition: u32, n: usize, writing: bool) -> targets::Plan {
        self.plan_over(layout.preference_list(partition), n, writing)
    }

    /// The sloppy-quorum plan over `preference`, its first `n` the homes.
    fn plan_over(&self, preference: &[String], n: usize, writing: bool) -> targets::Plan {
        let m = &self.membership;
        plan(preference, n, m.self_id(), writing, |id| id == m.self_id() || m.is_reachable(id))
    }
}
