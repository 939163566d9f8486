//! Who is in the cluster and how reachable each member looks from here.
//!
//! Membership is a replicated, versioned [`history::History`]: the member
//! sets the cluster committed and every node's progress in moving to the
//! newest, merged by gossip ([`gossip`]) and persisted in `meta`. Callers
//! take one [`Layout`] snapshot per request or round (the history with a
//! ring per version) and ask it where data goes, so a layout change is one
//! swap here. Reachability is this node's own view, learned from the
//! outcome of real RPCs and from the light probes of [`detector`]: no node
//! is special, nothing is global.

pub mod detector;
pub mod gossip;
pub mod history;
pub mod join;
mod layout;

pub use layout::Layout;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use history::{History, MergeError};

use crate::ring::RingError;
use crate::rpc::client::Reachability;
use crate::rpc::identity::Roster;
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("layout: {0}")]
    Ring(#[from] RingError),
    #[error("{0}")]
    Merge(#[from] MergeError),
    #[error("storing the layout: {0}")]
    Storage(#[from] StorageError),
    #[error("stored layout does not decode: {0}")]
    Decode(String),
}

pub struct Membership {
    self_id: String,
    /// This node as its config describes it (what it joins as).
    me: crate::config::MemberConfig,
    layout: RwLock<Arc<Layout>>,
    /// Serialises changes: read, change, persist, then publish.
    changing: Mutex<()>,
    /// Where each change is persisted (none in unit tests).
    storage: Option<Arc<Storage>>,
    peers: RwLock<HashMap<String, Arc<PeerHealth>>>,
    /// Origin of the millisecond clocks in [`PeerHealth`].
    started: Instant,
    /// Bumped on every change, so workers can wake up on one.
    changes: tokio::sync::watch::Sender<u64>,
    /// Peers whose last call carried a layout digest unlike this node's:
    /// the gossip worker exchanges with them at once.
    behind: Mutex<std::collections::BTreeSet<String>>,
    heard: tokio::sync::Notify,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("self_id", &self.self_id).finish_non_exhaustive()
    }
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

impl PeerHealth {
    fn new() -> Arc<PeerHealth> {
        Arc::new(PeerHealth {
            reachable: AtomicBool::new(true),
            last_ok_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            last_probe_ms: AtomicU64::new(0),
        })
    }
}

impl Membership {
    /// This node's membership, from the history it stored or was given.
    pub fn new(
        me: crate::config::MemberConfig,
        history: History,
        storage: Option<Arc<Storage>>,
    ) -> Result<Membership, MembershipError> {
        let layout = Arc::new(Layout::of(history)?.seen_by(&me.id));
        if let Some(storage) = &storage {
            storage.meta().set_layout_history(&encode(layout.history()), true)?;
        }
        let (changes, _) = tokio::sync::watch::channel(0);
        let m = Membership {
            self_id: me.id.clone(),
            me,
            layout: RwLock::new(layout.clone()),
            changing: Mutex::new(()),
            storage,
            peers: RwLock::new(HashMap::new()),
            started: Instant::now(),
            changes,
            behind: Mutex::default(),
            heard: tokio::sync::Notify::new(),
        };
        m.track_peers(&layout);
        Ok(m)
    }

    /// The history stored in `storage`, if any.
    pub fn stored(storage: &Storage) -> Result<Option<History>, MembershipError> {
        match storage.meta().layout_history()? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn track_peers(&self, layout: &Layout) {
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        for m in layout.members() {
            if m.id != self.self_id && !peers.contains_key(&m.id) {
                peers.insert(m.id.clone(), PeerHealth::new());
            }
        }
    }

    fn peer(&self, id: &str) -> Option<Arc<PeerHealth>> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Changes the history with `change` (which says whether it changed
    /// anything): the result is persisted, synced, before anyone sees it.
    /// For this node's own changes (its marks, the wishes and commits it
    /// makes): it must not come back from a crash having forgotten one.
    pub fn update(&self, change: impl FnOnce(&mut History) -> bool) -> Result<bool, MembershipError> {
        self.change(change, true)
    }

    /// [`Membership::update`], persisted without a sync when `durable` is
    /// false: a merge of what peers sent, which a power cut may lose (gossip
    /// brings it again; the node's own marks, the facts others act on, are
    /// always synced, and a start after a power cut treats the node's data
    /// as unsynced anyway). Runs on a worker that hands its other tasks over
    /// while it waits for the lock or the disk: two syncs on the runtime's
    /// two workers stopped every request of a node for ~70 ms.
    fn change(
        &self,
        change: impl FnOnce(&mut History) -> bool,
        durable: bool,
    ) -> Result<bool, MembershipError> {
        crate::util::block_on_disk(|| {
            let _guard = self.changing.lock().unwrap_or_else(|e| e.into_inner());
            let previous = self.layout();
            let mut history = previous.history().clone();
            if !change(&mut history) {
                return Ok(false);
            }
            let layout = Arc::new(Layout::after(history, Some(&previous))?.seen_by(self.self_id()));
            if let Some(storage) = &self.storage {
                let jumped = layout.jumped_to(&previous, self.self_id());
                if !jumped.is_empty() {
                    // Before anyone reads with the new layout.
                    tracing::warn!(
                        partitions = jumped.len(),
                        "this node's layout jumped past versions it never filled: those partitions are unsynced"
                    );
                    let unsynced = jumped.into_iter().map(|(p, others)| (p, others.into_iter().collect()));
                    storage.unsynced().set(unsynced.collect())?;
                }
                storage.meta().set_layout_history(&encode(layout.history()), durable)?;
            }
            let (old, new) = (previous.version(), layout.version());
            if old != new {
                tracing::info!(version = new, members = layout.members().len(), "new layout version");
            }
            self.track_peers(&layout);
            *self.layout.write().unwrap_or_else(|e| e.into_inner()) = layout;
            self.changes.send_modify(|n| *n += 1);
            Ok(true)
        })
    }

    /// Merges a peer's history into this node's; true if it changed.
    pub fn merge(&self, other: &History) -> Result<bool, MembershipError> {
        self.absorb(|h| h.merge(other))
    }

    /// Merges what a peer's gossip sent ([`history::Delta`]); true if it
    /// changed this node's history.
    pub fn apply(&self, delta: &history::Delta) -> Result<bool, MembershipError> {
        self.absorb(|h| h.apply(delta))
    }

    /// Changes the history by a merge that may refuse the peer.
    fn absorb(
        &self,
        merge: impl FnOnce(&mut History) -> Result<bool, MergeError>,
    ) -> Result<bool, MembershipError> {
        let mut refused = None;
        let merged = |h: &mut History| match merge(h) {
            Ok(changed) => changed,
            Err(e) => {
                refused = Some(e);
                false
            }
        };
        let changed = self.change(merged, false)?;
        match refused {
            Some(e) => Err(e.into()),
            None => Ok(changed),
        }
    }

    /// Whether the cluster removed this node as dead (it must not serve:
    /// its copy and its layout are both behind).
    pub fn removed(&self) -> bool {
        self.layout().history().is_removed(&self.self_id)
    }

    /// Waits until some peer's call carried another layout digest, and
    /// returns those peers.
    pub async fn differing_peers(&self) -> Vec<String> {
        loop {
            let notified = self.heard.notified();
            let peers: Vec<String> =
                std::mem::take(&mut *self.behind.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_iter()
                    .collect();
            if !peers.is_empty() {
                return peers;
            }
            notified.await;
        }
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// This node's clock for [`Membership::observe`]: ms since start.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How long since a call to `id` last succeeded (`None` if never).
    pub fn since_ok(&self, id: &str) -> Option<Duration> {
        let p = self.peer(id)?;
        let last = p.last_ok_ms.load(Ordering::Relaxed);
        (last > 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// How long since the failure detector last probed `id`.
    pub fn since_probe(&self, id: &str) -> Duration {
        let last = self.peer(id).map_or(0, |p| p.last_probe_ms.load(Ordering::Relaxed));
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Notes that a probe of `id` starts now.
    pub fn probe_started(&self, id: &str) {
        if let Some(p) = self.peer(id) {
            p.last_probe_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Counts a failed probe of `id` (foreground failures do not lengthen
    /// the back-off: a burst of them is one event).
    pub fn probe_failed(&self, id: &str) {
        if let Some(p) = self.peer(id) {
            p.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failed probes of `id` since it last answered.
    pub fn failures(&self, id: &str) -> u32 {
        self.peer(id).map_or(0, |p| p.failures.load(Ordering::Relaxed))
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// This node's own entry, as configured.
    pub fn self_member(&self) -> &crate::config::MemberConfig {
        &self.me
    }

    /// The current layout: take it once per request or round and ask it
    /// everything about placement, so one operation sees one layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the outcome of a call to `id` that started at `started_ms`
    /// ([`Membership::now_ms`]): one success marks the peer up, one failure
    /// down — unless a call started later has already succeeded (a slow
    /// timeout must not overrule newer evidence).
    pub fn observe(&self, id: &str, ok: bool, started_ms: u64) {
        let Some(p) = self.peer(id) else { return };
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
        id == self.self_id || self.peer(id).is_some_and(|p| p.reachable.load(Ordering::Relaxed))
    }

    /// The other members' ids (of every version in force).
    pub fn peer_ids(&self) -> Vec<String> {
        self.layout().members().iter().filter(|m| m.id != self.self_id).map(|m| m.id.clone()).collect()
    }
}

/// The version byte of a stored history. Format 1 (before sharded
/// histories) placed partitions with another ring: a directory holding one
/// is refused rather than read with a different placement.
const HISTORY_FORMAT: u8 = 2;

/// The stored form of a history: `[format][postcard]`.
pub fn encode(history: &History) -> Vec<u8> {
    let mut out = vec![HISTORY_FORMAT];
    // Plain data: encoding cannot fail.
    out.extend(postcard::to_stdvec(history).unwrap_or_default());
    out
}

/// The inverse of [`encode`].
fn decode(bytes: &[u8]) -> Result<History, MembershipError> {
    match bytes.split_first() {
        Some((&HISTORY_FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| MembershipError::Decode(e.to_string()))
        }
        _ => Err(MembershipError::Decode(
            "the layout was stored by an earlier quorumkv, whose ring placed partitions differently; \
             start this node from a new data directory"
                .into(),
        )),
    }
}

impl crate::rpc::server::LayoutWatch for Membership {
    fn heard(&self, peer: &str, tag: &[u8]) {
        if tag != self.layout().tag().as_bytes() {
            self.behind.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.to_string());
            self.heard.notify_one();
        }
    }
}

impl Roster for Membership {
    /// Every member of a version in force, and the members leaving: one
    /// that is out of every version still hands its last copies over.
    /// A member removed as dead is not one any more, even while an older
    /// version still names it: if it comes back, it is refused.
    fn member_ids(&self) -> Vec<String> {
        let layout = self.layout();
        let history = layout.history();
        let mut ids: Vec<String> =
            layout.members().iter().filter(|m| !history.is_removed(&m.id)).map(|m| m.id.clone()).collect();
        for (id, wish) in history.wishes() {
            if wish.desire == history::Desire::Leaving && !layout.is_member(id) {
                ids.push(id.to_string());
            }
        }
        ids
    }
}

impl Reachability for Membership {
    fn clock_ms(&self) -> u64 {
        self.now_ms()
    }

    fn observe(&self, peer: &str, reached: bool, started_ms: u64) {
        Membership::observe(self, peer, reached, started_ms)
    }

    fn layout_tag(&self) -> Option<String> {
        Some(self.layout().tag().to_string())
    }

    fn url_of(&self, peer: &str) -> Option<String> {
        let layout = self.layout();
        let members = layout.members();
        members.binary_search_by(|m| m.id.as_str().cmp(peer)).ok().map(|i| members[i].peer_url.clone())
    }
}

/// A member named `id` with URLs derived from it, for the module tests.
#[cfg(test)]
pub(crate) fn test_member(id: &str) -> crate::config::MemberConfig {
    crate::config::MemberConfig {
        id: id.into(),
        client_url: format!("https://{id}:8443"),
        peer_url: format!("https://{id}:9443"),
        weight: 1,
    }
}
