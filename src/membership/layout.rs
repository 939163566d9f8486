//! The layout: one version of who is in the cluster and where each
//! partition lives, i.e. the member list and the ring computed from it.
//!
//! Every user of placement — coordinator targets, read repair, handoff,
//! anti-entropy, GC, recovery, `/cluster` — takes one snapshot per request
//! or round ([`super::Membership::layout`]) and asks it, never the ring or
//! the member list directly. Membership is static today, so there is one
//! layout for a node's life; dynamic membership changes what is behind
//! this seam (a versioned layout, with moving partitions' two replica sets),
//! not its callers (after Garage's `rpc/layout/helper.rs`).

use std::borrow::Cow;
use std::sync::Arc;

use super::history::{History, Tracker, Version};
use crate::config::MemberConfig;
use crate::ring::{Member, NodeId, Ring, RingError};

/// One version of the history with its ring.
#[derive(Debug)]
struct Placed {
    version: Arc<Version>,
    /// Shared with the layouts before and after while the version is in
    /// force: a tracker mark or a merge does not recompute it.
    ring: Arc<Ring>,
}

/// What placement means while the history holds more than one version (a
/// partition moving): writes reach a quorum in every version's replica
/// set, reads go to the *read version* (the newest every node synced), and
/// the background work (anti-entropy, GC, recovery, strays) treats a node
/// as a home of a partition if any version makes it one.
#[derive(Debug)]
pub struct Layout {
    history: History,
    /// Oldest first, as in the history.
    placed: Vec<Placed>,
    /// Index of the read version in `placed`.
    read: usize,
    /// Every member of any version, sorted by id.
    all: Vec<MemberConfig>,
    /// The history's digest in hex: what every peer call carries.
    tag: String,
}

impl Layout {
    /// A one-version layout of `members` (its ring: `partitions`
    /// partitions, up to `max_n` replicas each).
    pub fn new(members: Vec<MemberConfig>, partitions: u32, max_n: usize) -> Result<Layout, RingError> {
        let max_n = u32::try_from(max_n).unwrap_or(u32::MAX);
        Layout::of(History::initial("", partitions, max_n, &members))
    }

    /// The placement a history asks for.
    pub fn of(history: History) -> Result<Layout, RingError> {
        Layout::after(history, None)
    }

    /// [`Layout::of`], reusing the rings of `previous` for the versions
    /// both hold.
    pub fn after(history: History, previous: Option<&Layout>) -> Result<Layout, RingError> {
        let max_n = history.max_n() as usize;
        let placed = history
            .versions()
            .iter()
            .map(|v| {
                let known = previous
                    .and_then(|l| l.placed.iter().find(|p| Arc::ptr_eq(&p.version, v) || *p.version == **v));
                let ring = match known {
                    Some(p) => p.ring.clone(),
                    None => {
                        let ring_members =
                            v.members().iter().map(|m| Member { id: m.id.clone(), weight: m.weight });
                        Arc::new(Ring::new(ring_members.collect(), history.partitions(), max_n)?)
                    }
                };
                Ok(Placed { version: v.clone(), ring })
            })
            .collect::<Result<Vec<_>, RingError>>()?;
        // The newest version's entry of each member wins.
        let mut by_id: std::collections::BTreeMap<&str, &MemberConfig> = Default::default();
        for p in placed.iter().rev() {
            for m in p.version.members() {
                by_id.entry(m.id.as_str()).or_insert(m);
            }
        }
        let all: Vec<MemberConfig> = by_id.into_values().cloned().collect();
        let read = history.read_index();
        let tag = history.digest().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Layout { history, placed, read, all, tag })
    }

    /// This layout as `node` uses it: reads go to
    /// [`History::read_index_for`] that node, which may be later than the
    /// oldest version in force.
    pub fn seen_by(mut self, node: &str) -> Layout {
        self.read = self.history.read_index_for(node);
        self
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// The history's digest, hex.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn newest(&self) -> &Placed {
        &self.placed[self.placed.len() - 1]
    }

    fn reading(&self) -> &Placed {
        &self.placed[self.read]
    }

    /// The newest committed version's number.
    pub fn version(&self) -> u64 {
        self.newest().version.number()
    }

    /// The version reads go to.
    pub fn read_version(&self) -> u64 {
        self.reading().version.number()
    }

    /// Every member of any version in force (the newest's URLs when they
    /// changed), sorted by id: every node this one may have to call.
    pub fn members(&self) -> &[MemberConfig] {
        &self.all
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.all.binary_search_by(|m| m.id.as_str().cmp(id)).is_ok()
    }

    /// `active` (in the read and the newest version), `joining` (in the
    /// newest only), `leaving` (not in the newest), `none` otherwise.
    pub fn state_of(&self, id: &str) -> &'static str {
        let has = |p: &Placed| p.version.has(id);
        match (has(self.newest()), has(self.reading()), self.is_member(id)) {
            (true, true, _) => "active",
            (true, false, _) => "joining",
            (false, _, true) => "leaving",
            _ => "none",
        }
    }

    /// The member count that bounds a request's N: the smallest version's.
    pub fn member_count(&self) -> usize {
        self.placed.iter().map(|p| p.version.members().len()).min().unwrap_or(0)
    }

    /// `Q`, the fixed number of partitions.
    pub fn partitions(&self) -> u32 {
        self.reading().ring.partitions()
    }

    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.reading().ring.partition_of(key)
    }

    /// The replica count a record that names none had (`max_n`, not capped
    /// by the member count).
    pub fn default_replicas(&self) -> usize {
        self.reading().ring.replicas()
    }

    /// Whether the versions in force disagree on the partition's homes: it
    /// is being moved, so GC leaves it alone.
    pub fn is_moving(&self, partition: u32) -> bool {
        let first = self.placed[0].homes(partition);
        self.placed[1..].iter().any(|p| p.homes(partition) != first)
    }

    /// The partition's homes: every node that must store it in any version
    /// in force (the read version's first, in its order). Anti-entropy, GC,
    /// recovery and stray hand-off work over these, so a partition's new
    /// homes are filled by the same Merkle exchanges that repair it.
    pub fn homes(&self, partition: u32) -> Vec<NodeId> {
        let mut homes = self.reading().homes(partition).to_vec();
        for p in &self.placed {
            for h in p.homes(partition) {
                if !homes.contains(h) {
                    homes.push(h.clone());
                }
            }
        }
        homes
    }

    /// `node`'s earliest position among the partition's homes in any
    /// version: it holds the keys of replica count above that position.
    pub fn position(&self, partition: u32, node: &str) -> Option<usize> {
        self.placed.iter().filter_map(|p| p.homes(partition).iter().position(|h| h == node)).min()
    }

    /// The read version's first `n` homes: where a read of a key of
    /// replica count `n` goes.
    pub fn replicas_of(&self, partition: u32, n: usize) -> &[NodeId] {
        self.reading().replicas_of(partition, n)
    }

    /// The replica sets a write of replica count `n` must reach a quorum
    /// in: one per version in force, without repeats (one set when nothing
    /// moves).
    pub fn write_sets(&self, partition: u32, n: usize) -> Vec<&[NodeId]> {
        let mut sets: Vec<&[NodeId]> = Vec::with_capacity(self.placed.len());
        for p in &self.placed {
            let set = p.replicas_of(partition, n);
            if !sets.iter().any(|s| same_nodes(s, set)) {
                sets.push(set);
            }
        }
        sets
    }

    /// Every member in the read version's order for the partition: its
    /// homes, then the fallbacks a sloppy quorum takes in turn. Empty for
    /// an out-of-range partition (a peer-supplied number).
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        self.reading().ring.preference_list(partition)
    }

    /// The write preference list: every write set's nodes first (the
    /// oldest version's in order, then the others'), then the newest
    /// version's fallbacks. Its first `len` nodes are the write's homes.
    /// Borrowed from the ring when nothing moves (the common case).
    pub fn write_preference(&self, partition: u32, n: usize) -> (Cow<'_, [NodeId]>, usize) {
        if self.placed.len() == 1 {
            let list = self.placed[0].ring.preference_list(partition);
            return (Cow::Borrowed(list), n.min(list.len()));
        }
        let mut list: Vec<NodeId> = Vec::new();
        for set in self.write_sets(partition, n) {
            for h in set {
                if !list.contains(h) {
                    list.push(h.clone());
                }
            }
        }
        let homes = list.len();
        for f in self.newest().ring.preference_list(partition) {
            if !list.contains(f) {
                list.push(f.clone());
            }
        }
        (Cow::Owned(list), homes)
    }

    /// The partitions `node` is a home of in any version (the data it must
    /// hold).
    pub fn partitions_of(&self, node: &str) -> Vec<u32> {
        (0..self.partitions())
            .filter(|&p| self.placed.iter().any(|v| v.homes(p).iter().any(|h| h == node)))
            .collect()
    }

    /// The partitions `node` must receive before it may mark the newest
    /// version synced: those it is a home of in the newest version whose
    /// homes differ in an older one, each with the older versions' homes
    /// (other than `node`) it must pull from.
    pub fn incoming(&self, node: &str) -> Vec<(u32, Vec<NodeId>)> {
        let newest = self.newest();
        let mut out = Vec::new();
        for p in 0..self.partitions() {
            let mine = newest.homes(p);
            if !mine.iter().any(|h| h == node) {
                continue;
            }
            let mut sources: Vec<NodeId> = Vec::new();
            for old in &self.placed[..self.placed.len() - 1] {
                let theirs = old.homes(p);
                if theirs != mine {
                    for h in theirs {
                        if h != node && !sources.contains(h) {
                            sources.push(h.clone());
                        }
                    }
                }
            }
            if !sources.is_empty() {
                out.push((p, sources));
            }
        }
        out
    }

    /// The partitions `node` homes in this layout that it homed in no
    /// version of `previous` and will not receive by transfer (no older
    /// version in force here to pull from), each with its other homes.
    /// Empty in normal operation: a node learns each version while the one
    /// before is still in force (that one is dropped only once this node
    /// acknowledged the new one). Not empty when its view jumped several
    /// versions at once, as when it was restored from an older copy of its
    /// directory and its own marks came back from peers: those partitions'
    /// copies here were never filled, so it must refill them like any
    /// partition of a node that lost data.
    pub fn jumped_to(&self, previous: &Layout, node: &str) -> Vec<(u32, Vec<NodeId>)> {
        let same = |a: &Layout, b: &Layout| {
            a.placed.len() == b.placed.len()
                && a.placed
                    .iter()
                    .zip(&b.placed)
                    .all(|(x, y)| Arc::ptr_eq(&x.version, &y.version) || x.version == y.version)
        };
        if same(self, previous) || previous.partitions() != self.partitions() {
            return Vec::new();
        }
        let incoming: std::collections::BTreeSet<u32> =
            self.incoming(node).into_iter().map(|(p, _)| p).collect();
        let mut out = Vec::new();
        for p in 0..self.partitions() {
            let homes = self.homes(p);
            if !homes.iter().any(|h| h == node)
                || incoming.contains(&p)
                || previous.placed.iter().any(|v| v.homes(p).iter().any(|h| h == node))
            {
                continue;
            }
            let others: Vec<NodeId> = homes.into_iter().filter(|h| h != node).collect();
            if !others.is_empty() {
                out.push((p, others));
            }
        }
        out
    }

    /// Whether `node`'s mark on tracker `t` reached the newest version.
    pub fn reached_newest(&self, t: Tracker, node: &str) -> bool {
        self.history.reached(t, node, self.placed.len() - 1)
    }
}

impl Placed {
    fn homes(&self, partition: u32) -> &[NodeId] {
        self.replicas_of(partition, self.ring.replicas())
    }

    fn replicas_of(&self, partition: u32, n: usize) -> &[NodeId] {
        let list = self.ring.preference_list(partition);
        &list[..n.min(list.len())]
    }
}

fn same_nodes(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::membership::test_member as member;

    #[test]
    fn homes_are_the_first_replicas_and_every_member_is_in_each_preference_list() {
        let members: Vec<MemberConfig> = ["a", "b", "c", "d"].into_iter().map(member).collect();
        let layout = Layout::new(members, 16, 3).unwrap();
        assert_eq!(layout.member_count(), 4);
        let mut held = 0;
        for p in 0..layout.partitions() {
            let list = layout.preference_list(p);
            assert_eq!(list.len(), 4, "homes then fallbacks: every member once");
            assert_eq!(layout.homes(p), &list[..3]);
            assert_eq!(layout.replicas_of(p, 2), &list[..2]);
            assert_eq!(layout.replicas_of(p, 9), list, "n is capped by the member count");
            held += layout.homes(p).len();
        }
        let owned: usize = ["a", "b", "c", "d"].iter().map(|id| layout.partitions_of(id).len()).sum();
        assert_eq!(owned, held, "partitions_of agrees with homes");
        assert!(layout.preference_list(16).is_empty(), "an out-of-range partition has no homes");
        assert_eq!(layout.partition_of(b"k"), layout.partition_of(b"k"));
    }

    #[test]
    fn a_single_member_is_the_only_home() {
        let layout = Layout::new(vec![member("solo")], 8, 3).unwrap();
        assert_eq!(layout.homes(0), ["solo".to_string()]);
        assert_eq!(layout.default_replicas(), 3, "a record's default N is max_n, not the member count");
    }

    fn grown(ids: &[&str], joiner: &str) -> History {
        let members: Vec<MemberConfig> = ids.iter().map(|id| member(id)).collect();
        let mut h = History::initial("t", 64, 3, &members);
        h.wish(joiner, joiner, crate::membership::history::Desire::Member(member(joiner)));
        assert!(h.commit());
        h
    }

    #[test]
    fn while_a_partition_moves_writes_reach_both_sets_and_reads_the_old_one() {
        let mut h = grown(&["a", "b", "c"], "d");
        let layout = Layout::of(h.clone()).unwrap();
        assert_eq!((layout.version(), layout.read_version()), (2, 1));
        assert_eq!(layout.state_of("d"), "joining");
        assert_eq!(layout.state_of("a"), "active");
        let moving: Vec<u32> = (0..64).filter(|&p| layout.is_moving(p)).collect();
        assert!(!moving.is_empty() && moving.len() < 64);
        for p in 0..64 {
            let sets = layout.write_sets(p, 3);
            assert_eq!(sets.len(), if layout.is_moving(p) { 2 } else { 1 });
            assert!(!layout.replicas_of(p, 3).contains(&"d".to_string()), "reads stay on version 1");
            let (list, homes) = layout.write_preference(p, 3);
            assert_eq!(homes, if layout.is_moving(p) { 4 } else { 3 });
            assert_eq!(list.len(), 4, "every member once");
            for set in sets {
                assert!(set.iter().all(|n| list[..homes].contains(n)));
            }
        }
        let incoming = layout.incoming("d");
        assert_eq!(incoming.len(), layout.partitions_of("d").len(), "d receives every partition it homes");
        assert!(incoming.iter().all(|(_, from)| from.len() == 3 && !from.contains(&"d".to_string())));
        // Once everyone synced version 2, reads move there.
        for id in ["a", "b", "c", "d"] {
            h.mark(Tracker::Ack, id, 1);
            h.mark(Tracker::Sync, id, 1);
        }
        let layout = Layout::of(h).unwrap();
        assert_eq!(layout.read_version(), 2);
        assert_eq!(layout.state_of("d"), "active");
    }

    #[test]
    fn a_view_that_jumps_past_a_version_names_the_partitions_never_filled() {
        // d leaves: a, b and c gain its partitions, by transfer when the
        // change is seen while the old version is in force.
        let members: Vec<MemberConfig> = ["a", "b", "c", "d"].into_iter().map(member).collect();
        let mut h = History::initial("t", 64, 3, &members);
        let v1 = Layout::of(h.clone()).unwrap();
        h.wish("a", "d", crate::membership::history::Desire::Leaving);
        assert!(h.commit());
        let v1_v2 = Layout::of(h.clone()).unwrap();
        assert!(v1_v2.jumped_to(&v1, "a").is_empty(), "seen in turn: filled by transfer");
        assert!(v1_v2.jumped_to(&v1_v2, "a").is_empty());
        for id in ["a", "b", "c", "d"] {
            h.mark(Tracker::Ack, id, 1);
            h.mark(Tracker::Sync, id, 1);
            h.mark(Tracker::SyncAck, id, 1);
        }
        let v2 = Layout::of(h).unwrap();
        assert_eq!(v2.history().versions().len(), 1, "v1 dropped");
        assert!(v2.jumped_to(&v1_v2, "a").is_empty(), "dropping a version gives nothing new");
        // A node whose view goes from v1 straight to v2 alone (an older copy
        // of its directory) never received what v2 gave it.
        let a = "a".to_string();
        let gained: Vec<u32> =
            (0..64).filter(|&p| v2.homes(p).contains(&a) && !v1.homes(p).contains(&a)).collect();
        assert!(!gained.is_empty(), "a takes some of d's partitions");
        let jumped = v2.jumped_to(&v1, "a");
        assert_eq!(jumped.iter().map(|(p, _)| *p).collect::<Vec<_>>(), gained);
        assert!(
            jumped
                .iter()
                .all(|(p, others)| others.len() == 2 && !others.contains(&a) && v2.homes(*p).contains(&a))
        );
    }

    #[test]
    fn one_join_moves_about_the_ideal_share() {
        // 3 -> 4 members: the newcomer should take about 1/4 of all
        // replicas (within the ring's spread: ±2√48 = 14 of 48), and
        // little else should move.
        let h = grown(&["a", "b", "c"], "d");
        let layout = Layout::of(h).unwrap();
        let total = 64 * 3;
        let moved: usize = (0..64)
            .map(|p| {
                let sets = layout.write_sets(p, 3);
                let old = sets[0];
                let new = sets.last().copied().unwrap_or(old);
                new.iter().filter(|n| !old.contains(n)).count()
            })
            .sum();
        let ideal = total / 4;
        let held = layout.partitions_of("d").len();
        assert!(held.abs_diff(ideal) <= 14, "d holds {held}, ideal {ideal}");
        assert!(moved >= held && moved * 4 <= held * 5, "moved {moved} replicas, d holds {held}");
    }
}
