//! Tests that need the real binary in its own process: `kill -9`, SIGTERM
//! under load, config refusal, `dev --init-only`.

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
    let cluster =
        quorumkv_tools::dev::init(&dir.path().join("c"), 1, free_port(), Default::default()).unwrap();
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
    let cluster = quorumkv_tools::dev::init(dir, 3, port, Default::default()).unwrap();
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
    let port = crate::cluster::free_ports(3);
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

/// SIGTERM under load, as a rolling restart delivers it: the node keeps
/// answering while `/health/ready` says 503 (so a load balancer can move
/// the clients), a request still in flight when it stops accepting is
/// completed, every answer is a success, the process exits cleanly, and
/// every acknowledged write is there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_in_flight_requests_and_loses_nothing() {
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let cluster =
        quorumkv_tools::dev::init(&dir.path().join("c"), 1, free_port(), Default::default()).unwrap();
    let node = cluster.nodes[0].clone();
    let client = tls_client(&cluster.ca, None);
    let spawn = |drain_ms: &str| {
        Killed(
            crate::cluster::quorumkv_cmd()
                .args(["serve", "--config"])
                .arg(&node.config)
                .env("QUORUMKV_LOG", "warn")
                .env("QUORUMKV_DRAIN_DELAY_MS", drain_ms)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn quorumkv"),
        )
    };
    let mut child = spawn("1500");
    let ready_url = format!("{}/health/ready", node.client_url);
    wait_ready(&client, &ready_url).await;

    let acked = Arc::new(AtomicUsize::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, url, acked, draining) =
                (client.clone(), node.client_url.clone(), acked.clone(), draining.clone());
            tokio::spawn(async move {
                // (key index, acknowledged while draining), and every non-204 answer.
                let (mut ok, mut bad) = (Vec::new(), Vec::new());
                for i in 0..20_000 {
                    let sent = client
                        .put(format!("{url}/keys/term-{w}-{i}"))
                        .header("w", "1")
                        .body(format!("v{w}-{i}"))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 204 => {
                            ok.push((i, draining.load(Ordering::Acquire)));
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => bad.push(r.status()),
                        // The listener is closed: the node is gone.
                        Err(_) => break,
                    }
                }
                (w, ok, bad)
            })
        })
        .collect();
    for _ in 0..600 {
        if acked.load(Ordering::Relaxed) >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(acked.load(Ordering::Relaxed) >= 200, "the load is running");
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    // Readiness turns 503 "draining" while the port still answers.
    let mut saw_draining = false;
    for _ in 0..100 {
        match client.get(&ready_url).send().await {
            Ok(r) if r.status() == 503 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["status"], "draining");
                saw_draining = true;
                break;
            }
            Ok(r) => assert_eq!(r.status(), 200),
            Err(e) => panic!("the port closed before readiness reported draining: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_draining, "readiness never answered 503 after SIGTERM");
    draining.store(true, Ordering::Release);

    // A slow upload that is still in flight when the node stops accepting:
    // it spans the rest of the drain delay and must still be answered.
    let chunks = futures::stream::iter(0..10).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from(format!("chunk{i};")))
    });
    let slow = client
        .put(format!("{}/keys/term-slow", node.client_url))
        .header("w", "1")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("the in-flight request is answered");
    assert_eq!(slow.status(), 204, "the in-flight request completed");

    let mut during_drain = 0;
    let mut written = Vec::new();
    for writer in writers {
        let (w, ok, bad) = writer.await.unwrap();
        assert!(bad.is_empty(), "writer {w} got error answers while the node drained: {bad:?}");
        during_drain += ok.iter().filter(|(_, d)| *d).count();
        written.extend(ok.into_iter().map(|(i, _)| (w, i)));
    }
    assert!(during_drain > 0, "writes kept being acknowledged while readiness was 503");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    drop(child);

    let _child = spawn("0");
    wait_ready(&client, &ready_url).await;
    let r = client.get(format!("{}/keys/term-slow", node.client_url)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), (0..10).map(|i| format!("chunk{i};")).collect::<String>());
    for (w, i) in written {
        let r = client.get(format!("{}/keys/term-{w}-{i}", node.client_url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged term-{w}-{i} lost");
        assert_eq!(r.text().await.unwrap(), format!("v{w}-{i}"));
    }
}

/// A typo in any table of a config file stops the node before it binds
/// anything, with one line that names the key (every table refuses
/// unknown keys: a misspelt setting silently left at its default is how a
/// production node ends up with anti-entropy off).
#[test]
fn a_typo_anywhere_in_the_config_file_is_refused_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        quorumkv_tools::dev::init(&dir.path().join("c"), 1, free_port(), Default::default()).unwrap();
    let good = std::fs::read_to_string(&cluster.nodes[0].config).unwrap();
    let cases = [
        ("", "requst_timeout_ms = 5000\n", "requst_timeout_ms"),
        ("[tls]\n", "keyfile = \"x\"\n", "keyfile"),
        ("[defaults]\n", "rr = 2\n", "rr"),
        ("[repair]\n", "anti_entropy_intervall_ms = 5\n", "anti_entropy_intervall_ms"),
        ("[limits]\n", "max_sibling = 5\n", "max_sibling"),
        ("[[members]]\n", "wieght = 2\n", "wieght"),
    ];
    for (after, typo, name) in cases {
        assert!(good.contains(after), "the dev config has a {after:?} table");
        let bad = if after.is_empty() {
            format!("{typo}{good}")
        } else {
            good.replacen(after, &format!("{after}{typo}"), 1)
        };
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        let out = crate::cluster::quorumkv_cmd().args(["serve", "--config"]).arg(&path).output().unwrap();
        assert!(!out.status.success(), "{name}: the node must not start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name} is named: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line for {name}: {err}");
    }
}
