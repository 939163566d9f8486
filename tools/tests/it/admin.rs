//! The admin CLI against a live cluster, and a node that must refuse to
//! start (the real binary in its own process).

use std::process::{Command, Output};

use crate::cluster::TestCluster;

fn run(c: &TestCluster, args: &[&str]) -> Output {
    crate::cluster::quorumkv_cmd()
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
    let hint = stderr(&o);
    assert!(
        hint.contains("2 siblings remain") && hint.contains(&format!("--context {context}")),
        "says how many siblings and how to resolve them: {hint}"
    );
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

#[test]
fn shell_completions_and_a_man_page_come_from_the_binary() {
    let o = crate::cluster::quorumkv_cmd().args(["completions", "bash"]).output().expect("run quorumkv");
    assert!(o.status.success(), "{}", stderr(&o));
    let script = stdout(&o);
    assert!(script.contains("_quorumkv()") && script.contains("--max-errors"), "a bash completion script");
    let o = crate::cluster::quorumkv_cmd().args(["completions", "zsh"]).output().expect("run quorumkv");
    assert!(stdout(&o).starts_with("#compdef quorumkv"), "{}", stdout(&o));
    let o = crate::cluster::quorumkv_cmd().arg("man").output().expect("run quorumkv");
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH quorumkv 1") && page.contains("serve"), "a roff man page");
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
        crate::cluster::quorumkv_cmd().args(["serve", "--config"]).arg(&path).output().expect("run")
    });
    assert!(!o.status.success(), "a second node on the same data directory must not serve");
    let err = stderr(&o);
    assert!(err.contains("cannot open data directory") && err.to_lowercase().contains("lock"), "{err}");
    c.shutdown().await;
}

/// `quorumkv serve` on a one-node dev config whose data directory is
/// `data_dir`; returns the exit status and stderr.
fn serve_with_data_dir(dir: &std::path::Path, data_dir: &std::path::Path) -> (bool, String) {
    let init = crate::cluster::quorumkv_cmd()
        .args(["dev", "--init-only", "--nodes", "1", "--port", "0", "--dir"])
        .arg(dir)
        .output()
        .expect("dev init");
    assert!(init.status.success(), "{}", stderr(&init));
    let o = crate::cluster::quorumkv_cmd()
        .args(["serve", "--config"])
        .arg(dir.join("node1.toml"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--client-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("serve");
    (o.status.success(), stderr(&o))
}

#[test]
fn a_corrupt_data_directory_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A RocksDB directory whose CURRENT file names no manifest.
    std::fs::write(data.join("CURRENT"), "garbage\n").unwrap();
    std::fs::write(data.join("IDENTITY"), "x\n").unwrap();
    let (ok, err) = serve_with_data_dir(dir.path(), &data);
    assert!(!ok, "must not serve");
    assert_eq!(err.trim().lines().count(), 1, "one line, no backtrace: {err}");
    assert!(err.contains("cannot open data directory") && err.contains("Corruption"), "{err}");
}

/// A full disk: a 512 KiB tmpfs, filled before the node starts.
struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_data_directory_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("full");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"]).arg(&mnt).status();
    assert!(mounted.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
    let _guard = Tmpfs(mnt.clone());
    // Fill it (the write stops with ENOSPC).
    let _ = std::fs::write(mnt.join("filler"), vec![0u8; 600 * 1024]);
    let (ok, err) = serve_with_data_dir(dir.path(), &mnt.join("data"));
    assert!(!ok, "must not serve");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("No space left on device"), "{err}");
}
