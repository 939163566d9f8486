//! The `objects` column family: each key's versioned object, at
//! `[partition u32 BE][user key]` so one partition's data is a contiguous
//! range that handoff and anti-entropy scan on their own.
//!
//! Every write here is a read-modify-write under the key's stripe lock, and
//! one RocksDB batch carries the object together with what keeps the
//! indexes true (its tree leaf, its GC queue entry), so a crash never
//! leaves an index that disagrees with the data. Every write goes through
//! the WAL: an acknowledged write survives `kill -9` (and, with `sync`,
//! power loss).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::WriteBatch;

use super::db::{CF_OBJECTS, Db, db_key, write_options};
use super::gc_queue::GcQueue;
use super::meta::Meta;
use super::record::{self, Fresh};
use super::tree::{self, Before, Hash, Trees, entry_hash, tombstone_time};
use super::{Found, Object, StorageError};

pub struct Objects {
    db: Arc<Db>,
    trees: Arc<Trees>,
    gc_queue: Arc<GcQueue>,
    meta: Arc<Meta>,
}

impl Objects {
    pub(super) fn new(db: Arc<Db>, trees: Arc<Trees>, gc_queue: Arc<GcQueue>, meta: Arc<Meta>) -> Objects {
        Objects { db, trees, gc_queue, meta }
    }

    fn cf(&self) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf(CF_OBJECTS)
    }

    /// This replica's stored object for `key`, telling a missing record
    /// from one that failed its integrity check (a reader must not take
    /// the latter as an authoritative "not found").
    pub fn get_found(&self, partition: u32, key: &[u8]) -> Result<Found, StorageError> {
        Ok(match self.db.rocks.get_pinned_cf(self.cf()?, db_key(partition, key))? {
            None => Found::Nothing,
            Some(b) => self.db.decode_checked(partition, &b).map_or(Found::Corrupt, Found::Object),
        })
    }

    /// This replica's stored object for `key`, if any.
    pub fn get(&self, partition: u32, key: &[u8]) -> Result<Option<Object>, StorageError> {
        let bytes = self.db.rocks.get_pinned_cf(self.cf()?, db_key(partition, key))?;
        Ok(bytes.and_then(|b| self.db.decode_checked(partition, &b)))
    }

    /// Adds to `batch` the index changes of `key` going from `before` to
    /// `after` (its object and entry hash; `None`: removed).
    fn index(
        &self,
        batch: &mut WriteBatch,
        partition: u32,
        key: &[u8],
        before: &Before,
        after: Option<(&Object, Hash)>,
    ) -> Result<(), StorageError> {
        self.trees.index_change(batch, partition, key, before, after)?;
        let after_ms = after.and_then(|(o, _)| tombstone_time(o));
        self.gc_queue.index_change(batch, partition, key, before.tombstone(), after_ms)
    }

    /// Atomically replaces the key's object by `f(found)`, or writes
    /// nothing when `f` returns `None`; `sync` waits for the WAL to reach
    /// the disk (the `DW` guarantee). Returns the object written.
    pub fn modify(
        &self,
        partition: u32,
        key: &[u8],
        sync: bool,
        f: impl FnOnce(Found) -> Option<Object>,
    ) -> Result<Option<Object>, StorageError> {
        self.modify_vouching(partition, key, sync, None, f)
    }

    /// [`Objects::modify`] of a client's write: `vouched` is its value's
    /// bytes and the digest just computed from them on this node (or
    /// checked where a forwarded write arrived), so that value is not
    /// hashed again. Any other new value in the result still is.
    pub fn modify_vouching(
        &self,
        partition: u32,
        key: &[u8],
        sync: bool,
        vouched: Option<(Bytes, [u8; 16])>,
        f: impl FnOnce(Found) -> Option<Object>,
    ) -> Result<Option<Object>, StorageError> {
        let cf = self.cf()?;
        let k = db_key(partition, key);
        let guard = self.db.lock_for(&k);
        let found = match self.db.rocks.get_pinned_cf(cf, &k)? {
            Some(bytes) => self.db.decode_checked(partition, &bytes).map_or(Found::Corrupt, Found::Object),
            None => Found::Nothing,
        };
        let (before, fresh) = match &found {
            Found::Nothing => (Before::Nothing, Fresh::of(None)),
            Found::Object(o) => (Before::of(key, o), Fresh::of(Some(o))),
            Found::Corrupt => (Before::Corrupt, Fresh::of(None)),
        };
        let fresh = match vouched {
            Some((bytes, digest)) => fresh.vouch(bytes, digest),
            None => fresh,
        };
        let Some(next) = f(found) else { return Ok(None) };
        if !fresh.intact(&next) {
            self.db.refused_value(partition);
            return Err(StorageError::ValueDigest);
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, &k, record::encode(&next));
        let next_hash = entry_hash(key, &next);
        self.index(&mut batch, partition, key, &before, Some((&next, next_hash)))?;
        self.db.rocks.write_opt(batch, &write_options(sync))?;
        self.trees.touch(partition);
        drop(guard);
        Ok(Some(next))
    }

    /// [`Objects::modify`] for many keys in one RocksDB `WriteBatch`: one
    /// WAL append (and at most one fsync) for the whole batch. `f(i,
    /// current)` gives the new object of `items[i]`; a key that appears
    /// twice sees the first item's result. An item whose new values do not
    /// match their digests is not written: its slot in the result is
    /// `None`. Replacing an unreadable record renews the actor epoch: it
    /// may have held this node's newest dots, which it would otherwise
    /// mint again.
    pub fn modify_batch(
        &self,
        items: &[(u32, &[u8])],
        sync: bool,
        mut f: impl FnMut(usize, Option<Object>) -> Object,
    ) -> Result<Vec<Option<Object>>, StorageError> {
        let cf = self.cf()?;
        let keys: Vec<Vec<u8>> = items.iter().map(|(p, k)| db_key(*p, k)).collect();
        let _guards = self.db.lock_keys(&keys);
        let mut written: HashMap<&[u8], Object> = HashMap::new();
        let mut replaced_corrupt = false;
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(items.len());
        for (i, k) in keys.iter().enumerate() {
            let (partition, key) = items[i];
            let mut corrupt = false;
            let earlier = written.remove(k.as_slice());
            // Put back if this item is refused: a later item of the key
            // must still see the earlier one's write.
            let kept = earlier.clone();
            let current = match earlier {
                Some(o) => Some(o),
                None => match self.db.rocks.get_pinned_cf(cf, k)? {
                    Some(bytes) => {
                        let decoded = self.db.decode_checked(partition, &bytes);
                        corrupt = decoded.is_none();
                        decoded
                    }
                    None => None,
                },
            };
            let before = match &current {
                _ if corrupt => Before::Corrupt,
                Some(o) => Before::of(key, o),
                None => Before::Nothing,
            };
            let fresh = Fresh::of(current.as_ref());
            let next = f(i, current);
            if !fresh.intact(&next) {
                self.db.refused_value(partition);
                if let Some(o) = kept {
                    written.insert(k.as_slice(), o);
                }
                out.push(None);
                continue;
            }
            replaced_corrupt |= corrupt;
            let next_hash = entry_hash(key, &next);
            if matches!(&before, Before::Object { hash, .. } if *hash == next_hash) {
                // Already held (a repeated repair or handoff): no write.
                written.insert(k.as_slice(), next.clone());
                out.push(Some(next));
                continue;
            }
            self.index(&mut batch, partition, key, &before, Some((&next, next_hash)))?;
            batch.put_cf(cf, k, record::encode(&next));
            written.insert(k.as_slice(), next.clone());
            out.push(Some(next));
        }
        self.db.rocks.write_opt(batch, &write_options(sync))?;
        for (p, _) in items {
            self.trees.touch(*p);
        }
        if replaced_corrupt {
            self.meta.renew_epoch("a corrupt record was replaced by what other replicas sent")?;
        }
        Ok(out)
    }

    /// Every (key, object) of one partition, in key order. Corrupt records
    /// are skipped (and counted).
    pub fn scan_partition(&self, partition: u32) -> Result<Vec<(Vec<u8>, Object)>, StorageError> {
        let mut out = Vec::new();
        self.for_each_in_partition(partition, |k, o| out.push((k.to_vec(), o.clone())))?;
        Ok(out)
    }

    fn for_each_in_partition(
        &self,
        partition: u32,
        mut f: impl FnMut(&[u8], &Object),
    ) -> Result<(), StorageError> {
        let prefix = partition.to_be_bytes();
        for item in self.db.rocks.prefix_iterator_cf(self.cf()?, prefix) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(object) = self.db.decode_checked(partition, &v) {
                f(&k[4..], &object);
            }
        }
        Ok(())
    }

    /// Up to `limit` keys of `partition` after key `after`, with their
    /// objects, that a node at `position` of the preference list is not a
    /// home of (the key's `N`, capped at `homes`, is at most `position`).
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
        let mut wanted = [false; tree::LEAVES];
        for b in buckets {
            wanted[*b as usize] = true;
        }
        let mut out = Vec::new();
        self.for_each_in_partition(partition, |key, object| {
            if wanted[tree::bucket_of(key) as usize] && tree::shared(object.n(), from_n) {
                out.push((key.to_vec(), entry_hash(key, object)));
            }
        })?;
        Ok(out)
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
        let cf = self.cf()?;
        let k = db_key(partition, key);
        let _guard = self.db.lock_for(&k);
        let Some(bytes) = self.db.rocks.get_pinned_cf(cf, &k)? else { return Ok(false) };
        let Some(object) = self.db.decode_checked(partition, &bytes) else { return Ok(false) };
        if (tombstone_only && tombstone_time(&object).is_none()) || entry_hash(key, &object) != *expected {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, &k);
        self.index(&mut batch, partition, key, &Before::of(key, &object), None)?;
        self.db.rocks.write(batch)?;
        self.trees.touch(partition);
        Ok(true)
    }

    /// Drops each GC queue entry `(key, time)` whose key is no longer a
    /// tombstone of that time (see [`super::gc_queue`]), checked under the
    /// key's lock so a write making it one again is not raced. Returns how
    /// many were dropped.
    pub fn drop_stale_tombstones(
        &self,
        partition: u32,
        entries: &[(Vec<u8>, u64)],
    ) -> Result<usize, StorageError> {
        let cf = self.cf()?;
        let mut dropped = 0;
        for (key, ms) in entries {
            let k = db_key(partition, key);
            let _guard = self.db.lock_for(&k);
            let stale = match self.db.rocks.get_pinned_cf(cf, &k)? {
                None => true,
                // Unreadable: its time is unknown; the write that replaces
                // it leaves this entry stale, and a later round drops it.
                Some(bytes) => match self.db.decode_checked(partition, &bytes) {
                    Some(object) => tombstone_time(&object) != Some(*ms),
                    None => false,
                },
            };
            if stale {
                self.gc_queue.remove(partition, *ms, key)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Flips one byte of a stored record: lets tests (and operators checking
    /// their alerting) exercise the integrity path on a real file.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, partition: u32, key: &[u8]) -> Result<bool, StorageError> {
        let cf = self.cf()?;
        let k = db_key(partition, key);
        let Some(mut bytes) = self.db.rocks.get_cf(cf, &k)? else { return Ok(false) };
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        self.db.rocks.put_cf(cf, &k, bytes)?;
        Ok(true)
    }
}
