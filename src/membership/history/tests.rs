use super::*;
use proptest::prelude::*;

use crate::membership::test_member as member;

fn start(ids: &[&str]) -> History {
    let members: Vec<MemberConfig> = ids.iter().map(|id| member(id)).collect();
    History::initial("test", 64, 3, &members)
}

/// What a node does on its own each round: commit what is wished, then
/// move its own marks as far as the protocol lets it (ack the newest; sync
/// a version once everyone acked it — the transfer itself is instant here;
/// sync-ack the read version).
fn step(h: &mut History, me: &str) {
    h.commit();
    let newest = h.versions().len() - 1;
    h.mark(Tracker::Ack, me, newest);
    if let Some(i) = (0..h.versions().len()).rev().find(|&i| h.all_reached(Tracker::Ack, i)) {
        h.mark(Tracker::Sync, me, i);
    }
    let read = h.read_index_for(me);
    h.mark(Tracker::SyncAck, me, read);
}

/// Gossip every pair and step every node until nothing changes.
fn settle(nodes: &mut [(String, History)]) {
    for _ in 0..100 {
        let mut changed = false;
        for i in 0..nodes.len() {
            for j in 0..nodes.len() {
                let other = nodes[j].1.clone();
                changed |= nodes[i].1.merge(&other).unwrap();
            }
            let (me, h) = &mut nodes[i];
            let before = h.clone();
            step(h, me);
            changed |= *h != before;
        }
        if !changed {
            return;
        }
    }
    panic!("histories did not settle in 100 rounds");
}

#[test]
fn the_initial_history_is_synced_and_reads_from_version_one() {
    let h = start(&["a", "b", "c"]);
    assert_eq!(h.versions().len(), 1);
    assert_eq!(h.current().number, 1);
    assert_eq!(h.read_index(), 0);
    assert!(h.all_reached(Tracker::SyncAck, 0));
    assert_eq!(h.tracked().len(), 3);
}

#[test]
fn a_join_commits_a_version_that_reads_wait_for_until_everyone_synced() {
    let mut h = start(&["a", "b", "c"]);
    assert!(!h.uncommitted());
    h.wish("d", "d", Desire::Member(member("d")));
    assert!(h.uncommitted(), "a wish nobody committed");
    assert!(h.commit());
    assert!(!h.uncommitted());
    assert!(!h.commit(), "nothing new to commit");
    let mut heavier = h.clone();
    heavier.wish("a", "b", Desire::Member(MemberConfig { weight: 3, ..member("b") }));
    assert!(heavier.uncommitted(), "a changed weight is a change");
    let mut leaving = h.clone();
    leaving.wish("a", "c", Desire::Leaving);
    assert!(leaving.uncommitted(), "a leave is a change");
    assert_eq!(h.current().number, 2);
    assert!(h.current().has("d"));
    assert_eq!(h.read_index(), 0, "nobody synced version 2: reads stay on version 1");
    for id in ["a", "b", "c", "d"] {
        h.mark(Tracker::Ack, id, 1);
        h.mark(Tracker::Sync, id, 1);
    }
    assert_eq!(h.read_index(), 1);
    assert_eq!(h.versions().len(), 2, "version 1 stays until everyone reads from 2");
    for id in ["a", "b", "c"] {
        h.mark(Tracker::SyncAck, id, 1);
    }
    assert_eq!(h.versions().len(), 2, "d has not acknowledged yet");
    h.mark(Tracker::SyncAck, "d", 1);
    assert_eq!(h.versions().len(), 1);
    assert_eq!(h.current().number, 2);
}

#[test]
fn a_removed_member_is_not_waited_for_but_a_leaving_one_is() {
    let mut h = start(&["a", "b", "c", "d"]);
    h.wish("a", "d", Desire::Leaving);
    h.commit();
    assert!(h.tracked().contains("d"), "a leaving node still hands its data over");
    h.wish("a", "c", Desire::Removed);
    h.commit();
    assert!(!h.tracked().contains("c"), "a dead node is not waited for");
    assert!(!h.current().has("c") && !h.current().has("d"));
}

#[test]
fn concurrent_commits_of_one_number_converge_and_a_losers_mark_does_not_count() {
    let base = start(&["a", "b", "c"]);
    let (mut x, mut y) = (base.clone(), base);
    x.wish("d", "d", Desire::Member(member("d")));
    x.commit();
    y.wish("e", "e", Desire::Member(member("e")));
    y.commit();
    assert_eq!(x.current().number, y.current().number);
    x.mark(Tracker::Ack, "d", 1);
    y.mark(Tracker::Ack, "e", 1);
    let (x_digest, y_digest) = (x.current().digest(), y.current().digest());
    let mut xy = x.clone();
    xy.merge(&y).unwrap();
    let mut yx = y.clone();
    yx.merge(&x).unwrap();
    assert_eq!(xy, yx, "merge is commutative");
    let winner = xy.current().digest();
    assert_eq!(winner, x_digest.max(y_digest));
    let loser_author = if winner == x_digest { "e" } else { "d" };
    assert!(!xy.reached(Tracker::Ack, loser_author, 1), "a mark made for the losing version does not count");
    // Both wishes survive: the next commit holds d and e.
    assert!(xy.commit());
    assert!(xy.current().has("d") && xy.current().has("e"));
}

#[test]
fn reads_never_move_to_an_intermediate_version_a_later_mark_reaches() {
    // d joins (v2), a, b and c sync v2 at once while d is still pulling;
    // then d leaves (v3). d homes nothing in v3, so it marks v3 synced at
    // once: that mark also reaches v2, which d never finished filling.
    let mut h = start(&["a", "b", "c"]);
    h.wish("d", "d", Desire::Member(member("d")));
    h.commit();
    for id in ["a", "b", "c"] {
        h.mark(Tracker::Ack, id, 1);
        h.mark(Tracker::Sync, id, 1);
    }
    h.wish("a", "d", Desire::Leaving);
    h.commit();
    for id in ["a", "b", "c", "d"] {
        h.mark(Tracker::Ack, id, 2);
    }
    h.mark(Tracker::Sync, "d", 2);
    assert!(h.all_reached(Tracker::Sync, 1), "every mark reaches v2 now");
    assert_eq!(h.read_index(), 0, "reads stay on v1, the version that was filled");
    for id in ["a", "b", "c"] {
        h.mark(Tracker::Sync, id, 2);
    }
    assert_eq!(h.read_index(), 2, "v3 once every node synced it");
}

#[test]
fn a_node_behind_in_gossip_keeps_reading_the_version_it_acknowledged() {
    // Everyone synced v2 and a sync-acked it, so the others may have
    // pruned v1 and swept its old homes; a's view still holds v1 (b's
    // sync-ack has not reached it) when a change is committed on top.
    let mut h = start(&["a", "b", "c"]);
    h.wish("d", "d", Desire::Member(member("d")));
    h.commit();
    for id in ["a", "b", "c", "d"] {
        h.mark(Tracker::Ack, id, 1);
        h.mark(Tracker::Sync, id, 1);
    }
    assert_eq!(h.read_index(), 1);
    for id in ["a", "c", "d"] {
        h.mark(Tracker::SyncAck, id, 1);
    }
    assert_eq!(h.versions().len(), 2, "b has not sync-acked v2: v1 is still in force");
    h.wish("a", "e", Desire::Member(member("e")));
    h.commit();
    assert_eq!(h.versions().len(), 3);
    assert_eq!(h.read_index(), 0, "nobody synced v3");
    assert_eq!(h.read_index_for("a"), 1, "a reads v2, which it sync-acked, not v1");
    assert_eq!(h.read_index_for("b"), 0, "b never sync-acked v2: v1 is still its read version");
    for id in ["a", "b", "c", "d", "e"] {
        h.mark(Tracker::Ack, id, 2);
        h.mark(Tracker::Sync, id, 2);
    }
    assert_eq!(h.read_index_for("a"), 2, "v3 once every node synced it");
}

#[test]
fn a_repeated_request_changes_nothing_and_a_new_config_commits() {
    let mut h = start(&["a", "b", "c"]);
    assert!(!h.request("a", "b", Desire::Member(member("b"))), "already wished and in force");
    assert!(h.request("a", "c", Desire::Leaving));
    assert_eq!(h.current().number, 2);
    assert!(!h.request("b", "c", Desire::Leaving), "the same leave again");
    let heavier = MemberConfig { weight: 2, ..member("b") };
    assert!(h.request("a", "b", Desire::Member(heavier.clone())));
    assert!(h.current().members.contains(&heavier));
}

#[test]
fn histories_created_from_different_member_lists_refuse_each_other() {
    let mut h = start(&["a", "b", "c"]);
    let other = start(&["a", "b", "d"]);
    assert_eq!(h.merge(&other), Err(MergeError::OtherGenesis));
}

#[test]
fn a_history_from_another_cluster_or_ring_is_refused() {
    let mut h = start(&["a"]);
    let other = History::initial("other", 64, 3, &[member("a")]);
    assert!(matches!(h.merge(&other), Err(MergeError::OtherCluster { .. })));
    let ring = History::initial("test", 128, 3, &[member("a")]);
    assert!(matches!(h.merge(&ring), Err(MergeError::OtherRing { .. })));
    let mut broken = start(&["a"]);
    broken.versions.clear();
    assert!(matches!(h.merge(&broken), Err(MergeError::Malformed(_))));
}

#[test]
fn the_history_round_trips_through_the_wire_codec() {
    let mut h = start(&["a", "b"]);
    h.wish("c", "c", Desire::Member(member("c")));
    h.commit();
    let bytes = postcard::to_stdvec(&h).unwrap();
    let back: History = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, h);
    assert_eq!(back.digest(), h.digest());
}

#[derive(Debug, Clone)]
enum Op {
    Join {
        node: usize,
        id: usize,
    },
    Leave {
        node: usize,
        id: usize,
    },
    Step {
        node: usize,
    },
    Gossip {
        from: usize,
        to: usize,
    },
    /// A push-pull exchange of differences, as the gossip worker runs it.
    Exchange {
        from: usize,
        to: usize,
    },
    /// The node comes back with an older copy of its stored history (a
    /// restored volume snapshot): one it held `back` changes ago.
    Restore {
        node: usize,
        back: usize,
    },
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..nodes, 0..8usize).prop_map(|(node, id)| Op::Join { node, id }),
        (0..nodes, 0..8usize).prop_map(|(node, id)| Op::Leave { node, id }),
        (0..nodes).prop_map(|node| Op::Step { node }),
        (0..nodes, 0..nodes).prop_map(|(from, to)| Op::Gossip { from, to }),
        (0..nodes, 0..nodes).prop_map(|(from, to)| Op::Exchange { from, to }),
        (0..nodes, 0..8usize).prop_map(|(node, back)| Op::Restore { node, back }),
    ]
}

/// What each node held before each of its changes (for `Restore`).
type Past = Vec<Vec<History>>;

/// Plays one op on the simulated nodes (`leaves`: whether leaves happen).
fn apply(nodes: &mut [(String, History)], past: &mut Past, ids: &[&str], op: Op, leaves: bool) {
    for (i, (_, h)) in nodes.iter().enumerate() {
        if past[i].last() != Some(h) {
            past[i].push(h.clone());
        }
    }
    match op {
        Op::Join { node, id } => {
            let (me, h) = &mut nodes[node];
            h.wish(me, ids[id], Desire::Member(member(ids[id])));
        }
        Op::Leave { node, id } => {
            let (me, h) = &mut nodes[node];
            if leaves && h.wanted().len() > 1 {
                h.wish(me, ids[id], Desire::Leaving);
            }
        }
        Op::Step { node } => {
            let (me, h) = &mut nodes[node];
            step(h, me);
        }
        Op::Gossip { from, to } => {
            let other = nodes[from].1.clone();
            nodes[to].1.merge(&other).unwrap();
        }
        Op::Exchange { from, to } => {
            let (mut a, mut b) = (nodes[from].1.clone(), nodes[to].1.clone());
            let offer = a.summary();
            let pull = b.delta_for(&offer);
            let answer = b.summary();
            a.apply(&pull).unwrap();
            let push = a.delta_for(&answer);
            b.apply(&push).unwrap();
            // Differences exchanged both ways: both end where a merge
            // both ways ends.
            let mut merged = nodes[from].1.clone();
            merged.merge(&nodes[to].1).unwrap();
            assert_eq!(a, merged, "pull");
            if from != to {
                assert_eq!(b, merged, "push");
            }
            nodes[from].1 = a;
            nodes[to].1 = b;
        }
        Op::Restore { node, back } => {
            let kept = &past[node];
            if let Some(older) = kept.len().checked_sub(back + 1).map(|i| kept[i].clone()) {
                nodes[node].1 = older;
            }
        }
    }
}

proptest! {
    /// Any interleaving of joins, leaves, commits, marks, gossip (whole
    /// histories or differences) and restores of an older stored history
    /// between four nodes settles, once they gossip, on one history on
    /// every node: one version, holding what the last wishes asked for.
    #[test]
    fn concurrent_changes_converge_to_one_layout(ops in proptest::collection::vec(op(4), 0..60)) {
        let ids = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
        let mut nodes: Vec<(String, History)> =
            (0..4).map(|i| (ids[i].to_string(), start(&ids[..4]))).collect();
        let mut past: Past = vec![Vec::new(); 4];
        for op in ops {
            apply(&mut nodes, &mut past, &ids, op, true);
        }
        // Members that joined in the wishes, or are leaving, take part too
        // (in a cluster they would be running): add them before settling.
        let mut all = nodes[0].1.clone();
        for (_, h) in &nodes {
            all.merge(h).unwrap();
        }
        let mut wanted: Vec<String> = all.wanted().iter().map(|m| m.id.clone()).collect();
        wanted.extend(all.tracked().into_iter().map(str::to_string));
        for id in &wanted {
            if !nodes.iter().any(|(me, _)| me == id) {
                nodes.push((id.clone(), all.clone()));
            }
        }
        settle(&mut nodes);
        let first = nodes[0].1.clone();
        for (me, h) in &nodes {
            prop_assert_eq!(h, &first, "node {} disagrees", me);
        }
        prop_assert_eq!(first.versions().len(), 1, "every move finished and the old versions went");
        if first.wanted().is_empty() {
            // Concurrent leaves of every member: nothing empty is committed.
            prop_assert!(!first.current().members.is_empty());
        } else {
            prop_assert_eq!(&first.current().members, &first.wanted());
        }
    }

    /// Merge is a semilattice join: commutative, idempotent and associative.
    #[test]
    fn merge_is_a_join(ops in proptest::collection::vec(op(3), 0..40)) {
        let ids = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
        let mut nodes: Vec<(String, History)> =
            (0..3).map(|i| (ids[i].to_string(), start(&ids[..3]))).collect();
        let mut past: Past = vec![Vec::new(); 3];
        for op in ops {
            apply(&mut nodes, &mut past, &ids, op, false);
        }
        let (a, b, c) = (nodes[0].1.clone(), nodes[1].1.clone(), nodes[2].1.clone());
        let join = |x: &History, y: &History| {
            let mut z = x.clone();
            z.merge(y).unwrap();
            z
        };
        prop_assert_eq!(join(&a, &b), join(&b, &a));
        prop_assert_eq!(join(&a, &a), a.clone());
        prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
    }
}
