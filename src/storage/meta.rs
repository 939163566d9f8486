//! The `meta` column family beyond the epoch: small facts about this node's
//! own history that must survive a restart.
//!
//! - the directory's random id, its *incarnation* (one more per open) and
//!   the clean-shutdown marker (consumed at open);
//! - the *dot lease*: the highest version counter this node may mint
//!   before it has to persist a higher one (see `replica::stamp`);
//! - what this node has seen of each peer ([`Sighting`]): how a peer whose
//!   directory was wiped or restored learns that it lost data;
//! - the partitions still *unsynced* after a data loss, with the homes each
//!   still has to complete an anti-entropy exchange with. Until a partition
//!   is synced this node's answers for it do not count toward R or PR;
//! - the trees marked for a rebuild, and each tree's last rebuild time.
//!
//! Each value is `[format 1][payload]`; numbers are u64 big-endian.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;

use super::{CF_META, Storage, StorageError, write_options};

const META_DOT_LEASE: &[u8] = b"dot_lease";
const SEEN_PREFIX: &[u8] = b"seen/";
const UNSYNCED_PREFIX: &[u8] = b"unsynced/";
/// `dirty/[partition]`: the tree must be rebuilt from data.
const DIRTY_PREFIX: &[u8] = b"dirty/";
/// `rebuilt/[partition]` → ms of the last full rebuild.
const REBUILT_PREFIX: &[u8] = b"rebuilt/";
const FORMAT: u8 = 1;
const META_INCARNATION: &[u8] = b"incarnation";
const META_DIR_ID: &[u8] = b"dir_id";
const META_CLEAN: &[u8] = b"clean_shutdown";

/// `[format][u64 BE]`, the value of every numeric entry.
fn number(n: u64) -> Vec<u8> {
    let mut value = vec![FORMAT];
    value.extend_from_slice(&n.to_be_bytes());
    value
}

/// The inverse of [`number`]; `what` names the entry in the error.
fn read_number(what: &str, value: &[u8]) -> Result<u64, StorageError> {
    match value {
        [FORMAT, rest @ ..] => rest.try_into().map(u64::from_be_bytes).map_err(|_| corrupt(what)),
        _ => Err(corrupt(what)),
    }
}

fn synced() -> rocksdb::WriteOptions {
    write_options(true)
}

fn meta_cf(db: &rocksdb::DB) -> Result<&rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(CF_META).ok_or(StorageError::MissingColumnFamily(CF_META))
}

fn seen_key(peer: &str) -> Vec<u8> {
    let mut k = SEEN_PREFIX.to_vec();
    k.extend_from_slice(peer.as_bytes());
    k
}

/// One node's run as its peers remember it: which directory (a random id
/// made with it), which incarnation of it (one more per start), which run
/// (random per process). A peer holding a sighting of another directory, a
/// higher incarnation, or the same incarnation of another run, has seen
/// this node serve data this copy does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sighting {
    pub dir: u64,
    pub incarnation: u64,
    pub run: u64,
}

/// The directory's random id, made when it is first opened.
pub(super) fn load_or_create_dir_id(db: &rocksdb::DB) -> Result<u64, StorageError> {
    let cf = meta_cf(db)?;
    if let Some(v) = db.get_cf(cf, META_DIR_ID)? {
        return read_number("dir_id", &v);
    }
    let id: u64 = rand::random();
    db.put_cf_opt(cf, META_DIR_ID, number(id), &synced())?;
    Ok(id)
}

/// At open: the next incarnation (persisted, synced) and whether the last
/// run shut down cleanly (the marker is consumed).
pub(super) fn open_incarnation(db: &rocksdb::DB) -> Result<(u64, bool), StorageError> {
    let cf = meta_cf(db)?;
    let last = match db.get_cf(cf, META_INCARNATION)? {
        None => 0,
        Some(v) => read_number("incarnation", &v)?,
    };
    let clean = db.get_cf(cf, META_CLEAN)?.is_some();
    db.delete_cf_opt(cf, META_CLEAN, &synced())?;
    store_incarnation(db, last + 1)?;
    Ok((last + 1, clean))
}

fn store_incarnation(db: &rocksdb::DB, incarnation: u64) -> Result<(), StorageError> {
    db.put_cf_opt(meta_cf(db)?, META_INCARNATION, number(incarnation), &synced())?;
    Ok(())
}

fn partition_key(prefix: &[u8], partition: u32) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn unsynced_key(partition: u32) -> Vec<u8> {
    partition_key(UNSYNCED_PREFIX, partition)
}

/// The `meta` keys that mark `partitions` dirty, for a batch written at open.
pub(super) fn dirty_keys(partitions: &BTreeSet<u32>) -> Vec<Vec<u8>> {
    partitions.iter().map(|p| partition_key(DIRTY_PREFIX, *p)).collect()
}

/// Every partition whose dirty mark was persisted.
pub(super) fn load_dirty(db: &rocksdb::DB) -> Result<BTreeSet<u32>, StorageError> {
    let mut out = BTreeSet::new();
    for item in db.prefix_iterator_cf(meta_cf(db)?, DIRTY_PREFIX) {
        let (k, _) = item?;
        if !k.starts_with(DIRTY_PREFIX) {
            break;
        }
        if let Some(p) = k[DIRTY_PREFIX.len()..].first_chunk::<4>() {
            out.insert(u32::from_be_bytes(*p));
        }
    }
    Ok(out)
}

fn corrupt(what: &str) -> StorageError {
    StorageError::CorruptMeta(format!("{what} is not [1, payload]"))
}

/// Reads every `unsynced/` entry (at open).
pub(super) fn load_unsynced(db: &rocksdb::DB) -> Result<BTreeMap<u32, BTreeSet<String>>, StorageError> {
    let mut out = BTreeMap::new();
    for item in db.prefix_iterator_cf(meta_cf(db)?, UNSYNCED_PREFIX) {
        let (k, v) = item?;
        if !k.starts_with(UNSYNCED_PREFIX) {
            break;
        }
        let Some(p) = k[UNSYNCED_PREFIX.len()..].first_chunk::<4>() else { continue };
        let peers: BTreeSet<String> = match v.split_first() {
            Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|_| corrupt("unsynced"))?,
            _ => return Err(corrupt("unsynced")),
        };
        out.insert(u32::from_be_bytes(*p), peers);
    }
    Ok(out)
}

impl Storage {
    pub(super) fn persist_dirty(&self, partition: u32, dirty: bool) -> Result<(), StorageError> {
        let cf = self.cf(CF_META)?;
        let key = partition_key(DIRTY_PREFIX, partition);
        if dirty {
            self.db.put_cf_opt(cf, key, [FORMAT], &write_options(false))?;
        } else {
            self.db.delete_cf(cf, key)?;
        }
        Ok(())
    }

    /// Records that the partition's tree was just rebuilt from its data.
    pub(super) fn set_rebuilt_now(&self, partition: u32) -> Result<(), StorageError> {
        let cf = self.cf(CF_META)?;
        self.db.put_cf(cf, partition_key(REBUILT_PREFIX, partition), number(crate::util::now_ms()))?;
        Ok(())
    }

    /// When the partition's tree was last rebuilt from its data (ms since
    /// the epoch); persisted, so the periodic rebuild is not postponed by
    /// every restart. A partition never rebuilt counts from the first time
    /// it is asked about.
    pub fn rebuilt_at_ms(&self, partition: u32) -> Result<u64, StorageError> {
        let cf = self.cf(CF_META)?;
        match self.db.get_cf(cf, partition_key(REBUILT_PREFIX, partition))? {
            Some(v) => read_number("rebuilt", &v),
            None => {
                self.set_rebuilt_now(partition)?;
                Ok(crate::util::now_ms())
            }
        }
    }

    /// True when this open created the database (no epoch was stored): the
    /// directory is new, or was wiped.
    pub fn created_fresh(&self) -> bool {
        self.fresh
    }

    /// The persisted dot lease (0 if none yet).
    pub fn dot_lease(&self) -> Result<u64, StorageError> {
        let cf = self.cf(CF_META)?;
        match self.db.get_cf(cf, META_DOT_LEASE)? {
            None => Ok(0),
            Some(v) => read_number("dot_lease", &v),
        }
    }

    /// Persists a new dot lease, synced: a counter is only used once the
    /// lease covering it is on disk.
    pub fn set_dot_lease(&self, lease: u64) -> Result<(), StorageError> {
        self.db.put_cf_opt(self.cf(CF_META)?, META_DOT_LEASE, number(lease), &synced())?;
        Ok(())
    }

    /// What this node last recorded of `peer` serving (`None`: never seen).
    pub fn peer_seen(&self, peer: &str) -> Result<Option<Sighting>, StorageError> {
        let cf = self.cf(CF_META)?;
        Ok(self.db.get_pinned_cf(cf, seen_key(peer))?.and_then(|v| match v.as_ref() {
            [FORMAT, rest @ ..] => postcard::from_bytes(rest).ok(),
            _ => None,
        }))
    }

    /// Records a sighting of `peer`, unless one of the same directory with
    /// a higher incarnation is already recorded (an older copy coming back
    /// must not erase the evidence of the newer one).
    pub fn mark_peer_seen(&self, peer: &str, seen: Sighting) -> Result<(), StorageError> {
        let old = self.peer_seen(peer)?;
        if old.is_some_and(|o| o == seen || (o.dir == seen.dir && o.incarnation > seen.incarnation)) {
            return Ok(());
        }
        let cf = self.cf(CF_META)?;
        let mut value = vec![FORMAT];
        value.extend(postcard::to_stdvec(&seen).map_err(|e| StorageError::CorruptMeta(e.to_string()))?);
        self.db.put_cf_opt(cf, seen_key(peer), value, &synced())?;
        Ok(())
    }

    /// This run of this directory, as peers record it.
    pub fn sighting(&self) -> Sighting {
        Sighting { dir: self.dir_id, incarnation: self.incarnation(), run: self.run_id }
    }

    /// This process's incarnation of the directory: one more than the last
    /// open's, persisted (synced) at open.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Peers remember a higher incarnation than this copy of the data
    /// knows: it is an older copy. Jump past what they remember, so the
    /// next restart is not mistaken for one again.
    pub fn raise_incarnation(&self, above: u64) -> Result<(), StorageError> {
        let next = above.saturating_add(1).max(self.incarnation());
        store_incarnation(&self.db, next)?;
        self.incarnation.store(next, Ordering::Release);
        Ok(())
    }

    /// The actor-generation of fallback writes (see
    /// `Replica::coordinate_as_fallback`): changes whenever this node
    /// forgets a hint, so an actor never mints for a key it has forgotten.
    pub fn fallback_generation(&self) -> u64 {
        self.fallback_generation.load(Ordering::SeqCst)
    }

    pub(super) fn bump_fallback_generation(&self) {
        self.fallback_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Written (synced) when the database closes after a clean shutdown;
    /// its absence at open means the last run ended in a crash or power
    /// cut, which may have lost the WAL's unsynced tail.
    pub(super) fn mark_clean_shutdown(&self) -> Result<(), StorageError> {
        self.db.put_cf_opt(self.cf(CF_META)?, META_CLEAN, [FORMAT], &synced())?;
        Ok(())
    }

    /// Marks `partitions` unsynced: each must complete an exchange with
    /// every listed peer before this node's answers for it count again.
    pub fn set_unsynced(&self, partitions: BTreeMap<u32, BTreeSet<String>>) -> Result<(), StorageError> {
        // Written (synced) before the in-memory state changes, and without
        // holding its lock: reads check it on every answer. Only the
        // start-up greeting and the anti-entropy worker call this, one at a
        // time.
        let cf = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (p, peers) in &partitions {
            let key = unsynced_key(*p);
            if peers.is_empty() {
                batch.delete_cf(cf, key);
                continue;
            }
            let mut value = vec![FORMAT];
            value.extend(postcard::to_stdvec(peers).map_err(|e| StorageError::CorruptMeta(e.to_string()))?);
            batch.put_cf(cf, key, value);
        }
        self.db.write_opt(batch, &synced())?;
        let mut state = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        for (p, peers) in partitions {
            if peers.is_empty() {
                state.remove(&p);
            } else {
                state.insert(p, peers);
            }
        }
        let pending = self.history_pending.load(Ordering::Acquire);
        self.any_unsynced.store(pending || !state.is_empty(), Ordering::Release);
        Ok(())
    }

    /// An exchange with `peer` covering `partitions` completed without a
    /// failed key: `peer` is struck off their lists.
    pub fn synced_with(&self, peer: &str, partitions: &[u32]) -> Result<(), StorageError> {
        if !self.any_unsynced.load(Ordering::Acquire) {
            return Ok(());
        }
        let changed: BTreeMap<u32, BTreeSet<String>> = {
            let state = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
            partitions
                .iter()
                .filter_map(|p| {
                    let peers = state.get(p)?;
                    peers.contains(peer).then(|| {
                        let mut rest = peers.clone();
                        rest.remove(peer);
                        (*p, rest)
                    })
                })
                .collect()
        };
        if changed.is_empty() {
            return Ok(());
        }
        self.set_unsynced(changed)
    }

    /// Whether this node's copy of `partition` may lack acknowledged writes.
    pub fn is_unsynced(&self, partition: u32) -> bool {
        self.any_unsynced.load(Ordering::Acquire)
            && (self.history_pending.load(Ordering::Acquire)
                || self.unsynced.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&partition))
    }

    /// This node's history is not settled yet, or some partition is still
    /// unsynced: its hints may be stale too.
    pub fn recovering(&self) -> bool {
        self.any_unsynced.load(Ordering::Acquire)
    }

    /// The hello round of this start is not over (see `history_known`).
    pub fn history_pending(&self) -> bool {
        self.history_pending.load(Ordering::Acquire)
    }

    /// The peers have been asked (see `anti_entropy::recovery`): from now
    /// on only the persisted unsynced partitions are non-authoritative.
    pub fn history_known(&self) {
        let state = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        self.history_pending.store(false, Ordering::Release);
        self.any_unsynced.store(!state.is_empty(), Ordering::Release);
    }

    /// The unsynced partitions and the peers each still waits for.
    pub fn unsynced(&self) -> BTreeMap<u32, BTreeSet<String>> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seen_and_unsynced_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), 1 << 20).unwrap();
            assert!(s.created_fresh());
            assert_eq!(s.dot_lease().unwrap(), 0);
            s.set_dot_lease(42).unwrap();
            s.mark_peer_seen("b", Sighting { dir: 7, incarnation: 3, run: 1 }).unwrap();
            s.mark_peer_seen("b", Sighting { dir: 7, incarnation: 2, run: 2 }).unwrap();
            let peers: BTreeSet<String> = ["b".to_string(), "c".to_string()].into();
            s.set_unsynced([(1, peers.clone()), (2, peers)].into()).unwrap();
            s.synced_with("b", &[1, 2]).unwrap();
            s.synced_with("c", &[2]).unwrap();
        }
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        assert!(!s.created_fresh() && !s.unclean_start(), "dropped cleanly");
        assert!(s.is_unsynced(3), "every answer waits until the peers were asked");
        s.history_known();
        assert_eq!(s.dot_lease().unwrap(), 42);
        let b = Sighting { dir: 7, incarnation: 3, run: 1 };
        assert_eq!(
            (s.peer_seen("b").unwrap(), s.peer_seen("c").unwrap()),
            (Some(b), None),
            "the highest is kept"
        );
        assert!(s.is_unsynced(1) && !s.is_unsynced(2) && !s.is_unsynced(3));
        assert_eq!(s.unsynced()[&1], BTreeSet::from(["c".to_string()]));
        s.synced_with("c", &[1]).unwrap();
        assert!(!s.is_unsynced(1) && s.unsynced().is_empty());
    }
}
