//! The anti-entropy hash tree of each partition, kept in RocksDB next to the
//! data and updated in the same write batch as every object write.
//!
//! A partition's tree has a fixed shape: [`LEAVES`] leaf buckets (a key's
//! bucket is a byte of its MD5) grouped [`FANOUT`] to an inner node, and a
//! root over the inner nodes. A leaf is the XOR of `entry_hash(key, object)`
//! over the keys in its bucket, so a write changes it by
//! `hash(old) ^ hash(new)`: a RocksDB merge operand, with no read of the
//! leaf and no lock. Inner nodes and the root are computed from the 256
//! leaves when asked (a 4 KiB read), and the root is cached until the
//! partition is written again.
//!
//! A leaf cannot be corrected incrementally when the old record was
//! unreadable (its hash is unknown), so such a partition is marked dirty and
//! rebuilt from a scan; periodic rebuilds also catch silent bit rot.

use std::sync::atomic::Ordering;

use md5::{Digest, Md5};
use rocksdb::{MergeOperands, WriteBatch};

use super::{Object, Storage, StorageError, db_key};

pub type Hash = [u8; 16];

/// Leaf buckets per partition.
pub const LEAVES: usize = 256;
/// Leaves per inner node (so `LEAVES / FANOUT` inner nodes under the root).
pub const FANOUT: usize = 16;
pub const INNER: usize = LEAVES / FANOUT;

pub const ZERO: Hash = [0; 16];

/// `(partition, generation, root)` in [`Storage`]'s root cache.
pub(super) type CachedRoot = (u32, u64, Hash);

/// Which leaf bucket `key` falls in (independent of its partition, which
/// uses the leading bits of the same digest).
pub fn bucket_of(key: &[u8]) -> u8 {
    Md5::digest(key)[15]
}

/// What a leaf accumulates for one key: covers the key, the clock and each
/// sibling's dot, value digest and tombstone flag. Equal causal states give
/// equal hashes on every replica (the clock is a sorted map and siblings
/// are sorted by dot).
pub fn entry_hash(key: &[u8], object: &Object) -> Hash {
    let mut h = Md5::new();
    h.update((key.len() as u32).to_be_bytes());
    h.update(key);
    for (actor, counter) in object.clock().iter() {
        h.update((actor.len() as u32).to_be_bytes());
        h.update(actor.as_bytes());
        h.update(counter.to_be_bytes());
    }
    h.update([0xff]);
    for s in object.siblings() {
        h.update((s.dot.actor.len() as u32).to_be_bytes());
        h.update(s.dot.actor.as_bytes());
        h.update(s.dot.counter.to_be_bytes());
        h.update(s.value.digest);
        h.update([u8::from(s.value.deleted)]);
    }
    h.finalize().into()
}

pub fn xor(a: &mut Hash, b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The leaf merge operator: XOR of the stored leaf and every operand.
pub(super) fn xor_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut acc = ZERO;
    if let Some(e) = existing {
        xor(&mut acc, e);
    }
    for op in operands {
        xor(&mut acc, op);
    }
    Some(acc.to_vec())
}

fn leaf_key(partition: u32, bucket: u8) -> [u8; 5] {
    let p = partition.to_be_bytes();
    [p[0], p[1], p[2], p[3], bucket]
}

/// Hashes of groups of hashes: `FANOUT` leaves → an inner node, the inner
/// nodes → the root.
pub fn combine(hashes: &[Hash]) -> Hash {
    let mut h = Md5::new();
    for x in hashes {
        h.update(x);
    }
    h.finalize().into()
}

pub fn inner_of(leaves: &[Hash]) -> Vec<Hash> {
    leaves.chunks(FANOUT).map(combine).collect()
}

/// An object whose every sibling is a delete: candidate for tombstone GC.
/// Returns its newest write time.
pub fn tombstone_time(object: &Object) -> Option<u64> {
    let s = object.siblings();
    if s.is_empty() || !s.iter().all(|s| s.value.deleted) {
        return None;
    }
    s.iter().map(|s| s.value.modified_ms).max()
}

/// What a write found before it replaced a key's object.
pub(super) enum Before {
    Nothing,
    Object {
        hash: Hash,
        tombstone: bool,
    },
    /// Unreadable: its leaf contribution is unknown.
    Corrupt,
}

impl Before {
    pub(super) fn of(key: &[u8], object: &Object) -> Before {
        Before::Object { hash: entry_hash(key, object), tombstone: tombstone_time(object).is_some() }
    }
}

impl Storage {
    /// Adds to `batch` what keeps the leaf and the tombstone index true
    /// when `key`'s object goes from `before` to `after` (with its entry
    /// hash; `None`: removed).
    pub(super) fn index_change(
        &self,
        batch: &mut WriteBatch,
        partition: u32,
        key: &[u8],
        before: Before,
        after: Option<(&Object, Hash)>,
    ) -> Result<(), StorageError> {
        let mut delta = ZERO;
        let mut was_tombstone = false;
        match before {
            Before::Nothing => {}
            Before::Object { hash, tombstone } => {
                xor(&mut delta, &hash);
                was_tombstone = tombstone;
            }
            Before::Corrupt => {
                self.mark_dirty(partition);
                was_tombstone = true;
            }
        }
        if let Some((_, hash)) = after {
            xor(&mut delta, &hash);
        }
        if delta != ZERO {
            batch.merge_cf(self.cf(super::CF_TREE)?, leaf_key(partition, bucket_of(key)), delta);
        }
        let tombstones = self.cf(super::CF_TOMBSTONES)?;
        match after.and_then(|(o, _)| tombstone_time(o)) {
            Some(ms) => batch.put_cf(tombstones, db_key(partition, key), ms.to_be_bytes()),
            None if was_tombstone => batch.delete_cf(tombstones, db_key(partition, key)),
            None => {}
        }
        Ok(())
    }

    fn mark_dirty(&self, partition: u32) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(partition);
    }

    /// Partitions whose tree must be rebuilt from their data.
    pub fn dirty_partitions(&self) -> Vec<u32> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    /// Invalidates the cached root of `partition`. Called after the write
    /// reached RocksDB, so a root computed from leaves read before the
    /// write always carries an older generation and is never reused.
    pub(super) fn touch(&self, partition: u32) {
        self.root_gens[partition as usize % self.root_gens.len()].fetch_add(1, Ordering::SeqCst);
    }

    /// The partition's leaf hashes (absent leaves are zero).
    pub fn tree_leaves(&self, partition: u32) -> Result<Vec<Hash>, StorageError> {
        let cf = self.cf(super::CF_TREE)?;
        let keys: Vec<[u8; 5]> = (0..LEAVES).map(|b| leaf_key(partition, b as u8)).collect();
        let mut out = Vec::with_capacity(LEAVES);
        for value in self.db.batched_multi_get_cf(cf, &keys, true) {
            let mut h = ZERO;
            if let Some(v) = value? {
                xor(&mut h, &v);
            }
            out.push(h);
        }
        Ok(out)
    }

    /// The partition's root (cached until the next write to it).
    pub fn tree_root(&self, partition: u32) -> Result<Hash, StorageError> {
        let i = partition as usize % self.root_gens.len();
        let generation = self.root_gens[i].load(Ordering::SeqCst);
        let slot = &self.root_cache[i];
        if let Some((p, g, root)) = *slot.lock().unwrap_or_else(|p| p.into_inner()) {
            if p == partition && g == generation {
                return Ok(root);
            }
        }
        let root = combine(&inner_of(&self.tree_leaves(partition)?));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((partition, generation, root));
        Ok(root)
    }

    /// `(key, entry hash)` of every readable key of `partition` in
    /// `buckets` (unreadable records are left out: a peer's copy then
    /// differs and replaces them).
    pub fn keys_in_buckets(
        &self,
        partition: u32,
        buckets: &[u8],
    ) -> Result<Vec<(Vec<u8>, Hash)>, StorageError> {
        let mut wanted = [false; LEAVES];
        for b in buckets {
            wanted[*b as usize] = true;
        }
        let mut out = Vec::new();
        self.for_each_in_partition(partition, |key, object| {
            if wanted[bucket_of(key) as usize] {
                out.push((key.to_vec(), entry_hash(key, object)));
            }
        })?;
        Ok(out)
    }

    /// Recomputes the partition's leaves from its data. Holds every stripe
    /// lock meanwhile, so no write can slip between the scan and the new
    /// leaves (a partition is small: the default ring has 1024).
    pub fn rebuild_tree(&self, partition: u32) -> Result<(), StorageError> {
        let _guards: Vec<_> = (0..self.locks.len()).map(|s| self.lock_stripe(s)).collect();
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition);
        let mut leaves = vec![ZERO; LEAVES];
        self.for_each_in_partition(partition, |key, object| {
            xor(&mut leaves[bucket_of(key) as usize], &entry_hash(key, object));
        })?;
        let cf = self.cf(super::CF_TREE)?;
        let mut batch = WriteBatch::default();
        for (b, leaf) in leaves.iter().enumerate() {
            batch.put_cf(cf, leaf_key(partition, b as u8), leaf);
        }
        self.db.write(batch)?;
        self.touch(partition);
        Ok(())
    }

    /// Removes `key` if it is still a tombstone hashing to `expected`
    /// (tombstone GC: a newer write since the check keeps the key, and a
    /// live value is never removed, whatever hash a peer sent). True if
    /// removed.
    pub fn remove_if_unchanged(
        &self,
        partition: u32,
        key: &[u8],
        expected: &Hash,
    ) -> Result<bool, StorageError> {
        let cf = self.objects()?;
        let k = db_key(partition, key);
        let _guard = self.lock_for(&k);
        let Some(bytes) = self.db.get_pinned_cf(cf, &k)? else { return Ok(false) };
        let Some(object) = self.decode_checked(partition, &bytes) else { return Ok(false) };
        if tombstone_time(&object).is_none() || entry_hash(key, &object) != *expected {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, &k);
        self.index_change(&mut batch, partition, key, Before::of(key, &object), None)?;
        self.db.write(batch)?;
        self.touch(partition);
        Ok(true)
    }

    /// Tombstones of `partition` (from the index, not a data scan) with
    /// their newest write time.
    pub fn tombstones(&self, partition: u32, limit: usize) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let cf = self.cf(super::CF_TOMBSTONES)?;
        let prefix = partition.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(cf, prefix) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let ms = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
            out.push((k[4..].to_vec(), ms));
        }
        Ok(out)
    }
}
