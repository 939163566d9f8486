//! The `meta` column family: small facts about this node's own history that
//! must survive a restart, and the actor epoch that versions are stamped
//! with.
//!
//! - the *actor epoch*: a random number fixed when the database is created
//!   and renewed whenever this node may have forgotten dots it minted (a
//!   lost WAL tail, a restored snapshot, a replaced corrupt record), so
//!   `node_id.epoch` never mints a dot twice;
//! - the directory's random id, its *incarnation* (one more per open) and
//!   the clean-shutdown marker (consumed at open);
//! - the *dot lease*: the highest version counter this node may mint
//!   before it has to persist a higher one (see `replica::stamp`);
//! - what this node has seen of each peer ([`Sighting`]): how a peer whose
//!   directory was wiped or restored learns that it lost data.
//!
//! The unsynced partitions ([`super::unsynced`]) and the trees' rebuild
//! marks ([`super::tree`]) live in this column family too, under their own
//! prefixes, each owned by its type. Each value is `[format 1][payload]`;
//! numbers are u64 big-endian.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::StorageError;
use super::db::{CF_META, Db, write_options};

const META_EPOCH: &[u8] = b"actor_epoch";
const META_DOT_LEASE: &[u8] = b"dot_lease";
const SEEN_PREFIX: &[u8] = b"seen/";
pub(super) const FORMAT: u8 = 1;
const META_INCARNATION: &[u8] = b"incarnation";
const META_DIR_ID: &[u8] = b"dir_id";
const META_CLEAN: &[u8] = b"clean_shutdown";
const META_LAYOUT: &[u8] = b"layout_history";

/// `[format][u64 BE]`, the value of every numeric entry.
pub(super) fn number(n: u64) -> Vec<u8> {
    let mut value = vec![FORMAT];
    value.extend_from_slice(&n.to_be_bytes());
    value
}

/// The inverse of [`number`]; `what` names the entry in the error.
pub(super) fn read_number(what: &str, value: &[u8]) -> Result<u64, StorageError> {
    match value {
        [FORMAT, rest @ ..] => rest.try_into().map(u64::from_be_bytes).map_err(|_| corrupt(what)),
        _ => Err(corrupt(what)),
    }
}

pub(super) fn corrupt(what: &str) -> StorageError {
    StorageError::CorruptMeta(format!("{what} is not [1, payload]"))
}

pub(super) fn synced() -> rocksdb::WriteOptions {
    write_options(true)
}

/// `[prefix][partition u32 BE]`: a per-partition entry of `meta`.
pub(super) fn partition_key(prefix: &[u8], partition: u32) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
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

/// This node's identity and history, as kept in `meta`.
pub struct Meta {
    db: Arc<Db>,
    epoch: AtomicU32,
    /// This open created the database (see [`Meta::created_fresh`]).
    fresh: bool,
    /// The last run did not shut down cleanly.
    unclean_start: bool,
    incarnation: AtomicU64,
    dir_id: u64,
    run_id: u64,
}

impl Meta {
    /// Reads (or, in a new directory, creates) the identity, counts this
    /// open as a new incarnation, and renews the epoch after an unclean
    /// shutdown.
    pub(super) fn open(db: Arc<Db>) -> Result<Meta, StorageError> {
        let cf = db.cf(CF_META)?;
        let fresh = db.rocks.get_cf(cf, META_EPOCH)?.is_none();
        let last = match db.rocks.get_cf(cf, META_INCARNATION)? {
            None => 0,
            Some(v) => read_number("incarnation", &v)?,
        };
        let clean = db.rocks.get_cf(cf, META_CLEAN)?.is_some();
        db.rocks.delete_cf_opt(cf, META_CLEAN, &synced())?;
        let dir_id = match db.rocks.get_cf(cf, META_DIR_ID)? {
            Some(v) => read_number("dir_id", &v)?,
            None => {
                let id: u64 = rand::random();
                db.rocks.put_cf_opt(cf, META_DIR_ID, number(id), &synced())?;
                id
            }
        };
        let mut epoch = match db.rocks.get_cf(cf, META_EPOCH)? {
            Some(v) => match v.as_slice() {
                [FORMAT, a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                _ => return Err(StorageError::CorruptMeta("actor_epoch is not [1, u32 BE]".into())),
            },
            None => store_new_epoch(&db)?,
        };
        let unclean_start = !fresh && !clean;
        if unclean_start {
            // A crash or power cut may have lost the WAL's unsynced tail,
            // and with it dots this node minted: its old actor's history is
            // no longer complete here, so later dots get a new actor.
            epoch = store_new_epoch(&db)?;
            tracing::warn!(epoch, "the last run did not shut down cleanly: new actor epoch");
        }
        let meta = Meta {
            db,
            epoch: AtomicU32::new(epoch),
            fresh,
            unclean_start,
            incarnation: AtomicU64::new(last + 1),
            dir_id,
            run_id: rand::random(),
        };
        meta.store_incarnation(last + 1)?;
        Ok(meta)
    }

    /// The actor epoch: versions are stamped `node_id.epoch`.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The last run ended without a clean shutdown (see [`Meta::open`]).
    pub fn unclean_start(&self) -> bool {
        self.unclean_start
    }

    /// True when this open created the database (no epoch was stored): the
    /// directory is new, or was wiped.
    pub fn created_fresh(&self) -> bool {
        self.fresh
    }

    /// This directory is an older copy than its peers have seen (restored
    /// from a snapshot): the same remedy as a lost WAL tail, a new epoch.
    pub fn renew_epoch_after_restore(&self) -> Result<(), StorageError> {
        self.renew_epoch("peers have seen a newer copy of this node's data")
    }

    /// Stores (synced) and adopts a new random epoch; `why` is logged.
    pub(super) fn renew_epoch(&self, why: &str) -> Result<(), StorageError> {
        let epoch = store_new_epoch(&self.db)?;
        self.epoch.store(epoch, Ordering::Release);
        tracing::warn!(epoch, why, "new actor epoch");
        Ok(())
    }

    /// The persisted dot lease (0 if none yet).
    pub fn dot_lease(&self) -> Result<u64, StorageError> {
        match self.db.rocks.get_cf(self.db.cf(CF_META)?, META_DOT_LEASE)? {
            None => Ok(0),
            Some(v) => read_number("dot_lease", &v),
        }
    }

    /// Persists a new dot lease, synced: a counter is only used once the
    /// lease covering it is on disk.
    pub fn set_dot_lease(&self, lease: u64) -> Result<(), StorageError> {
        self.db.rocks.put_cf_opt(self.db.cf(CF_META)?, META_DOT_LEASE, number(lease), &synced())?;
        Ok(())
    }

    /// What this node last recorded of `peer` serving (`None`: never seen).
    pub fn peer_seen(&self, peer: &str) -> Result<Option<Sighting>, StorageError> {
        let cf = self.db.cf(CF_META)?;
        Ok(self.db.rocks.get_pinned_cf(cf, seen_key(peer))?.and_then(|v| match v.as_ref() {
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
        let mut value = vec![FORMAT];
        value.extend(postcard::to_stdvec(&seen).map_err(|e| StorageError::CorruptMeta(e.to_string()))?);
        self.db.rocks.put_cf_opt(self.db.cf(CF_META)?, seen_key(peer), value, &synced())?;
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
        self.store_incarnation(next)?;
        self.incarnation.store(next, Ordering::Release);
        Ok(())
    }

    fn store_incarnation(&self, incarnation: u64) -> Result<(), StorageError> {
        self.db.rocks.put_cf_opt(self.db.cf(CF_META)?, META_INCARNATION, number(incarnation), &synced())?;
        Ok(())
    }

    /// The cluster's layout history as this node last stored it (opaque
    /// here: `membership` owns its encoding), `None` in a new directory.
    pub fn layout_history(&self) -> Result<Option<Vec<u8>>, StorageError> {
        match self.db.rocks.get_cf(self.db.cf(CF_META)?, META_LAYOUT)? {
            None => Ok(None),
            Some(v) => match v.split_first() {
                Some((&FORMAT, rest)) => Ok(Some(rest.to_vec())),
                _ => Err(corrupt("layout_history")),
            },
        }
    }

    /// Stores the layout history, synced if `sync` (a node must not come
    /// back from a crash having forgotten a version it acknowledged or a
    /// mark it made; what it merged from peers they still hold).
    pub fn set_layout_history(&self, encoded: &[u8], sync: bool) -> Result<(), StorageError> {
        let mut value = Vec::with_capacity(encoded.len() + 1);
        value.push(FORMAT);
        value.extend_from_slice(encoded);
        self.db.rocks.put_cf_opt(self.db.cf(CF_META)?, META_LAYOUT, value, &write_options(sync))?;
        Ok(())
    }

    /// Written (synced) when the database closes after a clean shutdown;
    /// its absence at open means the last run ended in a crash or power
    /// cut, which may have lost the WAL's unsynced tail.
    pub(super) fn mark_clean_shutdown(&self) -> Result<(), StorageError> {
        self.db.rocks.put_cf_opt(self.db.cf(CF_META)?, META_CLEAN, [FORMAT], &synced())?;
        Ok(())
    }
}

/// A new random epoch, synced and flushed before it is used.
fn store_new_epoch(db: &Db) -> Result<u32, StorageError> {
    let cf = db.cf(CF_META)?;
    let epoch: u32 = rand::random();
    let mut value = vec![FORMAT];
    value.extend_from_slice(&epoch.to_be_bytes());
    db.rocks.put_cf_opt(cf, META_EPOCH, value, &synced())?;
    db.rocks.flush_cf(cf)?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use crate::storage::{Sighting, Storage};

    #[test]
    fn lease_and_sightings_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let s = Storage::open(dir.path(), 1 << 20).unwrap();
            let m = s.meta();
            assert!(m.created_fresh());
            epoch = m.epoch();
            assert_eq!(m.dot_lease().unwrap(), 0);
            m.set_dot_lease(42).unwrap();
            assert_eq!(m.layout_history().unwrap(), None);
            m.set_layout_history(b"v1", true).unwrap();
            m.set_layout_history(b"v2", false).unwrap();
            m.mark_peer_seen("b", Sighting { dir: 7, incarnation: 3, run: 1 }).unwrap();
            m.mark_peer_seen("b", Sighting { dir: 7, incarnation: 2, run: 2 }).unwrap();
        }
        let s = Storage::open(dir.path(), 1 << 20).unwrap();
        let m = s.meta();
        assert!(!m.created_fresh() && !m.unclean_start(), "dropped cleanly");
        assert_eq!(m.epoch(), epoch, "a clean restart keeps the epoch");
        assert_eq!(m.incarnation(), 2, "one incarnation per open");
        assert_eq!(m.dot_lease().unwrap(), 42);
        assert_eq!(m.layout_history().unwrap().as_deref(), Some(&b"v2"[..]), "the last layout stored");
        let b = Sighting { dir: 7, incarnation: 3, run: 1 };
        assert_eq!(
            (m.peer_seen("b").unwrap(), m.peer_seen("c").unwrap()),
            (Some(b), None),
            "the highest is kept"
        );
    }
}
