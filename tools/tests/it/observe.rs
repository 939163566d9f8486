//! What an operator scrapes: `GET /metrics` in the Prometheus/OpenMetrics
//! text format.

use crate::cluster::TestCluster;

/// The value of the sample line `name{labels}` (labels as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_quorum_failures_siblings_and_peer_calls() {
    let mut c = TestCluster::start(3).await;
    for i in 0..5 {
        assert_eq!(c.put(0, &format!("m{i}"), vec![7u8; 1000], &[]).await.status(), 204);
    }
    // Two blind writes: a read sees two siblings.
    c.put(0, "twins", "a", &[]).await;
    c.put(0, "twins", "b", &[]).await;
    assert_eq!(c.get(0, "twins", &[]).await.status(), 300);
    assert_eq!(c.get(0, "m1", &[]).await.status(), 200);
    c.stop(2).await;
    assert_eq!(c.put(0, "strict", "x", &[("w", "3")]).await.status(), 503);

    let r = c.client.get(c.url(0, "/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "a complete exposition");
    assert_eq!(sample(&text, r#"quorumkv_requests_total{operation="put",status="204"}"#), Some(7.0));
    assert_eq!(sample(&text, r#"quorumkv_requests_total{operation="get",status="300"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"quorumkv_quorum_failures_total{kind="w"}"#), Some(1.0));
    assert_eq!(
        sample(&text, r#"quorumkv_request_duration_seconds_count{operation="put",status="503"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "quorumkv_read_siblings_count"), Some(2.0));
    assert_eq!(sample(&text, "quorumkv_read_siblings_sum"), Some(3.0), "one read of 2, one of 1");
    assert_eq!(sample(&text, "quorumkv_value_size_bytes_count"), Some(8.0));
    assert!(sample(&text, "quorumkv_value_size_bytes_sum").is_some_and(|s| s >= 5000.0));
    let replicate = r#"quorumkv_rpc_duration_seconds_count{peer="node2",route="/rpc/replicate"}"#;
    assert!(sample(&text, replicate).is_some_and(|n| n >= 1.0), "peer calls are timed");
    assert!(sample(&text, "quorumkv_rocksdb_size_bytes").is_some_and(|b| b > 0.0));
    for name in [
        "quorumkv_read_repairs_total",
        "quorumkv_hints_delivered_total",
        "quorumkv_anti_entropy_keys_pulled_total",
    ] {
        assert!(sample(&text, name).is_some(), "{name} is exported");
    }
    c.shutdown().await;
}

/// The README's metrics table, as an operator reads it: every metric it
/// lists is on the first scrape of a node that has served nothing yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_readme_lists_is_on_the_first_scrape() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("## Metrics\n").nth(1).unwrap().split("\n## ").next().unwrap();
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|name| name.starts_with("quorumkv_"))
        .collect();
    assert!(listed.len() >= 15, "the README lists the metrics: {listed:?}");
    let c = TestCluster::start(3).await;
    let text = c.client.get(c.url(0, "/metrics")).send().await.unwrap().text().await.unwrap();
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for name in &listed {
        let series = |l: &&str| {
            l.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with(['{', ' '])
                    || ["_count", "_sum", "_bucket"].iter().any(|s| rest.starts_with(s))
            })
        };
        assert!(samples.iter().any(series), "{name} is not on the first scrape");
    }
    // Labelled series at zero, not missing.
    assert_eq!(sample(&text, r#"quorumkv_requests_total{operation="get",status="200"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"quorumkv_quorum_failures_total{kind="pr"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"quorumkv_hints_queued{target="node2"}"#), Some(0.0));
    c.shutdown().await;
}
