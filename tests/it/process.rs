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
