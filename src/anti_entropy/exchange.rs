//! One anti-entropy exchange between this node and a peer: compare the
//! roots of every partition both hold, descend only into differing inner
//! nodes and leaves, then swap just the keys whose entry hashes differ. Each
//! side merges what it receives with version semantics, so an exchange can
//! never lose a write, only add the versions a side lacked.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{
    AeError, AeRequest, AeResponse, AntiEntropy, BYTES_PER_CALL, KEYS_PER_CALL, ROOTS_PER_CALL, SETTLE,
};
use crate::governor::Pacer;
use crate::replica::{ReplicateRequest, ReplicateResponse, object_bytes};
use crate::rpc::client::routes;
use crate::rpc::error::PeerError;
use crate::storage::tree::{self, Hash};

/// The smallest replica count of the keys both `a` and `b` hold in
/// partition `p` (in whichever versions make them homes).
pub(super) fn from_n(layout: &crate::membership::Layout, p: u32, a: &str, b: &str) -> Option<u8> {
    let (i, j) = (layout.position(p, a)?, layout.position(p, b)?);
    Some(u8::try_from(i.max(j) + 1).unwrap_or(u8::MAX))
}

impl AntiEntropy {
    /// Partitions whose home replicas include both this node and `peer`,
    /// each with the smallest replica count of the keys both hold: a key
    /// of count `N` lives on the first `N` homes, so the homes at
    /// positions `i` and `j` share the keys of `N > max(i, j)`.
    pub(super) fn shared_with(&self, peer: &str) -> Vec<(u32, u8)> {
        let layout = self.membership.layout();
        let me = self.membership.self_id();
        (0..layout.partitions())
            .filter_map(|p| {
                // A moving partition's new homes are filled by the transfer
                // worker: a second stream of the same keys from this round
                // would only double the bytes moved. Until the move ends,
                // only the read version's homes compare it here.
                if layout.is_moving(p) {
                    let read = layout.replicas_of(p, layout.default_replicas());
                    if !read.iter().any(|h| h == me) || !read.iter().any(|h| h == peer) {
                        return None;
                    }
                }
                Some((p, from_n(&layout, p, me, peer)?))
            })
            .collect()
    }

    /// Returns whether the exchange was complete: every differing key of
    /// every shared partition pulled from an authoritative answer. A
    /// partition that fails is skipped (and so retried next round); it does
    /// not stop the exchange with this peer. Only a failed roots call does.
    pub(super) async fn exchange_with(&self, peer: &str, throttle: &Pacer) -> Result<bool, AeError> {
        let shared = self.shared_with(peer);
        self.exchange_partitions(peer, &shared, throttle).await
    }

    /// [`AntiEntropy::exchange_with`] over the given `(partition, from_n)`.
    pub(super) async fn exchange_partitions(
        &self,
        peer: &str,
        shared: &[(u32, u8)],
        throttle: &Pacer,
    ) -> Result<bool, AeError> {
        let mut complete = true;
        for chunk in shared.chunks(ROOTS_PER_CALL) {
            let differing = self.differing_roots(peer, chunk.to_vec(), throttle).await?;
            self.stats.partitions_compared.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if differing.is_empty() {
                continue;
            }
            // Under write load a root can differ only because a write is
            // still in flight to one side: ask again once those have
            // landed, and descend only where the difference persists.
            tokio::time::sleep(SETTLE).await;
            for (p, from_n) in self.differing_roots(peer, differing, throttle).await? {
                self.stats.partitions_differing.fetch_add(1, Ordering::Relaxed);
                match self.exchange_partition(peer, p, from_n, throttle).await {
                    Ok(whole) => complete &= whole,
                    Err(error) => {
                        complete = false;
                        tracing::warn!(%peer, partition = p, %error, "partition exchange failed; retried next round");
                    }
                }
            }
        }
        Ok(complete)
    }

    /// Which of `partitions` have a different tree root here and at `peer`.
    async fn differing_roots(
        &self,
        peer: &str,
        partitions: Vec<(u32, u8)>,
        throttle: &Pacer,
    ) -> Result<Vec<(u32, u8)>, AeError> {
        let ask = partitions.clone();
        let local = self
            .blocking(move |s| ask.iter().map(|(p, n)| s.trees().root(*p, *n)).collect::<Result<Vec<_>, _>>())
            .await?;
        let request = AeRequest::Roots { partitions: partitions.clone() };
        let AeResponse::Hashes(remote) = self.call(peer, request, throttle).await? else {
            return Err(AeError::Protocol("roots"));
        };
        let differs = |(i, _): &(usize, &(u32, u8))| local.get(*i) != remote.get(*i);
        Ok(partitions.iter().enumerate().filter(differs).map(|(_, p)| *p).collect())
    }

    async fn exchange_partition(
        &self,
        peer: &str,
        partition: u32,
        from_n: u8,
        throttle: &Pacer,
    ) -> Result<bool, AeError> {
        let leaves = self.blocking(move |s| s.trees().leaves(partition, from_n)).await?;
        let inner = tree::inner_of(&leaves);
        let AeResponse::Hashes(their_inner) =
            self.call(peer, AeRequest::Tree { partition, from_n, groups: vec![] }, throttle).await?
        else {
            return Err(AeError::Protocol("inner"));
        };
        let groups: Vec<u8> =
            (0..tree::INNER).filter(|g| inner.get(*g) != their_inner.get(*g)).map(|g| g as u8).collect();
        if groups.is_empty() {
            return Ok(true);
        }
        let AeResponse::Hashes(their_leaves) =
            self.call(peer, AeRequest::Tree { partition, from_n, groups: groups.clone() }, throttle).await?
        else {
            return Err(AeError::Protocol("leaves"));
        };
        let mut buckets = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            for j in 0..tree::FANOUT {
                let b = *g as usize * tree::FANOUT + j;
                if leaves.get(b) != their_leaves.get(i * tree::FANOUT + j) {
                    buckets.push(b as u8);
                }
            }
        }
        if buckets.is_empty() {
            return Ok(true);
        }
        let ask = buckets.clone();
        let mine: BTreeMap<Vec<u8>, Hash> = self
            .blocking(move |s| s.objects().keys_in_buckets(partition, &ask, from_n))
            .await?
            .into_iter()
            .collect();
        let AeResponse::Keys(theirs) =
            self.call(peer, AeRequest::Keys { partition, from_n, buckets }, throttle).await?
        else {
            return Err(AeError::Protocol("keys"));
        };
        let theirs: BTreeMap<Vec<u8>, Hash> = theirs.into_iter().map(|(k, h)| (k.to_vec(), h)).collect();
        let pull: Vec<Bytes> = theirs
            .iter()
            .filter(|(k, h)| mine.get(*k) != Some(*h))
            .map(|(k, _)| Bytes::copy_from_slice(k))
            .collect();
        // Keys only they hold come back merged into nothing, equal to
        // theirs; keys both hold but differently are pushed after the pull,
        // so they receive the merge of both sides.
        let push: Vec<Bytes> = mine
            .iter()
            .filter(|(k, h)| theirs.get(*k) != Some(*h))
            .map(|(k, _)| Bytes::copy_from_slice(k))
            .collect();
        let complete = self.pull(peer, partition, pull, throttle).await?;
        self.push(peer, partition, push, throttle).await?;
        Ok(complete)
    }

    /// Reads `keys` from `peer` and merges them into this node's copies,
    /// in calls budgeted in bytes. Returns false if some key was read from
    /// a copy the peer itself does not vouch for (corrupt, or not refilled).
    async fn pull(
        &self,
        peer: &str,
        partition: u32,
        keys: Vec<Bytes>,
        throttle: &Pacer,
    ) -> Result<bool, AeError> {
        let mut complete = true;
        let mut rest = &keys[..];
        while !rest.is_empty() {
            let ask: Vec<Bytes> = rest.iter().take(KEYS_PER_CALL).cloned().collect();
            let request = AeRequest::Fetch { partition, keys: ask, budget: BYTES_PER_CALL as u64 };
            let AeResponse::Objects(fetched) = self.call(peer, request, throttle).await? else {
                return Err(AeError::Protocol("fetch"));
            };
            if fetched.is_empty() {
                return Err(AeError::Protocol("empty fetch"));
            }
            let (now, later) = rest.split_at(fetched.len().min(rest.len()));
            rest = later;
            let merges: Vec<ReplicateRequest> = now
                .iter()
                .zip(fetched)
                .filter_map(|(key, f)| {
                    complete &= f.authoritative;
                    let object = f.object?;
                    Some(ReplicateRequest { partition, key: key.clone(), object, sync: false, hint: None })
                })
                .collect();
            // A copy refused (its value does not match its digest) is not
            // held: the partition is not complete until a pull stores it.
            let answers = self.replica.apply_batch(merges).await?;
            let stored = answers.iter().filter(|a| a.is_ok()).count();
            complete &= stored == answers.len();
            self.stats.keys_pulled.fetch_add(stored as u64, Ordering::Relaxed);
        }
        Ok(complete)
    }

    /// Sends this node's copy of each of `keys` to `peer` to merge, in
    /// calls of at most [`BYTES_PER_CALL`] (a larger object goes alone). A
    /// call the peer refuses is skipped; the next exchange retries it.
    async fn push(
        &self,
        peer: &str,
        partition: u32,
        keys: Vec<Bytes>,
        throttle: &Pacer,
    ) -> Result<(), AeError> {
        for chunk in keys.chunks(KEYS_PER_CALL) {
            let ask = chunk.to_vec();
            let objects = self
                .blocking(move |s| {
                    ask.iter().map(|k| s.objects().get(partition, k)).collect::<Result<Vec<_>, _>>()
                })
                .await?;
            let mut batch: Vec<ReplicateRequest> = Vec::new();
            let mut bytes = 0;
            for (key, object) in chunk.iter().zip(objects) {
                let Some(object) = object else { continue };
                let size = key.len() + object_bytes(&object);
                if !batch.is_empty() && bytes + size > BYTES_PER_CALL {
                    self.push_batch(peer, std::mem::take(&mut batch), throttle).await?;
                    bytes = 0;
                }
                bytes += size;
                batch.push(ReplicateRequest { partition, key: key.clone(), object, sync: false, hint: None });
            }
            if !batch.is_empty() {
                self.push_batch(peer, batch, throttle).await?;
            }
        }
        Ok(())
    }

    async fn push_batch(
        &self,
        peer: &str,
        requests: Vec<ReplicateRequest>,
        throttle: &Pacer,
    ) -> Result<(), AeError> {
        let bytes = crate::rpc::codec::encode(&requests).len();
        let answers: Vec<Result<ReplicateResponse, PeerError>> = match self
            .peers
            .call(peer, routes::REPLICATE, &requests, super::CALL_TIMEOUT)
            .await
        {
            Ok(answers) => answers,
            Err(crate::rpc::client::RpcError::Status { status, .. }) => {
                tracing::warn!(%peer, status, keys = requests.len(), "anti-entropy push refused; retried next exchange");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        let ok = answers.iter().filter(|a| a.is_ok()).count();
        self.stats.keys_pushed.fetch_add(ok as u64, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        throttle.spend(bytes).await;
        Ok(())
    }
}
