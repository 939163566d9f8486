//! Anti-entropy's and GC's counters, read at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::AeStats;
use crate::metrics::{Registry, counter};

#[derive(Debug)]
struct AeCollector(Arc<AeStats>);

/// Registers `stats` in `registry`.
pub fn register(stats: &Arc<AeStats>, registry: &mut Registry) {
    registry.register_collector(Box::new(AeCollector(stats.clone())));
}

impl Collector for AeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ae = &self.0;
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
        )
    }
}
