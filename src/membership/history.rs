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

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

use crate::config::MemberConfig;

/// The MD5 of a version's number and members: what gossip compares.
pub type Digest = [u8; 16];

/// One committed member set. The ring is a pure function of it (plus the
/// cluster's fixed `partitions` and `max_n`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub number: u64,
    /// Sorted by id.
    pub members: Vec<MemberConfig>,
}

impl Version {
    pub fn digest(&self) -> Digest {
        let mut h = Md5::new();
        h.update(self.number.to_be_bytes());
        for m in &self.members {
            for field in [&m.id, &m.client_url, &m.peer_url] {
                h.update((field.len() as u64).to_be_bytes());
                h.update(field.as_bytes());
            }
            h.update(m.weight.to_be_bytes());
        }
        h.finalize().into()
    }

    pub fn has(&self, id: &str) -> bool {
        self.members.binary_search_by(|m| m.id.as_str().cmp(id)).is_ok()
    }

    /// The order versions are chosen by: higher number, then larger digest.
    fn rank(&self) -> (u64, Digest) {
        (self.number, self.digest())
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    cluster: String,
    partitions: u32,
    max_n: u32,
    /// Oldest first, consecutive numbers, never empty.
    versions: Vec<Version>,
    wishes: BTreeMap<String, Wish>,
    ack: BTreeMap<String, Mark>,
    sync: BTreeMap<String, Mark>,
    sync_ack: BTreeMap<String, Mark>,
}

impl History {
    /// The history of a cluster created from a static member list: version
    /// 1, already synced by everyone (there is nothing to move).
    pub fn initial(cluster: &str, partitions: u32, max_n: u32, members: &[MemberConfig]) -> History {
        let mut sorted = members.to_vec();
        sorted.sort();
        sorted.dedup_by(|a, b| a.id == b.id);
        let version = Version { number: 1, members: sorted };
        let digest = version.digest();
        let stamp = Stamp { counter: 0, author: String::new() };
        let wishes = version
            .members
            .iter()
            .map(|m| (m.id.clone(), Wish { stamp: stamp.clone(), desire: Desire::Member(m.clone()) }))
            .collect();
        let mark = Mark { seq: 0, version: 1, digest };
        let marks: BTreeMap<String, Mark> =
            version.members.iter().map(|m| (m.id.clone(), mark.clone())).collect();
        History {
            cluster: cluster.to_string(),
            partitions,
            max_n,
            versions: vec![version],
            wishes,
            ack: marks.clone(),
            sync: marks.clone(),
            sync_ack: marks,
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
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The newest committed version.
    pub fn current(&self) -> &Version {
        // Never empty: every constructor and `merge` keeps one.
        &self.versions[self.versions.len() - 1]
    }

    pub fn wishes(&self) -> &BTreeMap<String, Wish> {
        &self.wishes
    }

    /// A digest of the whole state: equal digests, nothing to exchange.
    pub fn digest(&self) -> Digest {
        Md5::digest(postcard::to_stdvec(self).unwrap_or_default()).into()
    }

    /// Checks what a peer's decoded history must hold before it is merged.
    pub fn validate(&self) -> Result<(), MergeError> {
        if self.versions.is_empty() {
            return Err(MergeError::Malformed("no version"));
        }
        if self.versions.windows(2).any(|w| w[0].number.checked_add(1) != Some(w[1].number)) {
            return Err(MergeError::Malformed("version numbers are not consecutive"));
        }
        for v in &self.versions {
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
        Ok(())
    }

    /// Merges a peer's history into this one; true if this one changed.
    pub fn merge(&mut self, other: &History) -> Result<bool, MergeError> {
        if other.cluster != self.cluster {
            return Err(MergeError::OtherCluster {
                ours: self.cluster.clone(),
                theirs: other.cluster.clone(),
            });
        }
        if (other.partitions, other.max_n) != (self.partitions, self.max_n) {
            return Err(MergeError::OtherRing {
                ours: (self.partitions, self.max_n),
                theirs: format!("({}, {})", other.partitions, other.max_n),
            });
        }
        other.validate()?;
        // Two version 1s are two clusters made from different member lists
        // (each marked synced by construction): merging would switch
        // placement with nothing moved.
        let first = |h: &History| h.versions.first().filter(|v| v.number == 1).map(Version::digest);
        if let (Some(a), Some(b)) = (first(self), first(other)) {
            if a != b {
                return Err(MergeError::OtherGenesis);
            }
        }
        let before = self.clone();
        if chain_key(&other.versions) > chain_key(&self.versions) {
            self.versions = other.versions.clone();
        }
        merge_max(&mut self.wishes, &other.wishes);
        merge_max(&mut self.ack, &other.ack);
        merge_max(&mut self.sync, &other.sync);
        merge_max(&mut self.sync_ack, &other.sync_ack);
        self.prune();
        Ok(*self != before)
    }

    /// Records a wish of `author` about member `id`, stamped after every
    /// wish this node has seen.
    pub fn wish(&mut self, author: &str, id: &str, desire: Desire) {
        let counter = self.wishes.values().map(|w| w.stamp.counter).max().unwrap_or(0).saturating_add(1);
        let stamp = Stamp { counter, author: author.to_string() };
        self.wishes.insert(id.to_string(), Wish { stamp, desire });
    }

    /// Asks for `desire` of member `id` and commits it, unless that is
    /// already both the wish and the newest version (a repeated request
    /// changes nothing); true if the history changed.
    pub fn request(&mut self, author: &str, id: &str, desire: Desire) -> bool {
        let in_force = match &desire {
            Desire::Member(m) => self.current().members.contains(m),
            Desire::Leaving | Desire::Removed => !self.current().has(id),
        };
        if in_force && self.wishes.get(id).is_some_and(|w| w.desire == desire) {
            return false;
        }
        self.wish(author, id, desire);
        self.commit();
        true
    }

    /// The member set the wishes ask for (sorted by id).
    pub fn wanted(&self) -> Vec<MemberConfig> {
        self.wishes
            .values()
            .filter_map(|w| match &w.desire {
                Desire::Member(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Commits the wished member set as the next version if it differs
    /// from the newest; true if it did. An empty wish set commits nothing.
    pub fn commit(&mut self) -> bool {
        let wanted = self.wanted();
        if wanted.is_empty() || wanted == self.current().members {
            return false;
        }
        let Some(number) = self.current().number.checked_add(1) else { return false };
        self.versions.push(Version { number, members: wanted });
        true
    }

    /// The nodes whose progress the trackers wait for: every member of a
    /// version in force, except those removed as dead.
    pub fn tracked(&self) -> BTreeSet<&str> {
        self.versions
            .iter()
            .flat_map(|v| v.members.iter().map(|m| m.id.as_str()))
            .filter(|id| !matches!(self.wishes.get(*id), Some(Wish { desire: Desire::Removed, .. })))
            .collect()
    }

    fn tracker(&self, t: Tracker) -> &BTreeMap<String, Mark> {
        match t {
            Tracker::Ack => &self.ack,
            Tracker::Sync => &self.sync,
            Tracker::SyncAck => &self.sync_ack,
        }
    }

    /// Whether `node`'s mark on `t` reaches version `index` of
    /// [`History::versions`]. A mark counts only for a version of this
    /// chain: one made for a losing version of the same number does not.
    pub fn reached(&self, t: Tracker, node: &str, index: usize) -> bool {
        let Some(mark) = self.tracker(t).get(node) else { return false };
        let Some(first) = self.versions.first() else { return false };
        let Some(at) = mark.version.checked_sub(first.number).map(|i| i as usize) else { return false };
        at >= index && self.versions.get(at).is_some_and(|v| v.digest() == mark.digest)
    }

    /// Whether every tracked node reached version `index` on `t`.
    pub fn all_reached(&self, t: Tracker, index: usize) -> bool {
        self.tracked().into_iter().all(|id| self.reached(t, id, index))
    }

    /// Moves `node`'s mark on `t` to version `index`; true if it moved.
    /// Marks only go forward within the chain.
    pub fn mark(&mut self, t: Tracker, node: &str, index: usize) -> bool {
        let Some(v) = self.versions.get(index) else { return false };
        if self.reached(t, node, index) {
            return false;
        }
        let (version, digest) = (v.number, v.digest());
        let map = match t {
            Tracker::Ack => &mut self.ack,
            Tracker::Sync => &mut self.sync,
            Tracker::SyncAck => &mut self.sync_ack,
        };
        let seq = map.get(node).map_or(0, |m| m.seq).saturating_add(1);
        map.insert(node.to_string(), Mark { seq, version, digest });
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

    /// Drops the oldest versions every node has stopped reading from.
    fn prune(&mut self) {
        while self.versions.len() > 1 && self.all_reached(Tracker::SyncAck, 1) {
            self.versions.remove(0);
        }
    }
}

/// The order chains are chosen by in a merge: their versions' ranks from
/// the newest down, so the newest version decides, and a chain that is the
/// other one with more of the past kept wins (pruning then catches up).
fn chain_key(versions: &[Version]) -> Vec<(u64, Digest)> {
    versions.iter().rev().map(Version::rank).collect()
}

fn merge_max<V: Ord + Clone>(ours: &mut BTreeMap<String, V>, theirs: &BTreeMap<String, V>) {
    for (k, v) in theirs {
        match ours.get(k) {
            Some(mine) if mine >= v => {}
            _ => {
                ours.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
