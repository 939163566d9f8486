//! What real HTTP clients see when the API refuses a request: curl over
//! HTTP/2 (its default with TLS) and HTTP/1.1, and reqwest over HTTP/2,
//! must get the documented status with its JSON body, even when the refusal
//! comes before the request body was read.

use std::path::Path;
use std::process::Command;

use crate::cluster::{Options, TestCluster};
use reqwest::StatusCode;

/// Runs curl; returns (status, HTTP version, JSON body). A curl error (such
/// as `(92) Stream error in the HTTP/2 framing layer`) fails the test.
fn curl(protocol: &str, args: &[&str], url: &str, ca: &Path, out: &Path) -> (u16, String, serde_json::Value) {
    let output = Command::new("curl")
        .args(["-sS", protocol, "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(out)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (apt install curl)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "curl {protocol} {args:?}: {stderr}");
    let written = String::from_utf8_lossy(&output.stdout).to_string();
    let (status, version) = written.split_once(' ').expect("status and version");
    let body = std::fs::read(out).unwrap_or_default();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("curl {protocol} {args:?}: body is not JSON ({e}): {body:?}"));
    (status.parse().unwrap(), version.to_string(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sees_every_rejection_with_its_json_body_over_both_protocols() {
    let limit = 16 << 20;
    let c = TestCluster::start_with(Options { nodes: 1, max_value_bytes: limit, ..Options::default() }).await;
    let dir = c.dir.path();
    let (one_mib, over) = (dir.join("1mib"), dir.join("17mib"));
    std::fs::write(&one_mib, vec![b'x'; 1 << 20]).unwrap();
    std::fs::write(&over, vec![b'y'; 17 << 20]).unwrap();
    let out = dir.join("answer");
    let (one_mib, over) = (format!("@{}", one_mib.display()), format!("@{}", over.display()));
    let key = c.key_url(0, "k");
    let long_key = c.key_url(0, &"k".repeat(20_000));
    let ca = c.ca();
    // (curl arguments, url, status, error code)
    let cases: Vec<(Vec<&str>, &str, u16, &str)> = vec![
        (vec!["-X", "PUT", "-H", "W: 4", "--data-binary", &one_mib], &key, 400, "invalid_consistency"),
        (vec!["-X", "PUT", "--data-binary", &over], &key, 413, "value_too_large"),
        (vec!["-X", "PATCH", "--data-binary", &one_mib], &key, 405, "method_not_allowed"),
        (
            vec!["-X", "PUT", "-H", "If-Match: nope", "--data-binary", &one_mib],
            &key,
            400,
            "invalid_precondition",
        ),
        (vec!["-X", "PUT", "--data-binary", &one_mib], &long_key, 414, "key_too_long"),
        (vec![], &long_key, 414, "key_too_long"),
    ];
    for (protocol, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        for round in 0..3 {
            for (args, url, status, code) in &cases {
                let (got, v, body) = curl(protocol, args, url, &ca, &out);
                assert_eq!(
                    (got, body["error"].as_str()),
                    (*status, Some(*code)),
                    "{protocol} {args:?} round {round}"
                );
                assert_eq!(v, version, "{protocol} was negotiated");
            }
        }
    }
    // Nothing of it was stored, and the node still serves.
    assert_eq!(c.get(0, "k", &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(c.put(0, "k", "fine", &[]).await.status(), 204);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejected_uploads_on_one_http2_connection_leaves_the_node_serving() {
    let c = TestCluster::start(1).await;
    let body = vec![b'z'; 64 << 10];
    // 1,216 refusals before the body is read, 16 at a time over one h2
    // connection: more than hyper's default budget of 1,024 locally reset
    // streams per connection, which would end the connection if a refusal
    // reset its stream instead of reading the body.
    let mut refused = 0;
    for _ in 0..76 {
        let batch = (0..16).map(|_| c.put(0, "flood", body.clone(), &[("w", "9")]));
        for r in futures::future::join_all(batch).await {
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"], "invalid_consistency");
            refused += 1;
        }
    }
    assert_eq!(refused, 76 * 16);
    assert_eq!(c.put(0, "flood", "ok", &[]).await.status(), 204);
    assert_eq!(c.get(0, "flood", &[]).await.text().await.unwrap(), "ok");
    c.shutdown().await;
}

/// A conditional PUT is checked before its body is read: a client that
/// waits for `100 Continue` (curl does, over HTTP/1.1, for a large body)
/// gets the 412 without uploading the value at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_condition_is_answered_before_the_upload() {
    let c = TestCluster::start_with(Options { nodes: 1, ..Options::default() }).await;
    assert_eq!(c.put(0, "taken", "first", &[]).await.status(), 204);
    let dir = c.dir.path();
    let big = dir.join("8mib");
    std::fs::write(&big, vec![b'z'; 8 << 20]).unwrap();
    let output = Command::new("curl")
        .args(["-sS", "--http1.1", "--expect100-timeout", "30", "--cacert"])
        .arg(c.ca())
        .args(["-o"])
        .arg(dir.join("answer"))
        .args(["-w", "%{http_code} %{size_upload}", "-X", "PUT", "-H", "If-None-Match: *", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(c.key_url(0, "taken"))
        .output()
        .expect("curl runs (apt install curl)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let written = String::from_utf8_lossy(&output.stdout).to_string();
    let (status, uploaded) = written.split_once(' ').expect("status and upload size");
    assert_eq!(status, "412");
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("answer")).unwrap()).unwrap();
    assert_eq!(body["error"], "precondition_failed");
    assert_eq!(uploaded, "0", "the 8 MiB value was not uploaded");
    assert_eq!(c.get(0, "taken", &[]).await.text().await.unwrap(), "first");
    c.shutdown().await;
}
