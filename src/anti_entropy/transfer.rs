//! Partition transfer: when the layout changes, each node pulls every
//! partition it is newly a home of from the partition's homes in the older
//! versions, with the same Merkle exchange anti-entropy uses (merged with
//! version semantics, throttled by the same byte budget), then marks the
//! newest version synced in the history.
//!
//! It starts only once every node acknowledged the newest version (all
//! writes from then on reach the new replica sets too), so what it copies
//! plus what is written meanwhile is everything. Resumable for free: a
//! restarted node redoes the exchanges, and the ones already done find
//! equal trees and move nothing. A source removed as dead is skipped; any
//! other unreachable source holds the transfer until it answers or is
//! removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::exchange::from_n;
use super::{AeError, AntiEntropy};
use crate::membership::gossip::mark_digest;
use crate::membership::history::{Digest, Tracker};
use crate::worker::{State, Worker};

/// How often the worker looks again when nothing woke it.
const TICK: Duration = Duration::from_secs(1);
/// Partitions per exchange with one source.
const BATCH: usize = 64;

/// The (partition, source) pairs received for the newest version this run.
type Done = BTreeSet<(u32, String)>;

impl AntiEntropy {
    /// The `transfer` worker: runs until cancelled.
    pub async fn run_transfers(self, worker: Worker) {
        let mut changes = self.membership.watch();
        // What was received for the newest version (by digest) this run.
        let mut done: (Digest, Done) = ([0; 16], Done::new());
        loop {
            worker.set(State::Idle);
            tokio::select! {
                () = worker.cancelled() => return,
                _ = changes.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            worker.set(State::Busy);
            // A round may wait long on its pacer: shutdown does not wait for it.
            let result = tokio::select! {
                () = worker.cancelled() => return,
                result = self.transfer_round(&mut done) => result,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "partition transfer paused");
                worker.failed(&error);
            }
            worker.round_done();
        }
    }

    async fn transfer_round(&self, done: &mut (Digest, Done)) -> Result<(), AeError> {
        let layout = self.membership.layout();
        let me = self.membership.self_id().to_string();
        let history = layout.history();
        let newest = history.versions().len() - 1;
        let digest = history.current().digest();
        let stats = &self.stats;
        if newest == 0 || history.reached(Tracker::Sync, &me, newest) {
            stats.transfer_pending.store(0, Ordering::Relaxed);
            return Ok(());
        }
        if !history.all_reached(Tracker::Ack, newest) {
            return Ok(());
        }
        if done.0 != digest {
            *done = (digest, Done::new());
            stats.transfer_started_ms.store(0, Ordering::Relaxed);
        }
        let incoming = layout.incoming(&me);
        let dead = |id: &str| history.is_removed(id);
        // What each source still owes this node, so each exchange covers
        // many partitions (one settle pause per batch, not per partition).
        let mut owed: BTreeMap<&str, Vec<(u32, u8)>> = BTreeMap::new();
        for (p, sources) in &incoming {
            for source in sources.iter().filter(|s| !dead(s) && !done.1.contains(&(*p, s.to_string()))) {
                if let Some(n) = from_n(&layout, *p, &me, source) {
                    owed.entry(source.as_str()).or_default().push((*p, n));
                }
            }
        }
        let left = |done: &Done| {
            incoming
                .iter()
                .filter(|(p, srcs)| srcs.iter().any(|s| !dead(s) && !done.contains(&(*p, s.clone()))))
                .count()
        };
        let pending = left(&done.1) as u64;
        stats.transfer_pending.store(pending, Ordering::Relaxed);
        if stats.transfer_started_ms.load(Ordering::Relaxed) == 0 {
            // The ETA counts from here: everything received before this
            // run of the version's transfer is not in its pace.
            stats.transfer_total.store(pending, Ordering::Relaxed);
            stats.transfer_started_ms.store(crate::util::now_ms().max(1), Ordering::Relaxed);
        }
        for (source, partitions) in owed {
            for batch in partitions.chunks(BATCH) {
                match self.exchange_partitions(source, batch, &self.owed).await {
                    Ok(true) => {
                        done.1.extend(batch.iter().map(|(p, _)| (*p, source.to_string())));
                        stats.transfer_pending.store(left(&done.1) as u64, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::debug!(%source, %error, "transfer from a source failed; retried");
                        break;
                    }
                }
            }
        }
        if left(&done.1) == 0 {
            let marked = self.membership.update(|h| mark_digest(h, Tracker::Sync, &me, digest));
            if marked.map_err(|e| AeError::Layout(e.to_string()))? {
                stats.transfer_done.fetch_add(incoming.len() as u64, Ordering::Relaxed);
                tracing::info!(
                    version = layout.version(),
                    partitions = incoming.len(),
                    "partitions received: synced"
                );
            }
        }
        Ok(())
    }
}
