//! Promises that only a failure path exercises: each test drives the
//! guard's condition, checks that the guard held, then removes the
//! condition and checks that the guarded action does happen (so the first
//! check cannot pass just because nothing ran).

use std::time::Duration;

use quorumkv::config::RepairConfig;

use crate::cluster::{Options, TestCluster, header};

/// A key whose homes (in order) do not include any of `avoid`.
async fn key_avoiding(c: &TestCluster, prefix: &str, avoid: &[usize]) -> (String, Vec<usize>) {
    for i in 0..1000 {
        let key = format!("{prefix}-{i}");
        let homes: Vec<usize> = c.homes(&key).await.iter().map(|h| c.index_of(h)).collect();
        if !homes.iter().any(|h| avoid.contains(h)) {
            return (key, homes);
        }
    }
    panic!("no key avoiding {avoid:?}");
}

/// Hints queued on `holders` for any of `targets`.
async fn hints_queued(c: &TestCluster, holders: &[usize], targets: &[String]) -> u64 {
    let mut total = 0;
    for n in holders {
        let view = c.cluster_view(*n).await;
        for t in targets {
            total += view["stats"]["hints"]["queued"][t].as_u64().unwrap_or(0);
        }
    }
    total
}

fn quick_gc() -> RepairConfig {
    RepairConfig {
        anti_entropy_interval_ms: 200,
        hint_window_secs: 1,
        tombstone_grace_secs: 1,
        ..RepairConfig::default()
    }
}

/// Waits until `node` has run `more` anti-entropy rounds (GC runs in each).
async fn wait_rounds(c: &TestCluster, node: usize, more: u64) {
    let rounds = |v: serde_json::Value| v["stats"]["anti_entropy"]["rounds"].as_u64().unwrap();
    let start = rounds(c.cluster_view(node).await);
    for _ in 0..200 {
        if rounds(c.cluster_view(node).await) >= start + more {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node{} ran fewer than {more} anti-entropy rounds", node + 1);
}

async fn reaped(c: &TestCluster, node: usize) -> u64 {
    c.cluster_view(node).await["stats"]["anti_entropy"]["tombstones_reaped"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_pr_fails_when_only_fallbacks_hold_the_key() {
    let mut c = TestCluster::start_with(Options { nodes: 5, ..Options::default() }).await;
    let (key, homes) = key_avoiding(&c, "pr", &[0]).await;
    // Two of the three homes down: the write lands on one home + fallbacks.
    c.stop(homes[1]).await;
    c.stop(homes[2]).await;
    for h in &homes[1..] {
        c.wait_reachable(0, &format!("node{}", h + 1), false).await;
    }
    let live = homes[0];
    for h in &homes[1..] {
        c.wait_reachable(live, &format!("node{}", h + 1), false).await;
    }
    let r = c.put(live, &key, "v", &[("w", "2")]).await;
    assert_eq!(r.status(), 204);
    // Read through the live home (a coordinator does not read its own hints).
    let r = c.get(live, &key, &[("r", "2")]).await;
    assert_eq!(r.status(), 200, "a fallback's hint counts toward R");
    let r = c.get(live, &key, &[("r", "2"), ("pr", "2")]).await;
    assert_eq!(r.status(), 503, "but not toward PR");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["required"].as_u64(), body["answered"].as_u64()),
        (Some("pr"), Some(2), Some(1))
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_delete_whose_read_fails_deletes_nothing() {
    let mut c = TestCluster::start(3).await;
    assert_eq!(c.put(0, "kept", "v", &[("w", "3")]).await.status(), 204);
    c.stop(1).await;
    c.stop(2).await;
    c.wait_reachable(0, "node2", false).await;
    c.wait_reachable(0, "node3", false).await;
    let r = c.delete(0, "kept", &[("r", "2"), ("w", "1")]).await;
    assert_eq!(r.status(), 503, "the read before a blind delete must meet R");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "r");
    c.restart(1).await;
    c.restart(2).await;
    let r = c.get(0, "kept", &[("r", "3")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "v", "nothing was deleted");
    // The same delete with the replicas back does delete.
    assert_eq!(c.delete(0, "kept", &[("r", "2"), ("w", "2")]).await.status(), 204);
    assert_eq!(c.get(0, "kept", &[("r", "3")]).await.status(), 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_with_an_unknown_outcome_answers_503_and_is_not_resent() {
    let c = TestCluster::start_with(Options { nodes: 4, read_repair: false, ..Options::default() }).await;
    let (key, homes) = key_avoiding(&c, "unknown", &[3]).await;
    // node4 is no home: it forwards. The forward reaches the first home,
    // which stores the write, but the reply is lost.
    let node4 = c.node(3);
    for h in &homes {
        node4.faults().lose_replies(&format!("node{}", h + 1), "/rpc/put");
    }
    let r = c.put(3, &key, "maybe", &[("w", "2")]).await;
    assert_eq!(r.status(), 503, "the outcome is unknown: not a success, not retried elsewhere");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "quorum_not_met");
    c.heal();
    // It was stored once (by the first home), not twice as siblings.
    let r = c.get(homes[1], &key, &[("r", "3")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "sibling-count"), "1");
    assert_eq!(r.text().await.unwrap(), "maybe");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_waits_for_every_member_and_for_hints() {
    let opts = Options { nodes: 5, repair: quick_gc(), read_repair: false, ..Options::default() };
    let mut c = TestCluster::start_with(opts).await;
    let (key, homes) = key_avoiding(&c, "gc-member", &[]).await;
    let first = homes[0];
    let bystander = (0..5).find(|n| !homes.contains(n)).unwrap();
    assert_eq!(c.put(first, &key, "v", &[("w", "3")]).await.status(), 204);
    assert_eq!(c.delete(first, &key, &[("w", "3"), ("r", "3")]).await.status(), 204);

    // A member that is no home is down: GC must wait for it (it could hold a hint).
    c.stop(bystander).await;
    c.wait_reachable(first, &format!("node{}", bystander + 1), false).await;
    wait_rounds(&c, first, 8).await;
    assert_eq!(reaped(&c, first).await, 0, "8 rounds past the grace period, with a member down");
    for h in &homes {
        assert!(c.local(*h, &key).await.is_some(), "the tombstone is still on node{}", h + 1);
    }
    // Back: the tombstone goes.
    c.restart(bystander).await;
    for h in &homes {
        c.wait_local(*h, &key, |v| v.is_none()).await;
    }
    assert!(reaped(&c, first).await >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_a_tombstone_while_a_member_holds_a_hint_for_it() {
    let opts = Options { nodes: 5, repair: quick_gc(), read_repair: false, ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    let (key, homes) = key_avoiding(&c, "gc-hint", &[]).await;
    let (first, last) = (homes[0], homes[2]);
    let last_id = format!("node{}", last + 1);
    let spares: Vec<usize> = (0..5).filter(|n| !homes.contains(n)).collect();
    assert_eq!(c.put(first, &key, "v", &[("w", "3")]).await.status(), 204);
    let context = header(&c.get(first, &key, &[("r", "3")]).await, "causal-context");
    // The coordinator cannot reach the last home, so that copy of the
    // delete goes to a spare as a hint; the spares cannot call any home
    // (one way: the homes still reach them), so the hint can be neither
    // delivered nor expired (expiry asks another home whether it holds it).
    c.node(first).faults().cut(&last_id);
    for s in &spares {
        for h in &homes {
            c.node(*s).faults().cut(&format!("node{}", h + 1));
        }
    }
    c.wait_reachable(first, &last_id, false).await;
    let r = c.delete(first, &key, &[("w", "2"), ("causal-context", &context)]).await;
    assert_eq!(r.status(), 204);
    // The two reachable homes meet W=2; the spare's copy may be acknowledged
    // after the answer (so the report need not count it), but it is taken.
    let spare_ids: Vec<String> = spares.iter().map(|s| format!("node{}", s + 1)).collect();
    let mut queued = 0;
    for _ in 0..100 {
        queued = hints_queued(&c, &spares, std::slice::from_ref(&last_id)).await;
        if queued > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 1, "a spare holds the hint");
    // The coordinator reaches the last home again: anti-entropy gives it the
    // tombstone, so every home holds the same one, past the grace period.
    c.node(first).faults().heal_all();
    c.wait_reachable(first, &last_id, true).await;
    c.wait_local(last, &key, |v| v.is_some_and(|v| v["siblings"][0]["deleted"] == true)).await;
    for s in &spare_ids {
        assert!(c.reachable(first, s).await, "every member is reachable from the first home");
    }
    wait_rounds(&c, first, 8).await;
    assert_eq!(reaped(&c, first).await, 0, "a hinted key waits for its handoff");
    assert_eq!(hints_queued(&c, &spares, std::slice::from_ref(&last_id)).await, 1);
    // The spares reach the homes again: the hint is delivered, then the key is reaped.
    c.heal();
    for h in &homes {
        c.wait_local(*h, &key, |v| v.is_none()).await;
    }
    assert!(reaped(&c, first).await >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hint_is_dropped_only_when_a_home_holds_it() {
    let repair = RepairConfig {
        hint_window_secs: 1,
        tombstone_grace_secs: 1,
        anti_entropy: false,
        ..RepairConfig::default()
    };
    let mut c = TestCluster::start_with(Options { nodes: 5, repair, ..Options::default() }).await;
    let (covered, homes) = key_avoiding(&c, "expiry", &[]).await;
    let (h0, h1, down) = (homes[0], homes[1], homes[2]);
    let down_id = format!("node{}", down + 1);
    let spares: Vec<usize> = (0..5).filter(|n| !homes.contains(n)).collect();
    // A key homed on `down` and the two spares only, for the second part.
    let mut lonely = None;
    for i in 0..2000 {
        let k = format!("lonely-{i}");
        let mut hs: Vec<usize> = c.homes(&k).await.iter().map(|h| c.index_of(h)).collect();
        hs.sort();
        let mut want = vec![down, spares[0], spares[1]];
        want.sort();
        if hs == want {
            lonely = Some(k);
            break;
        }
    }
    let lonely = lonely.expect("a key homed on the down node and both spares");

    // Covered: two homes hold the write, a spare holds the hint for `down`.
    c.stop(down).await;
    c.wait_reachable(h0, &down_id, false).await;
    assert_eq!(c.put(h0, &covered, "v", &[("w", "2")]).await.status(), 204);
    let started = std::time::Instant::now();
    let mut expired = 0;
    for _ in 0..150 {
        expired = 0;
        for n in &spares {
            expired += c.cluster_view(*n).await["stats"]["hints"]["expired"].as_u64().unwrap_or(0);
        }
        if expired >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(expired >= 1, "past the window, a hint another home covers is dropped");
    let took = started.elapsed();

    // Only copy: every home of `lonely` is down; h0 takes the write alone
    // and h0/h1 hold the hints. Twice as long as expiry took above, the
    // hint for `down` is still queued: no home holds the write.
    for s in &spares {
        c.stop(*s).await;
        c.wait_reachable(h0, &format!("node{}", s + 1), false).await;
    }
    assert_eq!(c.put(h0, &lonely, "only copy", &[("w", "1")]).await.status(), 204);
    let lonely_homes: Vec<String> =
        [down, spares[0], spares[1]].iter().map(|h| format!("node{}", h + 1)).collect();
    let at_write = hints_queued(&c, &[h0, h1], &lonely_homes).await;
    assert!(at_write >= 1, "the write is held as hints");
    tokio::time::sleep((took * 2).max(Duration::from_secs(3))).await;
    // Not fewer (the second fallback's copy may still have been landing
    // when they were first counted).
    let later = hints_queued(&c, &[h0, h1], &lonely_homes).await;
    assert!(
        later >= at_write,
        "no hint of {lonely} is dropped: no home holds the write ({at_write} -> {later})"
    );
    // The homes return and get it.
    c.restart(down).await;
    for s in &spares {
        c.restart(*s).await;
    }
    let mut got = None;
    for _ in 0..100 {
        let r = c.get(h0, &lonely, &[("r", "3")]).await;
        if r.status() == 200 {
            got = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got.as_deref(), Some("only copy"));
    c.shutdown().await;
}

/// A value is hashed once, where the client's body arrives; a home that is
/// forwarded the write checks the bytes against that digest, so a value
/// damaged on the way between nodes is refused and never stored. The same
/// write with intact bytes is then stored, so the refusal is the check's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_value_that_no_longer_matches_its_digest_is_refused() {
    use bytes::Bytes;
    use quorumkv::coordinator::{Consistency, CoordinatorError, ForwardPut, ForwardPutResponse};
    use quorumkv::rpc::client::routes;
    use quorumkv::storage::StoredValue;
    use quorumkv::version::VersionVector;

    let c = TestCluster::start(3).await;
    let key = "in-transit";
    let consistency = Consistency { n: 3, r: 2, w: 2, pr: 0, pw: 0, dw: 0 };
    let intact = StoredValue::new(Bytes::from_static(b"sent"), "text/plain".into(), 1, false);
    let mut damaged = intact.clone();
    damaged.bytes = Bytes::from_static(b"sEnt");
    let forward = |value| ForwardPut {
        key: Bytes::from_static(key.as_bytes()),
        context: VersionVector::new(),
        value,
        consistency,
    };
    let peers = c.node(0).state().coordinator.peers().clone();
    let call = |req: ForwardPut| {
        let peers = peers.clone();
        async move {
            peers
                .call::<_, ForwardPutResponse>("node2", routes::PUT, &req, Duration::from_secs(10))
                .await
                .expect("node2 answers")
        }
    };
    let refused = call(forward(damaged)).await;
    assert!(matches!(refused, Err(CoordinatorError::DigestMismatch)), "{refused:?}");
    for node in 0..3 {
        assert_eq!(c.get(node, key, &[("r", "3")]).await.status(), 404, "nothing stored at node{}", node + 1);
        // A stored damaged record would read as missing too, but counted.
        let view = c.cluster_view(node).await;
        assert_eq!(view["stats"]["corrupt_reads"], 0, "no damaged record at node{}", node + 1);
    }
    let stored = call(forward(intact)).await;
    assert!(stored.is_ok(), "{stored:?}");
    let r = c.get(0, key, &[("r", "3")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "sent");
    c.shutdown().await;
}
