//! Model test of one key's replicas through the dangerous transitions:
//! writes coordinated by homes and by fallbacks (which keep a hint until
//! they deliver it, then forget it), syncs, a crash that loses the unsynced
//! tail, a restore from an older copy of a node's data, and tombstone reaps
//! that reach only some replicas. Dots are minted the way
//! [`super::Replica`] mints them: counters from [`super::stamp`], a new
//! actor epoch after a lost tail or a restore, a new fallback generation
//! after a hint is forgotten. The properties: no acknowledged write is lost
//! (after a final full sync every acknowledged value is present unless a
//! later write's context covered it), and the clock grows with those
//! actor-changing events, never with the number of writes.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::stamp::next_counter;
use crate::version::{Dot, DvvSet, VersionVector};

/// One node in the model: its copy of the key, the copies it could come
/// back to, and its stamper (`last` in memory, `lease` on disk).
#[derive(Clone, Debug)]
struct Node {
    state: Option<DvvSet<Value>>,
    /// The hint this node holds for the key as a fallback.
    hint: Option<DvvSet<Value>>,
    /// Copies of `(state, hint)` taken earlier, each with the lease on disk
    /// then: what a lost WAL tail or a restored snapshot brings back.
    older: Vec<OlderCopy>,
    last: u64,
    lease: u64,
    epoch: u32,
    generation: u32,
}

impl Node {
    fn actor(&self, id: usize) -> String {
        format!("n{id}.{}", self.epoch)
    }

    fn fallback_actor(&self, id: usize) -> String {
        format!("n{id}.{}.f{}", self.epoch, self.generation)
    }
}

/// A node's (state, hint, lease on disk) at some earlier step.
type OlderCopy = (Option<DvvSet<Value>>, Option<DvvSet<Value>>, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Value {
    id: usize,
    deleted: bool,
}

const LEASE_AHEAD: u64 = 50;

#[derive(Debug, Clone)]
enum Op {
    /// Node `at` coordinates a write (a delete if `deleted`), with the
    /// context of a read of the replicas picked by `read`, acknowledged
    /// once it reached the replicas picked by `acks`.
    Write {
        at: usize,
        read: Vec<Index>,
        acks: Vec<Index>,
        deleted: bool,
    },
    /// The same through a fallback: it merges into its hint for the key.
    Fallback {
        at: usize,
        read: Vec<Index>,
        acks: Vec<Index>,
    },
    /// A fallback hands its hint to a home and forgets it.
    Deliver {
        from: usize,
        to: usize,
    },
    Sync {
        from: usize,
        to: usize,
    },
    /// The node loses everything since one of its older copies (power cut
    /// losing the WAL tail: the lease on disk survives).
    LoseTail {
        at: usize,
        back: Index,
    },
    /// An operator restores an older snapshot: data *and* lease go back.
    Restore {
        at: usize,
        back: Index,
    },
    /// GC reaps the key on some replicas if they hold only tombstones.
    Reap {
        on: Vec<Index>,
    },
}

const NODES: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let pick = || vec(any::<Index>(), 0..4);
    prop_oneof![
        4 => (0..NODES, pick(), pick(), any::<bool>())
            .prop_map(|(at, read, acks, deleted)| Op::Write { at, read, acks, deleted }),
        2 => (0..NODES, pick(), pick()).prop_map(|(at, read, acks)| Op::Fallback { at, read, acks }),
        1 => (0..NODES, 0..NODES).prop_map(|(from, to)| Op::Deliver { from, to }),
        3 => (0..NODES, 0..NODES).prop_map(|(from, to)| Op::Sync { from, to }),
        1 => (0..NODES, any::<Index>()).prop_map(|(at, back)| Op::LoseTail { at, back }),
        1 => (0..NODES, any::<Index>()).prop_map(|(at, back)| Op::Restore { at, back }),
        1 => vec(any::<Index>(), 1..NODES).prop_map(|on| Op::Reap { on }),
    ]
}

fn merge_into(node: &mut Node, other: &Option<DvvSet<Value>>) {
    if let Some(o) = other {
        let mut s = node.state.take().unwrap_or_default();
        s.merge(o);
        node.state = Some(s);
    }
}

/// Mints like `Stamper::mint`: past `last`, the wall clock and the object,
/// renewing the lease before a counter passes it.
fn mint(node: &mut Node, now: u64, least: u64) -> u64 {
    let c = next_counter(node.last, now, least);
    node.last = c;
    if c + LEASE_AHEAD / 2 > node.lease {
        node.lease = c + LEASE_AHEAD;
    }
    c
}

struct Run {
    nodes: Vec<Node>,
    /// Acknowledged live writes: (value id, dot). (A delete's effect is its
    /// context, kept in `superseded`; GC may reap the tombstone itself.)
    acked: Vec<(usize, Dot)>,
    /// Dots a client saw as siblings and then wrote over with that read's
    /// context: the only way a value may leave on purpose. (Not "covered by
    /// some context": a bogus merge could put a dot in a clock unseen.)
    superseded: Vec<Dot>,
    max_clock: usize,
    /// Writes made, and events that give a node a new actor.
    writes: usize,
    actor_changes: usize,
    /// Acknowledged writes every copy of which a lost tail or a restore
    /// took back (W copies, all reverted: beyond what any quorum promises).
    /// A write that vanishes through a merge is never exempt.
    exempt: Vec<Dot>,
    /// The first step at which an acknowledged write vanished otherwise.
    lost_at: Option<(usize, Dot)>,
}

fn run(ops: Vec<Op>) -> Run {
    let fresh =
        Node { state: None, hint: None, older: Vec::new(), last: 0, lease: 0, epoch: 0, generation: 0 };
    let mut r = Run {
        nodes: vec![fresh; NODES],
        acked: Vec::new(),
        superseded: Vec::new(),
        max_clock: 0,
        writes: 0,
        actor_changes: 0,
        exempt: Vec::new(),
        lost_at: None,
    };
    // The wall clock moves on slowly, so counters run ahead of it and only
    // the stamper's rules keep them apart; a restore jumps it (restoring a
    // volume takes far longer than the few counters minted per wall-clock
    // microsecond: the one assumption `stamp` documents).
    let mut jumped = 0;
    for (step, op) in ops.into_iter().enumerate() {
        if matches!(op, Op::Restore { .. }) {
            jumped += 1_000;
        }
        let now = step as u64 / 3 + jumped;
        for n in &mut r.nodes {
            n.older.push((n.state.clone(), n.hint.clone(), n.lease));
        }
        let reverting = matches!(op, Op::LoseTail { .. } | Op::Restore { .. });
        match op {
            Op::Write { at, read, acks, deleted } => {
                r.writes += 1;
                let (ctx, seen) = read_context(&r.nodes, &read);
                let actor = r.nodes[at].actor(at);
                let mut object = r.nodes[at].state.clone().unwrap_or_default();
                let node = &mut r.nodes[at];
                let dot = object.update_with(
                    &ctx,
                    &actor,
                    |least| mint(node, now, least),
                    Value { id: step, deleted },
                );
                r.nodes[at].state = Some(object.clone());
                replicate(&mut r, at, &object, &acks, step, (!deleted).then_some(dot), seen);
            }
            Op::Fallback { at, read, acks } => {
                // The fallback's object is its hint (empty once forgotten),
                // under its current fallback actor.
                r.writes += 1;
                let (ctx, seen) = read_context(&r.nodes, &read);
                let actor = r.nodes[at].fallback_actor(at);
                let mut object = r.nodes[at].hint.clone().unwrap_or_default();
                let node = &mut r.nodes[at];
                let dot = object.update_with(
                    &ctx,
                    &actor,
                    |least| mint(node, now, least),
                    Value { id: step, deleted: false },
                );
                r.nodes[at].hint = Some(object.clone());
                replicate(&mut r, at, &object, &acks, step, Some(dot), seen);
            }
            Op::Deliver { from, to } => {
                if let Some(hint) = r.nodes[from].hint.take() {
                    merge_into(&mut r.nodes[to], &Some(hint));
                    r.nodes[from].generation += 1;
                    r.actor_changes += 1;
                }
            }
            Op::Sync { from, to } => {
                let src = r.nodes[from].state.clone();
                merge_into(&mut r.nodes[to], &src);
            }
            Op::LoseTail { at, back } => {
                let node = &mut r.nodes[at];
                let (state, hint, _) = back.get(&node.older).clone();
                (node.state, node.hint) = (state, hint);
                node.last = node.lease; // restart: above the lease on disk
                node.epoch += 1; // an unclean start renews the epoch
                r.actor_changes += 2; // its home and its fallback actor
            }
            Op::Restore { at, back } => {
                let node = &mut r.nodes[at];
                let (state, hint, lease) = back.get(&node.older).clone();
                (node.state, node.hint) = (state, hint);
                node.lease = lease;
                node.last = lease.max(now); // the wall clock has moved on
                node.epoch += 1; // the peers' hello answers give it away
                r.actor_changes += 2;
            }
            Op::Reap { on } => {
                for i in on {
                    let node = i.get_mut(&mut r.nodes);
                    if node
                        .state
                        .as_ref()
                        .is_some_and(|s| !s.is_empty() && s.siblings().iter().all(|x| x.value.deleted))
                    {
                        node.state = None;
                    }
                }
            }
        }
        for n in &r.nodes {
            for s in [&n.state, &n.hint].into_iter().flatten() {
                r.max_clock = r.max_clock.max(s.clock().iter().count());
            }
        }
        // Checked after every step: an acknowledged write may vanish only
        // by a revert of every copy (then it is exempt from here on); if a
        // merge, a sync, a write or a reap makes it vanish, that is a loss.
        let held = |d: &Dot| {
            r.nodes.iter().any(|n| {
                [&n.state, &n.hint].into_iter().flatten().any(|s| s.siblings().iter().any(|x| &x.dot == d))
            })
        };
        let gone: Vec<Dot> = r
            .acked
            .iter()
            .map(|(_, d)| d)
            .filter(|d| !held(d) && !r.superseded.contains(d) && !r.exempt.contains(d))
            .cloned()
            .collect();
        if reverting {
            r.exempt.extend(gone);
        } else if let Some(d) = gone.into_iter().next() {
            r.lost_at.get_or_insert((step, d));
        }
    }
    r
}

/// A client's read of some replicas: the merged object's clock (its
/// context) and the dots of the siblings it saw.
fn read_context(nodes: &[Node], read: &[Index]) -> (VersionVector, Vec<Dot>) {
    let mut merged = DvvSet::new();
    for i in read {
        if let Some(s) = &i.get(nodes).state {
            merged.merge(s);
        }
    }
    let seen = merged.siblings().iter().map(|s| s.dot.clone()).collect();
    (merged.clock().clone(), seen)
}

/// Sends the object to the replicas in `acks`; the write is acknowledged
/// (W >= 1) when at least one durable copy took it.
fn replicate(
    r: &mut Run,
    at: usize,
    object: &DvvSet<Value>,
    acks: &[Index],
    step: usize,
    live: Option<Dot>,
    seen: Vec<Dot>,
) {
    // Acknowledged once stored by the coordinator (W=1) and sent to `acks`.
    for i in acks {
        let to = i.index(NODES);
        if to != at {
            merge_into(&mut r.nodes[to], &Some(object.clone()));
        }
    }
    r.superseded.extend(seen);
    if let Some(dot) = live {
        r.acked.push((step, dot));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_acknowledged_write_is_lost_and_clocks_stay_bounded(ops in vec(op(), 1..60)) {
        let mut r = run(ops);
        prop_assert_eq!(r.lost_at.clone(), None, "an acknowledged write vanished without a revert of every copy");
        // Heal: everybody syncs with everybody.
        let mut all = DvvSet::new();
        for n in &r.nodes {
            for s in [&n.state, &n.hint].into_iter().flatten() { all.merge(s); }
        }
        for n in &mut r.nodes {
            merge_into(n, &Some(all.clone()));
            prop_assert_eq!(n.state.as_ref(), Some(&all), "replicas converge");
        }
        let held: Vec<&Dot> = all.siblings().iter().map(|s| &s.dot).collect();
        for (id, dot) in &r.acked {
            if r.exempt.contains(dot) {
                continue;
            }
            let covered = r.superseded.contains(dot);
            prop_assert!(
                held.contains(&dot) || covered,
                "acknowledged write {} ({:?}) lost: neither held nor superseded by a context", id, dot
            );
        }
        // One home actor and one fallback actor per node, plus one per
        // actor-changing event: never one per write.
        let bound = 2 * NODES + r.actor_changes;
        prop_assert!(r.max_clock <= bound, "clock has {} entries, bound {} ({} writes)", r.max_clock, bound, r.writes);
    }
}

/// The bug the stamper fixes, replayed with "clock + 1" minting: a node
/// that lost its tail mints an acknowledged write's dot again, and the
/// replica holding the first write drops the second as already seen.
#[test]
fn clock_plus_one_minting_loses_a_write_after_a_lost_tail() {
    let (mut a, mut b) = (DvvSet::new(), DvvSet::new());
    let before = a.clone();
    let first = a.update(&VersionVector::new(), "a", 1);
    b.merge(&a); // acknowledged by b
    a = before; // a loses its tail
    let second = a.update(&VersionVector::new(), "a", 2);
    assert_eq!(first, second, "the same dot, minted twice");
    b.merge(&a);
    assert_eq!(b.siblings().iter().map(|s| s.value).collect::<Vec<_>>(), [1], "write 2 is lost on b");

    // The same history as the replica runs it keeps both: the unclean
    // restart renews the epoch, so the second write has another actor.
    let (mut a, mut b) = (DvvSet::new(), DvvSet::new());
    let mut node =
        Node { state: None, hint: None, older: Vec::new(), last: 0, lease: 0, epoch: 0, generation: 0 };
    let before = a.clone();
    a.update_with(&VersionVector::new(), &node.actor(0), |l| mint(&mut node, 0, l), 1);
    b.merge(&a);
    a = before;
    node.last = node.lease;
    node.epoch += 1;
    a.update_with(&VersionVector::new(), &node.actor(0), |l| mint(&mut node, 0, l), 2);
    b.merge(&a);
    assert_eq!(b.siblings().iter().map(|s| s.value).collect::<Vec<_>>(), [1, 2]);
}

/// Why a fresh counter alone is not enough: a clock entry claims every dot
/// of its actor up to the counter, so a node that forgot a dot and mints a
/// higher one under the same actor supersedes it.
#[test]
fn a_higher_counter_under_the_same_actor_still_loses_a_forgotten_write() {
    let (mut a, mut b) = (DvvSet::new(), DvvSet::new());
    let before = a.clone();
    a.update_with(&VersionVector::new(), "a", |l| l.max(10), 1);
    b.merge(&a);
    a = before;
    a.update_with(&VersionVector::new(), "a", |l| l.max(20), 2);
    b.merge(&a);
    assert_eq!(b.siblings().iter().map(|s| s.value).collect::<Vec<_>>(), [2], "write 1 is lost on b");
}
