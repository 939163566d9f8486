//! Who is in the cluster and how reachable each member looks from here.
//!
//! Membership is fixed by configuration for now; the ring is recomputed from
//! it (a pure function), so dynamic membership can later swap the member
//! list without touching callers. Reachability is this node's own view,
//! learned from the outcome of real RPCs: no node is special, nothing is
//! global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Config, MemberConfig};
use crate::ring::{Member, Ring, RingError};

#[derive(Debug)]
pub struct Membership {
    self_id: String,
    members: Vec<MemberConfig>,
    ring: Ring,
    reachable: HashMap<String, AtomicBool>,
}

impl Membership {
    pub fn from_config(config: &Config) -> Result<Membership, RingError> {
        let ring_members =
            config.members.iter().map(|m| Member { id: m.id.clone(), weight: m.weight }).collect();
        let ring = Ring::new(ring_members, config.partitions, config.max_n)?;
        let reachable = config.members.iter().map(|m| (m.id.clone(), AtomicBool::new(true))).collect();
        Ok(Membership { self_id: config.node_id.clone(), members: config.members.clone(), ring, reachable })
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn members(&self) -> &[MemberConfig] {
        &self.members
    }

    pub fn member(&self, id: &str) -> Option<&MemberConfig> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Records the outcome of a call to `id`.
    pub fn observe(&self, id: &str, ok: bool) {
        if let Some(flag) = self.reachable.get(id) {
            let was = flag.swap(ok, Ordering::Relaxed);
            if was != ok {
                tracing::info!(peer = id, reachable = ok, "peer reachability changed");
            }
        }
    }

    pub fn is_reachable(&self, id: &str) -> bool {
        id == self.self_id || self.reachable.get(id).is_some_and(|f| f.load(Ordering::Relaxed))
    }
}
