//! Tombstone garbage collection. A delete leaves a tombstone so that stale
//! replicas, hints and repairs cannot bring the value back; it can go once
//! every home replica holds that same tombstone and the grace period has
//! passed. "Every home" is the key's own: the first `N` of its partition's
//! preference list, with the `N` kept in its record (a key written with
//! `N=2` is never waited for on the third home, which does not hold it).
//!
//! The partition's first home runs the check for it: it asks every other
//! member for its entry hash of each old tombstone. A home of the key must
//! hold that same tombstone; any other member must hold nothing or that
//! tombstone (a stray copy left by a member-list change must not outlive
//! it). Only then does it ask every member (and itself) to remove the key
//! if it is still unchanged. Every other member is also asked whether it
//! holds a hint for the key: a hint written before the delete would bring
//! the value back once the tombstone is gone, so a hinted key waits for its
//! handoff. Any member out of reach postpones the partition.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{AeError, AeRequest, AeResponse, AntiEntropy};
use crate::governor::Pacer;
use crate::membership::Layout;
use crate::storage::tree::{self, Hash};
use crate::util::now_ms;

/// Tombstones checked per partition per round.
const PER_PARTITION: usize = 256;

impl AntiEntropy {
    /// One GC pass over the partitions this node is first home of. A
    /// partition that fails is logged and skipped (retried next round);
    /// `cursors` remembers where each partition's walk is.
    pub(super) async fn collect_tombstones(
        &self,
        throttle: &Pacer,
        cursors: &mut HashMap<u32, (u64, Vec<u8>)>,
    ) -> Result<(), AeError> {
        let layout = self.membership.layout();
        let me = self.membership.self_id();
        if layout.history().versions().len() > 1 {
            // Partitions are moving: "every home holds the tombstone" is
            // not yet a fact about one replica set. GC waits for the move.
            return Ok(());
        }
        for p in 0..layout.partitions() {
            let homes = layout.homes(p);
            if homes.first().map(String::as_str) != Some(me) {
                continue;
            }
            if let Err(error) = self.collect_partition(&layout, p, throttle, cursors).await {
                tracing::warn!(partition = p, %error, "tombstone collection of a partition failed; retried next round");
            }
        }
        Ok(())
    }

    async fn collect_partition(
        &self,
        layout: &Layout,
        p: u32,
        throttle: &Pacer,
        cursors: &mut HashMap<u32, (u64, Vec<u8>)>,
    ) -> Result<(), AeError> {
        let homes = layout.homes(p);
        let me = self.membership.self_id();
        let grace_ms = self.config.tombstone_grace_secs.saturating_mul(1000);
        let old_before = now_ms().saturating_sub(grace_ms);
        {
            let after = cursors.get(&p).cloned();
            let due = self
                .blocking(move |s| {
                    let after = after.as_ref().map(|(ms, k)| (*ms, k.as_slice()));
                    s.gc_queue().due(p, old_before, after, PER_PARTITION)
                })
                .await?;
            // A short page ends the walk: the next round starts over.
            match due.last() {
                Some((k, ms)) if due.len() >= PER_PARTITION => cursors.insert(p, (*ms, k.clone())),
                _ => cursors.remove(&p),
            };
            let old: Vec<Bytes> = due.iter().map(|(k, _)| Bytes::from(k.clone())).collect();
            if old.is_empty() {
                return Ok(());
            }
            // Every other member, with its position in the partition's
            // preference list (this node is the first home, position 0);
            // members past the list (a large cluster lists a few
            // fallbacks) are no home of the key either.
            let list = layout.preference_list(p);
            let others: Vec<(usize, &String)> = layout
                .members()
                .iter()
                .filter(|m| m.id != me)
                .map(|m| (list.iter().position(|h| *h == m.id).unwrap_or(usize::MAX), &m.id))
                .collect();
            if !self.membership.peer_ids().iter().all(|m| self.membership.is_reachable(m)) {
                return Ok(());
            }
            // Re-read each key now: only a tombstone still of its queued
            // time, and not held as a hint here, is a candidate (a write
            // since the queue was read makes it live again). An entry whose
            // key is no longer that tombstone is dropped from the queue.
            let max = homes.len();
            // (entry hash, how many homes hold the key) of each candidate.
            let mine: Vec<Option<(Hash, usize)>> = self
                .blocking(move |s| {
                    let mut out = Vec::with_capacity(due.len());
                    let mut stale = Vec::new();
                    for (k, ms) in &due {
                        let object = s.objects().get(p, k)?;
                        let still = object
                            .filter(|o| tree::tombstone_time(o) == Some(*ms))
                            .map(|o| (tree::entry_hash(k, &o), o.replicas(max)));
                        if still.is_none() {
                            stale.push((k.clone(), *ms));
                        }
                        out.push(if s.hints().holds(p, k)? { None } else { still });
                    }
                    s.objects().drop_stale_tombstones(p, &stale)?;
                    Ok(out)
                })
                .await?;
            let mut agreed: Vec<Option<(Hash, usize)>> = mine;
            for (position, h) in &others {
                let request = AeRequest::Hashes { partition: p, keys: old.clone() };
                let AeResponse::Held(theirs) = self.call(h, request, throttle).await? else {
                    return Err(AeError::Protocol("hashes"));
                };
                for (a, t) in agreed.iter_mut().zip(theirs.iter().chain(std::iter::repeat(&None))) {
                    // A home of the key itself must hold this tombstone; any
                    // other member may hold nothing or this tombstone, but
                    // not another copy: a stray live value (left by a
                    // member-list change, see `strays`) would outlive the
                    // tombstone and come back.
                    let blocks = a.is_some_and(|(hash, n)| match t {
                        Some(theirs) => *theirs != hash,
                        None => *position < n,
                    });
                    if blocks {
                        *a = None;
                    }
                }
            }
            let peers: Vec<String> = self.membership.peer_ids();
            for m in &peers {
                let request = AeRequest::Hinted { partition: p, keys: old.clone() };
                let AeResponse::Flags(hinted) = self.call(m, request, throttle).await? else {
                    return Err(AeError::Protocol("hinted"));
                };
                for (a, h) in agreed.iter_mut().zip(hinted.iter().chain(std::iter::repeat(&true))) {
                    if *h {
                        *a = None;
                    }
                }
            }
            let reap: Vec<(Bytes, Hash)> =
                old.into_iter().zip(agreed).filter_map(|(k, h)| Some((k, h?.0))).collect();
            if reap.is_empty() {
                return Ok(());
            }
            // Every other member is asked, also those outside a key's N: one
            // holds no copy, or only this very tombstone (reaped only if
            // unchanged, and a live value never is). A member that fails to
            // reap keeps its tombstone; that is safe
            // (dots are never reused, so a surviving tombstone cannot cover a
            // later write) and the next round reaps it.
            for (_, h) in &others {
                let request = AeRequest::Reap { partition: p, keys: reap.clone() };
                if let Err(error) = self.call(h, request, throttle).await {
                    tracing::warn!(peer = %h, partition = p, %error, "tombstone reap failed there");
                }
            }
            let keys = reap.clone();
            let removed = self
                .blocking(move |s| {
                    let mut n = 0u64;
                    for (k, h) in &keys {
                        n += u64::from(s.objects().remove_if_unchanged(p, k, h)?);
                    }
                    Ok(n)
                })
                .await?;
            self.stats.tombstones_reaped.fetch_add(removed, Ordering::Relaxed);
            tracing::debug!(partition = p, removed, "tombstones reaped");
        }
        Ok(())
    }
}
