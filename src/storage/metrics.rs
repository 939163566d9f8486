//! What a scrape reads from the database: integrity failures, queued hints
//! per target, RocksDB's size, compaction debt and index memory.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Storage;
use crate::metrics::{Registry, counter, gauge};

#[derive(Debug)]
struct StorageCollector {
    storage: Arc<Storage>,
    /// Every other member: its hint queue is shown at zero when empty.
    peers: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HintTarget {
    target: String,
}

/// Registers `storage`'s numbers in `registry`; `peers` are shown with an
/// empty hint queue until they have one.
pub fn register(storage: &Arc<Storage>, peers: Vec<String>, registry: &mut Registry) {
    registry.register_collector(Box::new(StorageCollector { storage: storage.clone(), peers }));
}

impl Collector for StorageCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            &mut e,
            "corrupt_reads",
            "Stored records that failed their integrity check, and values refused on writing because they did not match their digest",
            self.storage.corrupt_reads(),
        )?;
        let mut hints =
            e.encode_descriptor("hints_queued", "Hints held for each target node", None, MetricType::Gauge)?;
        let mut queued = self.storage.hints().counts();
        for peer in &self.peers {
            queued.entry(peer.clone()).or_insert(0);
        }
        for (target, count) in queued {
            ConstGauge::new(count as i64).encode(hints.encode_family(&HintTarget { target })?)?;
        }
        let usage = self.storage.disk_usage();
        gauge(&mut e, "rocksdb_size_bytes", "Size of the live RocksDB files", usage.size as i64)?;
        gauge(
            &mut e,
            "rocksdb_pending_compaction_bytes",
            "RocksDB's estimate of bytes compaction still has to rewrite",
            usage.pending_compaction as i64,
        )?;
        gauge(
            &mut e,
            "rocksdb_table_readers_bytes",
            "Memory held by open RocksDB table files for their indexes and filters (outside the block cache)",
            usage.table_readers as i64,
        )
    }
}
