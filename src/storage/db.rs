//! The one RocksDB handle every column family type shares, with what they
//! all need: the striped lock table that serialises read-modify-write of a
//! key, the integrity check of a stored record, and the column families'
//! tuning (which is about how each one is written, so it is kept here, next
//! to the handle, rather than spread over the types that use them).

use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteOptions};

use super::{StorageError, record};
use crate::config::MIN_BLOCK_CACHE_BYTES;
use crate::storage::Object;

pub(super) const CF_OBJECTS: &str = "objects";
pub(super) const CF_META: &str = "meta";
/// Hinted handoff queue (see [`super::hints`]).
pub(super) const CF_HINTS: &str = "hints";
/// Anti-entropy leaf hashes, `[partition][bucket]` (see [`super::tree`]).
pub(super) const CF_TREE: &str = "tree";
/// Tombstone GC's time-ordered queue (see [`super::gc_queue`]).
pub(super) const CF_GC_QUEUE: &str = "gc_queue";
/// The GC index of data directories written before the queue: migrated
/// into [`CF_GC_QUEUE`] and dropped at open.
pub(super) const CF_TOMBSTONES_V1: &str = "tombstones";
/// Every column family a current directory has.
pub(super) const FAMILIES: [&str; 5] = [CF_OBJECTS, CF_META, CF_HINTS, CF_TREE, CF_GC_QUEUE];
/// Enough stripes that unrelated keys rarely wait on each other.
const LOCK_STRIPES: usize = 1024;
/// Compactions are held off only while every family has fewer level-0
/// files than this: RocksDB starts compacting at 4 and slows writes down at
/// 20. Each level-0 file is one more place every read looks, so the bound
/// is kept close to the trigger: with 10, a cluster left at a low share
/// after a preload kept ~10 files and its quiet GET p99 rose from 7.5 to
/// 12.5 ms (benches/governor.sh).
const DEFER_MAX_L0_FILES: u64 = 6;
/// States of the automatic compactions (`Db::deferred`).
const RUNNING: u8 = 0;
const DEFERRED: u8 = 1;
const UNKNOWN: u8 = 2;
/// The families whose compactions the governor may hold off: the ones
/// every write adds to.
const DEFERRABLE: [&str; 2] = [CF_OBJECTS, CF_TREE];

pub(super) struct Db {
    pub(super) rocks: DB,
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    corrupt_reads: AtomicU64,
    /// Automatic compactions: [`RUNNING`], [`DEFERRED`] or [`UNKNOWN`].
    deferred: AtomicU8,
    /// Level 0 reached the bound: no deferral until it is short again.
    latched: AtomicBool,
}

/// `sync` makes RocksDB fsync the WAL before returning (the `DW`
/// guarantee). The fsync happens under the key's stripe lock; syncing after
/// the lock with `flush_wal` was measured slower (3.6k vs 5.0k PUT/s at
/// DW=1): concurrent synced writes then each pay their own fsync instead of
/// sharing RocksDB's group commit.
pub(super) fn write_options(sync: bool) -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    opts
}

/// `[partition: u32 BE][user key]`: one partition is one contiguous range.
pub(super) fn db_key(partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl Db {
    /// Opens (creating if needed) the database at `path` with every column
    /// family, and the pre-queue GC index if the directory still has one.
    pub(super) fn open(path: &Path, block_cache_bytes: usize) -> Result<Db, StorageError> {
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
        let existing = DB::list_cf(&db_opts, path).unwrap_or_default();
        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_OBJECTS, objects_options(block_cache_bytes)),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_HINTS, Options::default()),
            ColumnFamilyDescriptor::new(CF_TREE, tree_options()),
            ColumnFamilyDescriptor::new(CF_GC_QUEUE, partitioned()),
        ];
        if existing.iter().any(|cf| cf == CF_TOMBSTONES_V1) {
            cfs.push(ColumnFamilyDescriptor::new(CF_TOMBSTONES_V1, partitioned()));
        }
        let rocks = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        Ok(Db {
            rocks,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
            corrupt_reads: AtomicU64::new(0),
            deferred: AtomicU8::new(RUNNING),
            latched: AtomicBool::new(false),
        })
    }

    pub(super) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.rocks.cf_handle(name).ok_or(StorageError::MissingColumnFamily(name))
    }

    /// A record that fails its checks is logged, counted and treated as
    /// missing by reads: a corrupt copy is never served, and the other
    /// replicas answer instead. Writes see [`super::Found::Corrupt`] and decide.
    pub(super) fn decode_checked(&self, partition: u32, bytes: &[u8]) -> Option<Object> {
        match record::decode(bytes) {
            Ok(object) => Some(object),
            Err(error) => {
                self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition, %error, "stored record failed its integrity check; treating as missing");
                None
            }
        }
    }

    /// A write brought in a value that does not match its digest (damaged
    /// on its way here): logged and counted with the corrupt reads, and
    /// not stored.
    pub(super) fn refused_value(&self, partition: u32) {
        self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        tracing::error!(partition, "a value to be written does not match its digest; refusing it");
    }

    /// How many stored records failed their integrity check since start.
    pub(super) fn corrupt_reads(&self) -> u64 {
        self.corrupt_reads.load(Ordering::Relaxed)
    }

    fn stripe_of(&self, k: &[u8]) -> usize {
        (self.hasher.hash_one(k) as usize) % self.locks.len()
    }

    fn lock_stripe(&self, stripe: usize) -> MutexGuard<'_, ()> {
        // A poisoned stripe only means another writer panicked; the data is in RocksDB.
        self.locks[stripe].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stripe lock of one stored key (any column family's key space).
    pub(super) fn lock_for(&self, k: &[u8]) -> MutexGuard<'_, ()> {
        self.lock_stripe(self.stripe_of(k))
    }

    /// The stripe locks of every key of a batch, taken once each and in
    /// ascending order, so batches and single writes cannot deadlock.
    pub(super) fn lock_keys(&self, keys: &[Vec<u8>]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| self.stripe_of(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|s| self.lock_stripe(s)).collect()
    }

    /// Holds off (or resumes) automatic compactions of the families every
    /// write adds to, for the background governor: compaction competes with
    /// foreground requests for the two cores and the disk. A deferral is
    /// refused (compactions resume) once any of them has
    /// [`DEFER_MAX_L0_FILES`] level-0 files, so reads never pay for a long
    /// level 0 and writes never reach RocksDB's stall; flushes go on
    /// meanwhile, so no write waits for it. Returns the state now in force.
    pub(super) fn defer_compactions(&self, defer: bool) -> Result<bool, StorageError> {
        let mut l0 = Some(0);
        for name in DEFERRABLE {
            let cf = self.cf(name)?;
            let files = self.rocks.property_int_value_cf(cf, "rocksdb.num-files-at-level0")?;
            l0 = l0.zip(files).map(|(a, b)| a.max(b));
        }
        // Past the bound (or not knowing), compactions run, and stay on
        // until level 0 is back to a couple of files: no on/off churn (each
        // change rewrites RocksDB's OPTIONS file) while it hovers at the bound.
        let latched = match l0 {
            Some(files) if files >= DEFER_MAX_L0_FILES => true,
            None => true,
            Some(files) if files <= 2 => false,
            Some(_) => self.latched.load(Ordering::Relaxed),
        };
        self.latched.store(latched, Ordering::Relaxed);
        let defer = defer && !latched;
        let want = if defer { DEFERRED } else { RUNNING };
        // Re-applied while the state is unknown (an earlier change failed
        // half way: RocksDB applies an option before writing its file).
        if self.deferred.load(Ordering::Relaxed) != want {
            self.deferred.store(UNKNOWN, Ordering::Relaxed);
            let value = if defer { "true" } else { "false" };
            for name in DEFERRABLE {
                self.rocks.set_options_cf(self.cf(name)?, &[("disable_auto_compactions", value)])?;
            }
            // Only the one governor worker calls this.
            self.deferred.store(want, Ordering::Relaxed);
        }
        Ok(defer)
    }

    /// [`DiskUsage`] summed over every column family.
    pub(super) fn disk_usage(&self) -> DiskUsage {
        let mut usage = DiskUsage::default();
        for name in FAMILIES {
            let Ok(cf) = self.cf(name) else { continue };
            let prop = |p: &str| self.rocks.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
            usage.size += prop("rocksdb.live-sst-files-size") + prop("rocksdb.size-all-mem-tables");
            usage.pending_compaction += prop("rocksdb.estimate-pending-compaction-bytes");
            usage.table_readers += prop("rocksdb.estimate-table-readers-mem");
        }
        usage
    }
}

/// What the database holds and owes, from RocksDB's own estimates.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskUsage {
    /// Live bytes on disk and in memtables.
    pub size: u64,
    /// Bytes compaction still has to rewrite.
    pub pending_compaction: u64,
    /// Memory the open table files hold for their indexes and bloom
    /// filters, which live outside the block cache (see `objects_options`):
    /// it grows with the data (~5-8 MiB per GB stored), so operators can watch it.
    pub table_readers: u64,
}

/// A column family keyed `[partition u32 BE]...`, iterated one partition
/// at a time.
fn partitioned() -> Options {
    let mut opts = Options::default();
    opts.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(4));
    opts
}

fn objects_options(block_cache_bytes: usize) -> Options {
    // HyperClockCache, not LRU: once the data outgrows the cache (1M keys
    // of 1 KiB), nearly every read inserts a block and evicts one, and the
    // LRU's hash-chain walks and list updates under a shard mutex were
    // ~3 % of a node's CPU under GET load. The clock cache's lookups and
    // inserts are lock-free; 0 sizes its table automatically.
    // Configs are validated to at least this; the floor here keeps a
    // direct caller from a zero-slot table, which RocksDB does not survive.
    let cache = Cache::new_hyper_clock_cache(block_cache_bytes.max(MIN_BLOCK_CACHE_BYTES), 0);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks live with each open file, outside the block
    // cache: at 1M keys of 1 KiB (~1.2 GB per node) nearly every read
    // evicts a data block, and index blocks that went with them had to be
    // read and parsed again (a whole file's index and filter, a few hundred
    // KB). Held apart they cost ~5-8 MiB per GB stored (2.6-3.0 MB on a node
    // holding ~0.5 GB, 8.9 MiB at 1.1 GB), as long as the file is open:
    // every file is.
    // Measured on one preloaded 1M-key cluster, restarted between modes
    // (two rounds): cluster CPU per GET R=2 197/139 µs against 237/147
    // in the cache, per mixed op 193/188 against 276/205.
    table.set_cache_index_and_filter_blocks(false);
    // Tried for 1M keys (~1 GB per node, past the cache): a partitioned
    // index and filters, pinned top level, hash index in data blocks. GETs
    // cost more (224 vs 186 µs of cluster CPU; more cache lookups per
    // read: filter partition, index partition, data block), so the whole
    // index and filter per file stay.
    let mut objects = partitioned();
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
    // One small skiplist per partition instead of one big one: inserting
    // random keys into a 64 MiB skiplist (cache misses on every level)
    // was ~11 % of a node's CPU under PUT load. Needs the prefix
    // extractor (point lookups by whole key, range scans by partition)
    // and single-threaded memtable writes.
    objects.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
        bucket_count: 65_536,
        height: 4,
        branching_factor: 4,
    });
    objects
}

fn tree_options() -> Options {
    let mut tree = partitioned();
    tree.set_merge_operator_associative("xor", super::tree::xor_merge);
    // A merge operand per object write, each a memtable entry of its
    // own: in a 64 MiB memtable that is ~1.6 k entries per partition, and
    // the inserts were ~15 % of a node's CPU under PUT load. A small
    // memtable (flushes merge the operands) split per partition keeps
    // each skiplist short.
    tree.set_write_buffer_size(4 << 20);
    tree.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
        bucket_count: 65_536,
        height: 8,
        branching_factor: 4,
    });
    tree
}
