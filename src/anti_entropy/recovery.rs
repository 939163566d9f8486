//! Knowing that this node lost data, and being honest about it until it is
//! repaired.
//!
//! R + W > N only guarantees that a read sees an acknowledged write if every
//! replica that acknowledged it still holds it. A node whose volume was
//! wiped or replaced acknowledged writes it no longer has; if its
//! "not found" counted toward R, a quorum read could miss a write that W
//! replicas acknowledged (e.g. W=2 on A and B, B wiped, R=2 from B and C).
//!
//! So at start every node says *hello* to its peers with its incarnation
//! (a counter kept in its data, one more per start), and each peer records
//! (in its `meta` column family) the highest incarnation it has seen this
//! node serve. A node learns it lost data when it starts on a freshly
//! created directory and a peer had seen it before (a wiped or replaced
//! volume), or when a peer had already seen its incarnation (an older copy
//! of its directory was restored; its actor epoch is then renewed too, as
//! after an unclean start, since its dots past the copy are forgotten).
//! Every partition it is a home of then becomes *unsynced*, listing the
//! other homes. Its answers for
//! an unsynced partition are merged but do not count toward R or PR
//! (`Replica::read_one`). Anti-entropy strikes a peer off a partition's list
//! once an exchange with it completed with every differing key pulled, so
//! the partition is synced when this node holds everything each other home
//! held. The list is persisted, so a restart during the refill resumes it.
//!
//! The lists follow the layout ([`follow_layout`]): a partition this node
//! no longer homes in any version in force is no longer its to refill (it
//! answers no read of it; what it holds is swept to the homes as strays),
//! and one whose list names a node that is no longer a home (it left, its
//! copies went to the new homes first) must instead complete an exchange
//! with every current home. Without this a node that crashed while leaving
//! never drained, and a peer's refill waited forever for a node that left.
//!
//! The same holds after an unclean start (a crash or power cut may have
//! lost the WAL's unsynced tail, and a crash-consistent snapshot restored
//! looks just like it): the partitions are unsynced until refilled, which
//! with every other home up takes about a second.
//!
//! At a cluster's first start no peer has seen anyone, so nothing is
//! unsynced. Until the hello round is over every answer of the node is
//! non-authoritative and the peer port refuses to coordinate writes, so
//! nothing is counted or minted before the node knows its history. Not
//! detected: a restore of a copy taken while the node was cleanly stopped,
//! made while every peer that saw its later runs is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::rpc::client::{PeerClient, routes};
use crate::rpc::error::PeerError;
use crate::storage::{Sighting, Storage, StorageError};

/// How long a starting node waits for its peers' hello answers.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// "I am serving": sent by a node to every peer when it starts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub from: String,
    /// The sender's directory, incarnation and run.
    pub me: Sighting,
    /// Second round: the sender has persisted what the first round told
    /// it, so the receiver may now replace its record. Until then a record
    /// is only ever added, never replaced, so no evidence of lost data is
    /// erased by a hello whose answer was lost or by nodes starting together.
    pub confirm: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HelloAnswer {
    /// What the receiver had recorded of the sender before this hello.
    pub seen: Option<Sighting>,
    /// The receiver's own sighting.
    pub me: Sighting,
}

/// The peer side of a hello.
pub fn answer_hello(storage: &Storage, hello: &Hello) -> Result<HelloAnswer, StorageError> {
    let seen = storage.meta().peer_seen(&hello.from)?;
    if hello.confirm || seen.is_none() {
        storage.meta().mark_peer_seen(&hello.from, hello.me)?;
    }
    Ok(HelloAnswer { seen, me: storage.meta().sighting() })
}

/// What a peer's record of this node says about this copy of its data.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing this copy lacks (never seen, or seen in this very run, or an
    /// older incarnation of this directory).
    Fine,
    /// The node served from another directory: this one is new or foreign.
    OtherDirectory,
    /// This directory served a later (or the same, in another run)
    /// incarnation: this is an older copy of it.
    OlderCopy,
}

fn verdict(me: Sighting, seen: Option<Sighting>) -> Verdict {
    match seen {
        None => Verdict::Fine,
        Some(s) if s.run == me.run => Verdict::Fine,
        Some(s) if s.dir != me.dir => Verdict::OtherDirectory,
        Some(s) if s.incarnation >= me.incarnation => Verdict::OlderCopy,
        Some(_) => Verdict::Fine,
    }
}

/// Says hello to every peer; marks this node's partitions unsynced when its
/// directory is new and some peer had seen it before. Returns the number of
/// partitions marked. Runs with the peer port already serving (peers that
/// start at the same time greet each other), but until it returns a fresh
/// directory's answers are all non-authoritative.
pub async fn greet_peers(
    storage: &Storage,
    membership: &Membership,
    peers: &PeerClient,
) -> Result<usize, StorageError> {
    let me = storage.meta().sighting();
    let answers = hello_round(membership, peers, me, false).await;
    let (mut evidence, mut newest) = (Vec::new(), 0u64);
    for (peer, answer) in &answers {
        // A peer seen for the first time is recorded; a known one is not
        // overwritten by what it says of itself (its own hello does that).
        if storage.meta().peer_seen(peer)?.is_none() {
            storage.meta().mark_peer_seen(peer, answer.me)?;
        }
        if verdict(me, answer.seen) != Verdict::Fine {
            newest = newest.max(answer.seen.map_or(0, |s| s.incarnation));
            evidence.push(peer.clone());
        }
    }
    // An unclean start may have lost the WAL's unsynced tail (a power cut;
    // a crash-consistent snapshot restored looks the same): writes this
    // node acknowledged with DW=0 may be gone, so it refills before its
    // answers count again. With every other home up that is one exchange
    // each, about a second; a clean restart skips it.
    if evidence.is_empty() && !storage.meta().unclean_start() {
        storage.unsynced().history_known();
        hello_round(membership, peers, me, true).await;
        return Ok(0);
    }
    // This copy lacks writes peers saw it acknowledge. A directory that is
    // not new has also forgotten dots it minted (an older copy, or another
    // directory of this node brought back): new epoch, as after an unclean
    // start (a new directory has a new epoch already).
    if !evidence.is_empty() && !storage.meta().created_fresh() {
        tracing::warn!(
            incarnation = me.incarnation,
            newest,
            "peers have seen this node serve data this copy lacks"
        );
        storage.meta().renew_epoch_after_restore()?;
        storage.meta().raise_incarnation(newest)?;
    }
    let unsynced = homes_to_sync(membership);
    let count = unsynced.len();
    tracing::warn!(
        partitions = count,
        seen_by = ?evidence,
        unclean = storage.meta().unclean_start(),
        "this node's data may lack writes it acknowledged (a new, restored or uncleanly stopped volume); \
         its answers do not count toward R/PR until anti-entropy has refilled each partition"
    );
    // Only once the marks are on disk may the blanket doubt go, and only
    // then may the peers replace their record of this node.
    storage.unsynced().set(unsynced)?;
    storage.unsynced().history_known();
    hello_round(membership, peers, storage.meta().sighting(), true).await;
    Ok(count)
}

/// One hello to every peer at once; the answers of those that answered.
async fn hello_round(
    membership: &Membership,
    peers: &PeerClient,
    me: Sighting,
    confirm: bool,
) -> Vec<(String, HelloAnswer)> {
    let calls = membership.peer_ids().into_iter().map(|peer| {
        let hello = Hello { from: membership.self_id().to_string(), me, confirm };
        async move {
            let answer: Result<Result<HelloAnswer, PeerError>, _> =
                peers.call(&peer, routes::HELLO, &hello, HELLO_TIMEOUT).await;
            (peer, answer)
        }
    });
    let mut out = Vec::new();
    for (peer, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok(Ok(answer)) => out.push((peer, answer)),
            Ok(Err(error)) => tracing::debug!(%peer, %error, "hello refused"),
            Err(error) => tracing::debug!(%peer, %error, "hello not answered"),
        }
    }
    out
}

/// The unsynced partitions whose list the layout made wrong, with their
/// new lists (empty: no longer unsynced). `homes(p)` is every node that
/// homes `p` in some version in force.
///
/// A partition this node homes in no version is dropped: no read asks it,
/// and should a later version make it a home again, that version's
/// transfer fills it before any read uses it (and a view that jumps past
/// that version marks it unsynced again: `Layout::jumped_to`). A list naming a node that is
/// no longer a home is replaced by every other current home: the versions
/// that node was in left the history only once every new home had received
/// what it held, so the current homes hold everything; which of them this
/// node already synced with is not known, so all are asked again.
pub fn follow_layout(
    unsynced: &BTreeMap<u32, BTreeSet<String>>,
    me: &str,
    homes: impl Fn(u32) -> Vec<String>,
) -> BTreeMap<u32, BTreeSet<String>> {
    let mut changed = BTreeMap::new();
    for (p, waits_for) in unsynced {
        let homes = homes(*p);
        if !homes.iter().any(|h| h == me) {
            changed.insert(*p, BTreeSet::new());
        } else if waits_for.iter().any(|peer| !homes.contains(peer)) {
            changed.insert(*p, homes.into_iter().filter(|h| h != me).collect());
        }
    }
    changed
}

/// [`follow_layout`] applied to this node's unsynced partitions under the
/// current layout; the number of partitions whose list changed. Not while
/// the start's hello round is still deciding what is unsynced.
pub fn apply_layout(storage: &Storage, membership: &Membership) -> Result<usize, StorageError> {
    let unsynced = storage.unsynced();
    if !unsynced.recovering() || unsynced.history_pending() {
        return Ok(0);
    }
    let layout = membership.layout();
    let changed = follow_layout(&unsynced.all(), membership.self_id(), |p| layout.homes(p).to_vec());
    if changed.is_empty() {
        return Ok(0);
    }
    let dropped = changed.values().filter(|peers| peers.is_empty()).count();
    tracing::info!(
        partitions = changed.len(),
        no_longer_homed = dropped,
        "unsynced partitions follow the layout"
    );
    let count = changed.len();
    unsynced.set(changed)?;
    Ok(count)
}

/// Every partition this node is a home of, with its other homes.
fn homes_to_sync(membership: &Membership) -> BTreeMap<u32, BTreeSet<String>> {
    let layout = membership.layout();
    let me = membership.self_id();
    (0..layout.partitions())
        .filter_map(|p| {
            let homes = layout.homes(p);
            homes.iter().any(|h| h == me).then(|| {
                let others: BTreeSet<String> = homes.iter().filter(|h| h.as_str() != me).cloned().collect();
                (p, others)
            })
        })
        .filter(|(_, others)| !others.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unsynced_lists_follow_the_layout() {
        let unsynced: BTreeMap<u32, BTreeSet<String>> = [
            (0, set(&["b", "c"])), // homes unchanged: kept as is
            (1, set(&["c"])),      // b already struck off: kept
            (2, set(&["b", "d"])), // d left, e took its place
            (3, set(&["b", "c"])), // this node left the partition
            (4, set(&["d"])),      // only the departed one was left
        ]
        .into();
        let homes = |p: u32| -> Vec<String> {
            let h: &[&str] = match p {
                0 | 1 => &["a", "b", "c"],
                2 | 4 => &["a", "b", "e"],
                _ => &["b", "c", "e"],
            };
            h.iter().map(|s| s.to_string()).collect()
        };
        let changed = follow_layout(&unsynced, "a", homes);
        let expected: BTreeMap<u32, BTreeSet<String>> =
            [(2, set(&["b", "e"])), (3, set(&[])), (4, set(&["b", "e"]))].into();
        assert_eq!(changed, expected);
        // Applied, it is a fixed point: nothing changes a second time.
        let mut after = unsynced.clone();
        for (p, peers) in changed {
            if peers.is_empty() {
                after.remove(&p);
            } else {
                after.insert(p, peers);
            }
        }
        assert!(follow_layout(&after, "a", homes).is_empty());
    }

    #[test]
    fn verdicts() {
        let me = Sighting { dir: 1, incarnation: 5, run: 9 };
        let seen = |dir, incarnation, run| Some(Sighting { dir, incarnation, run });
        assert_eq!(verdict(me, None), Verdict::Fine, "never seen: a new cluster");
        assert_eq!(verdict(me, seen(1, 5, 9)), Verdict::Fine, "seen in this very run");
        assert_eq!(verdict(me, seen(1, 4, 3)), Verdict::Fine, "the previous start of this directory");
        assert_eq!(verdict(me, seen(2, 1, 3)), Verdict::OtherDirectory, "a wiped or replaced volume");
        assert_eq!(verdict(me, seen(1, 7, 3)), Verdict::OlderCopy, "a snapshot from before two restarts");
        assert_eq!(verdict(me, seen(1, 5, 3)), Verdict::OlderCopy, "a snapshot from before the last restart");
    }
}
