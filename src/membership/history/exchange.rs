//! Gossip by difference. A node opens an exchange with a [`Summary`] of its
//! history (the whole digest, the version chain by number and digest, one
//! digest per non-empty shard); the peer answers with a [`Delta`] holding
//! only what differs (the shards whose digests differ, the versions of its
//! chain the caller lacks, if its chain ranks higher) and its own summary;
//! the caller merges that and pushes back the shards in which it still
//! differs. Equal histories cost one summary; a change of one member's
//! marks costs one shard each way, whatever the cluster's size.
//!
//! Applying a delta is merging the sender's history restricted to what it
//! sent, so it keeps every law of [`History::merge`] (the tests check that
//! an exchange ends where a merge both ways does).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::shard::{self, Lattice, Marks, SHARDS, Shard, shard_of};
use super::{Digest, History, MergeError, Version, Wish, chain_key, validate_chain};

/// (index, digest) of every non-empty shard.
fn digests<V: Lattice>(shards: &[Arc<Shard<V>>]) -> Vec<(u8, u64)> {
    shards.iter().enumerate().filter(|(_, s)| s.digest() != 0).map(|(i, s)| (i as u8, s.digest())).collect()
}

/// This side's non-empty shards whose digests differ from `theirs`.
fn differing<V: Lattice>(ours: &[Arc<Shard<V>>], theirs: &[(u8, u64)]) -> Vec<(u8, Arc<Shard<V>>)> {
    let mut their = [0u64; SHARDS];
    for &(i, d) in theirs {
        their[usize::from(i)] = d;
    }
    ours.iter()
        .enumerate()
        .filter(|(i, s)| s.digest() != 0 && s.digest() != their[*i])
        .map(|(i, s)| (i as u8, s.clone()))
        .collect()
}

/// Whether a received shard holds an entry of another shard.
fn misplaced<V: Lattice>(shards: &[(u8, Arc<Shard<V>>)]) -> bool {
    shards.iter().any(|(i, s)| s.iter().any(|(id, _)| shard_of(id) != usize::from(*i)))
}

/// What a node knows, in digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub cluster: String,
    pub partitions: u32,
    pub max_n: u32,
    /// [`History::digest`]: equal, nothing to exchange.
    pub digest: Digest,
    /// The versions in force, oldest first, as (number, digest).
    pub chain: Vec<(u64, Digest)>,
    /// (shard, digest) of every non-empty shard of wishes, and of marks.
    pub wishes: Vec<(u8, u64)>,
    pub marks: Vec<(u8, u64)>,
}

/// What one side sends the other: the parts of its history that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub cluster: String,
    pub partitions: u32,
    pub max_n: u32,
    /// The sender's oldest version in force, (number, digest): a delta
    /// from a cluster of another genesis is refused whole.
    pub first: Option<(u64, Digest)>,
    /// The sender's chain as (number, digest), when it ranks higher than
    /// the receiver's; empty otherwise.
    pub chain: Vec<(u64, Digest)>,
    /// The versions of that chain the receiver does not hold.
    pub versions: Vec<Arc<Version>>,
    /// The sender's shards whose digests differ.
    pub wishes: Vec<(u8, Arc<Shard<Wish>>)>,
    pub marks: Vec<(u8, Arc<Shard<Marks>>)>,
}

impl Delta {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty() && self.wishes.is_empty() && self.marks.is_empty()
    }

    /// Bytes of the delta's encoding, without encoding its shards again
    /// (each knows its own length): what the simulation counts.
    pub fn encoded_len(&self) -> usize {
        let head = (&self.cluster, self.partitions, self.max_n, &self.first, &self.chain, &self.versions);
        let head = postcard::to_stdvec(&head).map_or(0, |b| b.len());
        head + shards_len(&self.wishes) + shards_len(&self.marks)
    }
}

/// Bytes of a list of (index, shard) as postcard encodes it.
fn shards_len<V: Lattice>(shards: &[(u8, Arc<Shard<V>>)]) -> usize {
    varint_len(shards.len()) + shards.iter().map(|(_, s)| 1 + s.encoded_len()).sum::<usize>()
}

/// Bytes of `n` as a postcard (LEB128) varint.
fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

impl History {
    pub fn summary(&self) -> Summary {
        Summary {
            cluster: self.cluster.clone(),
            partitions: self.partitions,
            max_n: self.max_n,
            digest: self.digest(),
            chain: self.versions.iter().map(|v| v.rank()).collect(),
            wishes: digests(&self.wishes),
            marks: digests(&self.marks),
        }
    }

    /// What `theirs` lacks of this history (empty if nothing).
    pub fn delta_for(&self, theirs: &Summary) -> Delta {
        let mut delta = Delta {
            cluster: self.cluster.clone(),
            partitions: self.partitions,
            max_n: self.max_n,
            first: self.versions.first().map(|v| v.rank()),
            chain: Vec::new(),
            versions: Vec::new(),
            wishes: Vec::new(),
            marks: Vec::new(),
        };
        if theirs.digest == self.digest() {
            return delta;
        }
        let ours = self.versions.iter().map(|v| v.rank());
        if chain_key(ours) > chain_key(theirs.chain.iter().copied()) {
            delta.chain = self.versions.iter().map(|v| v.rank()).collect();
            delta.versions =
                self.versions.iter().filter(|v| !theirs.chain.contains(&v.rank())).cloned().collect();
        }
        delta.wishes = differing(&self.wishes, &theirs.wishes);
        delta.marks = differing(&self.marks, &theirs.marks);
        delta
    }

    /// Merges what a peer sent; true if this history changed.
    pub fn apply(&mut self, delta: &Delta) -> Result<bool, MergeError> {
        self.check_peer(&delta.cluster, delta.partitions, delta.max_n)?;
        self.check_genesis(delta.first)?;
        if misplaced(&delta.wishes) || misplaced(&delta.marks) {
            return Err(MergeError::Malformed("an entry in the wrong shard"));
        }
        let mut changed = false;
        if !delta.chain.is_empty() {
            let find = |(number, digest): &(u64, Digest)| -> Option<Arc<Version>> {
                let held = self.versions.iter().find(|v| v.number == *number && v.digest == *digest);
                held.or_else(|| delta.versions.iter().find(|v| v.number == *number && v.digest == *digest))
                    .cloned()
            };
            let chain: Option<Vec<Arc<Version>>> = delta.chain.iter().map(find).collect();
            let chain = chain.ok_or(MergeError::Malformed("a version of the chain is missing"))?;
            validate_chain(chain.iter().map(|v| &**v))?;
            changed |= self.adopt_chain(&chain)?;
        }
        for (i, theirs) in &delta.wishes {
            changed |= shard::join(&mut self.wishes[usize::from(*i)], theirs);
        }
        for (i, theirs) in &delta.marks {
            changed |= shard::join(&mut self.marks[usize::from(*i)], theirs);
        }
        changed |= self.prune();
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Desire, Tracker};
    use super::*;
    use crate::config::MemberConfig;

    use crate::membership::test_member as member;

    /// One push-pull exchange, as the gossip worker runs it.
    fn exchange(a: &mut History, b: &mut History) -> usize {
        let offer = a.summary();
        let pull = b.delta_for(&offer);
        let answer = b.summary();
        a.apply(&pull).unwrap();
        let push = a.delta_for(&answer);
        b.apply(&push).unwrap();
        for delta in [&pull, &push] {
            let encoded = postcard::to_stdvec(delta).unwrap().len();
            assert_eq!(delta.encoded_len(), encoded, "the counted length is the encoding's");
        }
        postcard::to_stdvec(&offer).unwrap().len() + pull.encoded_len() + push.encoded_len()
    }

    fn cluster(n: usize) -> History {
        let members: Vec<MemberConfig> = (0..n).map(|i| member(&format!("m{i:05}"))).collect();
        History::initial("t", 64, 3, &members)
    }

    #[test]
    fn an_exchange_ends_where_merging_both_ways_does() {
        let base = cluster(5);
        let (mut a, mut b) = (base.clone(), base);
        a.wish("m00000", "x", Desire::Member(member("x")));
        a.commit();
        b.mark(Tracker::SyncAck, "m00003", 0);
        b.wish("m00001", "m00004", Desire::Leaving);
        let mut merged = a.clone();
        merged.merge(&b).unwrap();
        exchange(&mut a, &mut b);
        assert_eq!(a, merged);
        assert_eq!(b, merged);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn equal_histories_exchange_a_summary_and_one_members_change_one_shard() {
        let base = cluster(2000);
        let (mut a, mut b) = (base.clone(), base);
        let full = postcard::to_stdvec(&a).unwrap().len();
        let same = exchange(&mut a, &mut b);
        a.mark(Tracker::Ack, "m00042", 0);
        let one = exchange(&mut a, &mut b);
        assert_eq!(a, b);
        println!("2000 members: full history {full} B, equal exchange {same} B, one mark {one} B");
        assert!(same < 4096, "an exchange of equal histories sends summaries only ({same} B)");
        assert!(one < full / 20, "one changed mark does not resend the history ({one} of {full} B)");
    }

    #[test]
    fn a_delta_with_a_misplaced_entry_or_a_missing_version_is_refused() {
        let base = cluster(3);
        let mut a = base.clone();
        let mut b = base;
        b.wish("m00000", "x", Desire::Member(member("x")));
        b.commit();
        let mut delta = b.delta_for(&a.summary());
        let mut missing = delta.clone();
        missing.versions.clear();
        assert!(matches!(a.apply(&missing), Err(MergeError::Malformed(_))));
        let (i, shard) = delta.wishes[0].clone();
        delta.wishes[0] = (i.wrapping_add(1), shard);
        assert!(matches!(a.apply(&delta), Err(MergeError::Malformed(_))));
        let other = History::initial("other", 64, 3, &[member("a")]);
        assert!(matches!(a.apply(&other.delta_for(&a.summary())), Err(MergeError::OtherCluster { .. })));
        // A cluster made from another member list: refused whole, its chain
        // ranked above or below this one's (a lower one sends no chain, only
        // wishes and marks, which must not be merged either).
        let before = a.clone();
        for ids in [["m00000", "m00001", "zz"], ["a", "b", "c"]] {
            let members: Vec<MemberConfig> = ids.iter().map(|id| member(id)).collect();
            let stranger = History::initial("t", 64, 3, &members);
            let delta = stranger.delta_for(&a.summary());
            assert_eq!(a.apply(&delta), Err(MergeError::OtherGenesis), "{ids:?}");
            assert!(matches!(
                crate::membership::gossip::answer_offer(&a, &stranger.summary()),
                crate::membership::gossip::LayoutAnswer::Refused(_)
            ));
        }
        assert_eq!(a, before, "nothing of theirs was merged");
    }
}
