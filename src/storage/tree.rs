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
//!
//! Each key is written to the first `N` homes of its partition, with its
//! own `N` ([`Object::n`]). Two homes at positions `i` and `j` of the
//! preference list share exactly the keys with `N > max(i, j)`, so every
//! leaf is kept per replica count (`[partition][bucket][n]`; keys of
//! unknown `N`, held by every home, at `[partition][bucket]`) and a tree is
//! read "from `n`": the XOR of the leaves of every count `>= n`. XOR makes
//! that free: one write still changes one leaf, and the trees two homes
//! compare hold the same keys, so a key kept on two homes of three never
//! makes the third look different (as Riak keeps a tree per `{index, n}`).

use std::sync::atomic::Ordering;

use md5::{Digest, Md5};
use rocksdb::{MergeOperands, WriteBatch};

use super::record::{EVERY_HOME, replicas_of};
use super::{Object, Storage, StorageError, db_key};

pub type Hash = [u8; 16];

/// Leaf buckets per partition.
pub const LEAVES: usize = 256;
/// Leaves per inner node (so `LEAVES / FANOUT` inner nodes under the root).
pub const FANOUT: usize = 16;
pub const INNER: usize = LEAVES / FANOUT;

pub const ZERO: Hash = [0; 16];

/// `(partition, from_n, generation, root)` in [`Storage`]'s root cache.
pub(super) type CachedRoot = (u32, u8, u64, Hash);

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
    // Left out when unknown, so a format-1 record hashes as it always did
    // (the leaves already stored stay right).
    if object.n() != EVERY_HOME {
        h.update([0xfe, object.n()]);
    }
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

/// Where a key with replica count `n` adds its hash in `bucket`.
fn leaf_key(partition: u32, bucket: u8, n: u8) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.push(bucket);
    if n != EVERY_HOME && n != 0 {
        k.push(n);
    }
    k
}

/// The replica count a leaf key is kept for ([`EVERY_HOME`] for the
/// five-byte form).
fn leaf_n(leaf: &[u8]) -> u8 {
    leaf.get(5).copied().unwrap_or(EVERY_HOME)
}

/// True if a key of replica count `n` is held by both homes of a pair
/// that shares the keys of count `>= from_n`.
pub fn shared(n: u8, from_n: u8) -> bool {
    n == 0 || n >= from_n
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
        n: u8,
    },
    /// Unreadable: its leaf contribution is unknown.
    Corrupt,
}

impl Before {
    pub(super) fn of(key: &[u8], object: &Object) -> Before {
        Before::Object {
            hash: entry_hash(key, object),
            tombstone: tombstone_time(object).is_some(),
            n: object.n(),
        }
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
        let bucket = bucket_of(key);
        let tree = self.cf(super::CF_TREE)?;
        let mut was_tombstone = false;
        // The old hash leaves the old count's leaf, the new one joins the
        // new count's leaf: one operand when both are the same leaf.
        let mut old: Option<(Vec<u8>, Hash)> = None;
        match before {
            Before::Nothing => {}
            Before::Object { hash, tombstone, n } => {
                old = Some((leaf_key(partition, bucket, n), hash));
                was_tombstone = tombstone;
            }
            Before::Corrupt => {
                self.mark_dirty(partition);
                was_tombstone = true;
            }
        }
        let new = after.map(|(o, hash)| (leaf_key(partition, bucket, o.n()), hash));
        match (old, new) {
            (Some((a, mut delta)), Some((b, h))) if a == b => {
                xor(&mut delta, &h);
                if delta != ZERO {
                    batch.merge_cf(tree, a, delta);
                }
            }
            (old, new) => {
                for (leaf, hash) in old.into_iter().chain(new) {
                    batch.merge_cf(tree, leaf, hash);
                }
            }
        }
        let tombstones = self.cf(super::CF_TOMBSTONES)?;
        match after.and_then(|(o, _)| tombstone_time(o)) {
            Some(ms) => batch.put_cf(tombstones, db_key(partition, key), ms.to_be_bytes()),
            None if was_tombstone => batch.delete_cf(tombstones, db_key(partition, key)),
            None => {}
        }
        Ok(())
    }

    /// Marks the partition's tree for a rebuild, in memory and in `meta`
    /// (a restart must not forget it: the damage is invisible otherwise).
    fn mark_dirty(&self, partition: u32) {
        let newly = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(partition);
        if newly {
            if let Err(error) = self.persist_dirty(partition, true) {
                tracing::error!(partition, %error, "cannot persist a dirty tree; rebuilt by the periodic rebuild");
            }
        }
    }

    fn clear_dirty(&self, partition: u32) -> Result<(), StorageError> {
        let was = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).remove(&partition);
        if was { self.persist_dirty(partition, false) } else { Ok(()) }
    }

    /// Partitions whose tree must be rebuilt from their data.
    pub fn dirty_partitions(&self) -> Vec<u32> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    pub fn is_dirty(&self, partition: u32) -> bool {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).contains(&partition)
    }

    /// Invalidates the cached root of `partition`. Called after the write
    /// reached RocksDB, so a root computed from leaves read before the
    /// write always carries an older generation and is never reused.
    pub(super) fn touch(&self, partition: u32) {
        self.root_gens[partition as usize % self.root_gens.len()].fetch_add(1, Ordering::SeqCst);
    }

    /// Every stored leaf of `partition` (any count), read from `snapshot`
    /// if given: a prefix scan of at most `LEAVES × (counts in use + 1)` small entries.
    fn stored_leaves(
        &self,
        partition: u32,
        snapshot: Option<&rocksdb::Snapshot<'_>>,
    ) -> Result<Vec<(Vec<u8>, Hash)>, StorageError> {
        let cf = self.cf(super::CF_TREE)?;
        let prefix = partition.to_be_bytes();
        // The tree's memtable is a hash of 4-byte prefixes: iterate within one.
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        if let Some(s) = snapshot {
            opts.set_snapshot(s);
        }
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, opts, mode) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let mut h = ZERO;
            xor(&mut h, &v);
            out.push((k.to_vec(), h));
        }
        Ok(out)
    }

    /// The partition's leaf hashes over the keys of replica count
    /// `>= from_n` (absent leaves are zero).
    pub fn tree_leaves(&self, partition: u32, from_n: u8) -> Result<Vec<Hash>, StorageError> {
        let mut out = vec![ZERO; LEAVES];
        for (k, h) in self.stored_leaves(partition, None)? {
            if k.len() >= 5 && shared(leaf_n(&k), from_n) {
                xor(&mut out[k[4] as usize], &h);
            }
        }
        Ok(out)
    }

    /// The root of [`Storage::tree_leaves`] (cached until the next write to
    /// the partition).
    pub fn tree_root(&self, partition: u32, from_n: u8) -> Result<Hash, StorageError> {
        let i = partition as usize % self.root_gens.len();
        let generation = self.root_gens[i].load(Ordering::SeqCst);
        // A home compares one partition with peers at several positions:
        // one cache slot per (partition, from_n), not per partition.
        let slot = &self.root_cache[(partition as usize * 4 + from_n as usize % 4) % self.root_cache.len()];
        if let Some((p, f, g, root)) = *slot.lock().unwrap_or_else(|p| p.into_inner()) {
            if p == partition && f == from_n && g == generation {
                return Ok(root);
            }
        }
        let root = combine(&inner_of(&self.tree_leaves(partition, from_n)?));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((partition, from_n, generation, root));
        Ok(root)
    }

    /// True if `partition` holds a key that a node at `position` of its
    /// preference list is not a home of (the key's `N`, capped at `homes`,
    /// is at most `position`): read from the leaves, no data scan.
    pub fn holds_strays(&self, partition: u32, position: usize, homes: usize) -> Result<bool, StorageError> {
        Ok(self
            .stored_leaves(partition, None)?
            .iter()
            .any(|(k, h)| *h != ZERO && replicas_of(leaf_n(k), homes) <= position))
    }

    /// Up to `limit` such keys with their objects, after key `after`.
    pub fn strays_after(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        position: usize,
        homes: usize,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>, StorageError> {
        let mut out = Vec::new();
        self.for_each_in_partition(partition, |key, object| {
            if out.len() < limit && after.is_none_or(|a| key > a) && object.replicas(homes) <= position {
                out.push((key.to_vec(), object.clone()));
            }
        })?;
        Ok(out)
    }

    /// `(key, entry hash)` of every readable key of `partition` in
    /// `buckets` with replica count `>= from_n` (unreadable records are
    /// left out: a peer's copy then differs and replaces them).
    pub fn keys_in_buckets(
        &self,
        partition: u32,
        buckets: &[u8],
        from_n: u8,
    ) -> Result<Vec<(Vec<u8>, Hash)>, StorageError> {
        let mut wanted = [false; LEAVES];
        for b in buckets {
            wanted[*b as usize] = true;
        }
        let mut out = Vec::new();
        self.for_each_in_partition(partition, |key, object| {
            if wanted[bucket_of(key) as usize] && shared(object.n(), from_n) {
                out.push((key.to_vec(), entry_hash(key, object)));
            }
        })?;
        Ok(out)
    }

    /// Recomputes the partition's leaves from its data, without a lock:
    /// the scan reads a RocksDB snapshot, together with the leaves as they
    /// were at that snapshot (objects and leaves change in one write batch,
    /// so the two agree). Each leaf then gets one more XOR merge operand,
    /// `rebuilt ^ at_snapshot`: what writes added since the snapshot stays
    /// in the leaf, what was wrong at the snapshot is cancelled. Writes go
    /// on meanwhile; only this partition's scan is paid for.
    pub fn rebuild_tree(&self, partition: u32) -> Result<(), StorageError> {
        // Cleared first: damage found after the snapshot marks it again.
        self.clear_dirty(partition)?;
        let rebuilt = self.rebuild_tree_from_snapshot(partition);
        if rebuilt.is_err() {
            self.mark_dirty(partition);
        }
        rebuilt
    }

    fn rebuild_tree_from_snapshot(&self, partition: u32) -> Result<(), StorageError> {
        let snapshot = self.db.snapshot();
        let objects = self.objects()?;
        let prefix = partition.to_be_bytes();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut leaves: std::collections::BTreeMap<Vec<u8>, Hash> = Default::default();
        for item in snapshot.iterator_cf_opt(objects, opts, mode) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(object) = self.decode_checked(partition, &v) {
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
        let cf = self.cf(super::CF_TREE)?;
        let mut batch = WriteBatch::default();
        for (key, correction) in leaves {
            if correction != ZERO {
                batch.merge_cf(cf, key, correction);
            }
        }
        drop(snapshot);
        self.db.write(batch)?;
        self.touch(partition);
        self.set_rebuilt_now(partition)?;
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
        self.remove_matching(partition, key, expected, true)
    }

    /// Removes a stray copy (this node is not among the key's homes) once
    /// its homes hold it durably, if it still hashes to `expected`: a write
    /// since the hand-off keeps it (and is handed off next time).
    pub fn remove_stray_if_unchanged(
        &self,
        partition: u32,
        key: &[u8],
        expected: &Hash,
    ) -> Result<bool, StorageError> {
        self.remove_matching(partition, key, expected, false)
    }

    fn remove_matching(
        &self,
        partition: u32,
        key: &[u8],
        expected: &Hash,
        tombstone_only: bool,
    ) -> Result<bool, StorageError> {
        let cf = self.objects()?;
        let k = db_key(partition, key);
        let _guard = self.lock_for(&k);
        let Some(bytes) = self.db.get_pinned_cf(cf, &k)? else { return Ok(false) };
        let Some(object) = self.decode_checked(partition, &bytes) else { return Ok(false) };
        if (tombstone_only && tombstone_time(&object).is_none()) || entry_hash(key, &object) != *expected {
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
        self.tombstones_after(partition, None, limit)
    }

    /// Like [`Storage::tombstones`], starting after key `after`: GC walks a
    /// partition with this cursor, so old tombstones late in key order are
    /// not starved by young ones early in it.
    pub fn tombstones_after(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StorageError> {
        let cf = self.cf(super::CF_TOMBSTONES)?;
        let prefix = partition.to_be_bytes();
        let start = match after {
            Some(k) => db_key(partition, k),
            None => prefix.to_vec(),
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, opts, mode) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            if after.is_some_and(|a| &k[4..] == a) {
                continue;
            }
            let ms = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
            out.push((k[4..].to_vec(), ms));
        }
        Ok(out)
    }
}
