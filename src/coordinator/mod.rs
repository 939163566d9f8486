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
pub mod quorum;
mod read_repair;
pub mod targets;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use consistency::{Consistency, ConsistencyError, Knob, KnobRequest};
use quorum::{Call, Reply, gather};
use targets::{Target, plan};

use crate::config::Defaults;
use crate::membership::{Layout, Membership};
use crate::replica::{
    ClientWrite, LimitError, ReadRequest, ReadResponse, Replica, ReplicaError, ReplicateRequest,
    ReplicateResponse,
};
use crate::rpc::batch::{BatchLimits, Batcher};
use crate::rpc::client::{PeerClient, routes};
use crate::rpc::error::{PeerError, RemoteCode};
use crate::storage::{Object, StoredValue};
use crate::version::VersionVector;
use crate::worker::Workers;

/// Most unanswered calls from this coordinator to one peer, including those
/// a request stopped waiting for (W < N). Waiting for a slot is the
/// backpressure that keeps a W=1 load from queueing replication work
/// without limit; a peer that looks down gets no wait, only a failure.
const MAX_PENDING_PER_PEER: usize = 1024;

/// How long a write waits for a slot to a peer whose queue is full before
/// it sends the copy to the spare fallback instead.
const SLOT_PATIENCE: Duration = Duration::from_millis(50);

/// Most read repairs in flight at once on one node.
const MAX_CONCURRENT_REPAIRS: usize = 512;

/// Extra time a forwarding node gives the coordinator beyond its own deadline.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);

/// Roughly how many bytes `object` takes on the wire (for batch budgets).
fn size_hint(object: &Object) -> usize {
    object.siblings().iter().map(|s| s.value.bytes.len() + 64).sum()
}

/// Which quorum a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumKind {
    R,
    Pr,
    W,
    Pw,
    Dw,
}

impl QuorumKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumKind::R => "r",
            QuorumKind::Pr => "pr",
            QuorumKind::W => "w",
            QuorumKind::Pw => "pw",
            QuorumKind::Dw => "dw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CoordinatorError {
    #[error("{} quorum not met: {answered} of the required {required} replicas answered (n={n})", kind.as_str())]
    QuorumNotMet { kind: QuorumKind, required: usize, answered: usize, n: usize },
    #[error("the value's digest does not match its bytes")]
    DigestMismatch,
    #[error("this replica's copy of the key is corrupt")]
    CorruptLocal,
    /// The write would take the object past a configured limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The causal context names a counter the coordinator never minted.
    #[error("{0}")]
    ForgedContext(String),
}

/// What an answer rests on, sent to clients as `Quorum-Report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumReport {
    Read {
        n: usize,
        r: usize,
        answered: usize,
    },
    /// `fallback`: how many of the acks came from fallback nodes.
    Write {
        n: usize,
        w: usize,
        acked: usize,
        fallback: usize,
    },
}

impl std::fmt::Display for QuorumReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuorumReport::Read { n, r, answered } => write!(f, "n={n}; r={r}; answered={answered}"),
            QuorumReport::Write { n, w, acked, fallback } => {
                write!(f, "n={n}; w={w}; acked={acked}; fallback={fallback}")
            }
        }
    }
}

/// The result of a quorum operation: the merged (read) or written object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub object: Object,
    pub report: QuorumReport,
}

/// A client write handed to the replica that will coordinate it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardPut {
    pub key: Bytes,
    pub context: VersionVector,
    pub value: StoredValue,
    pub consistency: Consistency,
}

pub type ForwardPutResponse = Result<Outcome, CoordinatorError>;

/// The batching queues to one peer, and the slots bounding its calls.
#[derive(Clone)]
struct PeerQueues {
    read: Batcher<ReadRequest, ReadResponse>,
    replicate: Batcher<ReplicateRequest, ReplicateResponse>,
    slots: Arc<Semaphore>,
}

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

    /// Merges `req.object` into `node`'s copy (this node's own, or a peer's
    /// through its queue).
    async fn send_replica(
        &self,
        node: &str,
        req: ReplicateRequest,
        deadline: Instant,
    ) -> Result<(), PeerError> {
        if node == self.membership.self_id() {
            let answers = self.replica.apply_batch(vec![req]).await.map_err(|e| e.to_peer())?;
            let none = || PeerError::remote(RemoteCode::BadAnswer, "no answer");
            return answers.into_iter().next().unwrap_or_else(|| Err(none())).map(|_| ());
        }
        let bytes = req.key.len() + size_hint(&req.object);
        let (queues, _permit) = self.peer_slot(node, deadline).await?;
        queues.replicate.call(req, bytes).await.map(|_| ())
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

    /// A slot for one call to `node`: waited for (until `deadline`) while
    /// the peer looks reachable, refused at once when it looks down.
    async fn peer_slot(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Result<(PeerQueues, OwnedSemaphorePermit), PeerError> {
        let queues = self.queues.get(node).ok_or_else(|| PeerError::NotDelivered {
            peer: node.to_string(),
            reason: "unknown peer".into(),
        })?;
        let slots = queues.slots.clone();
        let permit = if self.membership.is_reachable(node) {
            tokio::time::timeout_at(deadline, slots.acquire_owned()).await.ok().and_then(Result::ok)
        } else {
            slots.try_acquire_owned().ok()
        };
        let permit = permit.ok_or_else(|| PeerError::QueueFull { peer: node.to_string() })?;
        Ok((queues.clone(), permit))
    }

    fn read_call(
        &self,
        node: &str,
        hint: Option<String>,
        partition: u32,
        key: &Bytes,
        deadline: Instant,
    ) -> Call<ReadResponse> {
        let node = node.to_string();
        let key = key.clone();
        let this = self.clone();
        async move {
            let primary = hint.is_none();
            let request = ReadRequest { partition, key, hint };
            let result = if node == this.membership.self_id() {
                this.replica.read_one(&request).map_err(|e| e.to_peer())
            } else {
                match this.peer_slot(&node, deadline).await {
                    Ok((q, _permit)) => {
                        let bytes = request.key.len() + 16;
                        q.read.call(request, bytes).await
                    }
                    Err(e) => Err(e),
                }
            };
            // A fallback that holds no hint for the key knows nothing of it:
            // its "nothing" must not count toward R as a not-found.
            let result = match result {
                Ok(ReadResponse { object: None, .. }) if !primary => {
                    Err(PeerError::remote(RemoteCode::NotHeld, "the fallback holds no hint for this key"))
                }
                other => other,
            };
            Reply { node, primary, result }
        }
        .boxed()
    }

    /// The sloppy-quorum plan for `key`'s partition from this node's view.
    fn plan(&self, layout: &Layout, partition: u32, n: usize, writing: bool) -> targets::Plan {
        let m = &self.membership;
        plan(layout.preference_list(partition), n, m.self_id(), writing, |id| {
            id == m.self_id() || m.is_reachable(id)
        })
    }

    /// Asks the key's N replicas, answers with the merge of the first R replies.
    pub async fn get(&self, key: Bytes, c: Consistency) -> Result<Outcome, CoordinatorError> {
        let layout = self.membership.layout();
        let partition = layout.partition_of(&key);
        let deadline = Instant::now() + self.timeout;
        let self_id = self.membership.self_id();
        let mut calls: Vec<_> = self
            .plan(&layout, partition, c.n, false)
            .targets
            .into_iter()
            .map(|t| self.read_call(&t.node, t.hint_for, partition, &key, deadline))
            .collect();
        if layout.replicas_of(partition, c.n).iter().any(|h| h == self_id) {
            calls.push(self.read_call(self_id, None, partition, &key, deadline));
        }
        // Only authoritative answers count: a replica that lost its data
        // (or holds a corrupt record) may lack an acknowledged write, and
        // counting its "nothing" would break R + W > N.
        let counts = |r: &Reply<ReadResponse>| r.result.as_ref().is_ok_and(|a| a.authoritative);
        let gathered = gather(calls, deadline, |ok| {
            ok.iter().filter(|r| counts(r)).count() >= c.r
                && ok.iter().filter(|r| r.primary && counts(r)).count() >= c.pr
        })
        .await;
        let answered = gathered.ok.iter().filter(|r| counts(r)).count();
        if answered < c.r {
            gathered.finish_in_background(&self.tasks);
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::R,
                required: c.r,
                answered,
                n: c.n,
            });
        }
        let primaries = gathered.ok.iter().filter(|r| r.primary && counts(r)).count();
        if primaries < c.pr {
            gathered.finish_in_background(&self.tasks);
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::Pr,
                required: c.pr,
                answered: primaries,
                n: c.n,
            });
        }
        let mut object = Object::new();
        for found in gathered.values().filter_map(|a| a.object.as_ref()) {
            object.merge(found);
        }
        match &self.read_repair {
            Some(cancel) => {
                read_repair::spawn(self.clone(), cancel.clone(), partition, key, gathered, deadline)
            }
            None => gathered.finish_in_background(&self.tasks),
        }
        Ok(Outcome { object, report: QuorumReport::Read { n: c.n, r: c.r, answered } })
    }

    /// Writes `value` (a tombstone for a delete) superseding what `context`
    /// covers. Coordinated locally when this node is one of the key's N
    /// replicas, otherwise forwarded to the first one that answers.
    pub async fn put(
        &self,
        key: Bytes,
        context: VersionVector,
        value: StoredValue,
        c: Consistency,
    ) -> Result<Outcome, CoordinatorError> {
        let layout = self.membership.layout();
        let replicas = layout.replicas_of(layout.partition_of(&key), c.n);
        let self_id = self.membership.self_id();
        if replicas.iter().any(|n| n == self_id) {
            match self.coordinate_put(key.clone(), context.clone(), value.clone(), c).await {
                Err(CoordinatorError::CorruptLocal) => {
                    tracing::warn!("local copy corrupt; another replica coordinates the write")
                }
                other => return other,
            }
        }
        let forward = ForwardPut { key, context, value, consistency: c };
        // The coordinator spends up to `timeout` on its quorum; give it room.
        let timeout = self.timeout + FORWARD_MARGIN;
        let reachable = replicas.iter().filter(|n| *n != self_id && self.membership.is_reachable(n));
        for node in reachable {
            match self.peers.call::<_, ForwardPutResponse>(node, routes::PUT, &forward, timeout).await {
                // Its copy is corrupt, so it stored nothing: the next one coordinates.
                Ok(Err(CoordinatorError::CorruptLocal)) => {
                    tracing::warn!(peer = %node, "replica's copy is corrupt; trying the next replica")
                }
                Ok(answer) => return answer,
                // Only a write that provably never arrived is retried
                // elsewhere: a second coordinator would store it again as
                // a sibling of itself.
                Err(error) if error.not_delivered() => {
                    tracing::warn!(peer = %node, %error, "forwarding a write failed; trying the next replica")
                }
                Err(error) => {
                    tracing::warn!(peer = %node, %error, "forwarded write has an unknown outcome");
                    return Err(CoordinatorError::QuorumNotMet {
                        kind: QuorumKind::W,
                        required: c.w,
                        answered: 0,
                        n: c.n,
                    });
                }
            }
        }
        // No home took it: this node coordinates as a fallback ("always
        // writeable" while any node is up).
        let ForwardPut { key, context, value, .. } = forward;
        self.coordinate_put(key, context, value, c).await
    }

    /// The coordinating replica's side of a write: store locally with a new
    /// dot, then send the resulting object to the other replicas.
    pub async fn coordinate_put(
        &self,
        key: Bytes,
        context: VersionVector,
        value: StoredValue,
        c: Consistency,
    ) -> Result<Outcome, CoordinatorError> {
        if !value.digest_ok() {
            return Err(CoordinatorError::DigestMismatch);
        }
        let layout = self.membership.layout();
        let partition = layout.partition_of(&key);
        let sync = c.dw > 0;
        let w_fail = |acked| CoordinatorError::QuorumNotMet {
            kind: QuorumKind::W,
            required: c.w,
            answered: acked,
            n: c.n,
        };
        let plan = self.plan(&layout, partition, c.n, true);
        let local_is_home = plan.local_hint.is_none();
        let write = ClientWrite { context, value, n: c.n, sync };
        let written = match plan.local_hint {
            None => self.replica.coordinate(partition, key.clone(), write).await,
            Some(home) => self.replica.coordinate_as_fallback(home, partition, key.clone(), write).await,
        };
        let object = match written {
            Ok(object) => object,
            Err(ReplicaError::CorruptLocal) => return Err(CoordinatorError::CorruptLocal),
            Err(ReplicaError::Limit(limit)) => return Err(CoordinatorError::Limit(limit)),
            Err(ReplicaError::ForgedContext(why)) => return Err(CoordinatorError::ForgedContext(why)),
            Err(error) => {
                tracing::error!(%error, "local write failed");
                return Err(w_fail(0));
            }
        };
        let self_id = self.membership.self_id().to_string();
        let local = Reply { node: self_id, primary: local_is_home, result: Ok(sync) };
        let mut calls: Vec<Call<bool>> = vec![futures::future::ready(local).boxed()];
        let deadline = Instant::now() + self.timeout;
        // Each copy waits for its own peer's slot inside its call, so a
        // saturated peer delays only its copy, never the others' sending.
        let mut slotted = Vec::new();
        for target in plan.targets {
            let (call, has_slot) = self.replicate_call(target, partition, &key, &object, sync, deadline);
            calls.push(call);
            slotted.push(has_slot);
        }
        let gathered = gather(calls, deadline, |ok| {
            ok.len() >= c.w
                && ok.iter().filter(|r| r.primary).count() >= c.pw
                && ok.iter().filter(|r| matches!(r.result, Ok(true))).count() >= c.dw
        })
        .await;
        let acked = gathered.ok.len();
        let primaries = gathered.primaries();
        let fallback = acked - primaries;
        let durable = gathered.values().filter(|d| **d).count();
        // The copies not yet answered must keep running before anything
        // waits on their slots: `gather` may have stopped polling them
        // before they took one (with W=1 the local write alone meets the
        // quorum, and no copy was ever polled), and a slot is only signalled
        // by a running copy.
        gathered.finish_in_background(&self.tasks);
        // Backpressure for W < N: the client is answered once every copy
        // holds a slot of its peer's queue (or gave up on it), not only the
        // W that answered first; bounded by the deadline.
        let _ = tokio::time::timeout_at(deadline, futures::future::join_all(slotted)).await;
        if acked < c.w {
            return Err(w_fail(acked));
        }
        if primaries < c.pw {
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::Pw,
                required: c.pw,
                answered: primaries,
                n: c.n,
            });
        }
        if durable < c.dw {
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::Dw,
                required: c.dw,
                answered: durable,
                n: c.n,
            });
        }
        Ok(Outcome { object, report: QuorumReport::Write { n: c.n, w: c.w, acked, fallback } })
    }

    /// One copy of a write: to `target.node` (with a hint when it stands in
    /// for a home), then to its spare fallback if that call fails. The slot
    /// is taken before the client is answered, even when W is already met.
    fn replicate_call(
        &self,
        target: Target,
        partition: u32,
        key: &Bytes,
        object: &Object,
        sync: bool,
        deadline: Instant,
    ) -> (Call<bool>, tokio::sync::oneshot::Receiver<()>) {
        let bytes = key.len() + size_hint(object);
        let req = |hint| ReplicateRequest { partition, key: key.clone(), object: object.clone(), sync, hint };
        let first = req(target.hint_for.clone());
        let spare_req = req(Some(target.node.clone()));
        let (slotted, has_slot) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let call = async move {
            let primary = target.is_home();
            // With a spare to fall back to, a full queue is waited on only
            // briefly: the copy goes to the spare (as a hint) instead.
            let patience =
                if target.spare.is_some() { deadline.min(Instant::now() + SLOT_PATIENCE) } else { deadline };
            let slot = this.peer_slot(&target.node, patience).await;
            let mut slotted = Some(slotted);
            let mut signal = || {
                if let Some(tx) = slotted.take() {
                    let _ = tx.send(());
                }
            };
            if slot.is_ok() || target.spare.is_none() {
                signal();
            }
            let result = match slot {
                Ok((q, _permit)) => q.replicate.call(first, bytes).await.map(|r| r.durable),
                Err(e) => Err(e),
            };
            match (result, target.spare) {
                (Ok(durable), _) => Reply { node: target.node, primary, result: Ok(durable) },
                (Err(error), Some(spare)) => {
                    tracing::debug!(peer = %target.node, %error, %spare, "replica write failed; using a fallback");
                    let slot = this.peer_slot(&spare, deadline).await;
                    signal();
                    let result = match slot {
                        Ok((q, _permit)) => q.replicate.call(spare_req, bytes).await.map(|r| r.durable),
                        Err(e) => Err(e),
                    };
                    Reply { node: spare, primary: false, result }
                }
                (Err(error), None) => Reply { node: target.node, primary, result: Err(error) },
            }
        }
        .boxed();
        (call, has_slot)
    }
}
