//! One anti-entropy exchange between this node and a peer: compare the
//! roots of every partition both hold, descend only into differing inner
//! nodes and leaves, then swap just the keys whose entry hashes differ. Each
//! side merges what it receives with version semantics, so an exchange can
//! never lose a write, only add the versions a side lacked.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{AeError, AeRequest, AeResponse, AntiEntropy, KEYS_PER_CALL, ROOTS_PER_CALL, SETTLE, Throttle};
use crate::replica::{ReadRequest, ReadResponse, ReplicateRequest, ReplicateResponse};
use crate::rpc::client::routes;
use crate::storage::tree::{self, Hash};

impl AntiEntropy {
    /// Partitions whose home replicas include both this node and `peer`.
    fn shared_with(&self, peer: &str) -> Vec<u32> {
        let ring = self.membership.ring();
        let me = self.membership.self_id();
        (0..ring.partitions())
            .filter(|p| {
                let homes = &ring.preference_list(*p)[..ring.replicas().min(ring.members().len())];
                homes.iter().any(|h| h == me) && homes.iter().any(|h| h == peer)
            })
            .collect()
    }

    pub(super) async fn exchange_with(&self, peer: &str, throttle: &Throttle) -> Result<(), AeError> {
        let shared = self.shared_with(peer);
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
            for p in self.differing_roots(peer, differing, throttle).await? {
                self.stats.partitions_differing.fetch_add(1, Ordering::Relaxed);
                self.exchange_partition(peer, p, throttle).await?;
            }
        }
        Ok(())
    }

    /// Which of `partitions` have a different tree root here and at `peer`.
    async fn differing_roots(
        &self,
        peer: &str,
        partitions: Vec<u32>,
        throttle: &Throttle,
    ) -> Result<Vec<u32>, AeError> {
        let ask = partitions.clone();
        let local = self
            .blocking(move |s| ask.iter().map(|p| s.tree_root(*p)).collect::<Result<Vec<_>, _>>())
            .await?;
        let request = AeRequest::Roots { partitions: partitions.clone() };
        let AeResponse::Hashes(remote) = self.call(peer, request, throttle).await? else {
            return Err(AeError::Protocol("roots"));
        };
        let differs = |(i, _): &(usize, &u32)| local.get(*i) != remote.get(*i);
        Ok(partitions.iter().enumerate().filter(differs).map(|(_, p)| *p).collect())
    }

    async fn exchange_partition(
        &self,
        peer: &str,
        partition: u32,
        throttle: &Throttle,
    ) -> Result<(), AeError> {
        let leaves = self.blocking(move |s| s.tree_leaves(partition)).await?;
        let inner = tree::inner_of(&leaves);
        let AeResponse::Hashes(their_inner) =
            self.call(peer, AeRequest::Tree { partition, groups: vec![] }, throttle).await?
        else {
            return Err(AeError::Protocol("inner"));
        };
        let groups: Vec<u8> =
            (0..tree::INNER).filter(|g| inner.get(*g) != their_inner.get(*g)).map(|g| g as u8).collect();
        if groups.is_empty() {
            return Ok(());
        }
        let AeResponse::Hashes(their_leaves) =
            self.call(peer, AeRequest::Tree { partition, groups: groups.clone() }, throttle).await?
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
            return Ok(());
        }
        let ask = buckets.clone();
        let mine: BTreeMap<Vec<u8>, Hash> =
            self.blocking(move |s| s.keys_in_buckets(partition, &ask)).await?.into_iter().collect();
        let AeResponse::Keys(theirs) =
            self.call(peer, AeRequest::Keys { partition, buckets }, throttle).await?
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
        self.pull(peer, partition, pull, throttle).await?;
        self.push(peer, partition, push, throttle).await
    }

    /// Reads `keys` from `peer` and merges them into this node's copies.
    async fn pull(
        &self,
        peer: &str,
        partition: u32,
        keys: Vec<Bytes>,
        throttle: &Throttle,
    ) -> Result<(), AeError> {
        for chunk in keys.chunks(KEYS_PER_CALL) {
            let requests: Vec<ReadRequest> =
                chunk.iter().map(|key| ReadRequest { partition, key: key.clone(), hint: None }).collect();
            let sent = crate::rpc::codec::encode(&requests).len();
            let answers: Vec<Result<ReadResponse, String>> =
                self.peers.call(peer, routes::READ, &requests, super::CALL_TIMEOUT).await?;
            let merges: Vec<ReplicateRequest> = requests
                .into_iter()
                .zip(answers)
                .filter_map(|(r, a)| {
                    let object = a.ok()?.object?;
                    Some(ReplicateRequest { partition, key: r.key, object, sync: false, hint: None })
                })
                .collect();
            let bytes =
                sent + merges.iter().map(|m| m.key.len() + 64 + object_bytes(&m.object)).sum::<usize>();
            self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            self.stats.keys_pulled.fetch_add(merges.len() as u64, Ordering::Relaxed);
            self.replica.apply_batch(merges).await.map_err(|e| AeError::Task(e.to_string()))?;
            throttle.spend(bytes).await;
        }
        Ok(())
    }

    /// Sends this node's copy of each of `keys` to `peer` to merge.
    async fn push(
        &self,
        peer: &str,
        partition: u32,
        keys: Vec<Bytes>,
        throttle: &Throttle,
    ) -> Result<(), AeError> {
        for chunk in keys.chunks(KEYS_PER_CALL) {
            let ask = chunk.to_vec();
            let objects = self
                .blocking(move |s| ask.iter().map(|k| s.get(partition, k)).collect::<Result<Vec<_>, _>>())
                .await?;
            let requests: Vec<ReplicateRequest> = chunk
                .iter()
                .zip(objects)
                .filter_map(|(key, o)| {
                    Some(ReplicateRequest {
                        partition,
                        key: key.clone(),
                        object: o?,
                        sync: false,
                        hint: None,
                    })
                })
                .collect();
            if requests.is_empty() {
                continue;
            }
            let bytes = crate::rpc::codec::encode(&requests).len();
            let answers: Vec<Result<ReplicateResponse, String>> =
                self.peers.call(peer, routes::REPLICATE, &requests, super::CALL_TIMEOUT).await?;
            let ok = answers.iter().filter(|a| a.is_ok()).count();
            self.stats.keys_pushed.fetch_add(ok as u64, Ordering::Relaxed);
            self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            throttle.spend(bytes).await;
        }
        Ok(())
    }
}

fn object_bytes(object: &crate::storage::Object) -> usize {
    object.siblings().iter().map(|s| s.value.value.len()).sum()
}
