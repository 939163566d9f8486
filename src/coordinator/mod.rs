//! Quorum reads and writes: which replicas to ask, how many answers make a
//! quorum, how their answers merge. Knows nothing of HTTP.
//!
//! A GET may be coordinated by any node. A PUT or DELETE is coordinated by
//! one of the key's replicas (its dot names that replica), so a node outside
//! the preference list forwards the write to the first reachable one.

pub mod consistency;
pub mod quorum;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use consistency::{Consistency, ConsistencyError, Knob, KnobRequest};
use quorum::{Call, Reply, gather};

use crate::config::Defaults;
use crate::membership::Membership;
use crate::replica::{ReadRequest, ReadResponse, Replica, ReplicateRequest, ReplicateResponse};
use crate::rpc::batch::{BatchLimits, Batcher};
use crate::rpc::client::{PeerClient, routes};
use crate::storage::{Object, StoredValue};
use crate::version::VersionVector;

/// Most replica calls of this coordinator in flight at once (see
/// `Coordinator::pending_replica_calls`).
const MAX_PENDING_REPLICA_CALLS: usize = 2048;

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
}

/// What an answer rests on, sent to clients as `Quorum-Report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumReport {
    Read { n: usize, r: usize, answered: usize },
    Write { n: usize, w: usize, acked: usize },
}

impl std::fmt::Display for QuorumReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuorumReport::Read { n, r, answered } => write!(f, "n={n}; r={r}; answered={answered}"),
            QuorumReport::Write { n, w, acked } => write!(f, "n={n}; w={w}; acked={acked}"),
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

/// The batching queues to one peer.
#[derive(Clone)]
struct PeerQueues {
    read: Batcher<ReadRequest, ReadResponse>,
    replicate: Batcher<ReplicateRequest, ReplicateResponse>,
}

#[derive(Clone)]
pub struct Coordinator {
    membership: Arc<Membership>,
    replica: Replica,
    peers: PeerClient,
    queues: Arc<HashMap<String, PeerQueues>>,
    /// Replica calls not yet answered, including those a request stopped
    /// waiting for (W < N). Bounding them is the backpressure that keeps a
    /// W=1 load from queueing replication work without limit.
    pending_replica_calls: Arc<Semaphore>,
    defaults: Defaults,
    max_n: usize,
    timeout: Duration,
}

impl Coordinator {
    pub fn new(
        membership: Arc<Membership>,
        replica: Replica,
        peers: PeerClient,
        defaults: Defaults,
        max_n: usize,
        timeout: Duration,
    ) -> Coordinator {
        let limits = BatchLimits { max_batch: 256, max_in_flight: 2, timeout };
        let queues = membership
            .members()
            .iter()
            .filter(|m| m.id != membership.self_id())
            .map(|m| {
                let q = PeerQueues {
                    read: Batcher::spawn(peers.clone(), m.id.clone(), routes::READ, limits),
                    replicate: Batcher::spawn(peers.clone(), m.id.clone(), routes::REPLICATE, limits),
                };
                (m.id.clone(), q)
            })
            .collect();
        Coordinator {
            membership,
            replica,
            peers,
            queues: Arc::new(queues),
            pending_replica_calls: Arc::new(Semaphore::new(MAX_PENDING_REPLICA_CALLS)),
            defaults,
            max_n,
            timeout,
        }
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// Resolves a request's knobs against this cluster's defaults and size.
    pub fn consistency(&self, knobs: &KnobRequest) -> Result<Consistency, ConsistencyError> {
        let limit = self.max_n.min(self.membership.members().len());
        knobs.resolve(&self.defaults, limit)
    }

    fn read_call(&self, node: &str, partition: u32, key: &Bytes) -> Call<Option<Object>> {
        let node = node.to_string();
        let key = key.clone();
        let this = self.clone();
        async move {
            let result = if node == this.membership.self_id() {
                this.replica.read(partition, key).await.map_err(|e| e.to_string())
            } else {
                match this.queues.get(&node) {
                    Some(q) => q.read.call(ReadRequest { partition, key }).await.map(|r| r.object),
                    None => Err(format!("unknown peer {node}")),
                }
            };
            Reply { node, primary: true, result }
        }
        .boxed()
    }

    /// Asks the key's N replicas, answers with the merge of the first R replies.
    pub async fn get(&self, key: Bytes, c: Consistency) -> Result<Outcome, CoordinatorError> {
        let ring = self.membership.ring();
        let partition = ring.partition_of(&key);
        let calls =
            ring.replicas_for(&key, c.n).iter().map(|node| self.read_call(node, partition, &key)).collect();
        let deadline = Instant::now() + self.timeout;
        let gathered =
            gather(calls, deadline, |ok| ok.len() >= c.r && ok.iter().filter(|r| r.primary).count() >= c.pr)
                .await;
        let answered = gathered.ok.len();
        if answered < c.r {
            gathered.finish_in_background();
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::R,
                required: c.r,
                answered,
                n: c.n,
            });
        }
        let primaries = gathered.primaries();
        if primaries < c.pr {
            gathered.finish_in_background();
            return Err(CoordinatorError::QuorumNotMet {
                kind: QuorumKind::Pr,
                required: c.pr,
                answered: primaries,
                n: c.n,
            });
        }
        let mut object = Object::new();
        for found in gathered.values().flatten() {
            object.merge(found);
        }
        gathered.finish_in_background();
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
        let replicas = self.membership.ring().replicas_for(&key, c.n);
        if replicas.iter().any(|n| n == self.membership.self_id()) {
            return self.coordinate_put(key, context, value, c).await;
        }
        let forward = ForwardPut { key, context, value, consistency: c };
        for node in replicas {
            match self.peers.call::<_, ForwardPutResponse>(node, routes::PUT, &forward, self.timeout).await {
                Ok(answer) => return answer,
                Err(error) => {
                    tracing::warn!(peer = %node, %error, "forwarding a write failed; trying the next replica")
                }
            }
        }
        Err(CoordinatorError::QuorumNotMet { kind: QuorumKind::W, required: c.w, answered: 0, n: c.n })
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
        let ring = self.membership.ring();
        let partition = ring.partition_of(&key);
        let sync = c.dw > 0;
        let w_fail = |acked| CoordinatorError::QuorumNotMet {
            kind: QuorumKind::W,
            required: c.w,
            answered: acked,
            n: c.n,
        };
        let object = match self.replica.coordinate(partition, key.clone(), context, value, sync).await {
            Ok(object) => object,
            Err(error) => {
                tracing::error!(%error, "local write failed");
                return Err(w_fail(0));
            }
        };
        let self_id = self.membership.self_id().to_string();
        let mut calls: Vec<Call<bool>> = vec![
            futures::future::ready(Reply { node: self_id.clone(), primary: true, result: Ok(sync) }).boxed(),
        ];
        let others: Vec<&String> = ring.replicas_for(&key, c.n).iter().filter(|n| **n != self_id).collect();
        let Ok(mut permits) =
            self.pending_replica_calls.clone().acquire_many_owned(others.len() as u32).await
        else {
            return Err(w_fail(1));
        };
        for node in others {
            let req = ReplicateRequest { partition, key: key.clone(), object: object.clone(), sync };
            let queue = self.queues.get(node).map(|q| q.replicate.clone());
            let node = node.clone();
            let permit = permits.split(1);
            calls.push(
                async move {
                    let _permit = permit;
                    let result = match queue {
                        Some(q) => q.call(req).await.map(|r| r.durable),
                        None => Err(format!("unknown peer {node}")),
                    };
                    Reply { node, primary: true, result }
                }
                .boxed(),
            );
        }
        let deadline = Instant::now() + self.timeout;
        let gathered = gather(calls, deadline, |ok| {
            ok.len() >= c.w
                && ok.iter().filter(|r| r.primary).count() >= c.pw
                && ok.iter().filter(|r| matches!(r.result, Ok(true))).count() >= c.dw
        })
        .await;
        let acked = gathered.ok.len();
        let primaries = gathered.primaries();
        let durable = gathered.values().filter(|d| **d).count();
        gathered.finish_in_background();
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
        Ok(Outcome { object, report: QuorumReport::Write { n: c.n, w: c.w, acked } })
    }
}
