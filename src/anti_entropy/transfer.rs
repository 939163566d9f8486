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

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::exchange::from_n;
use super::{AeError, AntiEntropy};
use crate::membership::gossip::mark_digest;
use crate::membership::history::{Desire, Digest, Tracker};
use crate::worker::{State, Worker};

/// How often the worker looks again when nothing woke it.
const TICK: Duration = Duration::from_secs(1);

impl AntiEntropy {
    /// The `transfer` worker: runs until cancelled.
    pub async fn run_transfers(self, worker: Worker) {
        let mut changes = self.membership.watch();
        // Partitions of the newest version (by digest) done this run.
        let mut done: (Digest, BTreeSet<u32>) = ([0; 16], BTreeSet::new());
        loop {
            worker.set(State::Idle);
            tokio::select! {
                () = worker.cancelled() => return,
                _ = changes.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            worker.set(State::Busy);
            if let Err(error) = self.transfer_round(&mut done).await {
                tracing::warn!(%error, "partition transfer paused");
                worker.failed(&error);
            }
            worker.round_done();
        }
    }

    async fn transfer_round(&self, done: &mut (Digest, BTreeSet<u32>)) -> Result<(), AeError> {
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
            *done = (digest, BTreeSet::new());
        }
        let incoming = layout.incoming(&me);
        let dead = |id: &str| history.wishes().get(id).is_some_and(|w| w.desire == Desire::Removed);
        let pending = incoming.iter().filter(|(p, _)| !done.1.contains(p)).count();
        stats.transfer_pending.store(pending as u64, Ordering::Relaxed);
        let mut complete = true;
        for (p, sources) in &incoming {
            if done.1.contains(p) {
                continue;
            }
            let mut whole = true;
            for source in sources.iter().filter(|s| !dead(s)) {
                let Some(n) = from_n(&layout, *p, &me, source) else { continue };
                match self.exchange_partitions(source, &[(*p, n)], &self.throttle).await {
                    Ok(true) => {}
                    Ok(false) => whole = false,
                    Err(error) => {
                        tracing::debug!(%source, partition = p, %error, "transfer from a source failed; retried");
                        whole = false;
                    }
                }
            }
            if whole {
                done.1.insert(*p);
                stats.transfer_done.fetch_add(1, Ordering::Relaxed);
                stats.transfer_pending.fetch_sub(1, Ordering::Relaxed);
            } else {
                complete = false;
            }
        }
        if complete {
            let marked = self.membership.update(|h| mark_digest(h, Tracker::Sync, &me, digest));
            if marked.map_err(|e| AeError::Layout(e.to_string()))? {
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
