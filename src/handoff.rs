//! Hinted handoff: a fallback node hands the writes it took for an
//! unreachable home replica back to that home once it answers again.
//!
//! Hints live in RocksDB (see [`crate::storage::hints`]), so they survive a
//! restart of the fallback. This worker pages through each reachable
//! target's hints, sends them in batches as ordinary replica merges, and
//! removes a hint only after the home acknowledged it. It runs one batch at
//! a time and sleeps to stay under `handoff_bytes_per_sec`, so foreground
//! requests keep the cores. Hints older than the window are dropped
//! (anti-entropy repairs whatever they held).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::membership::Membership;
use crate::replica::{ReplicateRequest, ReplicateResponse, now_ms};
use crate::rpc::client::{PeerClient, routes};
use crate::storage::{Hint, Storage};

/// How often queues are looked at when there is nothing to deliver.
const IDLE_TICK: Duration = Duration::from_millis(500);
const BATCH_ITEMS: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct HandoffStats {
    pub delivered: AtomicU64,
    pub expired: AtomicU64,
}

pub struct Handoff {
    pub storage: Arc<Storage>,
    pub membership: Arc<Membership>,
    pub peers: PeerClient,
    pub window: Duration,
    pub bytes_per_sec: u64,
    pub stats: Arc<HandoffStats>,
}

impl Handoff {
    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let worked = tokio::select! {
                () = shutdown.cancelled() => return,
                worked = self.round() => worked,
            };
            if !worked {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(IDLE_TICK) => {}
                }
            }
        }
    }

    /// Delivers what it can to every reachable target; true if it sent
    /// anything (so the next round starts at once).
    async fn round(&self) -> bool {
        let mut worked = false;
        for (target, count) in self.storage.hint_counts() {
            if count == 0 || target == self.membership.self_id() || !self.membership.is_reachable(&target) {
                continue;
            }
            match self.deliver_to(&target).await {
                Ok(sent) => worked |= sent > 0,
                Err(error) => tracing::warn!(peer = %target, %error, "hint delivery paused"),
            }
        }
        worked
    }

    /// Sends every hint queued for `target`, page by page.
    async fn deliver_to(&self, target: &str) -> Result<usize, String> {
        let mut after: Option<(u32, Vec<u8>)> = None;
        let mut sent = 0;
        loop {
            let storage = &self.storage;
            let from = after.as_ref().map(|(p, k)| (*p, k.as_slice()));
            let page =
                storage.hint_page(target, from, BATCH_ITEMS, BATCH_BYTES).map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { return Ok(sent) };
            let oldest_kept = now_ms().saturating_sub(self.window.as_millis() as u64);
            let (live, dead): (Vec<&Hint>, Vec<&Hint>) =
                page.iter().partition(|h| h.created_ms >= oldest_kept && h.object.is_some());
            if !dead.is_empty() {
                let n = storage.remove_hints(target, &dead).map_err(|e| e.to_string())?;
                self.stats.expired.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(peer = %target, dropped = n, "dropped expired or unreadable hints");
            }
            if !live.is_empty() {
                let requests: Vec<ReplicateRequest> = live
                    .iter()
                    .filter_map(|h| {
                        let object = h.object.clone()?;
                        let key = Bytes::copy_from_slice(&h.key);
                        Some(ReplicateRequest {
                            partition: h.partition,
                            key,
                            object,
                            sync: false,
                            hint: None,
                        })
                    })
                    .collect();
                let answers: Vec<Result<ReplicateResponse, String>> = self
                    .peers
                    .call(target, routes::REPLICATE, &requests, CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let acked: Vec<&Hint> =
                    live.iter().zip(&answers).filter(|(_, a)| a.is_ok()).map(|(h, _)| *h).collect();
                let n = storage.remove_hints(target, &acked).map_err(|e| e.to_string())?;
                self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
                sent += acked.len();
                let bytes: usize = live.iter().map(|h| h.size()).sum();
                tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64)).await;
            }
            after = Some((last.partition, last.key.clone()));
        }
    }
}
