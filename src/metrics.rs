//! Prometheus metrics at `GET /metrics` (OpenMetrics text, which Prometheus
//! scrapes natively). Request metrics are recorded by a middleware on the
//! `/keys` routes, peer-call latency by the RPC client; counters the
//! subsystems already keep (read repairs, handoff, anti-entropy, integrity)
//! and RocksDB's own numbers are read at scrape time by a collector, so the
//! data path pays nothing extra for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::anti_entropy::AeStats;
use crate::handoff::HandoffStats;
use crate::storage::Storage;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub peer: String,
    pub route: &'static str,
}

pub type RpcHistograms = Family<RpcLabels, Histogram, fn() -> Histogram>;
type RequestHistograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~13 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: RequestHistograms,
    quorum_failures: Family<QuorumLabels, Counter>,
    siblings_per_read: Histogram,
    value_bytes: Histogram,
    /// Shared with the peer client, which records every call.
    pub rpc_seconds: RpcHistograms,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("quorumkv");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Client requests on /keys by operation and status", requests.clone());
        let request_seconds = RequestHistograms::new_with_constructor(latency_histogram);
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
        let rpc_seconds = RpcHistograms::new_with_constructor(latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "Latency of calls to peers by peer and route",
            rpc_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            quorum_failures,
            siblings_per_read,
            value_bytes,
            rpc_seconds,
        }
    }

    /// Creates at zero the labelled series a node will have, so the first
    /// scrape already shows every metric (a dashboard or an alert on a
    /// series that does not exist yet sees nothing, not zero): each
    /// operation's success, each quorum kind, each peer's data routes.
    pub fn prime(&self, peers: &[String]) {
        for (operation, status) in [("get", 200), ("put", 204), ("delete", 204)] {
            let labels = RequestLabels { operation, status };
            let _ = self.requests.get_or_create(&labels);
            let _ = self.request_seconds.get_or_create(&labels);
        }
        for kind in ["r", "pr", "w", "pw", "dw"] {
            let _ = self.quorum_failures.get_or_create(&QuorumLabels { kind });
        }
        use crate::rpc::client::routes;
        for peer in peers {
            for route in [routes::READ, routes::REPLICATE, routes::PUT, routes::ANTI_ENTROPY] {
                let _ = self.rpc_seconds.get_or_create(&RpcLabels { peer: peer.clone(), route });
            }
        }
    }

    /// Adds the counters and gauges read at scrape time.
    pub fn register_collector(&mut self, collector: NodeCollector) {
        self.registry.register_collector(Box::new(collector));
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

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What a scrape reads from the subsystems' own counters.
#[derive(Debug)]
pub struct NodeCollector {
    pub storage: Arc<Storage>,
    pub anti_entropy: Arc<AeStats>,
    pub handoff: Arc<HandoffStats>,
    pub read_repairs: Arc<AtomicU64>,
    /// Every other member: its hint queue is shown at zero when empty.
    pub peers: Vec<String>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ae = &self.anti_entropy;
        counter(
            &mut e,
            "read_repairs",
            "Replicas brought up to date by read repair",
            load(&self.read_repairs),
        )?;
        counter(
            &mut e,
            "corrupt_reads",
            "Stored records that failed their integrity check",
            self.storage.corrupt_reads(),
        )?;
        counter(
            &mut e,
            "hints_delivered",
            "Hints acknowledged by their home replica",
            load(&self.handoff.delivered),
        )?;
        counter(&mut e, "hints_expired", "Hints dropped undelivered", load(&self.handoff.expired))?;
        counter(&mut e, "anti_entropy_rounds", "Anti-entropy rounds run", load(&ae.rounds))?;
        counter(
            &mut e,
            "anti_entropy_keys_pulled",
            "Keys pulled from peers by anti-entropy",
            load(&ae.keys_pulled),
        )?;
        counter(
            &mut e,
            "anti_entropy_keys_pushed",
            "Keys pushed to peers by anti-entropy",
            load(&ae.keys_pushed),
        )?;
        counter(&mut e, "anti_entropy_bytes", "Anti-entropy traffic", load(&ae.bytes))?;
        counter(
            &mut e,
            "anti_entropy_strays_handed_off",
            "Copies of keys this node is no home of, handed to their homes and removed here",
            load(&ae.strays_handed_off),
        )?;
        counter(
            &mut e,
            "tombstones_reaped",
            "Tombstones removed by garbage collection",
            load(&ae.tombstones_reaped),
        )?;
        let hints = e.encode_descriptor(
            "hints_queued",
            "Hints held for each target node",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let mut hints = hints;
        let mut queued = self.storage.hint_counts();
        for peer in &self.peers {
            queued.entry(peer.clone()).or_insert(0);
        }
        for (target, count) in queued {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct Target {
                target: String,
            }
            let g = ConstGauge::new(count as i64);
            g.encode(hints.encode_family(&Target { target })?)?;
        }
        let (size, pending) = self.storage.disk_usage();
        gauge(&mut e, "rocksdb_size_bytes", "Size of the live RocksDB files", size as i64)?;
        gauge(
            &mut e,
            "rocksdb_pending_compaction_bytes",
            "RocksDB's estimate of bytes compaction still has to rewrite",
            pending as i64,
        )?;
        Ok(())
    }
}
