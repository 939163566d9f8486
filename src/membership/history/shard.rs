//! The per-member part of the history — each id's wish, and its three
//! tracker marks — cut into [`SHARDS`] shards by a hash of the id, wishes
//! and marks apart (marks change on every layout change, wishes with their
//! addresses seldom, so a mark sends no address along). A shard
//! is shared copy-on-write between histories (`Arc`), carries the digest
//! gossip compares, and caches how far its tracked members got, so that
//! with thousands of members a merge touches only the shards that differ,
//! a gossip exchange sends only those, and "has every node reached version
//! i" costs one look per shard instead of one per member.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

use super::{Desire, Digest, Mark, Tracker, Wish};

/// Shards of the per-member state: 256, so that with 10 000 members a
/// shard holds about 40 (one differing shard is a few KiB on the wire).
pub const SHARDS: usize = 256;

/// The shard an id belongs to: the top byte of its 64-bit FNV-1a hash
/// (cheap and the same on every node).
pub fn shard_of(id: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 56) as usize
}

/// A value of the per-member state, joined as a semilattice.
pub trait Lattice: Clone + PartialEq + std::fmt::Debug + Serialize + for<'de> Deserialize<'de> {
    /// Joins `other` into this value; true if it changed.
    fn join(&mut self, other: &Self) -> bool;
}

impl Lattice for Wish {
    fn join(&mut self, other: &Wish) -> bool {
        if *other > *self {
            *self = other.clone();
            return true;
        }
        false
    }
}

/// One member's progress on the three trackers; joined field by field
/// (each a max).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    pub ack: Option<Mark>,
    pub sync: Option<Mark>,
    pub sync_ack: Option<Mark>,
}

impl Marks {
    pub fn get(&self, t: Tracker) -> Option<&Mark> {
        match t {
            Tracker::Ack => self.ack.as_ref(),
            Tracker::Sync => self.sync.as_ref(),
            Tracker::SyncAck => self.sync_ack.as_ref(),
        }
    }

    pub fn slot(&mut self, t: Tracker) -> &mut Option<Mark> {
        match t {
            Tracker::Ack => &mut self.ack,
            Tracker::Sync => &mut self.sync,
            Tracker::SyncAck => &mut self.sync_ack,
        }
    }
}

impl Lattice for Marks {
    fn join(&mut self, other: &Marks) -> bool {
        let mut changed = max_into(&mut self.ack, &other.ack);
        changed |= max_into(&mut self.sync, &other.sync);
        changed |= max_into(&mut self.sync_ack, &other.sync_ack);
        changed
    }
}

/// Whether a wish removes its member as dead.
pub fn removes(wish: &Wish) -> bool {
    wish.desire == Desire::Removed
}

fn max_into<T: Ord + Clone>(ours: &mut Option<T>, theirs: &Option<T>) -> bool {
    match (ours.as_ref(), theirs) {
        (_, None) => false,
        (Some(mine), Some(t)) if mine >= t => false,
        (_, Some(t)) => {
            *ours = Some(t.clone());
            true
        }
    }
}

/// How far a marks shard's tracked members got, per tracker: the lowest
/// version index any of them reached (`i64::MAX` with none tracked, -1
/// when one has no valid mark), for the chain whose digest is the first
/// element and the wishes shard (which says who was removed) whose digest
/// is the second.
type Progress = (Digest, u64, [i64; 3]);

/// A shard's entries: ids and values are shared (`Arc`) between the copies
/// of a shard, so a copy made to change one entry copies pointers, and a
/// node holds one copy of a value however many merged shards name it.
pub type Entries<V> = BTreeMap<Arc<str>, Arc<V>>;

/// The entries of one shard, with their digest. Encoded as its entries.
#[derive(Debug)]
pub struct Shard<V> {
    entries: Entries<V>,
    digest: u64,
    /// Bytes of the entries' encoding.
    encoded_len: usize,
    progress: Mutex<Option<Progress>>,
}

impl<V: Lattice> Serialize for Shard<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl<'de, V: Lattice> Deserialize<'de> for Shard<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shard<V>, D::Error> {
        Entries::<V>::deserialize(d).map(Shard::new)
    }
}

impl<V: Lattice> Clone for Shard<V> {
    fn clone(&self) -> Shard<V> {
        Shard::new(self.entries.clone())
    }
}

impl<V: Lattice> PartialEq for Shard<V> {
    fn eq(&self, other: &Shard<V>) -> bool {
        self.digest == other.digest && self.entries == other.entries
    }
}

impl<V: Lattice + Eq> Eq for Shard<V> {}

impl<V: Lattice> Default for Shard<V> {
    fn default() -> Shard<V> {
        Shard::new(BTreeMap::new())
    }
}

impl<V: Lattice> Shard<V> {
    pub fn new(entries: Entries<V>) -> Shard<V> {
        // Plain data: encoding cannot fail.
        let bytes = postcard::to_stdvec(&entries).unwrap_or_default();
        let digest = if entries.is_empty() {
            0
        } else {
            let d = Md5::digest(&bytes);
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        };
        Shard { entries, digest, encoded_len: bytes.len(), progress: Mutex::new(None) }
    }

    /// Its entries, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(id, v)| (&**id, &**v))
    }

    pub fn get(&self, id: &str) -> Option<&V> {
        self.entries.get(id).map(|v| &**v)
    }

    /// The first 8 bytes of the MD5 of the entries' encoding (0 when empty).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Bytes of the shard's encoding.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// The cached progress for `chain` and `wishes` (digests), computed by
    /// `compute` when the cache is for others (or empty).
    pub fn progress(
        &self,
        chain: Digest,
        wishes: u64,
        compute: impl FnOnce(&Shard<V>) -> [i64; 3],
    ) -> [i64; 3] {
        let mut cache = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((c, w, p)) if *c == chain && *w == wishes => *p,
            _ => {
                let p = compute(self);
                *cache = Some((chain, wishes, p));
                p
            }
        }
    }

    /// A copy with `id`'s value changed by `change` (inserted from
    /// `default` first if absent).
    pub fn with(&self, id: &str, default: impl FnOnce() -> V, change: impl FnOnce(&mut V)) -> Shard<V> {
        let mut entries = self.entries.clone();
        let (key, mut value) = match self.entries.get_key_value(id) {
            Some((k, v)) => (k.clone(), (**v).clone()),
            None => (Arc::from(id), default()),
        };
        change(&mut value);
        entries.insert(key, Arc::new(value));
        Shard::new(entries)
    }
}

/// Joins `theirs` into `ours`; true if `ours` changed. When the result is
/// `theirs` (it knew everything this one did), the shard is shared, not
/// copied.
pub fn join<V: Lattice>(ours: &mut Arc<Shard<V>>, theirs: &Arc<Shard<V>>) -> bool {
    if Arc::ptr_eq(ours, theirs) || (ours.digest == theirs.digest && ours.entries == theirs.entries) {
        return false;
    }
    let mut merged: Option<Entries<V>> = None;
    for (id, value) in &theirs.entries {
        let current = merged.as_ref().unwrap_or(&ours.entries).get(id);
        let next = match current {
            None => Some(value.clone()),
            Some(mine) if Arc::ptr_eq(mine, value) => None,
            Some(mine) => {
                let mut next = (**mine).clone();
                if !next.join(value) {
                    None
                } else if next == **value {
                    Some(value.clone())
                } else {
                    Some(Arc::new(next))
                }
            }
        };
        if let Some(next) = next {
            merged.get_or_insert_with(|| ours.entries.clone()).insert(id.clone(), next);
        }
    }
    let Some(entries) = merged else { return false };
    *ours = if theirs.entries == entries { theirs.clone() } else { Arc::new(Shard::new(entries)) };
    true
}
