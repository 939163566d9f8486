//! Hinted handoff: a fallback node hands the writes it took for an
//! unreachable home replica back to that home once it answers again.
//!
//! Hints live in RocksDB (see [`crate::storage::hints`]), so they survive a
//! restart of the fallback. This worker pages through each reachable
//! target's hints, sends them in batches as ordinary replica merges (synced,
//! so a `DW` write does not lose its durability on the way), and removes a
//! hint only after the home acknowledged it. It runs one batch at a time and
//! sleeps to stay under `handoff_bytes_per_sec` × the governor's share
//! ([`crate::governor`]), so foreground requests keep the cores.
//!
//! A hint for a home that stays unreachable longer than the window is
//! dropped, but only once another home replica is seen to hold a version
//! that includes it: anti-entropy then repairs the missing home, whereas a
//! hint that is the only copy of a write (every home was down) is kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::governor::Pacer;
use crate::membership::Membership;
use crate::metrics::{Registry, counter};
use crate::replica::{ReadRequest, ReadResponse, ReplicateRequest, ReplicateResponse};
use crate::rpc::client::{PeerClient, RpcError, routes};
use crate::rpc::error::PeerError;
use crate::storage::{Hint, Storage, StorageError};
use crate::util::now_ms;
use crate::worker::Worker;

/// How often queues are looked at when there is nothing to deliver.
const IDLE_TICK: Duration = Duration::from_millis(500);
const BATCH_ITEMS: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often (at most) the hints of an unreachable target are checked for
/// expiry; a shorter `hint_window_secs` checks once per window.
const EXPIRY_CHECK: Duration = Duration::from_secs(60);

/// Why delivery or expiry to one target stopped for this round.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Peer(#[from] PeerError),
}

#[derive(Debug, Default)]
pub struct HandoffStats {
    pub delivered: AtomicU64,
    pub expired: AtomicU64,
}

impl HandoffStats {
    /// Registers the counters in `registry`, read at scrape time.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(HandoffCollector(self.clone())));
    }
}

#[derive(Debug)]
struct HandoffCollector(Arc<HandoffStats>);

impl Collector for HandoffCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut e,
            "hints_delivered",
            "Hints acknowledged by their home replica",
            load(&self.0.delivered),
        )?;
        counter(&mut e, "hints_expired", "Hints dropped undelivered", load(&self.0.expired))
    }
}

pub struct Handoff {
    pub storage: Arc<Storage>,
    pub membership: Arc<Membership>,
    pub peers: PeerClient,
    pub window: Duration,
    /// Delivery pace: `handoff_bytes_per_sec` × the governor's share.
    pub pacer: Pacer,
    pub stats: Arc<HandoffStats>,
}

impl Handoff {
    /// Runs until `shutdown` is cancelled.
    /// The `handoff` worker: runs until cancelled.
    pub async fn run(self, worker: Worker) {
        let mut checked: HashMap<String, Instant> = HashMap::new();
        loop {
            let worked = tokio::select! {
                () = worker.cancelled() => return,
                worked = self.round(&mut checked, &worker) => worked,
            };
            worker.round_done();
            if !worked && !worker.idle(IDLE_TICK).await {
                return;
            }
        }
    }

    /// Delivers what it can to every reachable target; true if it sent
    /// anything (so the next round starts at once).
    async fn round(&self, checked: &mut HashMap<String, Instant>, worker: &Worker) -> bool {
        let mut worked = false;
        for (target, count) in self.storage.hints().counts() {
            if count == 0 || target == self.membership.self_id() {
                continue;
            }
            if !self.membership.layout().is_member(&target) {
                // Its home left the cluster: the key's homes now get it.
                match self.retarget(&target).await {
                    Ok(sent) => worked |= sent > 0,
                    Err(error) => {
                        tracing::warn!(peer = %target, %error, "re-targeting hints paused");
                        worker.failed(&error);
                    }
                }
                continue;
            }
            if !self.membership.is_reachable(&target) {
                // At least once per window, so a short window is honoured.
                let every = EXPIRY_CHECK.min(self.window);
                if checked.get(&target).is_none_or(|at| at.elapsed() >= every) {
                    checked.insert(target.clone(), Instant::now());
                    if let Err(error) = self.expire_for(&target).await {
                        tracing::warn!(peer = %target, %error, "hint expiry check stopped");
                        worker.failed(&error);
                    }
                }
                continue;
            }
            match self.deliver_to(&target).await {
                Ok(sent) => worked |= sent > 0,
                Err(error) => {
                    tracing::warn!(peer = %target, %error, "hint delivery paused");
                    worker.failed(&error);
                }
            }
        }
        worked
    }

    /// Sends every hint queued for `target`, page by page.
    async fn deliver_to(&self, target: &str) -> Result<usize, HandoffError> {
        let mut after: Option<(u32, Vec<u8>)> = None;
        let mut sent = 0;
        loop {
            let storage = &self.storage;
            let from = after.as_ref().map(|(p, k)| (*p, k.as_slice()));
            let page = storage.hints().page(target, from, BATCH_ITEMS, BATCH_BYTES)?;
            let Some(last) = page.last() else { return Ok(sent) };
            // Age does not matter here: the home is back, so it gets all of
            // them (tombstone GC waits for every hint of a key to be gone).
            let (live, dead): (Vec<&Hint>, Vec<&Hint>) = page.iter().partition(|h| h.object.is_some());
            if !dead.is_empty() {
                let n = storage.hints().remove(target, &dead)?;
                self.stats.expired.fetch_add(n as u64, Ordering::Relaxed);
                tracing::warn!(peer = %target, dropped = n, "dropped unreadable hints");
            }
            if !live.is_empty() {
                let requests: Vec<ReplicateRequest> = live
                    .iter()
                    .filter_map(|h| {
                        let object = h.object.clone()?;
                        let key = Bytes::copy_from_slice(&h.key);
                        Some(ReplicateRequest { partition: h.partition, key, object, sync: true, hint: None })
                    })
                    .collect();
                let answers: Vec<Result<ReplicateResponse, PeerError>> = match self
                    .peers
                    .call(target, routes::REPLICATE, &requests, CALL_TIMEOUT)
                    .await
                {
                    Ok(answers) => answers,
                    // The peer answered but refused this page (e.g. an
                    // object over its body limit): skip it, keep it queued
                    // for a later round, and go on with the rest.
                    Err(RpcError::Status { status, .. }) => {
                        tracing::warn!(peer = %target, status, hints = requests.len(), "hint page refused; kept for later");
                        after = Some((last.partition, last.key.clone()));
                        continue;
                    }
                    Err(error) => return Err(PeerError::from(error).into()),
                };
                let acked: Vec<&Hint> =
                    live.iter().zip(&answers).filter(|(_, a)| a.is_ok()).map(|(h, _)| *h).collect();
                let n = storage.hints().remove(target, &acked)?;
                self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
                sent += acked.len();
                let bytes: usize = live.iter().map(|h| h.size()).sum();
                self.pacer.spend(bytes).await;
            }
            after = Some((last.partition, last.key.clone()));
        }
    }

    /// Sends every hint held for `gone` (no longer a member) to the key's
    /// homes in the current layout, synced; a hint is removed once every
    /// other home acknowledged it.
    async fn retarget(&self, gone: &str) -> Result<usize, HandoffError> {
        let mut after: Option<(u32, Vec<u8>)> = None;
        let mut sent = 0;
        let me = self.membership.self_id().to_string();
        loop {
            let from = after.as_ref().map(|(p, k)| (*p, k.as_slice()));
            let page = self.storage.hints().page(gone, from, BATCH_ITEMS, BATCH_BYTES)?;
            let Some(last) = page.last() else { return Ok(sent) };
            let layout = self.membership.layout();
            let mut delivered = Vec::new();
            for hint in &page {
                let Some(object) = hint.object.clone() else {
                    delivered.push(hint);
                    continue;
                };
                let key = Bytes::copy_from_slice(&hint.key);
                let request =
                    vec![ReplicateRequest { partition: hint.partition, key, object, sync: true, hint: None }];
                // Every other home must hold it durably; with no other home
                // (this node is the only one) it stays: anti-entropy does not
                // read hints, so removing it here could lose the write.
                let others: Vec<String> =
                    layout.homes(hint.partition).into_iter().filter(|h| *h != me).collect();
                let mut all = !others.is_empty();
                for home in &others {
                    let answer: Result<Vec<Result<ReplicateResponse, PeerError>>, _> =
                        self.peers.call(home, routes::REPLICATE, &request, CALL_TIMEOUT).await;
                    all &= matches!(answer.as_deref(), Ok([Ok(r)]) if r.durable);
                }
                if all {
                    delivered.push(hint);
                }
            }
            let n = self.storage.hints().remove(gone, &delivered)?;
            self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
            sent += n;
            after = Some((last.partition, last.key.clone()));
        }
    }

    /// Drops the hints for unreachable `target` that are older than the
    /// window and that another home replica already holds (a version
    /// descending the hint), so anti-entropy can bring them to `target`.
    async fn expire_for(&self, target: &str) -> Result<(), HandoffError> {
        let oldest_kept = now_ms().saturating_sub(self.window.as_millis() as u64);
        let layout = self.membership.layout();
        let mut after: Option<(u32, Vec<u8>)> = None;
        loop {
            let from = after.as_ref().map(|(p, k)| (*p, k.as_slice()));
            let page = self.storage.hints().page(target, from, BATCH_ITEMS, BATCH_BYTES)?;
            let Some(last) = page.last() else { return Ok(()) };
            let mut covered = Vec::new();
            for hint in page.iter().filter(|h| h.created_ms < oldest_kept) {
                let Some(object) = &hint.object else { continue };
                // The key's own homes: its N is in the record.
                let partition = layout.partition_of(&hint.key);
                let homes = layout.replicas_of(partition, object.replicas(layout.default_replicas()));
                for home in homes.iter().filter(|h| *h != target && self.membership.is_reachable(h)) {
                    let held = self.read_from(home, hint.partition, &hint.key).await;
                    if held.is_some_and(|copy| copy.descends(object)) {
                        covered.push(hint);
                        break;
                    }
                }
            }
            if !covered.is_empty() {
                let n = self.storage.hints().remove(target, &covered)?;
                self.stats.expired.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(peer = %target, dropped = n, "dropped expired hints another home holds");
            }
            after = Some((last.partition, last.key.clone()));
        }
    }

    /// `node`'s own copy of a key (this node's, or a peer's), if readable.
    async fn read_from(&self, node: &str, partition: u32, key: &[u8]) -> Option<crate::storage::Object> {
        if node == self.membership.self_id() {
            return self.storage.objects().get(partition, key).ok().flatten();
        }
        let request = vec![ReadRequest { partition, key: Bytes::copy_from_slice(key), hint: None }];
        let answers: Vec<Result<ReadResponse, PeerError>> =
            self.peers.call(node, routes::READ, &request, CALL_TIMEOUT).await.ok()?;
        answers.into_iter().next()?.ok()?.object
    }
}
