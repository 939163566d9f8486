//! A quorum write: forwarded to a home replica, which stamps it and sends
//! the new object to the other replicas (or fallbacks, as hints) until W
//! (and PW, DW) are met.

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::time::Instant;

use super::queues::size_hint;
use super::quorum::{Call, Reply, gather};
use super::targets::Target;
use super::{
    Consistency, Coordinator, CoordinatorError, ForwardPut, ForwardPutResponse, Outcome, QuorumKind,
    QuorumReport,
};
use crate::membership::Layout;
use crate::replica::ReplicaError;
use crate::replica::{ClientWrite, ReplicateRequest};
use crate::rpc::client::routes;
use crate::storage::{Object, StoredValue};
use crate::version::VersionVector;

/// How long a write waits for a slot to a peer whose queue is full before
/// it sends the copy to the spare fallback instead.
const SLOT_PATIENCE: Duration = Duration::from_millis(50);

/// Extra time a forwarding node gives the coordinator beyond its own deadline.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);

impl Coordinator {
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
        let (list, homes) = layout.write_preference(layout.partition_of(&key), c.n);
        let replicas = &list[..homes];
        let self_id = self.membership.self_id();
        if replicas.iter().any(|n| n == self_id) {
            match self.coordinate_put(&layout, key.clone(), context.clone(), value.clone(), c).await {
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
        // writeable" while any node is up), with a fresh snapshot: the
        // forwarding attempts took time, and the grace after which nodes
        // acknowledge a new layout counts from one request's start.
        let ForwardPut { key, context, value, .. } = forward;
        let layout = self.membership.layout();
        self.coordinate_put(&layout, key, context, value, c).await
    }

    /// The coordinating replica's side of a write: store locally with a new
    /// dot, then send the resulting object to the other replicas. The
    /// whole request uses the caller's `layout` snapshot: the replicas it
    /// chose and the ones written to are the same set. `value`'s digest is
    /// trusted: it was computed from the body on this node, or checked by
    /// the forwarded-write endpoint when the value came from a peer.
    pub async fn coordinate_put(
        &self,
        layout: &Layout,
        key: Bytes,
        context: VersionVector,
        value: StoredValue,
        c: Consistency,
    ) -> Result<Outcome, CoordinatorError> {
        let partition = layout.partition_of(&key);
        let sync = c.dw > 0;
        let w_fail = |acked| CoordinatorError::QuorumNotMet {
            kind: QuorumKind::W,
            required: c.w,
            answered: acked,
            n: c.n,
        };
        // While the partition moves, the write must reach its quorum in
        // every version's replica set: plan over their union.
        let sets = layout.write_sets(partition, c.n);
        let (preference, homes) = layout.write_preference(partition, c.n);
        let plan = self.plan_over(&preference, homes, true);
        let local_is_home = plan.local_hint.is_none();
        let local_stands_for = plan.local_hint.clone();
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
        let stands_for = local_stands_for.unwrap_or_else(|| self_id.clone());
        let local = Reply { node: self_id, stands_for, primary: local_is_home, result: Ok(sync) };
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
            per_set(&sets, ok, |_| true) >= c.w
                && per_set(&sets, ok, |r| r.primary) >= c.pw
                && per_set(&sets, ok, |r| matches!(r.result, Ok(true))) >= c.dw
        })
        .await;
        let acked = per_set(&sets, &gathered.ok, |_| true);
        let primaries = per_set(&sets, &gathered.ok, |r| r.primary);
        let fallback = acked.saturating_sub(primaries);
        let durable = per_set(&sets, &gathered.ok, |r| matches!(r.result, Ok(true)));
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
        // Copied only when there is a spare to send it to: in a cluster of
        // N nodes there never is, and an object copy is an allocation per
        // sibling.
        let spare_req = target.spare.as_ref().map(|_| req(Some(target.node.clone())));
        let (slotted, has_slot) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let call = async move {
            let primary = target.is_home();
            let stands_for = target.hint_for.clone().unwrap_or_else(|| target.node.clone());
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
            match (result, target.spare.zip(spare_req)) {
                (Ok(durable), _) => Reply { node: target.node, stands_for, primary, result: Ok(durable) },
                (Err(error), Some((spare, spare_req))) => {
                    tracing::debug!(peer = %target.node, %error, %spare, "replica write failed; using a fallback");
                    let slot = this.peer_slot(&spare, deadline).await;
                    signal();
                    let result = match slot {
                        Ok((q, _permit)) => q.replicate.call(spare_req, bytes).await.map(|r| r.durable),
                        Err(e) => Err(e),
                    };
                    Reply { node: spare, stands_for, primary: false, result }
                }
                (Err(error), None) => Reply { node: target.node, stands_for, primary, result: Err(error) },
            }
        }
        .boxed();
        (call, has_slot)
    }
}

/// The fewest replies meeting `f` that count for any one of `sets` (a
/// reply counts for the set holding the home it stands for).
fn per_set(sets: &[&[String]], ok: &[Reply<bool>], f: impl Fn(&Reply<bool>) -> bool) -> usize {
    sets.iter()
        .map(|set| ok.iter().filter(|r| set.contains(&r.stands_for) && f(r)).count())
        .min()
        .unwrap_or(0)
}
