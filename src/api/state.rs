//! What the public API's handlers share. `node` builds it and flips the
//! lifecycle flags; the API never sees the node, its listeners or its
//! workers, only the coordinator and the counters it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::metrics::ApiMetrics;
use crate::anti_entropy::AeStats;
use crate::coordinator::Coordinator;
use crate::governor::Governor;
use crate::handoff::HandoffStats;
use crate::metrics::Registry;
use crate::worker::Workers;

pub struct AppState {
    pub coordinator: Coordinator,
    pub max_value_bytes: usize,
    pub metrics: ApiMetrics,
    /// Every metric of the node, encoded at `GET /metrics`.
    pub registry: Registry,
    pub handoff: Arc<HandoffStats>,
    pub anti_entropy: Arc<AeStats>,
    /// Told the latency of every `/keys` request; background work follows it.
    pub governor: Arc<Governor>,
    /// The background workers, whose statuses `/cluster` shows.
    pub workers: Arc<Workers>,
    /// Partitions this start found unsynced (a data loss it learned of).
    pub unsynced_at_start: AtomicU64,
    /// Started: the public port's handlers may serve.
    ready: AtomicBool,
    /// Shutting down: still serving, but readiness answers 503.
    draining: AtomicBool,
}

/// What `/cluster` and the request path see of the background work.
pub struct Background {
    pub handoff: Arc<HandoffStats>,
    pub anti_entropy: Arc<AeStats>,
    pub governor: Arc<Governor>,
}

impl AppState {
    /// A state that is not ready yet (`/keys` answers 503 until [`AppState::mark_ready`]).
    pub fn new(
        coordinator: Coordinator,
        max_value_bytes: usize,
        metrics: ApiMetrics,
        registry: Registry,
        background: Background,
        workers: Arc<Workers>,
    ) -> AppState {
        let Background { handoff, anti_entropy, governor } = background;
        AppState {
            coordinator,
            max_value_bytes,
            metrics,
            registry,
            handoff,
            anti_entropy,
            governor,
            workers,
            unsynced_at_start: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
