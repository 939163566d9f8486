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

use crate::config::MemberConfig;
use crate::ring::{Member, NodeId, Ring, RingError};

#[derive(Debug)]
pub struct Layout {
    version: u64,
    members: Vec<MemberConfig>,
    ring: Ring,
}

impl Layout {
    /// The layout of `members` (its ring: `partitions` partitions, up to
    /// `max_n` replicas each).
    pub fn new(
        version: u64,
        members: Vec<MemberConfig>,
        partitions: u32,
        max_n: usize,
    ) -> Result<Layout, RingError> {
        let ring_members = members.iter().map(|m| Member { id: m.id.clone(), weight: m.weight }).collect();
        let ring = Ring::new(ring_members, partitions, max_n)?;
        Ok(Layout { version, members, ring })
    }

    /// Which layout this is; the static member list is version 1.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every member, as configured.
    pub fn members(&self) -> &[MemberConfig] {
        &self.members
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// `Q`, the fixed number of partitions.
    pub fn partitions(&self) -> u32 {
        self.ring.partitions()
    }

    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.ring.partition_of(key)
    }

    /// The replica count a record that names none had (`max_n`, not capped
    /// by the member count).
    pub fn default_replicas(&self) -> usize {
        self.ring.replicas()
    }

    /// The partition's homes: every node that must store it (the first
    /// `min(max_n, members)` of its preference list). Anti-entropy, GC,
    /// recovery and stray hand-off work over these.
    pub fn homes(&self, partition: u32) -> &[NodeId] {
        self.replicas_of(partition, self.ring.replicas())
    }

    /// The first `n` homes: where a key of replica count `n` lives, so
    /// where its reads and writes go.
    pub fn replicas_of(&self, partition: u32, n: usize) -> &[NodeId] {
        let list = self.ring.preference_list(partition);
        &list[..n.min(list.len())]
    }

    /// Every member in the partition's order: its homes, then the
    /// fallbacks a sloppy quorum takes in turn. Empty for an out-of-range
    /// partition (a peer-supplied number).
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        self.ring.preference_list(partition)
    }

    /// The partitions `node` is a home of (the data it must hold).
    pub fn partitions_of(&self, node: &str) -> Vec<u32> {
        self.ring.partitions_of(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> MemberConfig {
        MemberConfig {
            id: id.into(),
            client_url: format!("https://{id}:8443"),
            peer_url: format!("https://{id}:9443"),
            weight: 1,
        }
    }

    #[test]
    fn homes_are_the_first_replicas_and_every_member_is_in_each_preference_list() {
        let members: Vec<MemberConfig> = ["a", "b", "c", "d"].into_iter().map(member).collect();
        let layout = Layout::new(1, members, 16, 3).unwrap();
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
        let layout = Layout::new(1, vec![member("solo")], 8, 3).unwrap();
        assert_eq!(layout.homes(0), ["solo".to_string()]);
        assert_eq!(layout.default_replicas(), 3, "a record's default N is max_n, not the member count");
    }
}
