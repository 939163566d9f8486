//! The Prometheus registry a node's metrics are collected in, and the
//! helpers subsystems build theirs with. Each subsystem owns its metrics
//! (`api::metrics` the request counters, `rpc::metrics` peer-call latency,
//! `storage`, `handoff`, `anti_entropy` and `coordinator` collectors over
//! the counters they already keep); `node` registers them all here, and
//! `GET /metrics` encodes the lot as OpenMetrics text, which Prometheus
//! scrapes natively. Counters read at scrape time cost the data path nothing.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;

/// The registry every metric of a node goes into, named `quorumkv_*`.
pub fn registry() -> Registry {
    Registry::with_prefix("quorumkv")
}

/// The OpenMetrics text of every metric in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Buckets for request and call latencies: 100 µs … ~13 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// Writes one counter read at scrape time.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes one gauge read at scrape time.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}
