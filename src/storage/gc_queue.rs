//! Tombstone GC's work list, a time-ordered queue (Garage's `gc_todo`):
//! `[partition u32 BE][delete time ms u64 BE][key]` → nothing, one entry per
//! key whose every sibling is a delete, written in the same batch as the
//! object. GC reads a partition's queue from its head and stops at the
//! first entry younger than the grace period, so a round costs what is due,
//! not a walk over every tombstone (or every key).
//!
//! An entry can outlive its reason: a write over an unreadable record
//! cannot know the old delete time, so it cannot remove the old entry. GC
//! re-reads every key it is handed and drops such stale entries
//! ([`super::Objects::drop_stale_tombstones`]); a stale entry only costs a
//! re-read, never a reap (a reap checks the object itself).

use std::sync::Arc;

use rocksdb::WriteBatch;

use super::StorageError;
use super::db::{CF_GC_QUEUE, CF_TOMBSTONES_V1, Db};

/// Entries moved per batch when migrating the pre-queue index.
const MIGRATE_BATCH: usize = 4096;

fn queue_key(partition: u32, ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub struct GcQueue {
    db: Arc<Db>,
}

impl GcQueue {
    pub(super) fn new(db: Arc<Db>) -> GcQueue {
        GcQueue { db }
    }

    /// Adds to `batch` what keeps the queue true when `key` goes from a
    /// tombstone of time `before` (or none) to one of time `after` (or a
    /// live value, or nothing).
    pub(super) fn index_change(
        &self,
        batch: &mut WriteBatch,
        partition: u32,
        key: &[u8],
        before: Option<u64>,
        after: Option<u64>,
    ) -> Result<(), StorageError> {
        if before == after {
            return Ok(());
        }
        let cf = self.db.cf(CF_GC_QUEUE)?;
        if let Some(ms) = before {
            batch.delete_cf(cf, queue_key(partition, ms, key));
        }
        if let Some(ms) = after {
            batch.put_cf(cf, queue_key(partition, ms, key), []);
        }
        Ok(())
    }

    /// Removes one entry (see [`super::Objects::drop_stale_tombstones`]).
    pub(super) fn remove(&self, partition: u32, ms: u64, key: &[u8]) -> Result<(), StorageError> {
        self.db.rocks.delete_cf(self.db.cf(CF_GC_QUEUE)?, queue_key(partition, ms, key))?;
        Ok(())
    }

    /// Up to `limit` `(key, delete time)` of `partition` deleted at or
    /// before `due_ms`, oldest first, starting after `after` (the last
    /// entry of the previous page: tombstones that must wait, e.g. for a
    /// hint's delivery, do not starve the ones behind them).
    pub fn due(
        &self,
        partition: u32,
        due_ms: u64,
        after: Option<(u64, &[u8])>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let cf = self.db.cf(CF_GC_QUEUE)?;
        let prefix = partition.to_be_bytes();
        let start = match after {
            Some((ms, k)) => {
                let mut s = queue_key(partition, ms, k);
                s.push(0);
                s
            }
            None => prefix.to_vec(),
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.rocks.iterator_cf_opt(cf, opts, mode) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let Some((ms, key)) = k[4..].split_first_chunk::<8>() else { continue };
            let ms = u64::from_be_bytes(*ms);
            if ms > due_ms {
                break;
            }
            out.push((key.to_vec(), ms));
        }
        Ok(out)
    }
}

/// Moves the index of a directory written before the queue (`tombstones`:
/// `[partition][key]` → time) into the queue, then drops it. One iterator
/// walks it (its snapshot is not disturbed by the batches, so the walk
/// never re-skips what it already deleted); each batch writes new entries
/// and deletes the old ones together, so a crash midway leaves every
/// tombstone in one of the two and the next open goes on. A malformed time
/// is queued as 0: GC re-reads the object before it acts.
pub(super) fn migrate_v1(db: &mut Db) -> Result<(), StorageError> {
    let Some(old) = db.rocks.cf_handle(CF_TOMBSTONES_V1) else { return Ok(()) };
    let queue = db.cf(CF_GC_QUEUE)?;
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_total_order_seek(true);
    let (mut moved, mut batch, mut n) = (0usize, WriteBatch::default(), 0usize);
    for item in db.rocks.iterator_cf_opt(old, opts, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        if let Some((p, key)) = k.split_first_chunk::<4>() {
            let ms = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
            batch.put_cf(queue, queue_key(u32::from_be_bytes(*p), ms, key), []);
        }
        batch.delete_cf(old, &k);
        n += 1;
        if n >= MIGRATE_BATCH {
            db.rocks.write_opt(std::mem::take(&mut batch), &super::db::write_options(true))?;
            (moved, n) = (moved + n, 0);
        }
    }
    if n > 0 {
        db.rocks.write_opt(batch, &super::db::write_options(true))?;
        moved += n;
    }
    db.rocks.drop_cf(CF_TOMBSTONES_V1)?;
    tracing::info!(moved, "tombstone index migrated to the time-ordered GC queue");
    Ok(())
}
