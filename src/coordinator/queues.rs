//! The batching queues to each peer and the slots that bound the calls in
//! flight to it: the coordinator's backpressure.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Coordinator;
use crate::replica::{ReadRequest, ReadResponse, ReplicateRequest, ReplicateResponse};
use crate::rpc::batch::Batcher;
use crate::rpc::error::{PeerError, RemoteCode};
use crate::storage::Object;

/// The batching queues to one peer, and the slots bounding its calls.
#[derive(Clone)]
pub(super) struct PeerQueues {
    pub(super) read: Batcher<ReadRequest, ReadResponse>,
    pub(super) replicate: Batcher<ReplicateRequest, ReplicateResponse>,
    pub(super) slots: Arc<Semaphore>,
}

/// Roughly how many bytes `object` takes on the wire (for batch budgets).
pub(super) fn size_hint(object: &Object) -> usize {
    object.siblings().iter().map(|s| s.value.bytes.len() + 64).sum()
}

impl Coordinator {
    /// Merges `req.object` into `node`'s copy (this node's own, or a peer's
    /// through its queue).
    pub(super) async fn send_replica(
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

    /// A slot for one call to `node`: waited for (until `deadline`) while
    /// the peer looks reachable, refused at once when it looks down.
    pub(super) async fn peer_slot(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Result<(PeerQueues, OwnedSemaphorePermit), PeerError> {
        let queues = self.queues_of(node).ok_or_else(|| PeerError::NotDelivered {
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
        Ok((queues, permit))
    }
}
