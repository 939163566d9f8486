//! Natural batching of peer calls: requests to one peer on one route queue
//! up while earlier batches are in flight and leave together as one RPC.
//!
//! Each RPC costs tens of µs of HTTP/2 + TLS + client bookkeeping on both
//! sides whatever its size; under load this turns dozens of replica calls
//! into one, and the receiving replica applies them in one RocksDB write
//! batch. When idle a request leaves at once, so batching adds no latency.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::client::{PeerClient, RpcError};
use super::error::{PeerError, RemoteCode};

/// The answer to one request of a batch: a whole-call failure is copied to
/// every item, so each caller can still ask whether its request arrived.
pub type ItemResult<Resp> = Result<Resp, PeerError>;

struct Pending<Req, Resp> {
    request: Req,
    /// Approximate encoded size, for the batch's byte budget.
    bytes: usize,
    reply: oneshot::Sender<ItemResult<Resp>>,
}

/// A queue in front of one (peer, route). Dropping it stops its task.
pub struct Batcher<Req, Resp> {
    peer: String,
    tx: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher { peer: self.peer.clone(), tx: self.tx.clone() }
    }
}

/// How batches form.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most requests in one RPC.
    pub max_batch: usize,
    /// Most bytes in one RPC; a larger single request travels alone.
    pub max_bytes: usize,
    /// Batches in flight to one peer at once; further requests wait and
    /// join the next batch.
    pub max_in_flight: usize,
    /// Deadline of one batch RPC.
    pub timeout: Duration,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Serialize + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Starts the queue's task; needs a tokio runtime.
    pub fn spawn(peers: PeerClient, peer: String, route: &'static str, limits: BatchLimits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(peers, peer.clone(), route, limits, rx));
        Batcher { peer, tx }
    }

    /// Queues `request` (about `bytes` long once encoded) and waits for its answer.
    pub async fn call(&self, request: Req, bytes: usize) -> ItemResult<Resp> {
        let (reply, answer) = oneshot::channel();
        let peer = || self.peer.clone();
        self.tx
            .send(Pending { request, bytes, reply })
            .map_err(|_| PeerError::NotDelivered { peer: peer(), reason: "peer queue closed".into() })?;
        // The batch task ended without answering (a runtime shutting down):
        // the call may have left.
        answer.await.unwrap_or_else(|_| Err(PeerError::Lost { peer: peer(), reason: "batch dropped".into() }))
    }
}

async fn run<Req, Resp>(
    peers: PeerClient,
    peer: String,
    route: &'static str,
    limits: BatchLimits,
    mut rx: mpsc::UnboundedReceiver<Pending<Req, Resp>>,
) where
    Req: Serialize + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    // A request that did not fit the last batch opens the next one.
    let mut carried: Option<Pending<Req, Resp>> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a free slot is what lets the next batch grow.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let mut requests = Vec::with_capacity(limits.max_batch.min(64));
        let mut replies = Vec::with_capacity(requests.capacity());
        let mut bytes = first.bytes;
        requests.push(first.request);
        replies.push(first.reply);
        while requests.len() < limits.max_batch {
            match rx.try_recv() {
                Ok(p) if bytes + p.bytes > limits.max_bytes => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.bytes;
                    requests.push(p.request);
                    replies.push(p.reply);
                }
                Err(_) => break,
            }
        }
        let (peers, peer) = (peers.clone(), peer.clone());
        tokio::spawn(async move {
            let answer: Result<Vec<ItemResult<Resp>>, RpcError> =
                peers.call(&peer, route, &requests, limits.timeout).await;
            match answer {
                Ok(results) if results.len() == replies.len() => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Ok(results) => {
                    let message =
                        format!("peer {peer} answered {} of {} requests", results.len(), replies.len());
                    let e = PeerError::remote(RemoteCode::BadAnswer, message);
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
                Err(error) => {
                    let e = PeerError::from(error);
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
            }
            drop(permit);
        });
    }
}
