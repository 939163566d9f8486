//! Version counters that are never minted twice by this node, whatever
//! happened to its data.
//!
//! A dot `(actor, counter)` must be unique: a replica that already holds a
//! dot drops a second value carrying it as "already seen", so a reused dot
//! is a silently lost write. "The object's clock + 1" is unique only while
//! the node never forgets what it minted, and it does forget: a power cut
//! drops the unsynced WAL tail, an operator restores an older snapshot of
//! the volume, tombstone GC removes a key's record clock and all, and a
//! fallback keeps no copy once its hint is delivered.
//!
//! So counters come from one per-node clock instead, in the style of a
//! hybrid logical clock: microseconds of wall time, bumped past the last
//! counter handed out and past whatever the object already knows of this
//! actor. It is strictly increasing for the node's whole life:
//! - within a process, by the atomic `last`;
//! - across restarts, by the *lease*: a counter is only handed out once a
//!   persisted (fsynced) lease covers it, and a restart starts above the
//!   lease, so a wall clock that stepped back does not matter;
//! - across a restored snapshot (whose lease is old too) or a wiped disk,
//!   by the wall clock having moved on since the lost counters were minted.
//!   That one assumption — the node's clock does not run backwards past
//!   its own earlier writes while its disk is being restored — is
//!   documented in the README; no clock agreement between nodes is needed.
//!
//! The cost is size: a counter is ~2^51, eight bytes as a varint instead
//! of one or two.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::{Storage, StorageError};
use crate::util::now_us;

/// How far past the current counter a renewed lease reaches. A background
/// tick ([`Stamper::keep_ahead`], every second) renews it (one synced write
/// of a few bytes, on the blocking pool) when less than half is left, so a
/// write renews it inline only if the counter jumps past the whole lease.
const LEASE_AHEAD_US: u64 = 60_000_000;

/// The next counter after `last`: at least `now`, `last + 1` and `least`.
/// Pure, so the model tests can drive it with a clock of their own.
pub fn next_counter(last: u64, now: u64, least: u64) -> u64 {
    now.max(last.saturating_add(1)).max(least)
}

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object or the client's context claims a counter of this node's
    /// own actor beyond any it handed out: a forged (or corrupted) context.
    /// Minting past it would push this node's clock far ahead for every
    /// key, so the write is refused.
    #[error("the causal context names counter {claimed} of this node's actor, which it never minted")]
    Unminted { claimed: u64 },
}

#[derive(Debug)]
pub struct Stamper {
    last: AtomicU64,
    lease: AtomicU64,
    /// Serialises lease renewals (rare); minting itself is lock-free.
    renewing: Mutex<()>,
}

impl Stamper {
    /// Starts above the persisted lease, so no counter of an earlier
    /// incarnation can come again even if the wall clock stepped back.
    pub fn open(storage: &Storage) -> Result<Stamper, StorageError> {
        let lease = storage.meta().dot_lease()?;
        Ok(Stamper { last: AtomicU64::new(lease), lease: AtomicU64::new(lease), renewing: Mutex::new(()) })
    }

    /// A counter never handed out before by this node, at least `least`.
    /// `least` is one past what the object and the context know of this
    /// node's actor, so it can only legitimately be `last + 1` or less.
    pub fn mint(&self, storage: &Storage, least: u64) -> Result<u64, StampError> {
        let now = now_us();
        let mut prev = self.last.load(Ordering::Acquire);
        if least > prev.saturating_add(1) {
            return Err(StampError::Unminted { claimed: least - 1 });
        }
        let counter = loop {
            let next = next_counter(prev, now, least);
            match self.last.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(seen) => prev = seen,
            }
        };
        if counter > self.lease.load(Ordering::Acquire) {
            self.renew(storage, counter)?;
        }
        Ok(counter)
    }

    /// Renews the lease when less than half of it is left: called from a
    /// background tick, so the write path does not wait for the fsync.
    pub fn keep_ahead(&self, storage: &Storage) -> Result<(), StorageError> {
        let next = next_counter(self.last.load(Ordering::Acquire), now_us(), 0);
        if next.saturating_add(LEASE_AHEAD_US / 2) > self.lease.load(Ordering::Acquire) {
            self.renew(storage, next)?;
        }
        Ok(())
    }

    /// Persists a lease past `counter`. The caller may only use `counter`
    /// once this returned: the lease on disk must cover every counter used.
    fn renew(&self, storage: &Storage, counter: u64) -> Result<(), StorageError> {
        let _one = self.renewing.lock().unwrap_or_else(|p| p.into_inner());
        if counter.saturating_add(LEASE_AHEAD_US / 2) <= self.lease.load(Ordering::Acquire) {
            return Ok(()); // renewed meanwhile
        }
        let lease = counter.saturating_add(LEASE_AHEAD_US);
        storage.meta().set_dot_lease(lease)?;
        self.lease.store(lease, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_increase_even_when_the_clock_stands_still_or_steps_back() {
        let mut last = 0;
        let mut seen = Vec::new();
        for now in [100, 100, 100, 50, 0, 101, 500] {
            last = next_counter(last, now, 0);
            seen.push(last);
        }
        assert_eq!(seen, [100, 101, 102, 103, 104, 105, 500]);
        assert_eq!(next_counter(10, 5, 40), 40, "an object that knows more raises the floor");
    }

    #[test]
    fn the_background_tick_keeps_the_lease_ahead_of_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let stamper = Stamper::open(&s).unwrap();
        assert_eq!(s.meta().dot_lease().unwrap(), 0);
        stamper.keep_ahead(&s).unwrap();
        let lease = s.meta().dot_lease().unwrap();
        assert!(lease > now_us() + LEASE_AHEAD_US / 2, "renewed ahead of the clock");
        // Minting below the lease needs no renewal (no fsync on the write path).
        let c = stamper.mint(&s, 0).unwrap();
        assert!(c < lease);
        assert_eq!(s.meta().dot_lease().unwrap(), lease);
    }

    #[test]
    fn a_restart_starts_above_every_counter_used() {
        let dir = tempfile::tempdir().unwrap();
        let used = {
            let s = Storage::open(dir.path(), 1 << 20).unwrap();
            let stamper = Stamper::open(&s).unwrap();
            // A counter no object can know yet is refused.
            let ahead = now_us() + 3_600_000_000;
            assert!(matches!(stamper.mint(&s, ahead), Err(StampError::Unminted { .. })));
            let used = stamper.mint(&s, 0).unwrap();
            let used = stamper.mint(&s, used + 1).unwrap();
            assert!(s.meta().dot_lease().unwrap() > used, "the lease on disk covers it");
            let lease = s.meta().dot_lease().unwrap();
            stamper.keep_ahead(&s).unwrap();
            assert_eq!(s.meta().dot_lease().unwrap(), lease, "enough of the lease is left");
            used
        };
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let stamper = Stamper::open(&s).unwrap();
        assert!(stamper.mint(&s, 0).unwrap() > used);
    }
}
