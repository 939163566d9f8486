//! The data path as a client sees it: values, replication, siblings,
//! contexts, deletes.

use crate::cluster::{Options, TestCluster, header, sibling_values};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_and_content_types_round_trip() {
    let c = TestCluster::start(3).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let r = c.put(0, "users/42/avatar", bytes.clone(), &[("content-type", "image/jpeg")]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!header(&r, "causal-context").is_empty());
    assert_eq!(header(&r, "quorum-report"), "n=3; w=2; acked=2; fallback=0");

    let r = c.get(1, "users/42/avatar", &[("r", "2")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "image/jpeg");
    assert_eq!(header(&r, "sibling-count"), "1");
    assert_eq!(header(&r, "quorum-report"), "n=3; r=2; answered=2");
    let etag = header(&r, "etag");
    assert_eq!(etag, format!("\"{:x}\"", md5_hex(&bytes)));
    assert!(!header(&r, "last-modified").is_empty());
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Empty value, default content type, and a key made of arbitrary bytes.
    let r = c.put(2, "%00%FF%2Fodd%20key", Vec::new(), &[]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(0, "%00%FF%2Fodd%20key", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    assert!(r.bytes().await.unwrap().is_empty());
    // Keys are compared after percent-decoding: another spelling of the same bytes is the same key.
    assert_eq!(c.get(0, "%00%ff/odd%20key", &[]).await.status(), StatusCode::OK);
    assert_eq!(c.get(0, "%00%FF/odd%20kez", &[]).await.status(), StatusCode::NOT_FOUND);
    c.shutdown().await;
}

/// A stored JSON document is a value like any other: `/keys` returns it as
/// itself under any `Accept` (a generated client asks for JSON), and the
/// JSON view of the key is `/versions`. `Value-Content-Type` names the
/// media type for clients that always send octet-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_return_the_value_under_any_accept_and_versions_give_the_json_view() {
    let c = TestCluster::start(3).await;
    let doc = r#"{"siblings":"not really"}"#;
    assert_eq!(
        c.put(0, "doc.json", doc, &[("content-type", "application/json"), ("w", "3")]).await.status(),
        204
    );
    let r = c.get(1, "doc.json", &[("accept", "application/json")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "application/json");
    assert_eq!(r.text().await.unwrap(), doc);

    let r = c.versions(2, "doc.json", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "sibling-count"), "1");
    let view: serde_json::Value = r.json().await.unwrap();
    assert_eq!(view["key"], "doc.json");
    assert_eq!(view["siblings"][0]["content_type"], "application/json");
    assert_eq!(sibling_values(&view), vec![base64_of(doc)]);
    assert_eq!(c.versions(2, "never-written", &[]).await.status(), StatusCode::NOT_FOUND);

    let typed = [("content-type", "application/octet-stream"), ("value-content-type", "text/csv")];
    assert_eq!(c.put(0, "table", "a,b\n", &typed).await.status(), 204);
    let r = c.get(1, "table", &[]).await;
    assert_eq!(header(&r, "content-type"), "text/csv", "Value-Content-Type wins over Content-Type");
    // Reads send the type back as their Content-Type: it must be one.
    for (name, bad) in [("value-content-type", ""), ("value-content-type", "61W6:t"), ("content-type", "*/*")]
    {
        let r = c.put(0, "table", "a,b\n", &[(name, bad)]).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name}: {bad:?}");
        assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "invalid_content_type");
    }
    assert_eq!(header(&c.get(2, "table", &[("r", "3")]).await, "content-type"), "text/csv", "nothing stored");
    c.shutdown().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Hex([u8; 16]);
impl std::fmt::LowerHex for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
fn md5_hex(bytes: &[u8]) -> Hex {
    Hex(quorumkv::storage::record::md5_of(bytes))
}

/// W=1 is met by the coordinator's own copy; the client must not wait
/// for the request deadline on the others (it did: the copies to the other
/// replicas were not polled until the deadline had passed, so every W=1
/// PUT took `request_timeout_ms`). The deadline here is a minute, and the
/// guard a third of it: not a latency measure, an answer that does not
/// depend on the deadline at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_w1_write_is_answered_without_waiting_for_the_deadline() {
    let c =
        TestCluster::start_with(Options { nodes: 3, request_timeout_ms: 60_000, ..Options::default() }).await;
    for i in 0..3 {
        let key = format!("w1-{i}");
        let put = c.put(i, &key, "fast", &[("w", "1")]);
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), put)
            .await
            .expect("a W=1 PUT is answered long before the 60 s deadline");
        assert_eq!(r.status(), 204);
        // The other copies were still sent.
        for node in 0..3 {
            c.wait_local(node, &key, |v| v.is_some()).await;
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_all_reaches_every_replica() {
    let c = TestCluster::start(3).await;
    let r = c.put(0, "everywhere", "v1", &[("w", "all")]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "quorum-report"), "n=3; w=3; acked=3; fallback=0");
    for node in 0..3 {
        let local = c.local(node, "everywhere").await.expect("replica holds the key");
        let siblings = local["siblings"].as_array().unwrap();
        assert_eq!(siblings.len(), 1);
        assert_eq!(siblings[0]["value_base64"], "djE=");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_writes_become_siblings_and_a_context_resolves_them() {
    let c = TestCluster::start(3).await;
    assert_eq!(c.put(0, "cart", "apple", &[("w", "3"), ("content-type", "text/plain")]).await.status(), 204);
    let r = c.put(1, "cart", "pear", &[("w", "3"), ("content-type", "text/x-pear")]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "sibling-count"), "2");
    assert_eq!(
        header(&r, "causal-context"),
        "",
        "no context that would cover a version this client never saw"
    );

    let r = c.get(2, "cart", &[]).await;
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    assert_eq!(header(&r, "sibling-count"), "2");
    let context = header(&r, "causal-context");
    let ct = header(&r, "content-type");
    assert!(ct.starts_with("multipart/mixed; boundary="), "{ct}");
    let boundary = ct.split_once("boundary=").unwrap().1.to_string();
    let mut parts = multer::Multipart::new(r.bytes_stream(), boundary);
    let mut seen = Vec::new();
    while let Some(field) = parts.next_field().await.unwrap() {
        let ct = field.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert!(field.headers().contains_key("etag"));
        assert!(field.headers().contains_key("last-modified"));
        seen.push((ct, field.bytes().await.unwrap()));
    }
    seen.sort();
    assert_eq!(seen, vec![("text/plain".into(), "apple".into()), ("text/x-pear".into(), "pear".into())]);

    let r = c.versions(0, "cart", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let view: serde_json::Value = r.json().await.unwrap();
    assert_eq!(view["key"], "cart");
    assert_eq!(view["siblings"].as_array().unwrap().len(), 2);
    assert_eq!(view["context"], context.as_str());

    // Writing with the context supersedes both siblings.
    let r = c.put(1, "cart", "apple+pear", &[("causal-context", &context), ("w", "3")]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "sibling-count"), "1");
    let r = c.get(2, "cart", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "apple+pear");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_an_old_context_keeps_the_concurrent_one() {
    let c = TestCluster::start(3).await;
    c.put(0, "doc", "v1", &[("w", "3")]).await;
    let ctx = header(&c.get(0, "doc", &[]).await, "causal-context");
    // Two clients update from the same read: both updates survive.
    assert_eq!(c.put(0, "doc", "v2a", &[("causal-context", &ctx), ("w", "3")]).await.status(), 204);
    assert_eq!(c.put(1, "doc", "v2b", &[("causal-context", &ctx), ("w", "3")]).await.status(), 204);
    let view: serde_json::Value = c.versions(2, "doc", &[("r", "3")]).await.json().await.unwrap();
    assert_eq!(sibling_values(&view), vec!["djJh", "djJi"], "v1 is gone, v2a and v2b remain");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_a_context_and_a_blind_put_recreates_the_key() {
    let c = TestCluster::start(3).await;
    c.put(0, "gone", "v1", &[("w", "3")]).await;
    let ctx = header(&c.get(0, "gone", &[]).await, "causal-context");
    let r = c.delete(1, "gone", &[("causal-context", &ctx), ("w", "3")]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.get(2, "gone", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!header(&r, "causal-context").is_empty(), "404 carries the tombstone's context");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    // Re-creating a deleted key without a context (a blind put after the
    // delete): the new value is the answer, not a 300 with a tombstone.
    assert_eq!(c.put(0, "gone", "again", &[("w", "3")]).await.status(), 204);
    let r = c.get(1, "gone", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "sibling-count"), "1");
    assert_eq!(r.text().await.unwrap(), "again");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_concurrent_with_an_update_loses_to_it() {
    let c = TestCluster::start(3).await;
    // Add-wins: the update is the answer in every view; the tombstone stays
    // in the context only.
    c.put(0, "contested", "v1", &[("w", "3")]).await;
    let ctx = header(&c.get(0, "contested", &[]).await, "causal-context");
    assert_eq!(c.put(0, "contested", "v2", &[("causal-context", &ctx), ("w", "3")]).await.status(), 204);
    assert_eq!(c.delete(1, "contested", &[("causal-context", &ctx), ("w", "3")]).await.status(), 204);
    let raw = c
        .wait_local(2, "contested", |v| v.is_some_and(|v| v["siblings"].as_array().unwrap().len() == 2))
        .await
        .unwrap();
    assert_eq!(
        raw["siblings"].as_array().unwrap().iter().filter(|s| s["deleted"] == true).count(),
        1,
        "the replica keeps the tombstone as a sibling: {raw}"
    );
    let view: serde_json::Value = c.versions(2, "contested", &[("r", "3")]).await.json().await.unwrap();
    assert_eq!(sibling_values(&view), vec!["djI="], "only v2 is shown: {view}");
    let r = c.get(2, "contested", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "sibling-count"), "1");
    let ctx = header(&r, "causal-context");
    assert_eq!(r.text().await.unwrap(), "v2");
    // The shown context covers the tombstone: a write with it leaves one version.
    assert_eq!(c.put(0, "contested", "v3", &[("causal-context", &ctx), ("w", "3")]).await.status(), 204);
    let raw = c
        .wait_local(2, "contested", |v| v.is_some_and(|v| v["siblings"].as_array().unwrap().len() == 1))
        .await
        .unwrap();
    assert_eq!(raw["siblings"][0]["deleted"], false, "{raw}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_context_removes_every_version_a_read_sees() {
    let c = TestCluster::start(3).await;
    // Two siblings, then a DELETE with no context: both go (Riak's semantics).
    c.put(0, "blind", "a", &[("w", "3")]).await;
    c.put(1, "blind", "b", &[("w", "3")]).await;
    assert_eq!(c.get(2, "blind", &[("r", "3")]).await.status(), StatusCode::MULTIPLE_CHOICES);
    assert_eq!(c.delete(2, "blind", &[("w", "3")]).await.status(), StatusCode::NO_CONTENT);
    let r = c.get(0, "blind", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "no sibling survives a blind delete");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_preference_list_forwards_the_write() {
    let c = TestCluster::start(3).await;
    // With N=1 each key has a single home; write through a node that is not it.
    for i in 0..20 {
        let key = format!("fwd-{i}");
        let prefs: serde_json::Value = c
            .client
            .get(c.url(0, &format!("/cluster/preference-list/{key}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let home = prefs["nodes"][0].as_str().unwrap().to_string();
        let home_idx: usize = home.trim_start_matches("node").parse::<usize>().unwrap() - 1;
        let via = (home_idx + 1) % 3;
        let r = c.put(via, &key, "x", &[("n", "1"), ("w", "1")]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{key}");
        assert!(c.local(home_idx, &key).await.is_some(), "{key} stored on its home {home}");
        assert!(c.local(via, &key).await.is_none(), "{key} not stored on the forwarder");
        let r = c.get(via, &key, &[("n", "1"), ("r", "1")]).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_endpoints_describe_members_and_placement() {
    let c = TestCluster::start(3).await;
    let v: serde_json::Value = c.client.get(c.url(1, "/cluster")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["node"], "node2");
    assert_eq!(v["layout_version"], 1, "the configured member list is layout 1");
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["reachable"] == true));
    let total: u64 = members.iter().map(|m| m["partitions"].as_u64().unwrap()).sum();
    assert_eq!(total, 64 * 3, "every partition has three replicas");

    let v: serde_json::Value =
        c.client.get(c.url(0, "/cluster/preference-list/a/b")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["key"], "a/b");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(c.client.get(c.url(0, path)).send().await.unwrap().status(), 200);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_speaks_http2() {
    let c = TestCluster::start(1).await;
    c.put(0, "h2", "v", &[]).await;
    let r = c.get(0, "h2", &[]).await;
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
    assert_eq!(r.text().await.unwrap(), "v");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_answer_412_when_a_quorum_read_disagrees() {
    let c = TestCluster::start(3).await;
    let create = [("if-none-match", "*"), ("w", "3")];
    // Create-only: the first goes ahead, the second is refused with what is there.
    assert_eq!(c.put(0, "cas", "first", &create).await.status(), 204);
    let r = c.put(1, "cas", "second", &create).await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "precondition_failed");
    assert_eq!(body["condition"], "If-None-Match");
    let r = c.get(2, "cas", &[("r", "3")]).await;
    assert_eq!(
        (r.status(), header(&r, "sibling-count")),
        (StatusCode::OK, "1".to_string()),
        "no sibling added"
    );
    let etag = header(&r, "etag");
    assert_eq!(r.text().await.unwrap(), "first");

    // If-Match: a stale tag is refused, the current one replaces the value
    // (no Causal-Context needed: it supersedes what the read saw).
    let stale = [("if-match", "\"00000000000000000000000000000000\""), ("w", "3")];
    assert_eq!(c.put(0, "cas", "nope", &stale).await.status(), 412);
    assert_eq!(c.delete(0, "cas", &stale).await.status(), 412);
    assert_eq!(c.put(1, "cas", "replaced", &[("if-match", &etag), ("w", "3")]).await.status(), 204);
    let r = c.get(2, "cas", &[("r", "3")]).await;
    assert_eq!((r.status(), header(&r, "sibling-count")), (StatusCode::OK, "1".to_string()));
    assert_eq!(r.text().await.unwrap(), "replaced");
    assert_eq!(
        c.put(0, "cas", "again", &[("if-match", &etag), ("w", "3")]).await.status(),
        412,
        "tag moved on"
    );

    // If-Unmodified-Since: a date before the write fails, one after passes.
    let past = "Mon, 01 Jan 2024 00:00:00 GMT";
    assert_eq!(c.delete(0, "cas", &[("if-unmodified-since", past), ("w", "3")]).await.status(), 412);
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(5));
    assert_eq!(c.delete(0, "cas", &[("if-unmodified-since", &later), ("w", "3")]).await.status(), 204);
    assert_eq!(c.get(1, "cas", &[("r", "3")]).await.status(), StatusCode::NOT_FOUND);
    // Deleted: a create goes ahead again, over the tombstone.
    assert_eq!(c.put(2, "cas", "reborn", &create).await.status(), 204);
    assert_eq!(c.get(0, "cas", &[("r", "3")]).await.text().await.unwrap(), "reborn");

    // Siblings have their own tag, shown on the 300 and the JSON view.
    c.put(0, "cas2", "a", &[("w", "3")]).await;
    c.put(1, "cas2", "b", &[("w", "3")]).await;
    let r = c.get(2, "cas2", &[("r", "3")]).await;
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    let tag = header(&r, "etag");
    let json = c.versions(2, "cas2", &[("r", "3")]).await;
    assert_eq!(header(&json, "etag"), tag, "the JSON view carries the same key tag");
    assert_eq!(c.put(0, "cas2", "merged", &[("if-match", &tag), ("w", "3")]).await.status(), 204);
    assert_eq!(
        c.get(1, "cas2", &[("r", "3")]).await.text().await.unwrap(),
        "merged",
        "both siblings replaced"
    );

    // A malformed condition is a 400, never a blind write.
    let r = c.put(0, "cas", "x", &[("if-match", "not-quoted")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "invalid_precondition");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_returns_a_context_only_when_it_is_all_a_reader_sees() {
    let c = TestCluster::start(3).await;
    c.put(0, "ctx", "a", &[("w", "3")]).await;
    let seen = header(&c.get(0, "ctx", &[("r", "3")]).await, "causal-context");
    // Another client updates A to B; this client then deletes A with its
    // old context. B wins (add-wins), and the delete's 204 must not hand out
    // a context covering B, which this client never saw.
    assert_eq!(c.put(1, "ctx", "b", &[("causal-context", &seen), ("w", "3")]).await.status(), 204);
    let r = c.delete(2, "ctx", &[("causal-context", &seen), ("w", "3")]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "causal-context"), "", "no context covering the unseen B");
    assert_eq!(header(&r, "sibling-count"), "1", "B is still shown");
    // A plain delete that removes everything gets its context back.
    let r = c.delete(2, "ctx", &[("w", "3")]).await;
    assert!(!header(&r, "causal-context").is_empty());
    assert_eq!(header(&r, "sibling-count"), "0");

    // If-Unmodified-Since names no value: without a context the PUT is a
    // sibling of what is there, not a replacement.
    c.put(0, "ius", "x", &[("w", "3")]).await;
    c.put(1, "ius", "y", &[("w", "3")]).await;
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(5));
    assert_eq!(c.put(0, "ius", "z", &[("if-unmodified-since", &later), ("w", "3")]).await.status(), 204);
    let r = c.get(2, "ius", &[("r", "3")]).await;
    assert_eq!(header(&r, "sibling-count"), "3", "x and y survive next to z");
    c.shutdown().await;
}

/// An operator sees what each node works on in the background: `/cluster`
/// lists every worker with its state and the rounds it has run, and a
/// shutdown waits for them, so the same directory reopens at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lists_the_background_workers_and_shutdown_waits_for_them() {
    let mut c = TestCluster::start(2).await;
    let expected = ["anti_entropy", "detector", "gc", "gossip", "governor", "handoff", "lease", "transfer"];
    let mut workers = Vec::new();
    for _ in 0..100 {
        let v = c.cluster_view(0).await;
        workers = v["workers"].as_array().expect("workers listed").clone();
        let ran = |name: &str| {
            workers.iter().any(|w| w["name"] == name && w["rounds"].as_u64().is_some_and(|r| r > 0))
        };
        if ran("detector") && ran("lease") && ran("handoff") && ran("governor") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut names: Vec<&str> = workers.iter().filter_map(|w| w["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, expected, "{workers:?}");
    for w in &workers {
        assert!(["busy", "idle"].contains(&w["state"].as_str().unwrap_or("")), "running: {w}");
        assert!(w["errors"].is_u64() && w.get("last_error").is_some(), "{w}");
    }
    for name in ["detector", "lease", "handoff", "governor"] {
        let w = workers.iter().find(|w| w["name"] == name).expect("listed");
        assert!(w["rounds"].as_u64().unwrap_or(0) > 0, "{name} has run: {w}");
    }
    c.put(0, "after-restart", "v", &[]).await;
    c.stop(0).await;
    // Closed by the time shutdown returns: RocksDB's lock is free.
    let dir = c.configs[0].data_dir.clone();
    drop(
        quorumkv::storage::Storage::open(&dir, 8 << 20).expect("the directory reopens right after shutdown"),
    );
    c.restart(0).await;
    let r = c.get(0, "after-restart", &[("r", "2")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    c.shutdown().await;
}
