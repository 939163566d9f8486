//! What the public API records: requests on `/keys` by operation and status,
//! their latency, failed quorums, siblings per read, value sizes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::metrics::{Registry, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `put` or `delete`.
    pub operation: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuorumLabels {
    /// Which quorum failed: `r`, `pr`, `w`, `pw` or `dw`.
    pub kind: &'static str,
}

pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    quorum_failures: Family<QuorumLabels, Counter>,
    siblings_per_read: Histogram,
    value_bytes: Histogram,
}

impl ApiMetrics {
    /// Creates the metrics in `registry`, each operation's success and each
    /// quorum kind already at zero: a dashboard or an alert on a series
    /// that does not exist yet sees nothing, not zero.
    pub fn new(registry: &mut Registry) -> ApiMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Client requests on /keys by operation and status", requests.clone());
        let request_seconds = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Latency of client requests on /keys by operation and status",
            request_seconds.clone(),
        );
        let quorum_failures = Family::<QuorumLabels, Counter>::default();
        registry.register(
            "quorum_failures",
            "Requests answered 503 because a quorum was not met",
            quorum_failures.clone(),
        );
        // Dynamo's "versions seen by a read" table, live.
        let siblings_per_read = Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0]);
        registry.register(
            "read_siblings",
            "Siblings returned by successful reads",
            siblings_per_read.clone(),
        );
        let value_bytes = Histogram::new(exponential_buckets(64.0, 4.0, 10));
        registry.register("value_size_bytes", "Size of the values written", value_bytes.clone());
        for (operation, status) in [("get", 200), ("put", 204), ("delete", 204)] {
            let labels = RequestLabels { operation, status };
            let _ = requests.get_or_create(&labels);
            let _ = request_seconds.get_or_create(&labels);
        }
        for kind in ["r", "pr", "w", "pw", "dw"] {
            let _ = quorum_failures.get_or_create(&QuorumLabels { kind });
        }
        ApiMetrics { requests, request_seconds, quorum_failures, siblings_per_read, value_bytes }
    }

    pub fn observe_request(&self, operation: &'static str, status: u16, seconds: f64) {
        let labels = RequestLabels { operation, status };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(seconds);
    }

    pub fn observe_quorum_failure(&self, kind: &'static str) {
        self.quorum_failures.get_or_create(&QuorumLabels { kind }).inc();
    }

    pub fn observe_siblings(&self, count: usize) {
        self.siblings_per_read.observe(count as f64);
    }

    pub fn observe_value(&self, bytes: usize) {
        self.value_bytes.observe(bytes as f64);
    }
}
