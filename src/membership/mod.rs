//! Who is in the cluster and how reachable each member looks from here.
//!
//! Membership is fixed by configuration for now: one [`Layout`] (the member
//! list and the ring computed from it, a pure function) for the node's
//! life. Callers ask a layout snapshot, so dynamic membership can later
//! swap it without touching them. Reachability is this node's own view,
//! learned from the outcome of real RPCs and from the light probes of
//! [`detector`]: no node is special, nothing is global.

pub mod detector;
mod layout;

pub use layout::Layout;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ring::RingError;
use crate::rpc::client::Reachability;

#[derive(Debug)]
pub struct Membership {
    self_id: String,
    layout: Arc<Layout>,
    peers: HashMap<String, PeerHealth>,
    /// Origin of the millisecond clocks in [`PeerHealth`].
    started: Instant,
}

/// What this node knows of one peer's health.
#[derive(Debug)]
struct PeerHealth {
    reachable: AtomicBool,
    /// When a call to the peer last succeeded (ms since `started`).
    last_ok_ms: AtomicU64,
    /// Failed probes since the last success; drives the probe back-off.
    failures: AtomicU32,
    /// When the failure detector last sent a probe (ms since `started`).
    last_probe_ms: AtomicU64,
}

impl Membership {
    pub fn from_config(config: &Config) -> Result<Membership, RingError> {
        let layout = Layout::new(1, config.members.clone(), config.partitions, config.max_n)?;
        let peers = config
            .members
            .iter()
            .filter(|m| m.id != config.node_id)
            .map(|m| {
                let health = PeerHealth {
                    reachable: AtomicBool::new(true),
                    last_ok_ms: AtomicU64::new(0),
                    failures: AtomicU32::new(0),
                    last_probe_ms: AtomicU64::new(0),
                };
                (m.id.clone(), health)
            })
            .collect();
        Ok(Membership {
            self_id: config.node_id.clone(),
            layout: Arc::new(layout),
            peers,
            started: Instant::now(),
        })
    }

    /// This node's clock for [`Membership::observe`]: ms since start.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How long since a call to `id` last succeeded (`None` if never).
    pub fn since_ok(&self, id: &str) -> Option<Duration> {
        let p = self.peers.get(id)?;
        let last = p.last_ok_ms.load(Ordering::Relaxed);
        (last > 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// How long since the failure detector last probed `id`.
    pub fn since_probe(&self, id: &str) -> Duration {
        let last = self.peers.get(id).map_or(0, |p| p.last_probe_ms.load(Ordering::Relaxed));
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Notes that a probe of `id` starts now.
    pub fn probe_started(&self, id: &str) {
        if let Some(p) = self.peers.get(id) {
            p.last_probe_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Counts a failed probe of `id` (foreground failures do not lengthen
    /// the back-off: a burst of them is one event).
    pub fn probe_failed(&self, id: &str) {
        if let Some(p) = self.peers.get(id) {
            p.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failed probes of `id` since it last answered.
    pub fn failures(&self, id: &str) -> u32 {
        self.peers.get(id).map_or(0, |p| p.failures.load(Ordering::Relaxed))
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// The current layout: take it once per request or round and ask it
    /// everything about placement, so one operation sees one layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.clone()
    }

    /// Records the outcome of a call to `id` that started at `started_ms`
    /// ([`Membership::now_ms`]): one success marks the peer up, one failure
    /// down — unless a call started later has already succeeded (a slow
    /// timeout must not overrule newer evidence).
    pub fn observe(&self, id: &str, ok: bool, started_ms: u64) {
        let Some(p) = self.peers.get(id) else { return };
        if ok {
            p.last_ok_ms.store(self.now_ms().max(1), Ordering::Relaxed);
            p.failures.store(0, Ordering::Relaxed);
        } else if started_ms < p.last_ok_ms.load(Ordering::Relaxed) {
            return;
        }
        if p.reachable.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(peer = id, reachable = ok, "peer reachability changed");
        }
    }

    pub fn is_reachable(&self, id: &str) -> bool {
        id == self.self_id || self.peers.get(id).is_some_and(|p| p.reachable.load(Ordering::Relaxed))
    }

    /// The other members' ids.
    pub fn peer_ids(&self) -> impl Iterator<Item = &str> {
        self.peers.keys().map(String::as_str)
    }
}

impl Reachability for Membership {
    fn clock_ms(&self) -> u64 {
        self.now_ms()
    }

    fn observe(&self, peer: &str, reached: bool, started_ms: u64) {
        Membership::observe(self, peer, reached, started_ms)
    }
}
