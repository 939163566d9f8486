//! Every kind of bad input gets a clear 4xx with a JSON body, and nothing
//! is stored.

use crate::cluster::{Options, TestCluster};
use reqwest::{Method, StatusCode};

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consistency_knobs_are_400_naming_the_rule() {
    let c = TestCluster::start(3).await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("r", "4")], "R must be"),
        (&[("w", "0")], "W must be"),
        (&[("n", "5")], "N must be"),
        (&[("r", "abc")], "header r"),
        (&[("r", "1"), ("pr", "2")], "PR must not exceed"),
        (&[("w", "1"), ("pw", "2")], "PW must not exceed"),
        (&[("w", "1"), ("dw", "all")], "DW must not exceed"),
    ];
    for (headers, rule) in cases {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let mut req = c.request(method.clone(), 0, "knobs").body("v");
            for (k, v) in *headers {
                req = req.header(*k, *v);
            }
            let response = req.send().await.unwrap();
            let r_headers = (
                crate::cluster::header(&response, "sibling-count"),
                crate::cluster::header(&response, "quorum-report"),
            );
            let body = expect_error(response, 400, "invalid_consistency").await;
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(rule), "{method} {headers:?}: {message}");
            assert_eq!(r_headers.0, "0");
            assert_eq!(r_headers.1, "none", "refused before any replica was asked");
        }
    }
    assert!(c.local(0, "knobs").await.is_none(), "nothing was stored");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_contexts_digests_keys_and_sizes() {
    let c = TestCluster::start_with(Options { nodes: 1, max_value_bytes: 1000, ..Options::default() }).await;
    expect_error(
        c.put(0, "k", "v", &[("causal-context", "not-a-token!")]).await,
        400,
        "invalid_causal_context",
    )
    .await;
    expect_error(c.put(0, "k", "v", &[("causal-context", "AQIDBAU")]).await, 400, "invalid_causal_context")
        .await;
    expect_error(c.delete(0, "k", &[("causal-context", "%%%")]).await, 400, "invalid_causal_context").await;

    // A real context with one character changed.
    assert_eq!(c.put(0, "k", "v", &[]).await.status(), 204);
    let good = crate::cluster::header(&c.get(0, "k", &[]).await, "causal-context");
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    expect_error(c.put(0, "k", "v2", &[("causal-context", &forged)]).await, 400, "invalid_causal_context")
        .await;
    expect_error(
        c.put(0, "k", "v2", &[("causal-context", &good[..good.len() / 2])]).await,
        400,
        "invalid_causal_context",
    )
    .await;

    // Content-MD5: wrong digest → 400 and nothing stored; malformed → 400; right → stored.
    let md5_of_other = "rL0Y20zC+Fzt72VPzMSk2A=="; // MD5("foo")
    expect_error(c.put(0, "md5", "bar", &[("content-md5", md5_of_other)]).await, 400, "content_md5_mismatch")
        .await;
    assert_eq!(c.get(0, "md5", &[]).await.status(), StatusCode::NOT_FOUND);
    expect_error(c.put(0, "md5", "bar", &[("content-md5", "abc")]).await, 400, "invalid_content_md5").await;
    assert_eq!(c.put(0, "md5", "foo", &[("content-md5", md5_of_other)]).await.status(), 204);

    // Keys: empty → 400, 1024 bytes fine, 1025 → 414 (counted after percent-decoding).
    expect_error(c.client.get(c.url(0, "/keys/")).send().await.unwrap(), 400, "invalid_key").await;
    expect_error(c.client.put(c.url(0, "/keys")).send().await.unwrap(), 400, "invalid_key").await;
    let max = "k".repeat(1024);
    assert_eq!(c.put(0, &max, "v", &[]).await.status(), 204);
    expect_error(c.put(0, &format!("{max}k"), "v", &[]).await, 414, "key_too_long").await;
    expect_error(c.get(0, &"%41".repeat(1025), &[]).await, 414, "key_too_long").await;

    // Values over max_value_bytes → 413, with or without a Content-Length.
    assert_eq!(c.put(0, "big", vec![7u8; 1000], &[]).await.status(), 204);
    expect_error(c.put(0, "big2", vec![7u8; 1001], &[]).await, 413, "value_too_large").await;
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(vec![1u8; 600]), Ok(vec![2u8; 600])]);
    let r = c.request(Method::PUT, 0, "big3").body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    expect_error(r, 413, "value_too_large").await;
    assert_eq!(c.get(0, "big3", &[]).await.status(), StatusCode::NOT_FOUND);

    // Unknown routes are JSON 404s too.
    expect_error(c.client.get(c.url(0, "/nope")).send().await.unwrap(), 404, "no_route").await;
    expect_error(c.client.patch(c.key_url(0, "k")).send().await.unwrap(), 405, "method_not_allowed").await;
    c.shutdown().await;
}
