//! Rebuilding a partition's tree from its data: after an unreadable record
//! (whose old hash is unknown), periodically against silent bit rot, and
//! once for every partition of a directory written before trees existed.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::WriteBatch;

use super::{DIRTY_PREFIX, Hash, META_TREES, Trees, ZERO, bucket_of, entry_hash, leaf_key, xor};
use crate::storage::StorageError;
use crate::storage::db::{CF_META, CF_OBJECTS, CF_TREE, Db};
use crate::storage::meta::{FORMAT, partition_key};

impl Trees {
    /// Recomputes the partition's leaves from its data, without a lock:
    /// the scan reads a RocksDB snapshot, together with the leaves as they
    /// were at that snapshot (objects and leaves change in one write batch,
    /// so the two agree). Each leaf then gets one more XOR merge operand,
    /// `rebuilt ^ at_snapshot`: what writes added since the snapshot stays
    /// in the leaf, what was wrong at the snapshot is cancelled. Writes go
    /// on meanwhile; only this partition's scan is paid for.
    /// Returns the bytes it read, which the caller paces its rebuilds by.
    pub fn rebuild(&self, partition: u32) -> Result<u64, StorageError> {
        // Cleared first: damage found after the snapshot marks it again.
        self.clear_dirty(partition)?;
        let rebuilt = self.rebuild_from_snapshot(partition);
        if rebuilt.is_err() {
            self.mark_dirty(partition);
        }
        rebuilt
    }

    fn rebuild_from_snapshot(&self, partition: u32) -> Result<u64, StorageError> {
        let snapshot = self.db.rocks.snapshot();
        let objects = self.db.cf(CF_OBJECTS)?;
        let prefix = partition.to_be_bytes();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut leaves: BTreeMap<Vec<u8>, Hash> = Default::default();
        let mut read = 0u64;
        for item in snapshot.iterator_cf_opt(objects, opts, mode) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            read += (k.len() + v.len()) as u64;
            if let Some(object) = self.db.decode_checked(partition, &v) {
                let key = &k[4..];
                let leaf = leaves.entry(leaf_key(partition, bucket_of(key), object.n())).or_insert(ZERO);
                xor(leaf, &entry_hash(key, &object));
            }
        }
        // Every leaf stored at the snapshot is corrected too: one whose keys
        // are all gone (or never were) must come back to zero.
        for (k, h) in self.stored_leaves(partition, Some(&snapshot))? {
            xor(leaves.entry(k).or_insert(ZERO), &h);
        }
        let cf = self.db.cf(CF_TREE)?;
        let mut batch = WriteBatch::default();
        for (key, correction) in leaves {
            if correction != ZERO {
                batch.merge_cf(cf, key, correction);
            }
        }
        drop(snapshot);
        self.db.rocks.write(batch)?;
        self.touch(partition);
        self.set_rebuilt_now(partition)?;
        Ok(read)
    }
}

/// Every partition with data, if this directory predates the trees
/// (they are then rebuilt before anti-entropy uses them).
pub(super) fn partitions_without_trees(db: &Db) -> Result<BTreeSet<u32>, StorageError> {
    let meta = db.cf(CF_META)?;
    let mut dirty = BTreeSet::new();
    if db.rocks.get_cf(meta, META_TREES)?.is_some() {
        return Ok(dirty);
    }
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_total_order_seek(true);
    for item in db.rocks.iterator_cf_opt(db.cf(CF_OBJECTS)?, opts, rocksdb::IteratorMode::Start) {
        let (k, _) = item?;
        if let Some(p) = k.first_chunk::<4>() {
            dirty.insert(u32::from_be_bytes(*p));
        }
    }
    // The marker and the dirty marks in one batch: a crash before the
    // rebuilds finish leaves them marked, not forgotten.
    let mut batch = WriteBatch::default();
    for p in &dirty {
        batch.put_cf(meta, partition_key(DIRTY_PREFIX, *p), [FORMAT]);
    }
    batch.put_cf(meta, META_TREES, [1]);
    db.rocks.write(batch)?;
    Ok(dirty)
}
