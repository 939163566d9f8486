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
pub mod targets;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use consistency::{Consistency, ConsistencyError, Knob, KnobRequest};
use queues::PeerQueues;
use targets::plan;
pub use wire::{CoordinatorError, ForwardPut, ForwardPutResponse, Outcome, QuorumKind, QuorumReport};

use crate::config::Defaults;
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

#[derive(Clone)]
pub struct Coordinator {
    membership: Arc<Membership>,
    replica: Replica,
    peers: PeerClient,
    queues: Arc<HashMap<String, PeerQueues>>,
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
        let Settings { defaults, max_n, timeout, read_repair } = settings;
        let tasks = background.tasks().clone();
        let read_repair = read_repair.then(|| background.token());
        let limits = BatchLimits { max_batch: 256, max_bytes: 4 << 20, max_in_flight: 2, timeout };
        let queues = membership
            .layout()
            .members()
            .iter()
            .filter(|m| m.id != membership.self_id())
            .map(|m| {
                let q = PeerQueues {
                    read: Batcher::spawn(peers.clone(), m.id.clone(), routes::READ, limits),
                    replicate: Batcher::spawn(peers.clone(), m.id.clone(), routes::REPLICATE, limits),
                    slots: Arc::new(Semaphore::new(MAX_PENDING_PER_PEER)),
                };
                (m.id.clone(), q)
            })
            .collect();
        Coordinator {
            membership,
            replica,
            peers,
            queues: Arc::new(queues),
            defaults,
            max_n,
            timeout,
            read_repair,
            tasks,
            repair_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_REPAIRS)),
            read_repairs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Replicas repaired by reads since this node started.
    pub fn read_repairs(&self) -> u64 {
        self.read_repairs.load(Ordering::Relaxed)
    }

    /// Registers the coordinator's counters in `registry`.
    pub fn register_metrics(&self, registry: &mut crate::metrics::Registry) {
        read_repair::register(&self.read_repairs, registry);
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Resolves a request's knobs against this cluster's defaults and size.
    pub fn consistency(&self, knobs: &KnobRequest) -> Result<Consistency, ConsistencyError> {
        let limit = self.max_n.min(self.membership.layout().member_count());
        knobs.resolve(&self.defaults, limit)
    }

    /// The sloppy-quorum plan for `key`'s partition from this node's view.
    fn plan(&self, layout: &Layout, partition: u32, n: usize, writing: bool) -> targets::Plan {
        let m = &self.membership;
        plan(layout.preference_list(partition), n, m.self_id(), writing, |id| {
            id == m.self_id() || m.is_reachable(id)
        })
    }
}
