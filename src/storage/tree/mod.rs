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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::WriteBatch;

use super::db::{CF_META, CF_TREE, Db};
use super::meta::{FORMAT, number, partition_key, read_number};
use super::record::replicas_of;
use super::{Object, StorageError};

mod hash;
mod rebuild;
pub use hash::*;

/// Present once the trees cover every stored object (absent in a data
/// directory written before trees existed: every partition is rebuilt).
const META_TREES: &[u8] = b"trees_v1";
/// `meta` prefix of the partitions whose tree awaits a rebuild.
const DIRTY_PREFIX: &[u8] = b"dirty/";
/// `meta` prefix of each tree's last rebuild time.
const REBUILT_PREFIX: &[u8] = b"rebuilt/";
/// Root cache slots (a slot is `partition % len`).
const ROOT_SLOTS: usize = 4096;

/// `(partition, from_n, generation, root)` in the root cache.
type CachedRoot = (u32, u8, u64, Hash);

/// What a write found before it replaced a key's object.
pub(super) enum Before {
    Nothing,
    Object {
        hash: Hash,
        /// Its newest delete time, if every sibling is a delete.
        tombstone: Option<u64>,
        n: u8,
    },
    /// Unreadable: its leaf contribution is unknown.
    Corrupt,
}

impl Before {
    pub(super) fn of(key: &[u8], object: &Object) -> Before {
        Before::Object { hash: entry_hash(key, object), tombstone: tombstone_time(object), n: object.n() }
    }

    /// The newest delete time of what was there, if it was a tombstone.
    pub(super) fn tombstone(&self) -> Option<u64> {
        match self {
            Before::Object { tombstone, .. } => *tombstone,
            Before::Nothing | Before::Corrupt => None,
        }
    }
}

/// The `tree` column family: every partition's leaves, the partitions whose
/// leaves cannot be trusted until rebuilt, and a cache of roots.
pub struct Trees {
    db: Arc<Db>,
    /// Partitions whose tree needs a rebuild from data.
    dirty: Mutex<BTreeSet<u32>>,
    /// Cached tree roots, slot `partition % len`; valid while the slot's
    /// generation is unchanged.
    root_cache: Box<[Mutex<Option<CachedRoot>>]>,
    /// Bumped after every write to a partition of the slot.
    root_gens: Box<[AtomicU64]>,
}

impl Trees {
    /// Loads the dirty marks; in a directory written before trees existed,
    /// marks every partition with data dirty first.
    pub(super) fn open(db: Arc<Db>) -> Result<Trees, StorageError> {
        let mut dirty = rebuild::partitions_without_trees(&db)?;
        let meta = db.cf(CF_META)?;
        for item in db.rocks.prefix_iterator_cf(meta, DIRTY_PREFIX) {
            let (k, _) = item?;
            if !k.starts_with(DIRTY_PREFIX) {
                break;
            }
            if let Some(p) = k[DIRTY_PREFIX.len()..].first_chunk::<4>() {
                dirty.insert(u32::from_be_bytes(*p));
            }
        }
        Ok(Trees {
            db,
            dirty: Mutex::new(dirty),
            root_cache: (0..ROOT_SLOTS).map(|_| Mutex::new(None)).collect(),
            root_gens: (0..ROOT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Adds to `batch` what keeps the leaf true when `key`'s object goes
    /// from `before` to `after` (with its entry hash; `None`: removed).
    pub(super) fn index_change(
        &self,
        batch: &mut WriteBatch,
        partition: u32,
        key: &[u8],
        before: &Before,
        after: Option<(&Object, Hash)>,
    ) -> Result<(), StorageError> {
        let bucket = bucket_of(key);
        let tree = self.db.cf(CF_TREE)?;
        // The old hash leaves the old count's leaf, the new one joins the
        // new count's leaf: one operand when both are the same leaf.
        let old = match before {
            Before::Nothing => None,
            Before::Object { hash, n, .. } => Some((leaf_key(partition, bucket, *n), *hash)),
            Before::Corrupt => {
                self.mark_dirty(partition);
                None
            }
        };
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

    fn persist_dirty(&self, partition: u32, dirty: bool) -> Result<(), StorageError> {
        let cf = self.db.cf(CF_META)?;
        let key = partition_key(DIRTY_PREFIX, partition);
        if dirty {
            self.db.rocks.put_cf_opt(cf, key, [FORMAT], &super::db::write_options(false))?;
        } else {
            self.db.rocks.delete_cf(cf, key)?;
        }
        Ok(())
    }

    /// Partitions whose tree must be rebuilt from their data.
    pub fn dirty_partitions(&self) -> Vec<u32> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    pub fn is_dirty(&self, partition: u32) -> bool {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).contains(&partition)
    }

    /// Records that the partition's tree was just rebuilt from its data.
    fn set_rebuilt_now(&self, partition: u32) -> Result<(), StorageError> {
        let cf = self.db.cf(CF_META)?;
        self.db.rocks.put_cf(cf, partition_key(REBUILT_PREFIX, partition), number(crate::util::now_ms()))?;
        Ok(())
    }

    /// When the partition's tree was last rebuilt from its data (ms since
    /// the epoch); persisted, so the periodic rebuild is not postponed by
    /// every restart. A partition never rebuilt counts from the first time
    /// it is asked about.
    pub fn rebuilt_at_ms(&self, partition: u32) -> Result<u64, StorageError> {
        let cf = self.db.cf(CF_META)?;
        match self.db.rocks.get_cf(cf, partition_key(REBUILT_PREFIX, partition))? {
            Some(v) => read_number("rebuilt", &v),
            None => {
                self.set_rebuilt_now(partition)?;
                Ok(crate::util::now_ms())
            }
        }
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
        let cf = self.db.cf(CF_TREE)?;
        let prefix = partition.to_be_bytes();
        // The tree's memtable is a hash of 4-byte prefixes: iterate within one.
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        if let Some(s) = snapshot {
            opts.set_snapshot(s);
        }
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.rocks.iterator_cf_opt(cf, opts, mode) {
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
    pub fn leaves(&self, partition: u32, from_n: u8) -> Result<Vec<Hash>, StorageError> {
        let mut out = vec![ZERO; LEAVES];
        for (k, h) in self.stored_leaves(partition, None)? {
            if k.len() >= 5 && shared(leaf_n(&k), from_n) {
                xor(&mut out[k[4] as usize], &h);
            }
        }
        Ok(out)
    }

    /// The root of [`Trees::leaves`] (cached until the next write to the
    /// partition).
    pub fn root(&self, partition: u32, from_n: u8) -> Result<Hash, StorageError> {
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
        let root = combine(&inner_of(&self.leaves(partition, from_n)?));
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
}
