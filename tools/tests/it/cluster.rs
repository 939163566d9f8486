//! `TestCluster`: real nodes on 127.0.0.1 with real TLS and temporary
//! RocksDB directories, started in this process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use quorumkv::config::{
    Config, Defaults, LogFormat, MemberConfig, ObjectLimits, ReadFanout, RepairConfig, TlsConfig,
};
use quorumkv::node::{Listeners, Node};
use quorumkv_tools::certs::{Ca, default_sans};
use reqwest::{Client, Method, RequestBuilder, Response};

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<Config>,
    nodes: Vec<Option<Node>>,
    pub client: Client,
    /// Holds the admin client certificate, for the peer port.
    pub admin: Client,
}

pub struct Options {
    pub nodes: usize,
    pub max_value_bytes: usize,
    pub request_timeout_ms: u64,
    pub read_repair: bool,
    pub read_fanout: ReadFanout,
    pub repair: RepairConfig,
    pub limits: ObjectLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            max_value_bytes: 1 << 20,
            request_timeout_ms: 2_000,
            read_repair: true,
            read_fanout: ReadFanout::default(),
            repair: RepairConfig::default(),
            limits: ObjectLimits::default(),
        }
    }
}

/// The built binary as a command, without any `QUORUMKV_*` variable of the
/// environment running the tests (they would silently change its config).
pub fn quorumkv_cmd() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("QUORUMKV_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// A port below the ephemeral range that is free now on 127.0.0.1 (and
/// `+1000`, as `dev` uses it for the peer port), for child processes.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..31_000u16);
        let ok = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if ok(port) && ok(port + 1000) {
            return port;
        }
    }
    panic!("no free port in 20000..31000");
}

/// A first port for a `dev` cluster of `nodes`: it and the next `nodes - 1`
/// are free, and so are the same `+1000` (the peer ports).
pub fn free_ports(nodes: u16) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    loop {
        let port = free_port();
        if (0..nodes).all(|i| free(port + i) && free(port + 1000 + i)) {
            return port;
        }
    }
}

/// Listeners on ports below Linux's ephemeral range (32768+): a stopped
/// node's port must still be free when it restarts, and an outgoing
/// connection of any concurrent test could otherwise take it meanwhile.
fn bind_below_ephemeral() -> Listeners {
    for _ in 0..1000 {
        let client = rand::random_range(20_000..32_000u16);
        let peer = rand::random_range(20_000..32_000u16);
        let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        if client != peer {
            if let Ok(l) = Listeners::bind(addr(client), addr(peer)) {
                return l;
            }
        }
    }
    panic!("no free ports in 20000..32000");
}

pub fn tls_client(ca: &Path, identity: Option<(&Path, &Path)>) -> Client {
    quorumkv::tls::install_default_provider();
    let tls = quorumkv::tls::public_client_config(ca, identity).expect("client tls");
    Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

impl TestCluster {
    pub async fn start(nodes: usize) -> TestCluster {
        Self::start_with(Options { nodes, ..Options::default() }).await
    }

    pub async fn start_with(opts: Options) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let certs = dir.path().join("certs");
        let admin = ca.issue(&certs, "admin", &["localhost".into()]).expect("admin cert");
        let listeners: Vec<Listeners> = (0..opts.nodes).map(|_| bind_below_ephemeral()).collect();
        let members: Vec<MemberConfig> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| MemberConfig {
                id: format!("node{}", i + 1),
                client_url: format!("https://{}", l.client.local_addr().unwrap()),
                peer_url: format!("https://{}", l.peer.local_addr().unwrap()),
                weight: 1,
            })
            .collect();
        let n = 3.min(opts.nodes);
        let mut configs = Vec::new();
        for (i, l) in listeners.iter().enumerate() {
            let id = format!("node{}", i + 1);
            let node_certs = ca.issue(&certs, &id, &default_sans(&id, &[])).expect("node cert");
            configs.push(Config {
                node_id: id.clone(),
                advertise_client_url: String::new(),
                advertise_peer_url: String::new(),
                weight: 1,
                client_listen: l.client.local_addr().unwrap(),
                peer_listen: l.peer.local_addr().unwrap(),
                data_dir: dir.path().join(&id),
                tls: TlsConfig { ca: dir.path().join("ca.pem"), cert: node_certs.cert, key: node_certs.key },
                members: members.clone(),
                cluster: "quorumkv".into(),
                seeds: Vec::new(),
                auto_join: true,
                gossip_interval_ms: 1000,
                partitions: 64,
                max_n: n,
                defaults: Defaults { n, r: (n / 2 + 1).min(2), w: (n / 2 + 1).min(2), ..Defaults::default() },
                max_value_bytes: opts.max_value_bytes,
                request_timeout_ms: opts.request_timeout_ms,
                // In-process stops stand for a node going down: no drain phase.
                drain_delay_ms: 0,
                block_cache_bytes: 8 << 20,
                log_format: LogFormat::Text,
                read_repair: opts.read_repair,
                read_fanout: opts.read_fanout,
                repair: opts.repair,
                limits: opts.limits,
                // Off: tests that act in the middle of a transfer or a
                // hand-off rely on the configured rates, which a test's own
                // deliberately slow request would cut. The governor is
                // unit-tested, and the nemesis and container tests run
                // nodes with it on.
                governor: quorumkv::config::GovernorConfig { enabled: false, ..Default::default() },
            });
        }
        // Started together, as a real cluster's nodes are: each greets its
        // peers at start and would wait for one that is bound but not serving.
        let starts = configs.iter().zip(listeners).map(|(config, l)| Node::start_with(config.clone(), l));
        let nodes: Vec<Option<Node>> = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(|n| Some(n.expect("node starts")))
            .collect();
        let ca_path = dir.path().join("ca.pem");
        let client = tls_client(&ca_path, None);
        let admin = tls_client(&ca_path, Some((&admin.cert, &admin.key)));
        let c = TestCluster { dir, configs, nodes, client, admin };
        // As a user would, before the first request: every node sees every
        // peer (a hello that timed out under load marks a peer down until
        // the failure detector's next probe).
        for i in 0..c.nodes.len() {
            c.wait_all_reachable_from(i).await;
        }
        c
    }

    /// Waits until running node `viewer` sees every other running node reachable.
    pub async fn wait_all_reachable_from(&self, viewer: usize) {
        for (j, node) in self.nodes.iter().enumerate() {
            if j != viewer && node.is_some() {
                self.wait_reachable(viewer, &self.configs[j].node_id, true).await;
            }
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn url(&self, node: usize, path: &str) -> String {
        format!("https://{}{}", self.configs[node].client_listen, path)
    }

    pub fn key_url(&self, node: usize, key: &str) -> String {
        self.url(node, &format!("/keys/{key}"))
    }

    pub fn peer_url(&self, node: usize, path: &str) -> String {
        format!("https://{}{}", self.configs[node].peer_listen, path)
    }

    pub fn request(&self, method: Method, node: usize, key: &str) -> RequestBuilder {
        self.client.request(method, self.key_url(node, key))
    }

    pub async fn put(
        &self,
        node: usize,
        key: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self.request(Method::PUT, node, key).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("put sent")
    }

    pub async fn get(&self, node: usize, key: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = self.request(Method::GET, node, key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("get sent")
    }

    /// `GET /versions/{key}`: the read as JSON.
    pub async fn versions(&self, node: usize, key: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = self.client.get(self.url(node, &format!("/versions/{key}")));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("versions sent")
    }

    pub async fn delete(&self, node: usize, key: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = self.request(Method::DELETE, node, key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("delete sent")
    }

    /// A node's own copy of `key` via the peer API (no quorum, no repair).
    pub async fn local(&self, node: usize, key: &str) -> Option<serde_json::Value> {
        let r = self
            .admin
            .get(self.peer_url(node, &format!("/local/keys/{key}")))
            .send()
            .await
            .expect("local get");
        match r.status().as_u16() {
            200 => Some(r.json().await.expect("json")),
            404 => None,
            s => panic!("unexpected status {s} from /local/keys"),
        }
    }

    /// Flips a byte of `node`'s stored record of `key` on disk.
    pub fn corrupt(&self, node: usize, key: &str) {
        let state = self.nodes[node].as_ref().expect("node running").state();
        let coordinator = &state.coordinator;
        let partition = coordinator.membership().layout().partition_of(key.as_bytes());
        let storage = coordinator.replica().storage();
        assert!(
            storage.objects().corrupt_for_test(partition, key.as_bytes()).unwrap(),
            "{key} stored on node {node}"
        );
    }

    /// Polls `node`'s own copy of `key` until `check` holds (at most ~25 s:
    /// a recovered peer is re-probed with back-off of up to 8 s).
    pub async fn wait_local(
        &self,
        node: usize,
        key: &str,
        check: impl Fn(Option<&serde_json::Value>) -> bool,
    ) -> Option<serde_json::Value> {
        let mut last = None;
        for _ in 0..250 {
            last = self.local(node, key).await;
            if check(last.as_ref()) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {node}'s copy of {key} never got there: {last:?}");
    }

    /// The index (as `node`, `stop`, `put`... take it) of the node named `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.configs.iter().position(|cfg| cfg.node_id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A running node (panics if stopped).
    pub fn node(&self, node: usize) -> &Node {
        self.nodes[node].as_ref().expect("node running")
    }

    pub async fn stop(&mut self, node: usize) {
        if let Some(n) = self.nodes[node].take() {
            n.shutdown().await;
        }
    }

    pub async fn restart(&mut self, node: usize) {
        assert!(self.nodes[node].is_none(), "node {node} is running");
        let config = self.configs[node].clone();
        let mut last = None;
        // The old sockets may take a moment to be released.
        for _ in 0..50 {
            match Node::start(config.clone()).await {
                Ok(n) => {
                    self.nodes[node] = Some(n);
                    // Seen back by every running peer, as an operator would check.
                    for viewer in 0..self.nodes.len() {
                        if viewer != node && self.nodes[viewer].is_some() {
                            self.wait_reachable(viewer, &self.configs[node].node_id, true).await;
                        }
                    }
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {node} did not restart: {last:?}");
    }

    /// Starts the stopped `nodes` at the same time, as after a full-cluster
    /// restart (they greet each other while starting).
    pub async fn restart_together(&mut self, nodes: &[usize]) {
        let starts = nodes.iter().map(|i| Node::start(self.configs[*i].clone()));
        let started = futures::future::join_all(starts).await;
        for (i, n) in nodes.iter().zip(started) {
            self.nodes[*i] = Some(n.expect("node restarts"));
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                self.wait_all_reachable_from(i).await;
            }
        }
    }

    /// Starts the stopped `node`, and `delay` later the stopped `others`
    /// together: a node starting while its peers are still down, as in a
    /// full restart where the pods come up in any order. Returns the layout
    /// version `node` had when it began to serve.
    pub async fn restart_before(&mut self, node: usize, others: &[usize], delay: Duration) -> u64 {
        let config = self.configs[node].clone();
        let first = tokio::spawn(async move {
            let mut last = None;
            // The old sockets may take a moment to be released.
            for _ in 0..50 {
                match Node::start(config.clone()).await {
                    Ok(n) => {
                        let version = n.state().coordinator.membership().layout().version();
                        return (n, version);
                    }
                    Err(e @ quorumkv::node::NodeError::Bind { .. }) => last = Some(e),
                    Err(e) => panic!("node does not start: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("node did not restart: {last:?}");
        });
        tokio::time::sleep(delay).await;
        self.restart_together(others).await;
        let (n, version) = first.await.expect("the start task");
        self.nodes[node] = Some(n);
        version
    }

    /// Removes `node`'s data directory (the node must be stopped).
    pub fn wipe(&self, node: usize) {
        assert!(self.nodes[node].is_none(), "node {node} is running");
        std::fs::remove_dir_all(&self.configs[node].data_dir).expect("wipe data dir");
    }

    /// Cuts the internal transport between `a` and `b`, both directions.
    pub fn cut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let node = self.nodes[from].as_ref().expect("node running");
            node.faults().cut(&self.configs[to].node_id);
        }
    }

    pub fn heal(&self) {
        for node in self.nodes.iter().flatten() {
            node.faults().heal_all();
        }
    }

    /// `GET /cluster` of `node`.
    pub async fn cluster_view(&self, node: usize) -> serde_json::Value {
        self.client.get(self.url(node, "/cluster")).send().await.expect("cluster").json().await.expect("json")
    }

    /// The home replicas of `key` (first N of its preference list).
    pub async fn homes(&self, key: &str) -> Vec<String> {
        self.homes_via(0, key).await
    }

    /// The homes of `key` in the layout node `viewer` reads from.
    pub async fn homes_via(&self, viewer: usize, key: &str) -> Vec<String> {
        let url = self.url(viewer, &format!("/cluster/preference-list/{key}"));
        let v: serde_json::Value = self.client.get(url).send().await.expect("pl").json().await.expect("json");
        v["nodes"].as_array().expect("nodes").iter().map(|n| n.as_str().expect("id").to_string()).collect()
    }

    pub async fn reachable(&self, viewer: usize, peer: &str) -> bool {
        let v = self.cluster_view(viewer).await;
        let members = v["members"].as_array().expect("members");
        members.iter().find(|m| m["id"] == peer).expect("member")["reachable"].as_bool().expect("bool")
    }

    pub async fn wait_reachable(&self, viewer: usize, peer: &str, want: bool) {
        for _ in 0..200 {
            if self.reachable(viewer, peer).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {viewer} never saw {peer} reachable={want}");
    }

    /// Starts one more node that knows only its own address and a seed
    /// (node `seed`'s peer URL), as a user grows a cluster; returns its
    /// index. Its id is `node{index + 1}`.
    pub async fn add_node(&mut self, seed: usize) -> usize {
        self.add_node_with(seed, |_| {}).await
    }

    /// [`TestCluster::add_node`] with `tweak` applied to its config.
    pub async fn add_node_with(&mut self, seed: usize, tweak: impl FnOnce(&mut Config)) -> usize {
        let i = self.nodes.len();
        let mut config = self.joiner_config(i, seed);
        tweak(&mut config);
        let l = bind_below_ephemeral();
        config.client_listen = l.client.local_addr().unwrap();
        config.peer_listen = l.peer.local_addr().unwrap();
        config.members[0].client_url = format!("https://{}", config.client_listen);
        config.members[0].peer_url = format!("https://{}", config.peer_listen);
        let node = Node::start_with(config.clone(), l).await.expect("the new node starts and joins");
        self.configs.push(config);
        self.nodes.push(Some(node));
        i
    }

    /// The config of a node `node{i + 1}` that joins through node `seed`
    /// (listen addresses still node `seed`'s: set them before use).
    pub fn joiner_config(&self, i: usize, seed: usize) -> Config {
        let id = format!("node{}", i + 1);
        let ca = Ca::load_or_create(self.dir.path()).expect("ca");
        let certs = ca.issue(&self.dir.path().join("certs"), &id, &default_sans(&id, &[])).expect("cert");
        let mut config = self.configs[seed].clone();
        config.node_id = id.clone();
        config.data_dir = self.dir.path().join(&id);
        config.tls.cert = certs.cert;
        config.tls.key = certs.key;
        config.members =
            vec![MemberConfig { id, client_url: String::new(), peer_url: String::new(), weight: 1 }];
        config.seeds = vec![format!("https://{}", self.configs[seed].peer_listen)];
        config
    }

    /// Waits (up to `secs`) until every running node reports one layout
    /// version in force, the same on all of them, and returns it.
    pub async fn wait_settled(&self, secs: u64) -> u64 {
        self.wait_settled_with(&[], secs).await
    }

    /// [`TestCluster::wait_settled`], counting also the nodes at `extra`
    /// (client addresses of nodes started beside the cluster).
    pub async fn wait_settled_with(&self, extra: &[std::net::SocketAddr], secs: u64) -> u64 {
        let mut last = Vec::new();
        for _ in 0..secs * 5 {
            last.clear();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.is_some() {
                    let view = self.cluster_view(i).await;
                    last.push(view["layout"]["versions"].clone());
                }
            }
            for addr in extra {
                let url = format!("https://{addr}/cluster");
                let view: serde_json::Value =
                    self.client.get(url).send().await.expect("cluster").json().await.expect("json");
                last.push(view["layout"]["versions"].clone());
            }
            let one = last.first().and_then(|v| v.as_array()).is_some_and(|v| v.len() == 1);
            if one && last.iter().all(|v| *v == last[0]) {
                return last[0][0].as_u64().expect("version");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the layout did not settle in {secs} s: {last:?}");
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// The sorted base64 values of a JSON siblings view.
pub fn sibling_values(view: &serde_json::Value) -> Vec<String> {
    let mut values: Vec<String> = view["siblings"]
        .as_array()
        .expect("a siblings view")
        .iter()
        .map(|s| s["value_base64"].as_str().expect("base64 value").to_string())
        .collect();
    values.sort();
    values
}

pub fn header(r: &Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}
