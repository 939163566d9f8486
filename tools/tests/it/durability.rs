//! No acknowledged write is lost, and no quorum read misses one, through
//! the transitions that used to break that: a node coming back with an
//! older copy of its data, tombstone GC, fallbacks coordinating alone, a
//! wiped volume, corrupt copies; plus the object limits and the peer
//! port's trust in node certificates only.

use std::time::Duration;

use quorumkv::config::{ObjectLimits, RepairConfig};

use crate::cluster::{Options, TestCluster, header, sibling_values};

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn json_view(c: &TestCluster, node: usize, key: &str, r: &str) -> serde_json::Value {
    let resp = c.versions(node, key, &[("r", r)]).await;
    assert_eq!(resp.status(), 200, "read of {key}");
    resp.json().await.unwrap()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A key whose coordinator, when written through `node`, is `node` itself.
async fn key_homed_first_on(c: &TestCluster, node: &str, prefix: &str) -> String {
    for i in 0..500 {
        let key = format!("{prefix}-{i}");
        if c.homes(&key).await.first().map(String::as_str) == Some(node) {
            return key;
        }
    }
    panic!("no key homed first on {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_older_copy_never_mints_a_dot_twice() {
    // Anti-entropy off: the replicas must agree by the writes alone.
    let repair = RepairConfig { anti_entropy: false, ..RepairConfig::default() };
    let mut c = TestCluster::start_with(Options { repair, ..Options::default() }).await;
    let key = key_homed_first_on(&c, "node1", "restore").await;
    assert_eq!(c.put(0, &key, "v1", &[("w", "3")]).await.status(), 204);

    // The operator's snapshot of node1's volume, taken now.
    c.stop(0).await;
    let snapshot = c.dir.path().join("node1-snapshot");
    copy_dir(&c.configs[0].data_dir, &snapshot);
    c.restart(0).await;

    // A blind write through node1, acknowledged by all three.
    assert_eq!(c.put(0, &key, "v2", &[("w", "3")]).await.status(), 204);

    // node1 comes back from the older copy, and takes another blind write.
    c.stop(0).await;
    std::fs::remove_dir_all(&c.configs[0].data_dir).unwrap();
    copy_dir(&snapshot, &c.configs[0].data_dir);
    c.restart(0).await;
    assert_eq!(c.put(0, &key, "v3", &[("w", "3")]).await.status(), 204);

    // Every acknowledged value is there: the replicas that took v3 kept v2
    // (with a reused dot they would drop v3 as already seen)...
    let want = vec![b64("v1"), b64("v2"), b64("v3")];
    for node in 1..3 {
        let local = c.local(node, &key).await.expect("held");
        assert_eq!(sibling_values(&local), want, "node {node}'s copy");
    }
    // ... and the restored node, which its peers recognised as an older
    // copy, is refilled (anti-entropy is off: this is the recovery sync).
    assert!(
        c.cluster_view(0).await["stats"]["unsynced_partitions"].as_u64().unwrap() > 0
            || c.local(0, &key).await.is_some_and(|l| sibling_values(&l) == want)
    );
    c.wait_local(0, &key, |l| l.is_some_and(|l| sibling_values(l) == want)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_tombstone_gc_is_not_hidden_by_a_context_from_before_the_delete() {
    let repair = RepairConfig {
        anti_entropy_interval_ms: 200,
        hint_window_secs: 1,
        tombstone_grace_secs: 1,
        ..RepairConfig::default()
    };
    let c = TestCluster::start_with(Options { repair, ..Options::default() }).await;
    let key = key_homed_first_on(&c, "node1", "reaped").await;
    assert_eq!(c.put(0, &key, "before", &[("w", "3")]).await.status(), 204);
    let old_context = header(&c.get(0, &key, &[("r", "3")]).await, "causal-context");
    assert!(!old_context.is_empty());
    assert_eq!(c.delete(0, &key, &[("causal-context", &old_context), ("w", "3")]).await.status(), 204);

    // Wait until GC has reaped the tombstone: the first home (node1) asks
    // the other homes to reap before it removes its own copy and counts it.
    let mut reaped = 0;
    for _ in 0..100 {
        reaped = c.cluster_view(0).await["stats"]["anti_entropy"]["tombstones_reaped"].as_u64().unwrap();
        if reaped >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reaped >= 1, "the tombstone was reaped");

    // A new value, then a write by a client still holding the old context.
    assert_eq!(c.put(0, &key, "after", &[("w", "3")]).await.status(), 204);
    let r = c.put(0, &key, "stale client", &[("w", "3"), ("causal-context", &old_context)]).await;
    assert_eq!(r.status(), 204);
    let view = json_view(&c, 1, &key, "3").await;
    assert_eq!(
        sibling_values(&view),
        vec![b64("after"), b64("stale client")],
        "the old context saw nothing of the new value, so it must not supersede it"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_writing_alone_does_not_grow_the_clock_per_write() {
    let repair = RepairConfig { anti_entropy: false, ..RepairConfig::default() };
    let mut c = TestCluster::start_with(Options { nodes: 4, repair, ..Options::default() }).await;
    let mut key = None;
    for i in 0..200 {
        let k = format!("lonely-{i}");
        if !c.homes(&k).await.contains(&"node4".to_string()) {
            key = Some(k);
            break;
        }
    }
    let key = key.expect("a key not homed on node4");
    for node in 0..3 {
        c.stop(node).await;
    }
    c.wait_reachable(3, "node1", false).await;
    let mut sizes = Vec::new();
    let mut context = String::new();
    for i in 0..40 {
        let value = format!("v{i}");
        let mut headers = vec![("w", "1")];
        if !context.is_empty() {
            headers.push(("causal-context", context.as_str()));
        }
        let r = c.put(3, &key, value, &headers).await;
        assert_eq!(r.status(), 204, "write {i} taken by the fallback");
        assert!(header(&r, "quorum-report").contains("fallback=1"));
        context = header(&r, "causal-context");
        sizes.push(context.len());
    }
    assert!(
        sizes.iter().all(|s| *s == sizes[0]),
        "the context stays the same size however many fallback writes: {sizes:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_does_not_count_toward_r_until_it_is_refilled() {
    let mut c = TestCluster::start(3).await;
    // C (node3) is down while writes with W=2 reach A and B.
    c.stop(2).await;
    c.wait_reachable(0, "node3", false).await;
    for i in 0..20 {
        assert_eq!(c.put(0, &format!("precious-{i}"), "v", &[("w", "2")]).await.status(), 204);
    }
    c.restart(2).await;
    // A is down too, so B cannot refill from it; then B loses its volume.
    c.stop(0).await;
    c.stop(1).await;
    c.wipe(1);
    c.restart(1).await;
    let view = c.cluster_view(1).await;
    assert!(
        view["stats"]["unsynced_at_start"].as_u64().unwrap() > 0,
        "C told B it had served before: {view}"
    );
    assert!(
        view["stats"]["unsynced_partitions"].as_u64().unwrap() > 0,
        "and A is needed to refill it: {view}"
    );
    // A read through B with R=2 can only hear B and C, and neither holds
    // the writes: an honest 503, not a 404 of an acknowledged write.
    for i in 0..20 {
        let r = c.get(1, &format!("precious-{i}"), &[("r", "2")]).await;
        assert_eq!(r.status(), 503, "precious-{i}");
    }
    // A is back: it answers, and B is refilled from its peers.
    c.restart(0).await;
    for i in 0..20 {
        let r = c.get(1, &format!("precious-{i}"), &[("r", "2")]).await;
        assert_eq!(r.status(), 200);
    }
    for _ in 0..200 {
        if c.cluster_view(1).await["stats"]["unsynced_partitions"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.cluster_view(1).await["stats"]["unsynced_partitions"], 0, "refilled");
    for i in 0..20 {
        assert!(c.local(1, &format!("precious-{i}")).await.is_some(), "B holds precious-{i} again");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_recognised_when_the_whole_cluster_restarts_together() {
    let mut c = TestCluster::start(3).await;
    assert_eq!(c.put(0, "k", "v", &[("w", "3")]).await.status(), 204);
    for n in 0..3 {
        c.stop(n).await;
    }
    c.wipe(1);
    c.restart_together(&[0, 1, 2]).await;
    let wiped = c.cluster_view(1).await["stats"]["unsynced_at_start"].as_u64().unwrap();
    assert!(wiped > 0, "the peers' records of node2 were not erased by its own answers");
    for n in [0, 2] {
        assert_eq!(c.cluster_view(n).await["stats"]["unsynced_at_start"], 0, "node{} kept its data", n + 1);
    }
    c.wait_local(1, "k", |v| v.is_some()).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_naming_counters_a_node_never_minted_is_refused() {
    let c = TestCluster::start(3).await;
    let key = key_homed_first_on(&c, "node1", "forged").await;
    assert_eq!(c.put(0, &key, "v", &[("w", "3")]).await.status(), 204);
    let real = header(&c.get(0, &key, &[("r", "3")]).await, "causal-context");
    let vv = quorumkv::version::VersionVector::from_token(&real).unwrap();
    let forged: quorumkv::version::VersionVector =
        vv.iter().map(|(actor, _)| (actor.to_string(), 1u64 << 62)).collect();
    let r = c.put(0, &key, "evil", &[("w", "3"), ("causal-context", &forged.to_token())]).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_causal_context");
    // Nothing was stored, and the node's counters are not pushed ahead:
    // a read-modify-write with a real context still works.
    let r = c.get(1, &key, &[("r", "3")]).await;
    assert_eq!(r.text().await.unwrap(), "v");
    let ctx = header(&c.get(0, &key, &[("r", "3")]).await, "causal-context");
    assert_eq!(c.put(0, &key, "v2", &[("w", "3"), ("causal-context", &ctx)]).await.status(), 204);
    let ctx = header(&c.get(0, &key, &[("r", "3")]).await, "causal-context");
    let counters: Vec<u64> =
        quorumkv::version::VersionVector::from_token(&ctx).unwrap().iter().map(|(_, c)| c).collect();
    assert!(counters.iter().all(|c| *c < (1u64 << 61)), "{counters:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_and_a_plain_restart_count_at_once() {
    let mut c = TestCluster::start(3).await;
    for node in 0..3 {
        assert_eq!(c.cluster_view(node).await["stats"]["unsynced_partitions"], 0);
    }
    assert_eq!(c.put(0, "k", "v", &[("w", "3")]).await.status(), 204);
    c.stop(1).await;
    c.restart(1).await;
    assert_eq!(c.cluster_view(1).await["stats"]["unsynced_partitions"], 0, "its data is still there");
    c.stop(0).await;
    assert_eq!(c.get(1, "k", &[("r", "2")]).await.status(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_skips_a_replica_whose_copy_is_corrupt() {
    let opts = Options { nodes: 4, read_repair: false, ..Options::default() };
    let c = TestCluster::start_with(opts).await;
    let mut key = None;
    for i in 0..200 {
        let k = format!("forward-{i}");
        let homes = c.homes(&k).await;
        if !homes.contains(&"node4".to_string()) {
            key = Some((k, homes));
            break;
        }
    }
    let (key, homes) = key.expect("a key not homed on node4");
    assert_eq!(c.put(3, &key, "v1", &[("w", "3")]).await.status(), 204);
    let first = c.index_of(&homes[0]);
    c.corrupt(first, &key);
    let r = c.put(3, &key, "v2", &[("w", "2")]).await;
    assert_eq!(r.status(), 204, "another home coordinates instead of failing the client");
    // R=2: the first home's copy may still be the corrupt one, which counts for nothing.
    let view = json_view(&c, 3, &key, "2").await;
    assert_eq!(sibling_values(&view), vec![b64("v1"), b64("v2")]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_object_limits_are_refused_whole() {
    let limits = ObjectLimits { max_siblings: 3, max_object_bytes: 2 << 20 };
    let c = TestCluster::start_with(Options { limits, ..Options::default() }).await;
    for v in ["a", "b", "c"] {
        assert_eq!(c.put(0, "crowded", v, &[("w", "3")]).await.status(), 204);
    }
    let r = c.put(1, "crowded", "d", &[("w", "3")]).await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_many_siblings");
    assert_eq!(
        (body["limit"].as_str(), body["max"].as_u64(), body["siblings"].as_u64()),
        (Some("max_siblings"), Some(3), Some(4))
    );
    let view = json_view(&c, 2, "crowded", "3").await;
    assert_eq!(
        sibling_values(&view),
        vec![b64("a"), b64("b"), b64("c")],
        "nothing of the refused write was stored"
    );
    // Resolving with the context is always allowed.
    let ctx = header(&c.get(0, "crowded", &[("r", "3")]).await, "causal-context");
    assert_eq!(c.put(0, "crowded", "resolved", &[("causal-context", &ctx), ("w", "3")]).await.status(), 204);

    let big = vec![b'x'; 900 * 1024];
    assert_eq!(c.put(0, "heavy", big.clone(), &[("w", "3")]).await.status(), 204);
    assert_eq!(c.put(0, "heavy", big.clone(), &[("w", "3")]).await.status(), 204);
    let r = c.put(0, "heavy", big, &[("w", "3")]).await;
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), body["limit"].as_str(), body["siblings"].as_u64()),
        (Some("object_too_large"), Some("max_object_bytes"), Some(3))
    );
    let r = c.get(1, "heavy", &[("r", "3")]).await;
    assert_eq!(header(&r, "sibling-count"), "2");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_may_read_local_keys_but_not_call_replica_rpcs() {
    let c = TestCluster::start(3).await;
    assert_eq!(c.put(0, "guarded", "v", &[("w", "3")]).await.status(), 204);
    assert!(c.local(0, "guarded").await.is_some(), "operators may read /local/keys");
    for route in ["/rpc/replicate", "/rpc/read", "/rpc/put", "/rpc/ae", "/rpc/ping", "/rpc/hello"] {
        let r = c.admin.post(c.peer_url(0, route)).body(vec![1u8, 0]).send().await.unwrap();
        assert_eq!(r.status(), 403, "{route} refuses a certificate that names no member");
    }
    // Nodes themselves still talk: a W=3 write needs every replica RPC.
    assert_eq!(c.put(1, "guarded", "v2", &[("w", "3")]).await.status(), 204);
    c.shutdown().await;
}
