//! Tests that need the real binary in its own process: `kill -9`, config
//! refusal, `dev --init-only`.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::cluster::tls_client;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use crate::cluster::free_port;

async fn wait_ready(client: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if let Ok(r) = client.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = quorumkv::dev::init(&dir.path().join("c"), 1, free_port(), Default::default()).unwrap();
    let node = &cluster.nodes[0];
    let client = tls_client(&cluster.ca, None);
    let spawn = || {
        Killed(
            crate::cluster::quorumkv_cmd()
                .args(["serve", "--config"])
                .arg(&node.config)
                .env("QUORUMKV_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn quorumkv"),
        )
    };
    let mut child = spawn();
    wait_ready(&client, &format!("{}/health/ready", node.client_url)).await;
    for i in 0..200 {
        let r = client
            .put(format!("{}/keys/crash-{i}", node.client_url))
            .header("w", "1")
            .body(format!("v{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    // SIGKILL: no flush, no shutdown hook.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    drop(child);
    let _child = spawn();
    wait_ready(&client, &format!("{}/health/ready", node.client_url)).await;
    for i in 0..200 {
        let r = client.get(format!("{}/keys/crash-{i}", node.client_url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "crash-{i} lost");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
}

#[test]
fn a_bad_config_is_refused_with_one_line() {
    let out = crate::cluster::quorumkv_cmd()
        .args(["serve", "--node-id", "x", "--client-listen", "127.0.0.1:1", "--peer-listen", "127.0.0.1:2"])
        .env_remove("QUORUMKV_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn dev_init_only_writes_a_usable_cluster_map_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = crate::cluster::quorumkv_cmd()
            .args(["dev", "--init-only", "--nodes", "3", "--port", "18443", "--dir"])
            .arg(dir.path().join("dev"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.path().join("dev/cluster.json")).unwrap()
    };
    let first = run();
    let map: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(map["nodes"].as_array().unwrap().len(), 3);
    for field in ["ca", "client_cert", "client_key"] {
        let p = map[field].as_str().unwrap();
        assert!(std::path::Path::new(p).is_absolute() && std::path::Path::new(p).exists(), "{field}");
    }
    assert_eq!(map["nodes"][1]["client_url"], "https://127.0.0.1:18444");
    assert_eq!(map["nodes"][1]["peer_url"], "https://127.0.0.1:19444");
    let config = map["nodes"][0]["config"].as_str().unwrap();
    quorumkv::config::Config::from_file(std::path::Path::new(config)).unwrap().validate().unwrap();
    let ca_before = std::fs::read(dir.path().join("dev/ca.pem")).unwrap();
    assert_eq!(run(), first, "a second run reuses the files");
    assert_eq!(std::fs::read(dir.path().join("dev/ca.pem")).unwrap(), ca_before);
}

/// Runs a 3-node dev cluster whose every node is traced by `strace`, writes
/// `writes` keys with `headers`, stops it, and returns the fsync and
/// fdatasync calls all three processes made.
async fn traced_syncs(dir: &std::path::Path, port: u16, prefix: &str, headers: &[(&str, &str)]) -> usize {
    let cluster = quorumkv::dev::init(dir, 3, port, Default::default()).unwrap();
    let client = tls_client(&cluster.ca, None);
    let mut nodes = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let trace = dir.join(format!("{prefix}-node{i}.strace"));
        let child = std::process::Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["serve", "--config"])
            .arg(&node.config)
            .env("QUORUMKV_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (apt install strace)");
        nodes.push((Killed(child), trace));
    }
    for node in &cluster.nodes {
        wait_ready(&client, &format!("{}/health/ready", node.client_url)).await;
    }
    for i in 0..100 {
        let mut req = client.put(format!("{}/keys/{prefix}-{i}", cluster.nodes[i % 3].client_url)).body("v");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        assert_eq!(req.send().await.unwrap().status(), 204);
    }
    let mut syncs = 0;
    for (mut child, trace) in nodes {
        // SIGTERM to the traced node (strace's child): it shuts down, and
        // strace exits with it, its output complete.
        let pid = child.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for node_pid in children.split_whitespace() {
            let _ = std::process::Command::new("kill").args(["-TERM", node_pid]).status();
        }
        let _ = child.0.wait();
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        syncs += text.lines().filter(|l| l.contains("fsync(") || l.contains("fdatasync(")).count();
    }
    syncs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dw_makes_every_replica_sync_its_wal() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is missing: scripts/setup.sh installs it");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut port = free_port();
    while (0..3).any(|i| {
        std::net::TcpListener::bind(("127.0.0.1", port + i)).is_err()
            || std::net::TcpListener::bind(("127.0.0.1", port + 1000 + i)).is_err()
    }) {
        port = free_port();
    }
    // The same cluster twice: 100 writes W=3 without DW, then with DW=3.
    let plain = traced_syncs(&dir.path().join("c"), port, "plain", &[("w", "3")]).await;
    let durable = traced_syncs(&dir.path().join("c"), port, "durable", &[("w", "3"), ("dw", "3")]).await;
    // Each of the 100 sequential writes syncs the WAL on all three replicas
    // (the coordinator's own write and two replica batches): about 300 more.
    assert!(
        durable >= plain + 250,
        "DW=3 should add ~300 fsync/fdatasync calls across the replicas: {plain} without, {durable} with"
    );
}
