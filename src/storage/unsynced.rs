//! The partitions this node's copy may lack acknowledged writes of (after a
//! wiped disk, a restored snapshot or a lost WAL tail), each with the homes
//! it still has to complete an anti-entropy exchange with. Until a
//! partition is synced, this node's answers for it do not count toward R
//! or PR. Kept under `unsynced/` in `meta`, and in memory behind a flag so
//! the read path pays one atomic load while there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::WriteBatch;

use super::StorageError;
use super::db::{CF_META, Db};
use super::meta::{FORMAT, corrupt, partition_key, synced};

const UNSYNCED_PREFIX: &[u8] = b"unsynced/";

pub struct Unsynced {
    db: Arc<Db>,
    partitions: Mutex<BTreeMap<u32, BTreeSet<String>>>,
    any: AtomicBool,
    /// Set until the peers have answered this start's hello: until then
    /// the node does not know whether its data is an older copy, so every
    /// answer is non-authoritative.
    history_pending: AtomicBool,
}

impl Unsynced {
    /// Reads every `unsynced/` entry; the history is pending until
    /// [`Unsynced::history_known`].
    pub(super) fn open(db: Arc<Db>) -> Result<Unsynced, StorageError> {
        let mut partitions = BTreeMap::new();
        for item in db.rocks.prefix_iterator_cf(db.cf(CF_META)?, UNSYNCED_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(UNSYNCED_PREFIX) {
                break;
            }
            let Some(p) = k[UNSYNCED_PREFIX.len()..].first_chunk::<4>() else { continue };
            let peers: BTreeSet<String> = match v.split_first() {
                Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|_| corrupt("unsynced"))?,
                _ => return Err(corrupt("unsynced")),
            };
            partitions.insert(u32::from_be_bytes(*p), peers);
        }
        Ok(Unsynced {
            db,
            partitions: Mutex::new(partitions),
            any: AtomicBool::new(true),
            history_pending: AtomicBool::new(true),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, BTreeSet<String>>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `partitions` unsynced: each must complete an exchange with
    /// every listed peer before this node's answers for it count again (an
    /// empty list clears the partition).
    pub fn set(&self, partitions: BTreeMap<u32, BTreeSet<String>>) -> Result<(), StorageError> {
        // Written (synced) before the in-memory state changes, and without
        // holding its lock: reads check it on every answer. Only the
        // start-up greeting and the anti-entropy worker call this, one at a
        // time.
        let cf = self.db.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (p, peers) in &partitions {
            let key = partition_key(UNSYNCED_PREFIX, *p);
            if peers.is_empty() {
                batch.delete_cf(cf, key);
                continue;
            }
            let mut value = vec![FORMAT];
            value.extend(postcard::to_stdvec(peers).map_err(|e| StorageError::CorruptMeta(e.to_string()))?);
            batch.put_cf(cf, key, value);
        }
        self.db.rocks.write_opt(batch, &synced())?;
        let mut state = self.state();
        for (p, peers) in partitions {
            if peers.is_empty() {
                state.remove(&p);
            } else {
                state.insert(p, peers);
            }
        }
        let pending = self.history_pending.load(Ordering::Acquire);
        self.any.store(pending || !state.is_empty(), Ordering::Release);
        Ok(())
    }

    /// An exchange with `peer` covering `partitions` completed without a
    /// failed key: `peer` is struck off their lists.
    pub fn synced_with(&self, peer: &str, partitions: &[u32]) -> Result<(), StorageError> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let changed: BTreeMap<u32, BTreeSet<String>> = {
            let state = self.state();
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
        self.set(changed)
    }

    /// Whether this node's copy of `partition` may lack acknowledged writes.
    pub fn contains(&self, partition: u32) -> bool {
        self.any.load(Ordering::Acquire)
            && (self.history_pending.load(Ordering::Acquire) || self.state().contains_key(&partition))
    }

    /// This node's history is not settled yet, or some partition is still
    /// unsynced: its hints may be stale too.
    pub fn recovering(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The hello round of this start is not over (see `history_known`).
    pub fn history_pending(&self) -> bool {
        self.history_pending.load(Ordering::Acquire)
    }

    /// The peers have been asked (see `anti_entropy::recovery`): from now
    /// on only the persisted unsynced partitions are non-authoritative.
    pub fn history_known(&self) {
        let state = self.state();
        self.history_pending.store(false, Ordering::Release);
        self.any.store(!state.is_empty(), Ordering::Release);
    }

    /// The unsynced partitions and the peers each still waits for.
    pub fn all(&self) -> BTreeMap<u32, BTreeSet<String>> {
        self.state().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::storage::Storage;

    #[test]
    fn unsynced_partitions_survive_a_reopen_until_every_peer_synced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), 1 << 20).unwrap();
            let peers: BTreeSet<String> = ["b".to_string(), "c".to_string()].into();
            s.unsynced().set([(1, peers.clone()), (2, peers)].into()).unwrap();
            s.unsynced().synced_with("b", &[1, 2]).unwrap();
            s.unsynced().synced_with("c", &[2]).unwrap();
        }
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let u = s.unsynced();
        assert!(u.contains(3), "every answer waits until the peers were asked");
        u.history_known();
        assert!(u.contains(1) && !u.contains(2) && !u.contains(3));
        assert_eq!(u.all()[&1], BTreeSet::from(["c".to_string()]));
        u.synced_with("c", &[1]).unwrap();
        assert!(!u.contains(1) && u.all().is_empty() && !u.recovering());
    }
}
