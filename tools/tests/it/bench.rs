//! `quorumkv bench` against a real cluster: it counts what it sends.

use clap::Parser;
use quorumkv_tools::cli::{Cli, Command};

use crate::cluster::TestCluster;

fn args(c: &TestCluster, extra: &[&str]) -> quorumkv_tools::bench::BenchArgs {
    let ca = c.ca().display().to_string();
    let mut argv = vec!["quorumkv", "bench", "--cacert", &ca, "--quiet", "--concurrency", "8"];
    let urls: Vec<String> = (0..3).map(|i| c.url(i, "")).collect();
    for u in &urls {
        argv.extend(["--url", u.as_str()]);
    }
    argv.extend(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Bench(a) => a,
        other => panic!("parsed {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_requests_statuses_and_bytes() {
    let c = TestCluster::start(3).await;
    let s = quorumkv_tools::bench::run(&args(
        &c,
        &["--workload", "put", "--requests", "200", "--value-size", "100"],
    ))
    .await
    .unwrap();
    assert_eq!(s.ops, 200);
    assert_eq!(s.errors, 0);
    assert_eq!(s.statuses.get("204"), Some(&200));
    assert_eq!(s.bytes_sent, 200 * 100);
    // The default protocol is what the answers came over: HTTP/1.1, not
    // the h2 the nodes would pick if the client offered it too.
    assert_eq!(s.http_versions.get("HTTP/1.1"), Some(&200), "{:?}", s.http_versions);
    assert_eq!(s.http_versions.len(), 1, "{:?}", s.http_versions);
    assert!(s.latency.p50_ms > 0.0 && s.latency.p50_ms <= s.latency.p99_ms);

    // After a preload every read finds its key.
    let s = quorumkv_tools::bench::run(&args(
        &c,
        &[
            "--workload",
            "get",
            "--requests",
            "100",
            "--keys",
            "40",
            "--preload",
            "--key-prefix",
            "g",
            "--r",
            "2",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(s.ops, 100);
    assert_eq!(s.errors, 0, "{:?}", s.statuses);

    // Read-modify-write with the context: every op answered, nothing lost.
    let s = quorumkv_tools::bench::run(&args(
        &c,
        &[
            "--workload",
            "mixed:50",
            "--requests",
            "100",
            "--keys",
            "40",
            "--key-prefix",
            "g",
            "--distribution",
            "zipf:1.1",
        ],
    ))
    .await
    .unwrap();
    assert!(s.ops >= 100);
    assert_eq!(s.errors, 0, "{:?}", s.statuses);
    // Concurrent read-modify-writes of a hot key may leave siblings, but
    // never more than there are concurrent writers (no sibling explosion).
    assert!(s.max_siblings <= 8, "{} siblings", s.max_siblings);

    let s = quorumkv_tools::bench::run(&args(&c, &["--ceiling", "--requests", "50", "--protocol", "http2"]))
        .await
        .unwrap();
    assert_eq!(s.statuses.get("200"), Some(&50));
    assert_eq!(s.http_versions.get("HTTP/2.0"), Some(&50), "{:?}", s.http_versions);
    assert_eq!(s.http_versions.len(), 1, "{:?}", s.http_versions);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_errors_fails_and_runs_do_not_share_keys() {
    let mut c = TestCluster::start(3).await;
    // Two runs without a prefix write different key spaces: no siblings
    // piled onto the first run's keys.
    let first = quorumkv_tools::bench::run(&args(&c, &["--requests", "50", "--keys", "10"])).await.unwrap();
    let second = quorumkv_tools::bench::run(&args(&c, &["--requests", "50", "--keys", "10"])).await.unwrap();
    assert!(first.passed && second.passed);
    assert_ne!(first.key_prefix, second.key_prefix);
    let key = quorumkv_tools::bench::key_name(&first.key_prefix, 0);
    assert!(c.local(0, &key).await.is_some() || c.local(1, &key).await.is_some(), "{key} was written");
    // A preload is not counted in the run.
    let s = quorumkv_tools::bench::run(&args(
        &c,
        &["--workload", "get", "--preload", "--keys", "30", "--requests", "10"],
    ))
    .await
    .unwrap();
    assert_eq!(s.ops, 10);

    // Against a stopped node every request fails: FAILED, 0 ops/s.
    c.stop(2).await;
    let ca = c.ca().display().to_string();
    let dead = c.url(2, "");
    let argv = ["quorumkv", "bench", "--cacert", &ca, "--quiet", "--url", &dead, "--requests", "20"];
    let Command::Bench(a) = Cli::try_parse_from(argv).unwrap().command else { panic!("bench args") };
    let s = quorumkv_tools::bench::run(&a).await.unwrap();
    assert!(!s.passed);
    assert_eq!(s.errors, 20);
    assert_eq!(s.ops_per_sec, 0.0);
    assert!(s.text().starts_with("FAILED"), "{}", s.text());
    // The command itself exits non-zero (scripts and CI see it).
    let out = crate::cluster::quorumkv_cmd()
        .args(["bench", "--cacert", &ca, "--quiet", "--url", &dead, "--requests", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bench failed"));
    c.shutdown().await;
}
