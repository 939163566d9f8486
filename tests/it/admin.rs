//! The admin CLI against a live cluster, and a node that must refuse to
//! start (the real binary in its own process).

use std::process::{Command, Output};

use crate::cluster::TestCluster;

const BIN: &str = env!("CARGO_BIN_EXE_quorumkv");

fn run(c: &TestCluster, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--url")
        .arg(c.url(0, ""))
        .arg("--cacert")
        .arg(c.ca())
        .output()
        .expect("run quorumkv")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_put_delete_and_cluster_status_from_the_command_line() {
    let c = TestCluster::start(3).await;
    // The CLI blocks; run it off the runtime's workers.
    let o = tokio::task::block_in_place(|| run(&c, &["put", "cli key/1", "first", "--w", "3"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("acked=3"), "{}", stderr(&o));
    let o = tokio::task::block_in_place(|| run(&c, &["get", "cli key/1", "--r", "3"]));
    assert_eq!(stdout(&o), "first", "the raw value");

    // A second blind write: two siblings, shown as JSON with the context.
    tokio::task::block_in_place(|| run(&c, &["put", "cli key/1", "second"]));
    let o = tokio::task::block_in_place(|| run(&c, &["get", "cli key/1"]));
    let view: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON view");
    assert_eq!(view["siblings"].as_array().unwrap().len(), 2);
    let context = view["context"].as_str().expect("context").to_string();
    let o = tokio::task::block_in_place(|| run(&c, &["delete", "cli key/1", "--context", &context]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tokio::task::block_in_place(|| run(&c, &["get", "cli key/1"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    // Bad knobs: the server's 400 body, and a failing exit status.
    let o = tokio::task::block_in_place(|| run(&c, &["put", "k", "v", "--w", "9"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("400") && stderr(&o).contains("invalid_consistency"), "{}", stderr(&o));

    let o = tokio::task::block_in_place(|| run(&c, &["cluster", "status"]));
    let table = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for id in ["node1", "node2", "node3"] {
        assert!(table.lines().any(|l| l.starts_with(id) && l.contains("yes")), "{table}");
    }
    assert!(table.contains("100.0%"), "N=3 of 3 nodes: every node holds every partition\n{table}");
    let o = tokio::task::block_in_place(|| run(&c, &["cluster", "status", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(json["members"].as_array().unwrap().len(), 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_directory_is_in_use_exits_with_the_reason() {
    let c = TestCluster::start(1).await;
    let mut config = c.configs[0].clone();
    config.client_listen = "127.0.0.1:0".parse().unwrap();
    config.peer_listen = "127.0.0.1:0".parse().unwrap();
    let path = c.dir.path().join("second.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let o = tokio::task::block_in_place(|| {
        Command::new(BIN).args(["serve", "--config"]).arg(&path).output().expect("run")
    });
    assert!(!o.status.success(), "a second node on the same data directory must not serve");
    let err = stderr(&o);
    assert!(err.contains("cannot open data directory") && err.to_lowercase().contains("lock"), "{err}");
    c.shutdown().await;
}
