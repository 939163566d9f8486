//! Hinted handoff's durable queue: objects a fallback node holds for a home
//! replica that was unreachable when they were written.
//!
//! Layout in the `hints` column family: `[target len: u8][target][partition
//! u32 BE][key]` → `[created ms u64 BE][record]`. One entry per (target,
//! key): a second hinted write of the key merges into it, so the queue holds
//! at most one object per key, never a log of every write. An entry is
//! removed only when the target acknowledged exactly the bytes it holds
//! (a write that merged in meanwhile keeps it for the next delivery).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::WriteBatch;

use super::db::{CF_HINTS, Db, write_options};
use super::record::{self, Fresh};
use super::{Object, StorageError};

/// One queued hint, as read for delivery.
#[derive(Debug)]
pub struct Hint {
    pub partition: u32,
    pub key: Vec<u8>,
    pub created_ms: u64,
    /// `None` if the stored record failed its integrity check.
    pub object: Option<Object>,
    /// The stored value, compared on removal.
    raw: Vec<u8>,
}

impl Hint {
    pub fn size(&self) -> usize {
        self.key.len() + self.raw.len()
    }
}

fn target_prefix(target: &str) -> Vec<u8> {
    let t = target.as_bytes();
    let mut k = Vec::with_capacity(1 + t.len());
    k.push(t.len().min(255) as u8);
    k.extend_from_slice(&t[..t.len().min(255)]);
    k
}

fn hint_key(target: &str, partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = target_prefix(target);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn split_value(v: &[u8]) -> Option<(u64, &[u8])> {
    let (ms, rest) = v.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*ms), rest))
}

/// The `hints` column family, with a count of the hints queued per target
/// (kept in memory, so a lookup for a key only probes targets with hints).
pub struct Hints {
    db: Arc<Db>,
    counts: Mutex<BTreeMap<String, u64>>,
    /// The actor-generation of fallback writes (see
    /// `Replica::coordinate_as_fallback`): changes whenever this node
    /// forgets a hint, so an actor never mints for a key it has forgotten.
    /// Random per open: a restart forgets nothing on disk, but a fresh
    /// start must not reuse a generation of an earlier run.
    fallback_generation: AtomicU64,
}

impl Hints {
    /// Counts the queued hints per target (at open; kept current after).
    pub(super) fn open(db: Arc<Db>) -> Result<Hints, StorageError> {
        let mut counts = BTreeMap::new();
        for item in db.rocks.iterator_cf(db.cf(CF_HINTS)?, rocksdb::IteratorMode::Start) {
            let (k, _) = item?;
            let len = k.first().copied().unwrap_or(0) as usize;
            let target = String::from_utf8_lossy(k.get(1..1 + len).unwrap_or_default()).into_owned();
            *counts.entry(target).or_insert(0) += 1;
        }
        Ok(Hints { db, counts: Mutex::new(counts), fallback_generation: AtomicU64::new(rand::random()) })
    }

    /// See the field's doc.
    pub fn fallback_generation(&self) -> u64 {
        self.fallback_generation.load(Ordering::SeqCst)
    }

    fn bump_fallback_generation(&self) {
        self.fallback_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Hints queued per target node.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count_hint(&self, target: &str, delta: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.entry(target.to_string()).or_insert(0);
        *c = c.saturating_add_signed(delta);
    }

    /// Merges each `(target, partition, key)` into the hint queued for
    /// `target`, in one write batch: `f(i, current)` gives the new object,
    /// or declines the item (`None`): nothing is written for it and its
    /// slot in the result is `None`, as for an item whose new values do not
    /// match their digests.
    pub fn modify_if(
        &self,
        items: &[(&str, u32, &[u8])],
        sync: bool,
        now_ms: u64,
        mut f: impl FnMut(usize, Option<Object>) -> Option<Object>,
    ) -> Result<Vec<Option<Object>>, StorageError> {
        let cf = self.db.cf(CF_HINTS)?;
        let keys: Vec<Vec<u8>> = items.iter().map(|(t, p, k)| hint_key(t, *p, k)).collect();
        let _guards = self.db.lock_keys(&keys);
        let mut written: std::collections::HashMap<&[u8], (u64, Object)> = Default::default();
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(items.len());
        let mut new_targets = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let (created, current, stored) = match written.get(k.as_slice()) {
                Some((created, o)) => (*created, Some(o.clone()), true),
                None => match self.db.rocks.get_pinned_cf(cf, k)? {
                    Some(v) => match split_value(&v) {
                        // The oldest content sets the age: a hint expires no
                        // later than the first write it carries would.
                        Some((created, rec)) => (created, self.db.decode_checked(items[i].1, rec), true),
                        None => (now_ms, None, true),
                    },
                    None => (now_ms, None, false),
                },
            };
            let fresh = Fresh::of(current.as_ref());
            let Some(next) = f(i, current) else {
                out.push(None);
                continue;
            };
            if !fresh.intact(&next) {
                self.db.refused_value(items[i].1);
                out.push(None);
                continue;
            }
            if !stored {
                new_targets.push(items[i].0);
            }
            let mut value = created.to_be_bytes().to_vec();
            value.extend_from_slice(&record::encode(&next));
            batch.put_cf(cf, k, value);
            written.insert(k.as_slice(), (created, next.clone()));
            out.push(Some(next));
        }
        self.db.rocks.write_opt(batch, &write_options(sync))?;
        for t in new_targets {
            self.count_hint(t, 1);
        }
        Ok(out)
    }

    /// Whether this node holds a hint for `key`, for any target (tombstone
    /// GC must not reap a key a hint could still bring back).
    pub fn holds(&self, partition: u32, key: &[u8]) -> Result<bool, StorageError> {
        let cf = self.db.cf(CF_HINTS)?;
        for (target, count) in self.counts() {
            if count > 0 && self.db.rocks.get_pinned_cf(cf, hint_key(&target, partition, key))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every hint this node holds for `key`, whatever its target: a
    /// fallback write merges them all, so its object holds every version
    /// this node minted for the key and still remembers.
    /// A hint that fails its integrity check is a forgotten one: the
    /// fallback generation moves on before the caller mints.
    pub fn of_key(&self, partition: u32, key: &[u8]) -> Result<Vec<Object>, StorageError> {
        let cf = self.db.cf(CF_HINTS)?;
        let mut out = Vec::new();
        for (target, count) in self.counts() {
            if count == 0 {
                continue;
            }
            let Some(v) = self.db.rocks.get_pinned_cf(cf, hint_key(&target, partition, key))? else {
                continue;
            };
            match split_value(&v).and_then(|(_, rec)| self.db.decode_checked(partition, rec)) {
                Some(object) => out.push(object),
                None => self.bump_fallback_generation(),
            }
        }
        Ok(out)
    }

    /// The object queued for `target` under `key`, if any.
    pub fn get(&self, target: &str, partition: u32, key: &[u8]) -> Result<Option<Object>, StorageError> {
        let cf = self.db.cf(CF_HINTS)?;
        let Some(v) = self.db.rocks.get_pinned_cf(cf, hint_key(target, partition, key))? else {
            return Ok(None);
        };
        Ok(split_value(&v).and_then(|(_, rec)| self.db.decode_checked(partition, rec)))
    }

    /// Up to `max_items` / about `max_bytes` of `target`'s hints, in key
    /// order, starting after `after` (the last hint of the previous page).
    pub fn page(
        &self,
        target: &str,
        after: Option<(u32, &[u8])>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        let cf = self.db.cf(CF_HINTS)?;
        let prefix = target_prefix(target);
        let start = match after {
            Some((partition, key)) => {
                let mut k = hint_key(target, partition, key);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        let (mut out, mut bytes) = (Vec::new(), 0);
        for item in self.db.rocks.iterator_cf(cf, mode) {
            let (k, v) = item?;
            // Budgeted in bytes: an item that would pass the budget waits for
            // the next page, unless it is the first (a large object travels
            // alone rather than never).
            let size = k.len() + v.len();
            if !k.starts_with(&prefix) || out.len() >= max_items || (bytes > 0 && bytes + size > max_bytes) {
                break;
            }
            let rest = &k[prefix.len()..];
            let Some((p, key)) = rest.split_first_chunk::<4>() else { continue };
            let partition = u32::from_be_bytes(*p);
            let (created_ms, object) = match split_value(&v) {
                Some((ms, rec)) => (ms, self.db.decode_checked(partition, rec)),
                None => (0, None),
            };
            bytes += size;
            out.push(Hint { partition, key: key.to_vec(), created_ms, object, raw: v.to_vec() });
        }
        Ok(out)
    }

    /// Removes each hint that still holds exactly what was read (delivered
    /// or expired). Returns how many were removed.
    pub fn remove(&self, target: &str, hints: &[&Hint]) -> Result<usize, StorageError> {
        let cf = self.db.cf(CF_HINTS)?;
        let mut removed = 0;
        for h in hints {
            let k = hint_key(target, h.partition, &h.key);
            let _guard = self.db.lock_for(&k);
            let same = self.db.rocks.get_pinned_cf(cf, &k)?.is_some_and(|v| v.as_ref() == h.raw.as_slice());
            if same {
                // Before the delete: a fallback write that no longer sees
                // this hint (it reads the hints, then the generation) must
                // see the new generation.
                self.bump_fallback_generation();
                self.db.rocks.delete_cf(cf, &k)?;
                removed += 1;
            }
        }
        self.count_hint(target, -(removed as i64));
        Ok(removed)
    }
}
