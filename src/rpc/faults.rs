//! A fault-injection switch on the internal transport: calls to a "cut"
//! peer fail at once as if its address refused the connection; calls on a
//! route whose replies are "lost" reach the peer (which acts on them) but
//! fail afterwards as a timeout would, the outcome the caller cannot know;
//! calls on a "stalled" route get no answer until their timeout (a paused
//! or swapping peer), without reaching the peer; with "damaged fetches"
//! this node's answers to anti-entropy fetches carry values that no longer
//! match their digests (memory damage on the sending side; checked once
//! per answer). Tests use it
//! for fast, deterministic partitions (a real network cut is tested too);
//! operators can ignore it. With no cut set, the cost is one atomic load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    any: Arc<AtomicBool>,
    cut: Arc<RwLock<HashSet<String>>>,
    lost_replies: RouteSet,
    stalled: RouteSet,
    damaged_fetches: Arc<AtomicBool>,
}

/// `(peer, route)` pairs a fault applies to.
type RouteSet = Arc<RwLock<HashSet<(String, String)>>>;

impl Faults {
    /// Calls from this node to `peer` fail until healed.
    pub fn cut(&self, peer: &str) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).insert(peer.to_string());
        self.any.store(true, Ordering::Release);
    }

    /// Calls from this node to `peer` on `route` are delivered, but their
    /// replies are lost, until healed.
    pub fn lose_replies(&self, peer: &str, route: &str) {
        self.add(&self.lost_replies, peer, route);
    }

    /// Calls from this node to `peer` on `route` hang until their timeout
    /// and fail then, until healed.
    pub fn stall(&self, peer: &str, route: &str) {
        self.add(&self.stalled, peer, route);
    }

    /// In this node's answers to anti-entropy fetches, the first non-empty
    /// value of each object has a byte flipped under its old digest, until
    /// healed (tombstones go out intact).
    pub fn damage_fetch_answers(&self) {
        self.damaged_fetches.store(true, Ordering::Release);
        self.any.store(true, Ordering::Release);
    }

    pub fn damages_fetch_answers(&self) -> bool {
        self.any.load(Ordering::Acquire) && self.damaged_fetches.load(Ordering::Acquire)
    }

    pub fn stalls(&self, peer: &str, route: &str) -> bool {
        self.holds(&self.stalled, peer, route)
    }

    fn add(&self, set: &RouteSet, peer: &str, route: &str) {
        set.write().unwrap_or_else(|p| p.into_inner()).insert((peer.to_string(), route.to_string()));
        self.any.store(true, Ordering::Release);
    }

    fn holds(&self, set: &RouteSet, peer: &str, route: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && set.read().unwrap_or_else(|p| p.into_inner()).contains(&(peer.to_string(), route.to_string()))
    }

    pub fn heal_all(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.lost_replies.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.stalled.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.damaged_fetches.store(false, Ordering::Release);
        self.any.store(false, Ordering::Release);
    }

    pub fn loses_reply(&self, peer: &str, route: &str) -> bool {
        self.holds(&self.lost_replies, peer, route)
    }

    pub fn is_cut(&self, peer: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.cut.read().unwrap_or_else(|p| p.into_inner()).contains(peer)
    }
}
