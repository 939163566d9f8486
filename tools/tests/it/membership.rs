//! Elastic membership: nodes join with only a seed, partitions move to
//! them under load with no acknowledged write lost or hidden, a member
//! leaves and is drained, and a node of another cluster is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use quorumkv::config::RepairConfig;
use quorumkv::node::Node;
use reqwest::Method;

use crate::cluster::{Options, TestCluster};

fn fast() -> Options {
    let repair = RepairConfig { anti_entropy_interval_ms: 300, ..RepairConfig::default() };
    Options { nodes: 3, repair, ..Options::default() }
}

/// Every key in `keys` reads back (R=2) through `via` with its value, and
/// each of its homes in the settled layout holds a copy of its own.
async fn assert_all_present(c: &TestCluster, via: usize, keys: &[String]) {
    for key in keys {
        let r = c.get(via, key, &[("R", "2")]).await;
        assert_eq!(r.status(), 200, "{key} lost (read through node {via})");
        assert_eq!(r.text().await.unwrap(), format!("v-{key}"));
        for home in c.homes_via(via, key).await {
            let i = c.index_of(&home);
            assert!(c.local(i, key).await.is_some(), "{key} is missing on its home {home}");
        }
    }
}

/// A bounded writer: PUTs `w-{i}` (W=2) until told to stop; returns the
/// acknowledged keys and counts the failed requests.
fn writer(
    c: &Arc<TestCluster>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let c = c.clone();
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..5_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("w-{i}");
            let via = i % 3;
            let r = c.put(via, &key, format!("v-{key}"), &[("W", "2")]).await;
            if r.status().is_success() {
                acked.push(key);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_seed_under_load_then_one_leaves_and_nothing_is_lost() {
    let mut c = TestCluster::start_with(fast()).await;
    let mut keys: Vec<String> = Vec::new();
    for i in 0..150 {
        let key = format!("k-{i}");
        assert_eq!(c.put(i % 3, &key, format!("v-{key}"), &[("W", "2")]).await.status(), 204);
        keys.push(key);
    }
    let joined = c.add_node(1).await;
    assert_eq!(c.configs[joined].node_id, "node4");
    let view = c.cluster_view(1).await;
    assert_eq!(view["layout"]["version"], 2, "the seed committed the join: {}", view["layout"]);
    let c = Arc::new(c);
    let (stop, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let load = writer(&c, stop.clone(), failed.clone());
    // While the partitions move, every acknowledged write stays readable.
    for key in keys.iter().step_by(10) {
        let r = c.get(joined, key, &[("R", "2")]).await;
        assert_eq!(r.status(), 200, "{key} hidden during the move");
    }
    let version = c.wait_settled(90).await;
    stop.store(true, Ordering::Relaxed);
    keys.extend(load.await.unwrap());
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the join");
    assert_eq!(version, 2);
    let view = c.cluster_view(joined).await;
    let me = view["members"].as_array().unwrap().iter().find(|m| m["id"] == "node4").unwrap().clone();
    assert_eq!(me["state"], "active");
    assert!(me["partitions"].as_u64().unwrap() > 0, "the new node holds partitions: {me}");
    assert_all_present(&c, joined, &keys).await;

    // node1 leaves; once it says it is drained, it is stopped and nothing
    // it held is missing.
    let r = c.client.post(c.url(2, "/cluster/members/node1/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    wait_drained(&c, 0, 90).await;
    let mut c = Arc::into_inner(c).expect("the writer is done");
    c.stop(0).await;
    // node1 saw the move finish; the others learn it by gossip.
    c.wait_settled(60).await;
    let view = c.cluster_view(1).await;
    assert!(view["layout"]["left"].as_array().unwrap().iter().any(|id| id == "node1"), "{}", view["layout"]);
    assert_eq!(view["members"].as_array().unwrap().len(), 3);
    assert_all_present(&c, 1, &keys).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_joining_at_once_converge_on_one_layout() {
    let c = TestCluster::start_with(fast()).await;
    for i in 0..60 {
        let key = format!("k-{i}");
        assert_eq!(c.put(0, &key, format!("v-{key}"), &[]).await.status(), 204);
    }
    // Both start together, each through another seed. node4 lists only
    // itself; node5 is configured as a Kubernetes pod beyond the first
    // members is: the same member list as the first three (it is not in
    // it) and its own URLs as advertised ones.
    let (a, b) = (c.configs.len(), c.configs.len() + 1);
    let mut ca = c.joiner_config(a, 0);
    let mut cb = c.joiner_config(b, 1);
    let bind = |cfg: &mut quorumkv::config::Config| {
        let l =
            quorumkv::node::Listeners::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        cfg.client_listen = l.client.local_addr().unwrap();
        cfg.peer_listen = l.peer.local_addr().unwrap();
        cfg.members[0].client_url = format!("https://{}", cfg.client_listen);
        cfg.members[0].peer_url = format!("https://{}", cfg.peer_listen);
        l
    };
    let (l1, l2) = (bind(&mut ca), bind(&mut cb));
    cb.advertise_client_url = cb.members[0].client_url.clone();
    cb.advertise_peer_url = cb.members[0].peer_url.clone();
    cb.members = c.configs[0].members.clone();
    assert!(cb.joins(), "a node absent from the first members joins through its seeds");
    assert!(!c.configs[0].joins(), "a first member creates the cluster");
    let (na, nb) = tokio::join!(Node::start_with(ca.clone(), l1), Node::start_with(cb.clone(), l2));
    let (na, nb) = (na.expect("node4 joins"), nb.expect("node5 joins"));
    // Settled on every node, the first three and the two new ones alike:
    // the new ones learn that older versions were pruned by later gossip
    // rounds (seen in CI: one still held [1, 2, 3] when the others held [3]).
    let version = c.wait_settled_with(&[na.client_addr(), nb.client_addr()], 90).await;
    let view = c.cluster_view(0).await;
    let ids: Vec<&str> =
        view["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node1", "node2", "node3", "node4", "node5"], "both joined (layout {version})");
    for n in [&na, &nb] {
        let url = format!("https://{}/cluster", n.client_addr());
        let v: serde_json::Value = c.client.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["layout"]["versions"], serde_json::json!([version]), "a new node agrees");
    }
    for i in 0..60 {
        let key = format!("k-{i}");
        let r = c.request(Method::GET, 2, &key).header("R", "2").send().await.unwrap();
        assert_eq!(r.status(), 200, "{key} after both joins");
    }
    na.shutdown().await;
    nb.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_member_that_lost_its_directory_takes_the_layout_from_its_seeds() {
    // As a Kubernetes pod among the first members whose volume was lost,
    // in a full restart after the cluster grew: it must not serve with the
    // first layout (its writes would go to homes the cluster moved away
    // from), even while its peers are still starting.
    let mut c = TestCluster::start_with(fast()).await;
    let joined = c.add_node(1).await;
    let version = c.wait_settled(90).await;
    assert!(version >= 2, "node4 joined: {version}");
    for i in 0..c.configs.len() {
        c.stop(i).await;
    }
    c.wipe(0);
    c.configs[0].seeds = vec![format!("https://{}", c.configs[1].peer_listen)];
    assert!(!c.configs[0].joins(), "node1 is one of the first members");
    let serving_with = c.restart_before(0, &[1, 2, joined], Duration::from_secs(3)).await;
    assert_eq!(serving_with, version, "node1 began to serve with the cluster's layout, not its first one");
    let view = c.cluster_view(0).await;
    assert_eq!(view["members"].as_array().unwrap().len(), 4, "{}", view["layout"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let c = TestCluster::start_with(fast()).await;
    let mut config = c.joiner_config(3, 0);
    config.cluster = "someone-else".into();
    let l = quorumkv::node::Listeners::bind("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap())
        .unwrap();
    config.client_listen = l.client.local_addr().unwrap();
    config.peer_listen = l.peer.local_addr().unwrap();
    config.members[0].client_url = format!("https://{}", config.client_listen);
    config.members[0].peer_url = format!("https://{}", config.peer_listen);
    let err = Node::start_with(config, l).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("quorumkv") && text.contains("someone-else"), "{text}");
    let view = c.cluster_view(0).await;
    assert_eq!(view["members"].as_array().unwrap().len(), 3, "nothing joined");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_init_grows_a_cluster_with_configs_that_hold_only_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::cluster::free_ports(5);
    let path = dir.path().join("dev");
    let three = quorumkv_tools::dev::init(&path, 3, port, Default::default()).unwrap();
    let five = quorumkv_tools::dev::init(&path, 5, port, Default::default()).unwrap();
    assert_eq!(five.nodes.len(), 5);
    for (a, b) in three.nodes.iter().zip(&five.nodes) {
        assert_eq!((&a.id, &a.config), (&b.id, &b.config), "the first three are kept");
    }
    let config = quorumkv::config::Config::from_file(&five.nodes[3].config).unwrap();
    assert_eq!(config.members.len(), 1, "a new node lists only itself");
    let seeds: Vec<&String> = three.nodes.iter().map(|n| &n.peer_url).collect();
    assert_eq!(config.seeds.iter().collect::<Vec<_>>(), seeds);
    // Starting them is the whole scale-up.
    let nodes = quorumkv_tools::dev::start(&five).await.unwrap();
    let client = crate::cluster::tls_client(&five.ca, None);
    let mut last = serde_json::Value::Null;
    for _ in 0..450 {
        last = client
            .get(format!("{}/cluster", five.nodes[0].client_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let settled = last["layout"]["versions"].as_array().is_some_and(|v| v.len() == 1);
        if settled && last["members"].as_array().is_some_and(|m| m.len() == 5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["members"].as_array().unwrap().len(), 5, "{last}");
    assert_eq!(last["layout"]["versions"].as_array().unwrap().len(), 1, "{}", last["layout"]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A cluster with slow transfers (so a test can act in the middle of one)
/// and `count` keys of 1 KiB written W=2.
async fn slow_cluster(count: usize) -> (TestCluster, Vec<String>) {
    let repair = RepairConfig {
        anti_entropy_interval_ms: 300,
        anti_entropy_bytes_per_sec: 60_000,
        ..RepairConfig::default()
    };
    let c = TestCluster::start_with(Options { nodes: 3, repair, ..Options::default() }).await;
    let mut keys = Vec::new();
    for i in 0..count {
        let key = format!("s-{i}");
        let value = format!("v-{key}");
        let r = c.put(i % 3, &key, format!("{value:<1024}"), &[("W", "2")]).await;
        assert_eq!(r.status(), 204);
        keys.push(key);
    }
    (c, keys)
}

async fn transfer_pending(c: &TestCluster, node: usize) -> u64 {
    c.cluster_view(node).await["stats"]["anti_entropy"]["transfer_pending"].as_u64().unwrap_or(0)
}

/// Waits until `node` has started receiving partitions.
async fn wait_transfer_started(c: &TestCluster, node: usize) {
    for _ in 0..300 {
        if transfer_pending(c, node).await > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {node} never started a transfer: {}", c.cluster_view(node).await);
}

/// Every key reads back (R=2) with its padded value through `via`, and is
/// held by each of its homes.
async fn assert_padded_present(c: &TestCluster, via: usize, keys: &[String]) {
    for key in keys {
        let r = c.get(via, key, &[("R", "2")]).await;
        assert_eq!(r.status(), 200, "{key} lost");
        assert_eq!(r.text().await.unwrap().trim_end(), format!("v-{key}"));
        for home in c.homes_via(via, key).await {
            assert!(c.local(c.index_of(&home), key).await.is_some(), "{key} missing on its home {home}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_stopped_mid_transfer_resumes_after_its_restart() {
    let (mut c, keys) = slow_cluster(240).await;
    let joined = c.add_node(0).await;
    wait_transfer_started(&c, joined).await;
    c.stop(joined).await;
    // Its layout stays where it was: two versions, reads on the old one.
    let view = c.cluster_view(1).await;
    assert_eq!(view["layout"]["versions"].as_array().unwrap().len(), 2, "{}", view["layout"]);
    for key in keys.iter().step_by(7) {
        assert_eq!(c.get(1, key, &[("R", "2")]).await.status(), 200, "{key} while the joiner is down");
    }
    c.restart(joined).await;
    c.wait_settled(120).await;
    assert_padded_present(&c, 2, &keys).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_off_by_the_network_completes_once_it_heals() {
    let (mut c, keys) = slow_cluster(240).await;
    let joined = c.add_node(0).await;
    wait_transfer_started(&c, joined).await;
    for source in 0..3 {
        c.cut(joined, source);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = c.cluster_view(1).await;
    assert_eq!(view["layout"]["versions"].as_array().unwrap().len(), 2, "the cut holds the move");
    c.heal();
    c.wait_settled(120).await;
    assert_padded_present(&c, joined, &keys).await;
    c.stop(joined).await;
    c.shutdown().await;
}

/// Waits until `node` says it holds nothing the cluster needs.
async fn wait_drained(c: &TestCluster, node: usize, secs: u64) {
    for _ in 0..secs * 5 {
        if c.cluster_view(node).await["drained"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("node {node} never drained: {}", c.cluster_view(node).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_that_lost_its_directory_mid_move_still_drains() {
    // The nemesis found it: node6, killed -9 while leaving, came back with
    // every partition unsynced, waiting for exchanges it could no longer
    // have once it homed nothing, so it never swept or said it was drained.
    let (mut c, keys) = slow_cluster(120).await;
    let fourth = c.add_node(0).await;
    c.wait_settled(120).await;
    let r = c.client.post(c.url(1, "/cluster/members/node1/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let mut moving = false;
    for _ in 0..300 {
        let mut pending = 0;
        for receiver in 1..=fourth {
            pending += transfer_pending(&c, receiver).await;
        }
        if pending > 0 {
            moving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moving, "no transfer started: {}", c.cluster_view(1).await);
    c.stop(0).await;
    c.wipe(0);
    c.restart(0).await;
    let view = c.cluster_view(0).await;
    assert!(view["stats"]["unsynced_at_start"].as_u64().unwrap() > 0, "{}", view["stats"]);
    wait_drained(&c, 0, 120).await;
    assert_eq!(c.cluster_view(0).await["stats"]["unsynced_partitions"], 0);
    c.stop(0).await;
    c.wait_settled(60).await;
    assert_padded_present(&c, fourth, &keys).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_while_leaving_is_removed_and_its_partitions_rebuilt() {
    let (mut c, keys) = slow_cluster(120).await;
    let fourth = c.add_node(0).await;
    c.wait_settled(120).await;
    let r = c.client.post(c.url(1, "/cluster/members/node1/leave")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    // node1 dies before it drained.
    c.stop(0).await;
    let r = c.client.post(c.url(1, "/cluster/members/node1/remove")).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let r = c.client.post(c.url(1, "/cluster/members/ghost/remove")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "not_a_member");
    c.wait_settled(120).await;
    let view = c.cluster_view(fourth).await;
    let ids: Vec<&str> =
        view["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node2", "node3", "node4"]);
    assert_padded_present(&c, fourth, &keys).await;
    // Back from the dead with its old directory: it must not serve.
    let err = Node::start(c.configs[0].clone()).await.err().expect("a removed node refuses to start");
    assert!(err.to_string().contains("removed"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_auto_join_waits_for_cluster_join_and_a_weight_change_moves_its_share() {
    let mut c = TestCluster::start_with(fast()).await;
    let mut keys = Vec::new();
    for i in 0..80 {
        let key = format!("k-{i}");
        assert_eq!(c.put(i % 3, &key, format!("v-{key}"), &[]).await.status(), 204);
        keys.push(key);
    }
    let fourth = c.add_node_with(0, |config| config.auto_join = false).await;
    let view = c.cluster_view(fourth).await;
    assert_eq!(view["members"].as_array().unwrap().len(), 3, "it waits: {}", view["layout"]);
    assert_eq!(view["layout"]["version"], 1);
    // A join sent to another node is refused: only the node itself knows its addresses.
    let r = c.client.post(c.url(0, "/cluster/members/node4/join")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let r = c.client.post(c.url(fourth, "/cluster/members/node4/join")).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    c.wait_settled(90).await;
    let share = |v: &serde_json::Value| {
        v["members"].as_array().unwrap().iter().find(|m| m["id"] == "node4").unwrap()["partitions"]
            .as_u64()
            .unwrap()
    };
    let before = share(&c.cluster_view(1).await);
    assert!(before > 0);
    let r = c
        .client
        .post(c.url(1, "/cluster/members/node4/weight"))
        .body(r#"{"weight": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let r = c
        .client
        .post(c.url(1, "/cluster/members/node4/weight"))
        .body(r#"{"weight": 0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    c.wait_settled(90).await;
    let after = share(&c.cluster_view(1).await);
    assert!(after > before, "weight 3 holds more than weight 1: {before} -> {after}");
    assert_all_present(&c, fourth, &keys).await;
    c.shutdown().await;
}
