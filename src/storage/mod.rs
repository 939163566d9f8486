//! Durable storage of versioned objects in RocksDB. The only module that
//! imports `rocksdb`.
//!
//! Keys are laid out as `[partition: u32 BE][user key]` in the `objects`
//! column family, so one partition's data is a contiguous range that handoff
//! and anti-entropy can scan on its own. Read-modify-write of one key is
//! serialised by a striped lock; every write goes through the WAL, so an
//! acknowledged write survives `kill -9` (and, with `sync`, power loss).

pub mod hints;
mod meta;
pub mod metrics;
pub mod record;
pub mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

pub use hints::Hint;
pub use meta::Sighting;
pub use record::{Object, StoredValue};
use tree::Before;

/// What a read-modify-write found for its key.
#[derive(Debug)]
pub enum Found {
    Nothing,
    Object(Object),
    /// A record is stored but failed its integrity check.
    Corrupt,
}

const CF_OBJECTS: &str = "objects";
const CF_META: &str = "meta";
/// Hinted handoff queue (see [`hints`]).
const CF_HINTS: &str = "hints";
/// Anti-entropy leaf hashes, `[partition][bucket]` (see [`tree`]).
const CF_TREE: &str = "tree";
/// Keys whose every sibling is a delete, `[partition][key]` → newest
/// delete time: tombstone GC walks this index instead of the data.
const CF_TOMBSTONES: &str = "tombstones";
const META_EPOCH: &[u8] = b"actor_epoch";
/// Present once the trees cover every stored object (absent in a data
/// directory written before trees existed: every partition is rebuilt).
const META_TREES: &[u8] = b"trees_v1";
/// Format byte of the `actor_epoch` value: `[1][epoch u32 BE]`.
const META_FORMAT_V1: u8 = 1;
/// Enough stripes that unrelated keys rarely wait on each other.
const LOCK_STRIPES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} missing")]
    MissingColumnFamily(&'static str),
    #[error("corrupt metadata: {0}")]
    CorruptMeta(String),
}

pub struct Storage {
    db: DB,
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    epoch: std::sync::atomic::AtomicU32,
    corrupt_reads: AtomicU64,
    /// Partitions whose tree needs a rebuild from data.
    dirty: Mutex<BTreeSet<u32>>,
    /// Cached tree roots `(partition, generation, root)`, slot
    /// `partition % len`; valid while the slot's generation is unchanged.
    root_cache: Box<[Mutex<Option<tree::CachedRoot>>]>,
    /// Bumped after every write to a partition of the slot.
    root_gens: Box<[AtomicU64]>,
    hint_counts: Mutex<BTreeMap<String, u64>>,
    /// This open created the database (see [`Storage::created_fresh`]).
    fresh: bool,
    /// Partitions that may lack acknowledged writes (see [`meta`]), and a
    /// flag so the read path pays one atomic load while there are none.
    unsynced: Mutex<BTreeMap<u32, BTreeSet<String>>>,
    any_unsynced: std::sync::atomic::AtomicBool,
    /// Set until the peers have answered this start's hello: until then
    /// the node does not know whether its data is an older copy, so every
    /// answer is non-authoritative.
    history_pending: std::sync::atomic::AtomicBool,
    incarnation: AtomicU64,
    dir_id: u64,
    run_id: u64,
    /// The last run did not shut down cleanly (see `meta`).
    unclean_start: bool,
    fallback_generation: AtomicU64,
}

/// The database closes when its last user is gone: after a clean shutdown
/// every write has been made, so the marker says "nothing was lost".
impl Drop for Storage {
    fn drop(&mut self) {
        if let Err(error) = self.mark_clean_shutdown() {
            tracing::warn!(%error, "cannot mark the clean shutdown; the next start renews the actor epoch");
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.db.path()).finish()
    }
}

/// `sync` makes RocksDB fsync the WAL before returning (the `DW`
/// guarantee). The fsync happens under the key's stripe lock; syncing after
/// the lock with `flush_wal` was measured slower (3.6k vs 5.0k PUT/s at
/// DW=1): concurrent synced writes then each pay their own fsync instead of
/// sharing RocksDB's group commit.
fn write_options(sync: bool) -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    opts
}

fn db_key(partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl Storage {
    /// Opens (creating if needed) the database at `path`. Fails if another
    /// process holds it (RocksDB's LOCK file) or it is unreadable.
    pub fn open(path: &Path, block_cache_bytes: usize) -> Result<Storage, StorageError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_allow_concurrent_memtable_write(false);
        db_opts.set_keep_log_file_num(4);
        // A WAL file is deleted only once every column family with data in it
        // has flushed; the tiny `meta` family would otherwise pin every WAL
        // forever (seen: 9 x 64 MiB logs replayed on each restart).
        db_opts.set_max_total_wal_size(256 << 20);

        let cache = Cache::new_lru_cache(block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut objects = Options::default();
        objects.set_block_based_table_factory(&table);
        // The upper levels are rewritten soon by compaction: compressing them
        // costs CPU on every flush for bytes that do not stay. LZ4 below.
        {
            use rocksdb::DBCompressionType::{Lz4, None as Plain};
            objects.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
        }
        // Most reads before a write miss the memtable (the key was flushed
        // long ago, or is new): a memtable bloom filter spares them the
        // skiplist walk, ~10 % of a node's CPU under PUT load.
        objects.set_memtable_prefix_bloom_ratio(0.1);
        objects.set_memtable_whole_key_filtering(true);
        // Point lookups by whole key; the partition prefix allows range scans.
        objects.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(4));
        // One small skiplist per partition instead of one big one: inserting
        // random keys into a 64 MiB skiplist (cache misses on every level)
        // was ~11 % of a node's CPU under PUT load. Needs the prefix
        // extractor above and single-threaded memtable writes.
        objects.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
            bucket_count: 65_536,
            height: 4,
            branching_factor: 4,
        });

        let mut tree_opts = Options::default();
        tree_opts.set_merge_operator_associative("xor", tree::xor_merge);
        // A merge operand per object write, each a memtable entry of its
        // own: in a 64 MiB memtable that is ~1.6 k entries per partition, and
        // the inserts were ~15 % of a node's CPU under PUT load. A small
        // memtable (flushes merge the operands) split per partition keeps
        // each skiplist short.
        tree_opts.set_write_buffer_size(4 << 20);
        tree_opts.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(4));
        tree_opts.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
            bucket_count: 65_536,
            height: 8,
            branching_factor: 4,
        });
        let mut tombstones = Options::default();
        tombstones.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(4));
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_OBJECTS, objects),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_HINTS, Options::default()),
            ColumnFamilyDescriptor::new(CF_TREE, tree_opts),
            ColumnFamilyDescriptor::new(CF_TOMBSTONES, tombstones),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let fresh = {
            let meta = db.cf_handle(CF_META).ok_or(StorageError::MissingColumnFamily(CF_META))?;
            db.get_cf(&meta, META_EPOCH)?.is_none()
        };
        let (incarnation, clean) = meta::open_incarnation(&db)?;
        let dir_id = meta::load_or_create_dir_id(&db)?;
        let mut epoch = Self::load_or_create_epoch(&db)?;
        let unclean_start = !fresh && !clean;
        if unclean_start {
            // A crash or power cut may have lost the WAL's unsynced tail,
            // and with it dots this node minted: its old actor's history is
            // no longer complete here, so later dots get a new actor.
            epoch = Self::store_new_epoch(&db)?;
            tracing::warn!(epoch, "the last run did not shut down cleanly: new actor epoch");
        }
        let unsynced = meta::load_unsynced(&db)?;
        let hint_counts = Self::count_hints(&db)?;
        let mut dirty = Self::partitions_without_trees(&db)?;
        dirty.extend(meta::load_dirty(&db)?);
        let locks = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Storage {
            db,
            locks,
            hasher: Default::default(),
            epoch: std::sync::atomic::AtomicU32::new(epoch),
            corrupt_reads: AtomicU64::new(0),
            dirty: Mutex::new(dirty),
            root_cache: (0..4096).map(|_| Mutex::new(None)).collect(),
            root_gens: (0..4096).map(|_| AtomicU64::new(0)).collect(),
            hint_counts: Mutex::new(hint_counts),
            fresh,
            any_unsynced: std::sync::atomic::AtomicBool::new(true),
            history_pending: std::sync::atomic::AtomicBool::new(true),
            incarnation: AtomicU64::new(incarnation),
            dir_id,
            run_id: rand::random(),
            unclean_start,
            fallback_generation: AtomicU64::new(rand::random()),
            unsynced: Mutex::new(unsynced),
        })
    }

    /// Every partition with data, if this directory predates the trees
    /// (they are then rebuilt before anti-entropy uses them).
    fn partitions_without_trees(db: &DB) -> Result<BTreeSet<u32>, StorageError> {
        let meta = db.cf_handle(CF_META).ok_or(StorageError::MissingColumnFamily(CF_META))?;
        let mut dirty = BTreeSet::new();
        if db.get_cf(&meta, META_TREES)?.is_some() {
            return Ok(dirty);
        }
        let objects = db.cf_handle(CF_OBJECTS).ok_or(StorageError::MissingColumnFamily(CF_OBJECTS))?;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_total_order_seek(true);
        for item in db.iterator_cf_opt(&objects, opts, rocksdb::IteratorMode::Start) {
            let (k, _) = item?;
            if let Some(p) = k.first_chunk::<4>() {
                dirty.insert(u32::from_be_bytes(*p));
            }
        }
        // The marker and the dirty marks in one batch: a crash before the
        // rebuilds finish leaves them marked, not forgotten.
        let mut batch = WriteBatch::default();
        for k in meta::dirty_keys(&dirty) {
            batch.put_cf(&meta, k, [1]);
        }
        batch.put_cf(&meta, META_TREES, [1]);
        db.write(batch)?;
        Ok(dirty)
    }

    /// A random number fixed when the database is created. Versions are
    /// stamped with `node_id.epoch` so a node whose disk was wiped never
    /// reuses an old dot (which would silently drop concurrent writes).
    fn load_or_create_epoch(db: &DB) -> Result<u32, StorageError> {
        let cf = db.cf_handle(CF_META).ok_or(StorageError::MissingColumnFamily(CF_META))?;
        if let Some(v) = db.get_cf(&cf, META_EPOCH)? {
            return match v.as_slice() {
                [META_FORMAT_V1, a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
                _ => Err(StorageError::CorruptMeta("actor_epoch is not [1, u32 BE]".into())),
            };
        }
        Self::store_new_epoch(db)
    }

    fn store_new_epoch(db: &DB) -> Result<u32, StorageError> {
        let cf = db.cf_handle(CF_META).ok_or(StorageError::MissingColumnFamily(CF_META))?;
        let epoch: u32 = rand::random();
        let mut value = vec![META_FORMAT_V1];
        value.extend_from_slice(&epoch.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.put_cf_opt(&cf, META_EPOCH, value, &opts)?;
        db.flush_cf(&cf)?;
        Ok(epoch)
    }

    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The last run ended without a clean shutdown (see [`Storage::open`]).
    pub fn unclean_start(&self) -> bool {
        self.unclean_start
    }

    /// This directory is an older copy than its peers have seen (restored
    /// from a snapshot): the same remedy as a lost WAL tail, a new epoch.
    pub fn renew_epoch_after_restore(&self) -> Result<(), StorageError> {
        let epoch = Self::store_new_epoch(&self.db)?;
        self.epoch.store(epoch, Ordering::Release);
        tracing::warn!(epoch, "peers have seen a newer copy of this node's data: new actor epoch");
        Ok(())
    }

    /// A corrupt record was replaced by what other replicas sent: it may
    /// have held this node's newest dots, which it would then mint again.
    /// A new epoch (so a new actor id) makes every later dot fresh.
    fn renew_epoch(&self) -> Result<(), StorageError> {
        let epoch = Self::store_new_epoch(&self.db)?;
        self.epoch.store(epoch, Ordering::Release);
        tracing::warn!(epoch, "new actor epoch after replacing a corrupt record");
        Ok(())
    }

    /// `(live bytes on disk and in memtables, bytes compaction still has to
    /// rewrite)` over every column family, from RocksDB's own estimates.
    pub fn disk_usage(&self) -> (u64, u64) {
        let (mut size, mut pending) = (0, 0);
        for name in [CF_OBJECTS, CF_META, CF_HINTS, CF_TREE, CF_TOMBSTONES] {
            let Ok(cf) = self.cf(name) else { continue };
            let prop = |p: &str| self.db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
            size += prop("rocksdb.live-sst-files-size") + prop("rocksdb.size-all-mem-tables");
            pending += prop("rocksdb.estimate-pending-compaction-bytes");
        }
        (size, pending)
    }

    /// How many stored records failed their integrity check since start.
    pub fn corrupt_reads(&self) -> u64 {
        self.corrupt_reads.load(Ordering::Relaxed)
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or(StorageError::MissingColumnFamily(name))
    }

    fn objects(&self) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.cf(CF_OBJECTS)
    }

    /// A record that fails its checks is logged, counted and treated as
    /// missing by reads: a corrupt copy is never served, and the other
    /// replicas answer instead. Writes see [`Found::Corrupt`] and decide.
    fn decode_checked(&self, partition: u32, bytes: &[u8]) -> Option<Object> {
        match record::decode(bytes) {
            Ok(object) => Some(object),
            Err(error) => {
                self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition, %error, "stored record failed its integrity check; treating as missing");
                None
            }
        }
    }

    /// This replica's stored object for `key`, telling a missing record
    /// from one that failed its integrity check (a reader must not take
    /// the latter as an authoritative "not found").
    pub fn get_found(&self, partition: u32, key: &[u8]) -> Result<Found, StorageError> {
        let cf = self.objects()?;
        Ok(match self.db.get_pinned_cf(&cf, db_key(partition, key))? {
            None => Found::Nothing,
            Some(b) => self.decode_checked(partition, &b).map_or(Found::Corrupt, Found::Object),
        })
    }

    /// This replica's stored object for `key`, if any.
    pub fn get(&self, partition: u32, key: &[u8]) -> Result<Option<Object>, StorageError> {
        let cf = self.objects()?;
        let bytes = self.db.get_pinned_cf(&cf, db_key(partition, key))?;
        Ok(bytes.and_then(|b| self.decode_checked(partition, &b)))
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
        let cf = self.objects()?;
        let k = db_key(partition, key);
        let guard = self.lock_for(&k);
        let found = match self.db.get_pinned_cf(cf, &k)? {
            Some(bytes) => self.decode_checked(partition, &bytes).map_or(Found::Corrupt, Found::Object),
            None => Found::Nothing,
        };
        let before = match &found {
            Found::Nothing => Before::Nothing,
            Found::Object(o) => Before::of(key, o),
            Found::Corrupt => Before::Corrupt,
        };
        let Some(next) = f(found) else { return Ok(None) };
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, &k, record::encode(&next));
        let next_hash = tree::entry_hash(key, &next);
        self.index_change(&mut batch, partition, key, before, Some((&next, next_hash)))?;
        self.db.write_opt(batch, &write_options(sync))?;
        self.touch(partition);
        drop(guard);
        Ok(Some(next))
    }

    fn stripe_of(&self, k: &[u8]) -> usize {
        (self.hasher.hash_one(k) as usize) % self.locks.len()
    }

    fn lock_stripe(&self, stripe: usize) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned stripe only means another writer panicked; the data is in RocksDB.
        self.locks[stripe].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_for(&self, k: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        self.lock_stripe(self.stripe_of(k))
    }

    /// The stripe locks of every key of a batch, taken once each and in
    /// ascending order, so batches and single writes cannot deadlock.
    fn lock_keys(&self, keys: &[Vec<u8>]) -> Vec<std::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| self.stripe_of(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|s| self.lock_stripe(s)).collect()
    }

    /// [`Storage::modify`] for many keys in one RocksDB `WriteBatch`: one WAL
    /// append (and at most one fsync) for the whole batch. `f(i, current)`
    /// gives the new object of `items[i]`; a key that appears twice sees
    /// the first item's result. Stripe locks are taken in ascending order,
    /// so batches and single writes cannot deadlock.
    pub fn modify_batch(
        &self,
        items: &[(u32, &[u8])],
        sync: bool,
        mut f: impl FnMut(usize, Option<Object>) -> Object,
    ) -> Result<Vec<Object>, StorageError> {
        let cf = self.objects()?;
        let keys: Vec<Vec<u8>> = items.iter().map(|(p, k)| db_key(*p, k)).collect();
        let _guards = self.lock_keys(&keys);
        let mut written: std::collections::HashMap<&[u8], Object> = std::collections::HashMap::new();
        let mut replaced_corrupt = false;
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(items.len());
        for (i, k) in keys.iter().enumerate() {
            let mut corrupt = false;
            let current = match written.remove(k.as_slice()) {
                Some(o) => Some(o),
                None => match self.db.get_pinned_cf(cf, k)? {
                    Some(bytes) => {
                        let decoded = self.decode_checked(items[i].0, &bytes);
                        corrupt = decoded.is_none();
                        decoded
                    }
                    None => None,
                },
            };
            replaced_corrupt |= corrupt;
            let before = match &current {
                _ if corrupt => Before::Corrupt,
                Some(o) => Before::of(items[i].1, o),
                None => Before::Nothing,
            };
            let next = f(i, current);
            let next_hash = tree::entry_hash(items[i].1, &next);
            if matches!(&before, Before::Object { hash, .. } if *hash == next_hash) {
                // Already held (a repeated repair or handoff): no write.
                written.insert(k.as_slice(), next.clone());
                out.push(next);
                continue;
            }
            self.index_change(&mut batch, items[i].0, items[i].1, before, Some((&next, next_hash)))?;
            batch.put_cf(cf, k, record::encode(&next));
            written.insert(k.as_slice(), next.clone());
            out.push(next);
        }
        self.db.write_opt(batch, &write_options(sync))?;
        for (p, _) in items {
            self.touch(*p);
        }
        if replaced_corrupt {
            self.renew_epoch()?;
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
        let cf = self.objects()?;
        let prefix = partition.to_be_bytes();
        for item in self.db.prefix_iterator_cf(&cf, prefix) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some(object) = self.decode_checked(partition, &v) {
                f(&k[4..], &object);
            }
        }
        Ok(())
    }

    /// Flips one byte of a stored record: lets tests (and operators checking
    /// their alerting) exercise the integrity path on a real file.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, partition: u32, key: &[u8]) -> Result<bool, StorageError> {
        let cf = self.objects()?;
        let k = db_key(partition, key);
        let Some(mut bytes) = self.db.get_cf(&cf, &k)? else { return Ok(false) };
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        self.db.put_cf(&cf, &k, bytes)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VersionVector;
    use bytes::Bytes;

    fn value(s: &'static str) -> StoredValue {
        StoredValue::new(Bytes::from_static(s.as_bytes()), "text/plain".into(), 1, false)
    }

    #[test]
    fn modify_then_get_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let s = Storage::open(dir.path(), 1 << 20).unwrap();
            epoch = s.epoch();
            s.modify(7, b"k", false, |cur| {
                assert!(matches!(cur, Found::Nothing));
                let mut o = Object::new();
                o.update(&VersionVector::new(), "a", value("v1"));
                Some(o)
            })
            .unwrap();
        }
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.epoch(), epoch, "epoch is stable across restarts");
        let o = s.get(7, b"k").unwrap().unwrap();
        assert_eq!(o.siblings()[0].value.bytes, Bytes::from_static(b"v1"));
        assert!(s.get(8, b"k").unwrap().is_none(), "partitions are separate");
    }

    #[test]
    fn a_batch_writes_every_key_and_sees_its_own_earlier_items() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let items: Vec<(u32, &[u8])> = vec![(1, b"a"), (2, b"b"), (1, b"a")];
        let out = s
            .modify_batch(&items, true, |i, cur| {
                let mut o = cur.unwrap_or_default();
                o.update(&VersionVector::new(), &format!("actor{i}"), value("x"));
                o
            })
            .unwrap();
        assert_eq!(out[2].siblings().len(), 2, "the repeated key saw the first write");
        assert_eq!(s.get(1, b"a").unwrap().unwrap().siblings().len(), 2);
        assert_eq!(s.get(2, b"b").unwrap().unwrap().siblings().len(), 1);
    }

    #[test]
    fn scan_returns_only_one_partition() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        for (p, k) in [(1u32, "a"), (2, "b"), (2, "c"), (3, "d")] {
            s.modify(p, k.as_bytes(), false, |_| {
                let mut o = Object::new();
                o.update(&VersionVector::new(), "a", value("x"));
                Some(o)
            })
            .unwrap();
        }
        let keys: Vec<Vec<u8>> = s.scan_partition(2).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn corrupt_record_is_treated_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        s.modify(1, b"k", true, |_| {
            let mut o = Object::new();
            o.update(&VersionVector::new(), "a", value("precious"));
            Some(o)
        })
        .unwrap();
        assert!(s.corrupt_for_test(1, b"k").unwrap());
        assert!(s.get(1, b"k").unwrap().is_none());
        assert_eq!(s.corrupt_reads(), 1);
        // A writer is told, and may decline to write.
        let written = s.modify(1, b"k", false, |found| {
            assert!(matches!(found, Found::Corrupt));
            None
        });
        assert!(written.unwrap().is_none());
        // Replacing it with what a peer sent renews the epoch (new actor id).
        let before = s.epoch();
        s.modify_batch(&[(1, b"k")], false, |_, cur| {
            assert!(cur.is_none());
            let mut o = Object::new();
            o.update(&VersionVector::new(), "peer", value("from a peer"));
            o
        })
        .unwrap();
        assert_ne!(s.epoch(), before);
        let reopened_epoch = s.epoch();
        drop(s);
        assert_eq!(Storage::open(dir.path(), 1 << 20).unwrap().epoch(), reopened_epoch, "persisted");
    }

    #[test]
    fn only_an_unchanged_tombstone_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let put = |v: StoredValue| {
            s.modify(1, b"k", false, |cur| {
                let mut o = match cur {
                    Found::Object(o) => o,
                    _ => Object::new(),
                };
                let ctx = o.clock().clone();
                o.update(&ctx, "a", v);
                Some(o)
            })
            .unwrap()
            .unwrap()
        };
        let live = put(value("alive"));
        let live_hash = tree::entry_hash(b"k", &live);
        assert!(!s.remove_if_unchanged(1, b"k", &live_hash).unwrap(), "a live value is never reaped");
        let gone = put(StoredValue::new(Bytes::new(), "x/y".into(), 2, true));
        assert_eq!(s.tombstones(1, 10).unwrap().len(), 1, "indexed as a tombstone");
        assert!(!s.remove_if_unchanged(1, b"k", &live_hash).unwrap(), "a stale hash keeps it");
        let root_before = s.tree_root(1, 1).unwrap();
        assert!(s.remove_if_unchanged(1, b"k", &tree::entry_hash(b"k", &gone)).unwrap());
        assert!(s.get(1, b"k").unwrap().is_none());
        assert!(s.tombstones(1, 10).unwrap().is_empty(), "and out of the index");
        assert_ne!(s.tree_root(1, 1).unwrap(), root_before);
        assert_eq!(s.tree_leaves(1, 1).unwrap(), vec![tree::ZERO; tree::LEAVES], "the tree is empty again");
    }

    #[test]
    fn incremental_leaves_equal_a_rebuild_from_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        // Keys of every replica count, some widened later (their hash
        // moves from one count's leaf to another's).
        for i in 0..200u32 {
            let k = i as usize % 50;
            let key = format!("k{k}");
            s.modify_batch(&[(3, key.as_bytes())], false, |_, cur| {
                let mut o = cur.unwrap_or_default();
                o.widen(if i >= 150 && k % 5 == 0 { 3 } else { 1 + k % 3 });
                o.update(&VersionVector::new(), &format!("actor{}", i % 3), value("x"));
                o
            })
            .unwrap();
        }
        let incremental: Vec<_> = (1..=3).map(|n| s.tree_leaves(3, n).unwrap()).collect();
        assert_ne!(incremental[2], vec![tree::ZERO; tree::LEAVES]);
        assert_ne!(incremental[0], incremental[2], "the N=3 tree leaves the narrower keys out");
        s.rebuild_tree(3).unwrap();
        let rebuilt: Vec<_> = (1..=3).map(|n| s.tree_leaves(3, n).unwrap()).collect();
        assert_eq!(rebuilt, incremental);
    }

    #[test]
    fn a_tree_from_n_holds_exactly_the_keys_of_count_n_or_more() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let write = |key: &'static str, n: usize| {
            s.modify_batch(&[(5, key.as_bytes())], false, |_, cur| {
                let mut o = cur.unwrap_or_default();
                o.widen(n);
                o.update(&VersionVector::new(), "a", value(key));
                o
            })
            .unwrap();
        };
        write("two", 2);
        write("three", 3);
        let keys = |from_n| {
            let all: Vec<u8> = (0..=255).collect();
            let mut k: Vec<String> = s
                .keys_in_buckets(5, &all, from_n)
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys(2), vec!["three", "two"]);
        assert_eq!(keys(3), vec!["three"], "homes 1 and 3 of a partition share only the N=3 keys");
        let before = s.tree_root(5, 3).unwrap();
        write("two", 3);
        assert_eq!(keys(3), vec!["three", "two"], "widened to N=3, it joins that tree");
        assert_ne!(s.tree_root(5, 3).unwrap(), before);
    }

    #[test]
    fn second_open_of_a_locked_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Storage::open(dir.path(), 1 << 20).unwrap();
        assert!(Storage::open(dir.path(), 1 << 20).is_err());
    }
}
