//! Always writable and self-healing: sloppy quorum with hinted handoff,
//! partitions healing into siblings, anti-entropy refilling a wiped node,
//! integrity repair, and tombstone GC.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use quorumkv::config::RepairConfig;

use crate::cluster::{Options, TestCluster, header, sibling_values};

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

/// Anti-entropy every 200 ms, so tests wait seconds, not minutes.
fn fast_repair() -> RepairConfig {
    RepairConfig { anti_entropy_interval_ms: 200, ..RepairConfig::default() }
}

fn no_anti_entropy() -> RepairConfig {
    RepairConfig { anti_entropy: false, ..RepairConfig::default() }
}

fn fallback_count(report: &str) -> usize {
    report
        .split("; ")
        .find_map(|part| part.strip_prefix("fallback="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fallback count in {report:?}"))
}

/// Hints queued for `target`, summed over the running nodes in `viewers`.
async fn queued_for(c: &TestCluster, viewers: &[usize], target: &str) -> u64 {
    let mut total = 0;
    for v in viewers {
        let view = c.cluster_view(*v).await;
        total += view["stats"]["hints"]["queued"][target].as_u64().unwrap_or(0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_for_stopped_homes_go_to_fallbacks_and_are_handed_off_after_restart() {
    // Anti-entropy off: only handoff may bring the homes up to date.
    let opts = Options { nodes: 5, repair: no_anti_entropy(), ..Options::default() };
    let mut c = TestCluster::start_with(opts).await;
    let mut keys = Vec::new();
    for i in 0..400 {
        let key = format!("sloppy-{i}");
        let homes = c.homes(&key).await;
        if homes.contains(&"node4".to_string()) && homes.contains(&"node5".to_string()) {
            keys.push(key);
        }
        if keys.len() == 10 {
            break;
        }
    }
    assert_eq!(keys.len(), 10, "keys homed on both node4 and node5");
    // A refused write may still be stored (as in Dynamo): keep those apart.
    let strict = keys.split_off(8);
    c.stop(3).await;
    c.stop(4).await;
    for peer in ["node4", "node5"] {
        c.wait_reachable(0, peer, false).await;
    }

    for key in &keys {
        let r = c.put(0, key, format!("value of {key}"), &[("w", "2")]).await;
        assert_eq!(r.status(), 204, "W=2 with two of three homes down");
        let report = header(&r, "quorum-report");
        assert!(fallback_count(&report) >= 1, "{report}");
    }
    for key in &strict {
        let r = c.put(0, key, "strict", &[("w", "2"), ("pw", "2")]).await;
        assert_eq!(r.status(), 503, "PW=2 needs two home replicas");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!((body["error"].as_str(), body["required"].as_u64()), (Some("quorum_not_met"), Some(2)));
    }
    let running = [0, 1, 2];
    let queued = queued_for(&c, &running, "node4").await;
    assert!(queued >= keys.len() as u64, "every key has a hint for node4 ({queued})");

    // Hints are durable: restart every node that holds some.
    for v in running {
        let view = c.cluster_view(v).await;
        let held = view["stats"]["hints"]["queued"]["node4"].as_u64().unwrap_or(0);
        if held > 0 {
            c.stop(v).await;
            c.restart(v).await;
            let view = c.cluster_view(v).await;
            assert_eq!(view["stats"]["hints"]["queued"]["node4"].as_u64(), Some(held), "survived a restart");
        }
    }

    c.restart(3).await;
    c.restart(4).await;
    for key in &keys {
        for home in [3, 4] {
            // Through the peer API: nothing here reads through a quorum.
            let want = vec![b64(&format!("value of {key}"))];
            c.wait_local(home, key, |v| v.is_some_and(|v| sibling_values(v) == want)).await;
        }
    }
    for target in ["node4", "node5"] {
        for _ in 0..100 {
            if queued_for(&c, &running, target).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(queued_for(&c, &running, target).await, 0, "hints for {target} removed once delivered");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_home_unreachable_a_w1_write_is_still_taken() {
    let opts = Options { nodes: 4, repair: no_anti_entropy(), ..Options::default() };
    let mut c = TestCluster::start_with(opts).await;
    // A key whose homes are nodes 2-4, written through node1.
    let mut key = None;
    for i in 0..400 {
        let k = format!("lonely-{i}");
        if !c.homes(&k).await.contains(&"node1".to_string()) {
            key = Some(k);
            break;
        }
    }
    let key = key.expect("a key not homed on node1");
    for i in 1..4 {
        c.stop(i).await;
    }
    for peer in ["node2", "node3", "node4"] {
        c.wait_reachable(0, peer, false).await;
    }
    let r = c.put(0, &key, "kept", &[("w", "1")]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "quorum-report"), "n=3; w=1; acked=1; fallback=1");
    for i in 1..4 {
        c.restart(i).await;
    }
    let homes = c.homes(&key).await;
    let first = homes[0].trim_start_matches("node").parse::<usize>().unwrap() - 1;
    c.wait_local(first, &key, |v| v.is_some_and(|v| sibling_values(v) == vec![b64("kept")])).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_both_sides_of_a_partition_become_siblings() {
    let opts = Options { nodes: 3, repair: fast_repair(), read_repair: false, ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    assert_eq!(c.put(0, "split", "before", &[("w", "3")]).await.status(), 204);
    let r = c.get(0, "split", &[("r", "3")]).await;
    let context = header(&r, "causal-context");
    c.cut(0, 1);
    c.cut(0, 2);
    // Each side writes with the same context: truly concurrent updates.
    let r = c.put(0, "split", "left", &[("w", "1"), ("causal-context", &context)]).await;
    assert_eq!(r.status(), 204, "the lone node still takes W=1");
    let r = c.put(1, "split", "right", &[("w", "2"), ("causal-context", &context)]).await;
    assert_eq!(r.status(), 204, "the majority side takes W=2");
    c.heal();
    // No client reads: anti-entropy alone merges the two sides.
    let want = vec![b64("left"), b64("right")];
    for node in 0..3 {
        c.wait_local(node, "split", |v| v.is_some_and(|v| sibling_values(v) == want)).await;
    }
    let r = c.versions(2, "split", &[("r", "3")]).await;
    assert_eq!(header(&r, "sibling-count"), "2");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_partition_stays_deleted_and_its_tombstone_is_reaped() {
    let repair = RepairConfig { tombstone_grace_secs: 1, hint_window_secs: 1, ..fast_repair() };
    let opts = Options { nodes: 3, repair, read_repair: false, ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    assert_eq!(c.put(0, "doomed", "old value", &[("w", "3")]).await.status(), 204);
    let r = c.get(0, "doomed", &[("r", "3")]).await;
    let context = header(&r, "causal-context");
    c.cut(2, 0);
    c.cut(2, 1);
    let r = c.delete(0, "doomed", &[("w", "2"), ("causal-context", &context)]).await;
    assert_eq!(r.status(), 204);
    assert!(c.local(2, "doomed").await.is_some(), "the cut-off replica still has the value");
    c.heal();
    // The value never comes back, and once every replica holds the
    // tombstone past the grace period, it is gone everywhere.
    for node in 0..3 {
        c.wait_local(node, "doomed", |v| v.is_none_or(|v| v["siblings"][0]["deleted"] == true)).await;
        c.wait_local(node, "doomed", |v| v.is_none()).await;
    }
    let r = c.get(1, "doomed", &[("r", "3")]).await;
    assert_eq!(r.status(), 404);
    let mut reaped = 0;
    for node in 0..3 {
        reaped += c.cluster_view(node).await["stats"]["anti_entropy"]["tombstones_reaped"].as_u64().unwrap();
    }
    assert!(reaped >= 1, "the first home reaped it");
    // Anti-entropy keeps running and does not resurrect it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for node in 0..3 {
        assert!(c.local(node, "doomed").await.is_none());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_refills_a_wiped_node_without_reads() {
    let opts = Options { nodes: 3, repair: fast_repair(), ..Options::default() };
    let mut c = TestCluster::start_with(opts).await;
    const KEYS: usize = 10_000;
    let puts = futures::stream::iter(0..KEYS)
        .map(|i| {
            let c = &c;
            async move { c.put(i % 3, &format!("refill-{i}"), format!("v{i}"), &[("w", "3")]).await.status() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(puts.iter().all(|s| *s == 204));
    c.stop(2).await;
    c.wipe(2);
    c.restart(2).await;
    let restart = std::time::Instant::now();
    // Checked through the wiped node's peer API only: no quorum read.
    let mut missing: Vec<usize> = (0..KEYS).collect();
    for _ in 0..120 {
        let c = &c;
        missing = futures::stream::iter(missing)
            .map(|i| async move {
                let held = c.local(2, &format!("refill-{i}")).await.map(|v| sibling_values(&v));
                (held != Some(vec![b64(&format!("v{i}"))])).then_some(i)
            })
            .buffer_unordered(32)
            .filter_map(|m| async move { m })
            .collect()
            .await;
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "{} keys missing after refill, e.g. refill-{:?}",
        missing.len(),
        missing.first()
    );
    eprintln!("anti-entropy refilled {KEYS} keys in {:?}", restart.elapsed());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_a_corrupted_record_without_reads() {
    // Trees are rebuilt from the data every second: the rebuild notices
    // the damaged record, and the next exchange replaces it.
    let repair = RepairConfig { tree_rebuild_secs: 1, ..fast_repair() };
    let opts = Options { nodes: 3, repair, read_repair: false, ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    assert_eq!(c.put(0, "rotting", "precious", &[("w", "3")]).await.status(), 204);
    c.corrupt(1, "rotting");
    assert!(c.local(1, "rotting").await.is_none(), "a corrupt copy is never served");
    c.wait_local(1, "rotting", |v| v.is_some_and(|v| sibling_values(v) == vec![b64("precious")])).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_agree_exchange_only_roots() {
    let opts = Options { nodes: 3, repair: fast_repair(), ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    for i in 0..300 {
        assert_eq!(c.put(i % 3, &format!("calm-{i}"), "same", &[("w", "3")]).await.status(), 204);
    }
    // Let a round that overlapped the writes finish first.
    let now = ae_stats(&c, 0).await;
    let before = ae_stats_after_rounds(&c, &now, 2).await;
    let after = ae_stats_after_rounds(&c, &before, 3).await;
    let rounds = after["rounds"].as_u64().unwrap() - before["rounds"].as_u64().unwrap();
    assert!(rounds >= 3, "rounds ran");
    assert_eq!(after["keys_pulled"], before["keys_pulled"], "nothing to pull");
    assert_eq!(after["partitions_differing"], before["partitions_differing"]);
    let bytes = after["bytes"].as_u64().unwrap() - before["bytes"].as_u64().unwrap();
    // 64 partitions, one 16-byte root each way and a small envelope.
    assert!(bytes / rounds < 64 * 40, "{bytes} bytes in {rounds} rounds");
    c.shutdown().await;
}

async fn ae_stats(c: &TestCluster, node: usize) -> serde_json::Value {
    c.cluster_view(node).await["stats"]["anti_entropy"].clone()
}

/// Node 0's anti-entropy counters once `more` rounds have run since `from`.
async fn ae_stats_after_rounds(c: &TestCluster, from: &serde_json::Value, more: u64) -> serde_json::Value {
    let start = from["rounds"].as_u64().unwrap();
    for _ in 0..100 {
        let now = ae_stats(c, 0).await;
        if now["rounds"].as_u64().unwrap() >= start + more {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("anti-entropy rounds stalled");
}

/// Waits until every node's anti-entropy has completed `rounds` clean
/// exchanges in a row: every shared partition compared, nothing differing.
async fn wait_clean_exchanges(c: &TestCluster, rounds: u64) {
    for _ in 0..300 {
        let mut all = true;
        for node in 0..c.configs.len() {
            let clean =
                c.cluster_view(node).await["stats"]["anti_entropy"]["clean_in_a_row"].as_u64().unwrap();
            all &= clean >= rounds;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("anti-entropy never settled to {rounds} clean exchanges on every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_keeps_its_own_n_for_anti_entropy_and_tombstone_gc() {
    let repair = RepairConfig { tombstone_grace_secs: 1, hint_window_secs: 1, ..fast_repair() };
    let c = TestCluster::start_with(Options { nodes: 3, repair, ..Options::default() }).await;
    let homes = c.homes("narrow").await;
    let at = |id: &String| c.configs.iter().position(|cfg| &cfg.node_id == id).unwrap();
    let (first, second, third) = (at(&homes[0]), at(&homes[1]), at(&homes[2]));
    let narrow = [("n", "2"), ("w", "2"), ("r", "2")];
    assert_eq!(c.put(first, "narrow", "v", &narrow).await.status(), 204);
    // A key written with N=3 next to it, so the partition's N=3 tree is not empty.
    assert_eq!(c.put(first, "wide", "w", &[("w", "3")]).await.status(), 204);

    // Anti-entropy compares every partition until no pair differs, and
    // the N=2 key stays on its two homes: the third never held it.
    wait_clean_exchanges(&c, 3).await;
    assert!(c.local(first, "narrow").await.is_some());
    assert!(c.local(second, "narrow").await.is_some());
    assert!(c.local(third, "narrow").await.is_none(), "anti-entropy copied an N=2 key to a third home");
    // A read asking for N=3 does not place it there either.
    assert_eq!(c.get(first, "narrow", &[("n", "3"), ("r", "3")]).await.status(), 200);
    wait_clean_exchanges(&c, 3).await;
    assert!(c.local(third, "narrow").await.is_none(), "read repair widened the key");

    // Its tombstone is reaped from its two homes, though the third (which
    // GC would otherwise wait for) never held it.
    let context = header(&c.get(first, "narrow", &narrow).await, "causal-context");
    let r = c.delete(first, "narrow", &[("n", "2"), ("w", "2"), ("causal-context", &context)]).await;
    assert_eq!(r.status(), 204);
    c.wait_local(first, "narrow", |v| v.is_none()).await;
    c.wait_local(second, "narrow", |v| v.is_none()).await;
    let reaped = c.cluster_view(first).await["stats"]["anti_entropy"]["tombstones_reaped"].as_u64().unwrap();
    assert!(reaped >= 1, "the first home reaped the tombstone");
    assert_eq!(c.get(second, "narrow", &narrow).await.status(), 404);
    assert_eq!(c.get(third, "wide", &[("r", "3")]).await.status(), 200);
    c.shutdown().await;
}

/// Puts a copy of `key` (replica count `n`, one value) straight into
/// `node`'s storage, as a member-list change leaves one behind on a node
/// that is no longer among the key's homes.
fn plant(c: &TestCluster, node: usize, key: &str, n: usize, value: &'static str, deleted: bool) {
    use quorumkv::storage::{Object, StoredValue};
    let replica = c.node(node).state().coordinator.replica();
    let partition = c.node(node).state().coordinator.membership().layout().partition_of(key.as_bytes());
    let mut object = Object::new();
    object.widen(n);
    let v = StoredValue::new(bytes::Bytes::from_static(value.as_bytes()), "text/plain".into(), 1, deleted);
    object.update(&quorumkv::version::VersionVector::new(), "moved.1", v);
    replica.storage().objects().modify(partition, key.as_bytes(), true, |_| Some(object)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_left_on_a_node_that_is_no_longer_home_reaches_the_homes_and_goes() {
    let c = TestCluster::start_with(Options { nodes: 3, repair: fast_repair(), ..Options::default() }).await;
    let homes = c.homes("left-behind").await;
    let at = |id: &String| c.configs.iter().position(|cfg| &cfg.node_id == id).unwrap();
    let (first, second, third) = (at(&homes[0]), at(&homes[1]), at(&homes[2]));
    // The only copy of an N=2 key, on its third node: no exchange covers it.
    plant(&c, third, "left-behind", 2, "moved value", false);
    let on_first = c.wait_local(first, "left-behind", |v| v.is_some()).await.unwrap();
    assert_eq!(sibling_values(&on_first), vec![b64("moved value")]);
    c.wait_local(second, "left-behind", |v| v.is_some()).await;
    c.wait_local(third, "left-behind", |v| v.is_none()).await;
    let handed = c.cluster_view(third).await["stats"]["anti_entropy"]["strays_handed_off"].as_u64().unwrap();
    assert_eq!(handed, 1);
    let r = c.get(first, "left-behind", &[("n", "2"), ("r", "2")]).await;
    assert_eq!(r.text().await.unwrap(), "moved value", "a quorum of its own homes reads it");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_home_fails_to_answer_goes_to_a_spare_as_a_hint() {
    // The home still looks reachable (only its replicate replies are
    // lost, not its probes), so the write plans a copy to it; the failed
    // call then sends that copy to the spare, a node past the N homes,
    // as a hint for the home. W=3 is met only if the spare took it.
    let opts = Options { nodes: 5, repair: no_anti_entropy(), ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    let key = "spare-copy";
    let homes = c.homes(key).await;
    let (coordinator, silent) = (c.index_of(&homes[0]), homes[1].clone());
    c.node(coordinator).faults().lose_replies(&silent, "/rpc/replicate");

    let r = c.put(coordinator, key, "kept", &[("w", "3")]).await;
    assert_eq!(r.status(), 204, "W=3: the coordinator, one home and the spare for the silent home");
    let report = header(&r, "quorum-report");
    assert_eq!(fallback_count(&report), 1, "{report}");
    let others: Vec<usize> = (0..5).filter(|i| !homes.contains(&c.configs[*i].node_id)).collect();
    assert_eq!(queued_for(&c, &others, &silent).await, 1, "one hint for {silent}, held by a spare");
    // The silent home got the copy too (only its answer was lost).
    let want = vec![b64("kept")];
    c.wait_local(c.index_of(&silent), key, |v| v.is_some_and(|v| sibling_values(v) == want)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_is_not_done_while_a_pulled_copy_is_refused() {
    // The peers' answers to the wiped node's fetches carry damaged values
    // (a byte flipped under the old digest). The wiped node refuses them,
    // so its partitions must stay unsynced (its answers do not count
    // toward R) until a pull stores intact copies. Anti-entropy is off, so
    // the peers push nothing: only the wiped node's own refill moves data.
    let opts = Options { nodes: 3, repair: no_anti_entropy(), ..Options::default() };
    let mut c = TestCluster::start_with(opts).await;
    const KEYS: usize = 30;
    let value = |i: usize| format!("value {i} of a refill whose first copies arrive damaged");
    for i in 0..KEYS {
        let r = c.put(i % 3, &format!("damaged-{i}"), value(i), &[("w", "3")]).await;
        assert_eq!(r.status(), 204);
    }
    c.stop(2).await;
    c.wipe(2);
    for peer in [0, 1] {
        c.node(peer).faults().damage_fetch_answers();
    }
    c.restart(2).await;
    let stat = |v: &serde_json::Value, name: &str| v["stats"][name].as_u64().expect(name);
    // Each exchange pulls (and refuses) all KEYS, with node1 and node2 in
    // turn: a refusal past 2 × KEYS means a third exchange began, so both
    // peers' exchanges ended and had their chance to mark the refill done
    // (if they had, the refill would have stopped at 2 × KEYS).
    let mut refused = 0;
    for _ in 0..200 {
        refused = stat(&c.cluster_view(2).await, "corrupt_reads");
        if refused > 2 * KEYS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = c.cluster_view(2).await;
    assert!(refused > 2 * KEYS as u64, "the refill kept pulling and refusing damaged copies: {view}");
    assert!(stat(&view, "unsynced_partitions") > 0, "refill marked done with refused copies: {view}");
    assert_eq!(view["stats"]["anti_entropy"]["keys_pulled"].as_u64(), Some(0), "{view}");
    for i in 0..KEYS {
        assert_eq!(c.local(2, &format!("damaged-{i}")).await, None, "a damaged copy was stored");
    }

    for peer in [0, 1] {
        c.node(peer).faults().heal_all();
    }
    for i in 0..KEYS {
        let want = vec![b64(&value(i))];
        c.wait_local(2, &format!("damaged-{i}"), |v| v.is_some_and(|v| sibling_values(v) == want)).await;
    }
    let mut unsynced = u64::MAX;
    for _ in 0..100 {
        unsynced = stat(&c.cluster_view(2).await, "unsynced_partitions");
        if unsynced == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unsynced, 0, "the refill ends once intact copies are pulled");
}
