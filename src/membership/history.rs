//! The layout history: which member sets the cluster has committed, which of
//! them still matter, and how far every node has got in moving to the
//! newest one. It is a state-based CRDT: [`History::merge`] is commutative,
//! associative and idempotent, so gossip in any order converges on one
//! history on every node, with no node in charge.
//!
//! The model is Garage's layout history (`rpc/layout/history.rs`), chosen
//! over Riak's forwarding handoff and Cassandra's pending ranges because its
//! safety argument is local and checkable: a write goes to a quorum in
//! *every* version still in the history, a read goes to the newest version
//! *every* node has finished syncing, and a version leaves the history only
//! when every node has said it reads from a newer one. Three trackers carry
//! those "every node has" facts:
//!
//! - `ack`: the node writes to this version's replica sets (and its writes
//!   that did not have finished), so data moved from here on misses nothing;
//! - `sync`: the node holds, for every partition it is a home of in this
//!   version, everything the older versions' homes held when `ack` was
//!   complete — a read from this version sees every acknowledged write;
//! - `sync_ack`: the node has seen `sync` complete and reads from here on,
//!   so the older versions (and the old owners' copies) may go.
//!
//! What members the cluster *should* have is a separate last-writer-wins
//! map, [`Wish`] per id (join, leave, remove, weight change). Any node whose
//! newest version differs from the wishes commits the next version
//! ([`History::commit`]). Two nodes may commit the same number at once (two
//! pods starting together): the version with the larger digest wins, the
//! loser's wishes stay in the map, and the next commit includes them. A
//! tracker mark names the digest of the version it was made for, so a mark
//! made for a losing version never counts for the winner.
//!
//! Built for thousands of members: versions are shared (`Arc`) between
//! copies, and the per-member state lives in [`shard::SHARDS`] shards
//! shared copy-on-write, each with a digest, so gossip exchanges a
//! [`Summary`] and then only the shards that differ ([`Delta`]), and the
//! "has every node reached version i" questions cost one cached look per
//! shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

use crate::config::MemberConfig;

mod exchange;
pub mod shard;

pub use exchange::{Delta, Summary};
pub use shard::Marks;
use shard::{SHARDS, Shard, removes, shard_of};

/// The MD5 of a version's number and members: what gossip compares.
pub type Digest = [u8; 16];

/// One committed member set. The ring is a pure function of it (plus the
/// cluster's fixed `partitions` and `max_n`). Its digest is computed once,
/// when it is made or decoded.
#[derive(Debug, Clone)]
pub struct Version {
    number: u64,
    /// Sorted by id.
    members: Vec<MemberConfig>,
    digest: Digest,
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.number == other.number && self.digest == other.digest && self.members == other.members
    }
}

impl Eq for Version {}

/// The encoded form of a [`Version`] (its digest is derived).
#[derive(Serialize)]
struct VersionRef<'a> {
    number: u64,
    members: &'a [MemberConfig],
}

#[derive(Deserialize)]
struct VersionWire {
    number: u64,
    members: Vec<MemberConfig>,
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        VersionRef { number: self.number, members: &self.members }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let w = VersionWire::deserialize(d)?;
        Ok(Version::new(w.number, w.members))
    }
}

impl Version {
    /// `members` must be sorted by id ([`History::validate`] checks it of a
    /// peer's).
    pub fn new(number: u64, members: Vec<MemberConfig>) -> Version {
        let mut h = Md5::new();
        h.update(number.to_be_bytes());
        for m in &members {
            for field in [&m.id, &m.client_url, &m.peer_url] {
                h.update((field.len() as u64).to_be_bytes());
                h.update(field.as_bytes());
            }
            h.update(m.weight.to_be_bytes());
        }
        Version { number, members, digest: h.finalize().into() }
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// Sorted by id.
    pub fn members(&self) -> &[MemberConfig] {
        &self.members
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn has(&self, id: &str) -> bool {
        self.members.binary_search_by(|m| m.id.as_str().cmp(id)).is_ok()
    }

    /// The order versions are chosen by: higher number, then larger digest.
    fn rank(&self) -> (u64, Digest) {
        (self.number, self.digest)
    }
}

/// What the cluster wants of one member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Desire {
    /// In the cluster, with these addresses and weight.
    Member(MemberConfig),
    /// Out of the next versions; still a node that acknowledges and serves
    /// as a source until no version names it (`cluster leave`).
    Leaving,
    /// Out, and gone: no longer waited for by the trackers nor asked for
    /// data (`cluster remove` of a dead member).
    Removed,
}

/// A Lamport stamp: the author's counter, then its id to break ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub counter: u64,
    pub author: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Wish {
    pub stamp: Stamp,
    pub desire: Desire,
}

/// One node's progress on one tracker: the version it reached (by number
/// and digest), `seq` ordering the node's own updates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mark {
    pub seq: u64,
    pub version: u64,
    pub digest: Digest,
}

/// The three trackers (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracker {
    Ack,
    Sync,
    SyncAck,
}

const TRACKERS: [Tracker; 3] = [Tracker::Ack, Tracker::Sync, Tracker::SyncAck];

/// Why a peer's history was not merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("peer is in cluster {theirs:?}, this node in {ours:?}")]
    OtherCluster { ours: String, theirs: String },
    #[error("peer's ring has {theirs} (partitions, max_n), this node's {ours:?}")]
    OtherRing { ours: (u32, u32), theirs: String },
    #[error("peer sent a malformed history: {0}")]
    Malformed(&'static str),
    #[error(
        "peer's first layout differs from this node's (nodes created from different member lists): refusing to merge"
    )]
    OtherGenesis,
}

/// What the version chain implies, computed once per chain and shared by
/// every copy of a history that holds it.
#[derive(Debug)]
struct Chain {
    /// Over the versions' numbers and digests.
    digest: Digest,
    /// The members of any version, by shard: the nodes the trackers wait
    /// for (less those removed, which their shard's entries tell).
    members_by_shard: Vec<Vec<String>>,
}

impl Chain {
    /// The chain of `versions`; the same `Arc` for every history of this
    /// process that holds the same versions (a node holds one or two, the
    /// simulation ten thousand copies of one).
    fn of(versions: &[Arc<Version>]) -> Arc<Chain> {
        use std::sync::{Mutex, OnceLock, Weak};
        static KNOWN: OnceLock<Mutex<std::collections::HashMap<Digest, Weak<Chain>>>> = OnceLock::new();
        let mut h = Md5::new();
        for v in versions {
            h.update(v.number.to_be_bytes());
            h.update(v.digest);
        }
        let digest: Digest = h.finalize().into();
        let mut known = KNOWN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(chain) = known.get(&digest).and_then(Weak::upgrade) {
            return chain;
        }
        let mut members_by_shard: Vec<Vec<String>> = vec![Vec::new(); SHARDS];
        for v in versions {
            for m in &v.members {
                let ids = &mut members_by_shard[shard_of(&m.id)];
                if !ids.contains(&m.id) {
                    ids.push(m.id.clone());
                }
            }
        }
        let chain = Arc::new(Chain { digest, members_by_shard });
        if known.len() >= 64 {
            known.retain(|_, c| c.strong_count() > 0);
        }
        known.insert(digest, Arc::downgrade(&chain));
        chain
    }
}

#[derive(Debug, Clone)]
pub struct History {
    cluster: String,
    partitions: u32,
    max_n: u32,
    /// Oldest first, consecutive numbers, never empty.
    versions: Vec<Arc<Version>>,
    /// Every id's wish, and its marks, [`SHARDS`] shards each by
    /// [`shard_of`].
    wishes: Vec<Arc<Shard<Wish>>>,
    marks: Vec<Arc<Shard<Marks>>>,
    /// Derived from `versions`.
    chain: Arc<Chain>,
}

impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        (&self.cluster, self.partitions, self.max_n) == (&other.cluster, other.partitions, other.max_n)
            && self.versions.len() == other.versions.len()
            && self.versions.iter().zip(&other.versions).all(|(a, b)| a == b)
            && same_shards(&self.wishes, &other.wishes)
            && same_shards(&self.marks, &other.marks)
    }
}

impl Eq for History {}

fn same_shards<V: shard::Lattice>(a: &[Arc<Shard<V>>], b: &[Arc<Shard<V>>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

/// The encoded form of a [`History`]: its versions, then its shards.
#[derive(Serialize)]
struct HistoryRef<'a> {
    cluster: &'a str,
    partitions: u32,
    max_n: u32,
    versions: &'a [Arc<Version>],
    wishes: &'a [Arc<Shard<Wish>>],
    marks: &'a [Arc<Shard<Marks>>],
}

#[derive(Deserialize)]
struct HistoryWire {
    cluster: String,
    partitions: u32,
    max_n: u32,
    versions: Vec<Arc<Version>>,
    wishes: Vec<Arc<Shard<Wish>>>,
    marks: Vec<Arc<Shard<Marks>>>,
}

/// Checks decoded shards: [`SHARDS`] of them, each entry in its own.
fn check_shards<V: shard::Lattice>(shards: &[Arc<Shard<V>>]) -> Result<(), &'static str> {
    if shards.len() != SHARDS {
        return Err("wrong shard count");
    }
    for (i, s) in shards.iter().enumerate() {
        if s.iter().any(|(id, _)| shard_of(id) != i) {
            return Err("an entry in the wrong shard");
        }
    }
    Ok(())
}

impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistoryRef {
            cluster: &self.cluster,
            partitions: self.partitions,
            max_n: self.max_n,
            versions: &self.versions,
            wishes: &self.wishes,
            marks: &self.marks,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for History {
    /// A history whose shards are not [`SHARDS`], or hold an entry of
    /// another shard, is refused here: every later look-up trusts both.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<History, D::Error> {
        let w = HistoryWire::deserialize(d)?;
        check_shards(&w.wishes).and_then(|()| check_shards(&w.marks)).map_err(serde::de::Error::custom)?;
        let chain = Chain::of(&w.versions);
        Ok(History {
            cluster: w.cluster,
            partitions: w.partitions,
            max_n: w.max_n,
            versions: w.versions,
            wishes: w.wishes,
            marks: w.marks,
            chain,
        })
    }
}

impl History {
    /// The history of a cluster created from a static member list: version
    /// 1, already synced by everyone (there is nothing to move).
    pub fn initial(cluster: &str, partitions: u32, max_n: u32, members: &[MemberConfig]) -> History {
        let mut sorted = members.to_vec();
        sorted.sort();
        sorted.dedup_by(|a, b| a.id == b.id);
        let version = Version::new(1, sorted);
        let mark = Mark { seq: 0, version: 1, digest: version.digest };
        let stamp = Stamp { counter: 0, author: String::new() };
        let mut wishes: Vec<shard::Entries<Wish>> = vec![BTreeMap::new(); SHARDS];
        let mut marks: Vec<shard::Entries<Marks>> = vec![BTreeMap::new(); SHARDS];
        let all = Arc::new(Marks { ack: Some(mark.clone()), sync: Some(mark.clone()), sync_ack: Some(mark) });
        for m in &version.members {
            let (s, id): (usize, Arc<str>) = (shard_of(&m.id), Arc::from(m.id.as_str()));
            let wish = Wish { stamp: stamp.clone(), desire: Desire::Member(m.clone()) };
            wishes[s].insert(id.clone(), Arc::new(wish));
            marks[s].insert(id, all.clone());
        }
        let versions = vec![Arc::new(version)];
        History {
            cluster: cluster.to_string(),
            partitions,
            max_n,
            chain: Chain::of(&versions),
            versions,
            wishes: wishes.into_iter().map(|e| Arc::new(Shard::new(e))).collect(),
            marks: marks.into_iter().map(|e| Arc::new(Shard::new(e))).collect(),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn max_n(&self) -> u32 {
        self.max_n
    }

    /// Every version still in force, oldest first.
    pub fn versions(&self) -> &[Arc<Version>] {
        &self.versions
    }

    /// The newest committed version.
    pub fn current(&self) -> &Version {
        // Never empty: every constructor and `merge` keeps one.
        &self.versions[self.versions.len() - 1]
    }

    /// What the cluster wants of `id`.
    pub fn wish_of(&self, id: &str) -> Option<&Wish> {
        self.wishes[shard_of(id)].get(id)
    }

    /// `id`'s tracker marks, if it made any.
    pub fn marks_of(&self, id: &str) -> Option<&Marks> {
        self.marks[shard_of(id)].get(id)
    }

    /// Every wish, by id (in shard order, not sorted).
    pub fn wishes(&self) -> impl Iterator<Item = (&str, &Wish)> {
        self.wishes.iter().flat_map(|s| s.iter())
    }

    /// Whether `id` was removed as dead.
    pub fn is_removed(&self, id: &str) -> bool {
        self.wish_of(id).is_some_and(removes)
    }

    /// A digest of the whole state: equal digests, nothing to exchange.
    pub fn digest(&self) -> Digest {
        let mut h = Md5::new();
        h.update((self.cluster.len() as u64).to_be_bytes());
        h.update(self.cluster.as_bytes());
        h.update(self.partitions.to_be_bytes());
        h.update(self.max_n.to_be_bytes());
        h.update(self.chain.digest);
        for s in &self.wishes {
            h.update(s.digest().to_be_bytes());
        }
        for s in &self.marks {
            h.update(s.digest().to_be_bytes());
        }
        h.finalize().into()
    }

    /// Checks what a peer's decoded history must hold before it is merged.
    pub fn validate(&self) -> Result<(), MergeError> {
        validate_chain(self.versions.iter().map(|v| &**v))?;
        check_shards(&self.wishes).and_then(|()| check_shards(&self.marks)).map_err(MergeError::Malformed)
    }

    /// Refuses a peer of another cluster or ring.
    pub fn check_peer(&self, cluster: &str, partitions: u32, max_n: u32) -> Result<(), MergeError> {
        if cluster != self.cluster {
            return Err(MergeError::OtherCluster { ours: self.cluster.clone(), theirs: cluster.to_string() });
        }
        if (partitions, max_n) != (self.partitions, self.max_n) {
            return Err(MergeError::OtherRing {
                ours: (self.partitions, self.max_n),
                theirs: format!("({partitions}, {max_n})"),
            });
        }
        Ok(())
    }

    /// Refuses a peer whose oldest version in force (`first`) is a version
    /// 1 other than this node's: two version 1s are two clusters made from
    /// different member lists (each marked synced by construction), and
    /// merging anything of theirs, a chain or a wish, would switch
    /// placement with nothing moved.
    pub fn check_genesis(&self, first: Option<(u64, Digest)>) -> Result<(), MergeError> {
        let ours = self.versions.first().map(|v| v.rank());
        match (ours, first) {
            (Some((1, a)), Some((1, b))) if a != b => Err(MergeError::OtherGenesis),
            _ => Ok(()),
        }
    }

    /// Merges a peer's history into this one; true if this one changed.
    pub fn merge(&mut self, other: &History) -> Result<bool, MergeError> {
        self.check_peer(&other.cluster, other.partitions, other.max_n)?;
        other.validate()?;
        let mut changed = self.adopt_chain(&other.versions)?;
        for (ours, theirs) in self.wishes.iter_mut().zip(&other.wishes) {
            changed |= shard::join(ours, theirs);
        }
        for (ours, theirs) in self.marks.iter_mut().zip(&other.marks) {
            changed |= shard::join(ours, theirs);
        }
        changed |= self.prune();
        Ok(changed)
    }

    /// Takes `theirs` as the version chain if it ranks higher (see
    /// [`chain_key`]); refuses one of another genesis.
    fn adopt_chain(&mut self, theirs: &[Arc<Version>]) -> Result<bool, MergeError> {
        self.check_genesis(theirs.first().map(|v| v.rank()))?;
        if chain_key(theirs.iter().map(|v| v.rank())) > chain_key(self.versions.iter().map(|v| v.rank())) {
            self.set_versions(theirs.to_vec());
            return Ok(true);
        }
        Ok(false)
    }

    fn set_versions(&mut self, versions: Vec<Arc<Version>>) {
        self.chain = Chain::of(&versions);
        self.versions = versions;
    }

    /// Records a wish of `author` about member `id`, stamped after every
    /// wish this node has seen.
    pub fn wish(&mut self, author: &str, id: &str, desire: Desire) {
        let counter = self.wishes().map(|(_, w)| w.stamp.counter).max().unwrap_or(0).saturating_add(1);
        let stamp = Stamp { counter, author: author.to_string() };
        let wish = Wish { stamp, desire };
        let shard = &mut self.wishes[shard_of(id)];
        *shard = Arc::new(shard.with(id, || wish.clone(), |w| *w = wish.clone()));
    }

    /// Asks for `desire` of member `id` and commits it, unless that is
    /// already both the wish and the newest version (a repeated request
    /// changes nothing); true if the history changed.
    pub fn request(&mut self, author: &str, id: &str, desire: Desire) -> bool {
        let in_force = match &desire {
            Desire::Member(m) => self.current().members.contains(m),
            Desire::Leaving | Desire::Removed => !self.current().has(id),
        };
        if in_force && self.wish_of(id).is_some_and(|w| w.desire == desire) {
            return false;
        }
        self.wish(author, id, desire);
        self.commit();
        true
    }

    /// Whether the wishes ask for a member set other than the newest
    /// version's (and not an empty one): a commit is due. Allocates
    /// nothing, so it can be asked every round of a large cluster.
    pub fn uncommitted(&self) -> bool {
        let current = &self.current().members;
        let mut wanted = 0;
        for (_, wish) in self.wishes() {
            if let Desire::Member(m) = &wish.desire {
                wanted += 1;
                let listed = current.binary_search_by(|c| c.id.as_str().cmp(&m.id)).ok().map(|i| &current[i]);
                if listed != Some(m) {
                    return true;
                }
            }
        }
        wanted > 0 && wanted != current.len()
    }

    /// The member set the wishes ask for (sorted by id).
    pub fn wanted(&self) -> Vec<MemberConfig> {
        let mut wanted: Vec<MemberConfig> = self
            .wishes()
            .filter_map(|(_, w)| match &w.desire {
                Desire::Member(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        wanted.sort();
        wanted
    }

    /// Commits the wished member set as the next version if it differs
    /// from the newest; true if it did. An empty wish set commits nothing.
    pub fn commit(&mut self) -> bool {
        let wanted = self.wanted();
        if wanted.is_empty() || wanted == self.current().members {
            return false;
        }
        let Some(number) = self.current().number.checked_add(1) else { return false };
        let mut versions = self.versions.clone();
        versions.push(Arc::new(Version::new(number, wanted)));
        self.set_versions(versions);
        true
    }

    /// The nodes whose progress the trackers wait for: every member of a
    /// version in force, except those removed as dead.
    pub fn tracked(&self) -> BTreeSet<&str> {
        self.chain
            .members_by_shard
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|id| !self.is_removed(id))
            .collect()
    }

    /// The index in [`History::versions`] a mark reaches: the version it
    /// names, if that is one of this chain (a mark made for a losing
    /// version of the same number, or for one pruned, reaches none).
    fn index_of(&self, mark: &Mark) -> Option<usize> {
        let first = self.versions.first()?;
        let at = usize::try_from(mark.version.checked_sub(first.number)?).ok()?;
        self.versions.get(at).filter(|v| v.digest == mark.digest).map(|_| at)
    }

    /// Whether `node`'s mark on `t` reaches version `index` of
    /// [`History::versions`].
    pub fn reached(&self, t: Tracker, node: &str, index: usize) -> bool {
        let mark = self.marks_of(node).and_then(|m| m.get(t));
        mark.and_then(|m| self.index_of(m)).is_some_and(|at| at >= index)
    }

    /// Whether every tracked node reached version `index` on `t`: per
    /// shard, the lowest index its tracked members reached (cached in the
    /// shard for this chain).
    pub fn all_reached(&self, t: Tracker, index: usize) -> bool {
        let slot = TRACKERS.iter().position(|x| *x == t).unwrap_or(0);
        let index = index as i64;
        self.marks.iter().enumerate().all(|(s, shard)| {
            let ids = &self.chain.members_by_shard[s];
            if ids.is_empty() {
                return true;
            }
            let wishes = &self.wishes[s];
            let progress = shard.progress(self.chain.digest, wishes.digest(), |shard| {
                let mut low = [i64::MAX; 3];
                for id in ids {
                    if wishes.get(id).is_some_and(removes) {
                        continue;
                    }
                    let marks = shard.get(id);
                    for (k, t) in TRACKERS.iter().enumerate() {
                        let at = marks.and_then(|m| m.get(*t)).and_then(|m| self.index_of(m));
                        low[k] = low[k].min(at.map_or(-1, |i| i as i64));
                    }
                }
                low
            });
            progress[slot] >= index
        })
    }

    /// Moves `node`'s mark on `t` to version `index`; true if it moved.
    /// Marks only go forward within the chain.
    pub fn mark(&mut self, t: Tracker, node: &str, index: usize) -> bool {
        let Some(v) = self.versions.get(index) else { return false };
        if self.reached(t, node, index) {
            return false;
        }
        let (version, digest) = (v.number, v.digest);
        let shard = &mut self.marks[shard_of(node)];
        *shard = Arc::new(shard.with(node, Marks::default, |m| {
            let slot = m.slot(t);
            let seq = slot.as_ref().map_or(0, |m| m.seq).saturating_add(1);
            *slot = Some(Mark { seq, version, digest });
        }));
        self.prune();
        true
    }

    /// The version reads go to (index into [`History::versions`]): the
    /// newest once every node has synced it, else the oldest in force.
    /// Never one in between: a sync mark at the newest also reaches the
    /// versions before it, but a node marks it having received only what
    /// the newest makes it a home of, so an intermediate version may never
    /// have been filled. The oldest always was (it was the read version
    /// when the ones before it were dropped), and every write still
    /// reaches it.
    pub fn read_index(&self) -> usize {
        let newest = self.versions.len() - 1;
        if self.all_reached(Tracker::Sync, newest) { newest } else { 0 }
    }

    /// The version `node` reads from: [`History::read_index`], except that
    /// instead of falling back to the oldest version it keeps to the one
    /// of its own `sync_ack` mark when that is later. That version was its
    /// read version (filled by then), and it stays in force everywhere
    /// until this node acknowledges a newer one; whereas the oldest in this
    /// node's view may already be gone elsewhere, its old homes' copies
    /// swept (a node a step behind in gossip that commits a change on top
    /// would otherwise read from a version the others pruned).
    pub fn read_index_for(&self, node: &str) -> usize {
        let read = self.read_index();
        if read != 0 {
            return read;
        }
        let own = self.marks_of(node).and_then(|m| m.get(Tracker::SyncAck));
        own.and_then(|m| self.index_of(m)).unwrap_or(0)
    }

    /// Drops the oldest versions every node has stopped reading from; true
    /// if it dropped one.
    fn prune(&mut self) -> bool {
        let mut dropped = false;
        while self.versions.len() > 1 && self.all_reached(Tracker::SyncAck, 1) {
            self.set_versions(self.versions[1..].to_vec());
            dropped = true;
        }
        dropped
    }
}

/// Checks a chain of versions: non-empty, consecutive numbers, each
/// version's members non-empty, sorted, distinct and of non-zero weight.
fn validate_chain<'a>(versions: impl Iterator<Item = &'a Version>) -> Result<(), MergeError> {
    let mut previous: Option<u64> = None;
    for v in versions {
        if previous.is_some_and(|p| p.checked_add(1) != Some(v.number)) {
            return Err(MergeError::Malformed("version numbers are not consecutive"));
        }
        previous = Some(v.number);
        if v.members.is_empty() {
            return Err(MergeError::Malformed("a version without members"));
        }
        if v.members.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(MergeError::Malformed("a version's members are not sorted and distinct"));
        }
        if v.members.iter().any(|m| m.weight == 0) {
            return Err(MergeError::Malformed("a member of weight 0"));
        }
    }
    if previous.is_none() {
        return Err(MergeError::Malformed("no version"));
    }
    Ok(())
}

/// The order chains are chosen by in a merge: their versions' ranks from
/// the newest down, so the newest version decides, and a chain that is the
/// other one with more of the past kept wins (pruning then catches up).
fn chain_key(ranks: impl DoubleEndedIterator<Item = (u64, Digest)>) -> Vec<(u64, Digest)> {
    ranks.rev().collect()
}

#[cfg(test)]
mod tests;
