//! Stray copies: keys this node holds but is not a home of, because its
//! position in the key's preference list is at or past the key's own `N`.
//! They appear when the member list changes (the ring moves partitions
//! between members) or a node is restored from an old copy; no exchange
//! covers them (a pair compares only the keys both are homes of), so
//! without this sweep a new home would never receive them, and a stray
//! live value would outlive its key's tombstone.
//!
//! Each stray is sent, synced, to every home of its key; once every home
//! has acknowledged it durably, it is removed here if unchanged (a write
//! since keeps it for the next sweep). Until then it stays, and GC leaves
//! the key's tombstone alone while any member holds a different copy
//! ([`super::gc`]). A crash between the sends and the removal only repeats
//! the sends: merging is idempotent.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{AeError, AntiEntropy, CALL_TIMEOUT, KEYS_PER_CALL};
use crate::governor::Pacer;
use crate::replica::{ReplicateRequest, ReplicateResponse};
use crate::rpc::client::routes;
use crate::rpc::error::PeerError;
use crate::storage::tree;

fn same_layout(a: &crate::membership::Layout, b: &crate::membership::Layout) -> bool {
    a.version() == b.version() && a.history().versions().len() == b.history().versions().len()
}

impl AntiEntropy {
    /// One sweep over every partition; returns how many strays are left
    /// (not yet handed off: a home unreachable or refusing).
    pub(super) async fn hand_off_strays(&self, throttle: &Pacer) -> Result<u64, AeError> {
        let layout = self.membership.layout();
        let me = self.membership.self_id().to_string();
        let mut left = 0;
        for p in 0..layout.partitions() {
            if layout.is_moving(p) {
                // Every version's homes keep their copies until the move
                // is over; then the old owners' copies are strays.
                continue;
            }
            let homes = layout.homes(p).len();
            let list: Vec<String> = layout.preference_list(p).to_vec();
            let position = list.iter().position(|h| *h == me).unwrap_or(usize::MAX);
            if position == 0 || !self.blocking(move |s| s.trees().holds_strays(p, position, homes)).await? {
                continue;
            }
            let mut after: Option<Vec<u8>> = None;
            loop {
                let from = after.clone();
                let page = self
                    .blocking(move |s| {
                        s.objects().strays_after(p, from.as_deref(), position, homes, KEYS_PER_CALL)
                    })
                    .await?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (key, object) in page {
                    let targets = &list[..object.replicas(homes).min(list.len())];
                    if self.hand_off_one(p, &key, &object, targets, throttle).await {
                        // The sweep is long and throttled: a layout change
                        // meanwhile may make this node a home again, or the
                        // partition a moving one. Stop; the next sweep, under
                        // the new layout, decides.
                        if !same_layout(&layout, &self.membership.layout()) {
                            return Ok(left + 1);
                        }
                        let hash = tree::entry_hash(&key, &object);
                        let k = key.clone();
                        if self.blocking(move |s| s.objects().remove_stray_if_unchanged(p, &k, &hash)).await?
                        {
                            self.stats.strays_handed_off.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    left += 1;
                }
            }
        }
        Ok(left)
    }

    /// Sends one stray to each of `targets` with a WAL sync; true only if
    /// every one answered that it holds it durably.
    async fn hand_off_one(
        &self,
        partition: u32,
        key: &[u8],
        object: &crate::storage::Object,
        targets: &[String],
        throttle: &Pacer,
    ) -> bool {
        let request = vec![ReplicateRequest {
            partition,
            key: Bytes::copy_from_slice(key),
            object: object.clone(),
            sync: true,
            hint: None,
        }];
        let bytes = crate::rpc::codec::encode(&request).len();
        let mut all = true;
        for target in targets {
            if !self.membership.is_reachable(target) {
                all = false;
                continue;
            }
            let answer: Result<Vec<Result<ReplicateResponse, PeerError>>, _> =
                self.peers.call(target, routes::REPLICATE, &request, CALL_TIMEOUT).await;
            let durable = matches!(answer.as_deref(), Ok([Ok(ReplicateResponse { durable: true })]));
            if !durable {
                tracing::warn!(peer = %target, partition, "stray hand-off not acknowledged; retried next sweep");
            }
            all &= durable;
            self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            throttle.spend(bytes).await;
        }
        all
    }
}
