//! A fault-injection switch on the internal transport: calls to a "cut"
//! peer fail at once as if its address refused the connection. Tests use it
//! for fast, deterministic partitions (a real network cut is tested too);
//! operators can ignore it. With no cut set, the cost is one atomic load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    any: Arc<AtomicBool>,
    cut: Arc<RwLock<HashSet<String>>>,
}

impl Faults {
    /// Calls from this node to `peer` fail until healed.
    pub fn cut(&self, peer: &str) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).insert(peer.to_string());
        self.any.store(true, Ordering::Release);
    }

    pub fn heal_all(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.any.store(false, Ordering::Release);
    }

    pub fn is_cut(&self, peer: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.cut.read().unwrap_or_else(|p| p.into_inner()).contains(peer)
    }
}
