//! What the peer client records of every call: latency by peer and route.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::client::routes;
use crate::metrics::{Registry, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub peer: String,
    pub route: &'static str,
}

/// Latency of calls to peers; cloned into the client, which records every call.
#[derive(Clone)]
pub struct RpcMetrics {
    seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics { seconds: Family::new_with_constructor(latency_histogram) }
    }
}

impl RpcMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpc_duration_seconds",
            "Latency of calls to peers by peer and route",
            self.seconds.clone(),
        );
    }

    /// Creates each peer's data routes at zero, so the first scrape shows
    /// them (an alert on a series that does not exist yet sees nothing).
    pub fn prime(&self, peers: &[String]) {
        for peer in peers {
            for route in [routes::READ, routes::REPLICATE, routes::PUT, routes::ANTI_ENTROPY] {
                let _ = self.seconds.get_or_create(&RpcLabels { peer: peer.clone(), route });
            }
        }
    }

    pub fn observe(&self, peer: &str, route: &'static str, seconds: f64) {
        self.seconds.get_or_create(&RpcLabels { peer: peer.to_string(), route }).observe(seconds);
    }
}
