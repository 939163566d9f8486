//! Merkle-tree anti-entropy: replicas of a partition compare hash trees and
//! exchange only the keys that differ, so every replica converges without
//! client reads and without a repair command (a wiped node refills itself).
//!
//! One worker per node, one exchange at a time: every round it rebuilds
//! trees that need it (see [`crate::storage::tree`]), compares every
//! partition it shares with the next reachable peer ([`exchange`]), hands
//! off copies of keys it is no home of ([`strays`]: at start, then every
//! [`STRAY_SWEEP_ROUNDS`] rounds), and reaps tombstones that every home
//! replica holds ([`gc`]). When the layout changes, the `transfer` worker
//! fills this node's new partitions with the same exchanges
//! ([`transfer`]). All of it is paced at `anti_entropy_bytes_per_sec`
//! scaled by the node's [`crate::governor`] share.

mod endpoints;
mod exchange;
mod gc;
pub mod metrics;
pub mod recovery;
pub use endpoints::register as register_endpoints;
mod strays;
mod transfer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::RepairConfig;
use crate::governor::{Governor, Pacer};
use crate::membership::Membership;
use crate::replica::Replica;
use crate::rpc::client::{PeerClient, RpcError, routes};
use crate::rpc::error::PeerError;
use crate::storage::tree::{self, Hash};
use crate::storage::{Storage, StorageError};
use crate::worker::Worker;

/// Deadline of one anti-entropy call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Partitions whose roots travel in one call. Small, so the two sides
/// compute each root within milliseconds of each other.
const ROOTS_PER_CALL: usize = 64;
/// Wait before re-comparing roots that differed (lets in-flight writes land).
const SETTLE: Duration = Duration::from_millis(200);
/// Keys asked for in one call.
const KEYS_PER_CALL: usize = 128;
/// Bytes of objects in one pull answer or push call. Budgeted in bytes,
/// not keys: a call of 128 large objects could pass the peer's body limit
/// and stall every exchange behind it. One object larger than this
/// travels alone.
const BYTES_PER_CALL: usize = 1 << 20;
/// The root an unsynced partition answers: equal to no real root, so the
/// peer descends, and its pulls find this copy non-authoritative.
const UNSYNCED_ROOT: Hash = [0xff; 16];
/// Rounds between two stray sweeps once one found none (strays come from a
/// member-list change or a restore, both at start; the sweep reads every
/// partition's leaves, so it is not run every round).
const STRAY_SWEEP_ROUNDS: u64 = 60;
/// Pause between exchanges while this node has unsynced partitions (it
/// lost data and its answers do not count until it is refilled).
const RECOVERY_INTERVAL: Duration = Duration::from_millis(100);

/// The anti-entropy RPC (one route, one enum).
#[derive(Debug, Serialize, Deserialize)]
pub enum AeRequest {
    /// The tree root of each `(partition, from_n)`: over the keys of
    /// replica count `>= from_n`, the ones both sides of the pair hold
    /// (see [`crate::storage::tree`]).
    Roots { partitions: Vec<(u32, u8)> },
    /// The inner nodes of a partition's tree from `from_n` (`groups`
    /// empty), or the leaves under the listed inner nodes.
    Tree { partition: u32, from_n: u8, groups: Vec<u8> },
    /// `(key, entry hash)` of every key of count `>= from_n` in the listed
    /// leaf buckets.
    Keys { partition: u32, from_n: u8, buckets: Vec<u8> },
    /// The entry hash of each key (`None`: not held).
    Hashes { partition: u32, keys: Vec<Bytes> },
    /// Remove each key whose object is still a tombstone hashing to the
    /// given value (tombstone GC).
    Reap { partition: u32, keys: Vec<(Bytes, Hash)> },
    /// For each key: does this node hold a hint for it (any target)?
    Hinted { partition: u32, keys: Vec<Bytes> },
    /// This node's copies of `keys`, in order, stopping before the first
    /// that would take the answer past `budget` bytes (the first is always
    /// sent): the caller asks again from where the answer stopped.
    Fetch { partition: u32, keys: Vec<Bytes>, budget: u64 },
}

/// One key of a [`AeRequest::Fetch`] answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fetched {
    pub object: Option<crate::storage::Object>,
    /// False when the copy may lack acknowledged writes (see
    /// [`crate::replica::ReadResponse::authoritative`]).
    pub authoritative: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AeResponse {
    Hashes(Vec<Hash>),
    Keys(Vec<(Bytes, Hash)>),
    Held(Vec<Option<Hash>>),
    Reaped(usize),
    Flags(Vec<bool>),
    Objects(Vec<Fetched>),
}

#[derive(Debug, thiserror::Error)]
pub enum AeError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("peer answered {0}")]
    Peer(#[from] PeerError),
    #[error("unexpected answer to {0}")]
    Protocol(&'static str),
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Replica(#[from] crate::replica::ReplicaError),
    #[error("layout: {0}")]
    Layout(String),
}

/// Answers a peer's anti-entropy request from this node's storage.
pub fn answer(storage: &Storage, request: AeRequest) -> Result<AeResponse, StorageError> {
    // A dirty tree is wrong (a corrupt record's old hash is unknown), and
    // an unsynced partition's copy may lack writes: neither may make a peer
    // believe its copy matches. A dirty tree is rebuilt before it answers;
    // an unsynced partition answers a root that matches nothing.
    let trusted_root = |p: u32, from_n: u8| -> Result<Hash, StorageError> {
        if storage.trees().is_dirty(p) {
            storage.trees().rebuild(p)?;
        }
        if storage.unsynced().contains(p) {
            return Ok(UNSYNCED_ROOT);
        }
        storage.trees().root(p, from_n)
    };
    Ok(match request {
        AeRequest::Roots { partitions } => AeResponse::Hashes(
            partitions.iter().map(|(p, from_n)| trusted_root(*p, *from_n)).collect::<Result<_, _>>()?,
        ),
        AeRequest::Fetch { partition, keys, budget } => {
            let unsynced = storage.unsynced().contains(partition);
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for k in &keys {
                let (object, authoritative) = match storage.objects().get_found(partition, k)? {
                    crate::storage::Found::Nothing => (None, !unsynced),
                    crate::storage::Found::Object(o) => (Some(o), !unsynced),
                    crate::storage::Found::Corrupt => (None, false),
                };
                let size =
                    object.as_ref().map_or(0, |o| crate::replica::object_bytes(o) as u64) + k.len() as u64;
                if !out.is_empty() && bytes + size > budget {
                    break;
                }
                bytes += size;
                out.push(Fetched { object, authoritative });
            }
            AeResponse::Objects(out)
        }
        AeRequest::Tree { partition, from_n, groups } => {
            trusted_root(partition, from_n)?;
            let leaves = storage.trees().leaves(partition, from_n)?;
            if groups.is_empty() {
                AeResponse::Hashes(tree::inner_of(&leaves))
            } else {
                let chunks: Vec<&[Hash]> = leaves.chunks(tree::FANOUT).collect();
                let picked = groups.iter().filter_map(|g| chunks.get(*g as usize)).flat_map(|c| c.iter());
                AeResponse::Hashes(picked.copied().collect())
            }
        }
        AeRequest::Keys { partition, from_n, buckets } => AeResponse::Keys(
            storage
                .objects()
                .keys_in_buckets(partition, &buckets, from_n)?
                .into_iter()
                .map(|(k, h)| (Bytes::from(k), h))
                .collect(),
        ),
        AeRequest::Hashes { partition, keys } => AeResponse::Held(
            keys.iter()
                .map(|k| Ok(storage.objects().get(partition, k)?.map(|o| tree::entry_hash(k, &o))))
                .collect::<Result<_, StorageError>>()?,
        ),
        AeRequest::Hinted { partition, keys } => AeResponse::Flags(
            keys.iter().map(|k| storage.hints().holds(partition, k)).collect::<Result<_, StorageError>>()?,
        ),
        AeRequest::Reap { partition, keys } => {
            let mut n = 0;
            for (k, h) in &keys {
                n += usize::from(storage.objects().remove_if_unchanged(partition, k, h)?);
            }
            AeResponse::Reaped(n)
        }
    })
}

/// Counters for `/cluster` and the closing numbers of a round.
#[derive(Debug, Default)]
pub struct AeStats {
    pub rounds: AtomicU64,
    pub partitions_compared: AtomicU64,
    pub partitions_differing: AtomicU64,
    pub keys_pulled: AtomicU64,
    pub keys_pushed: AtomicU64,
    pub bytes: AtomicU64,
    pub tombstones_reaped: AtomicU64,
    pub trees_rebuilt: AtomicU64,
    /// Stray copies handed to their homes and removed here ([`strays`]).
    pub strays_handed_off: AtomicU64,
    /// Exchanges in a row that found every shared partition in agreement
    /// (reset by one that did not): "this node is in sync" once it has had
    /// one with each peer.
    pub clean_in_a_row: AtomicU64,
    /// Stray copies the last sweep could not hand off (1 after a failed
    /// sweep): 0 on a node that left means it holds nothing needed.
    pub strays_left: AtomicU64,
    /// The layout version the last completed sweep ran under.
    pub strays_swept_version: AtomicU64,
    /// Partitions this node still has to receive for the newest layout.
    pub transfer_pending: AtomicU64,
    /// Partitions received since start ([`transfer`]).
    pub transfer_done: AtomicU64,
    /// The current transfer: partitions it had to receive when it started,
    /// and when (ms since the epoch; 0: none yet). With the pending count,
    /// what the ETA is computed from.
    pub transfer_total: AtomicU64,
    pub transfer_started_ms: AtomicU64,
}

impl AeStats {
    /// Seconds until the current transfer ends at the pace it has had so
    /// far; `None` with nothing pending or nothing received yet.
    pub fn transfer_eta_secs(&self, now_ms: u64) -> Option<u64> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (pending, total, started) =
            (g(&self.transfer_pending), g(&self.transfer_total), g(&self.transfer_started_ms));
        let received = total.checked_sub(pending).filter(|&r| r > 0 && pending > 0 && started > 0)?;
        let elapsed = now_ms.saturating_sub(started);
        Some(elapsed.saturating_mul(pending) / received / 1000)
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "rounds": g(&self.rounds),
            "partitions_compared": g(&self.partitions_compared),
            "partitions_differing": g(&self.partitions_differing),
            "keys_pulled": g(&self.keys_pulled),
            "keys_pushed": g(&self.keys_pushed),
            "bytes": g(&self.bytes),
            "tombstones_reaped": g(&self.tombstones_reaped),
            "trees_rebuilt": g(&self.trees_rebuilt),
            "strays_handed_off": g(&self.strays_handed_off),
            "clean_in_a_row": g(&self.clean_in_a_row),
            "strays_left": g(&self.strays_left),
            "strays_swept_version": g(&self.strays_swept_version),
            "transfer_pending": g(&self.transfer_pending),
            "transfer_done": g(&self.transfer_done),
            "transfer_total": g(&self.transfer_total),
            "transfer_eta_secs": self.transfer_eta_secs(crate::util::now_ms()),
        })
    }
}

#[derive(Clone)]
pub struct AntiEntropy {
    replica: Replica,
    membership: Arc<Membership>,
    peers: PeerClient,
    config: RepairConfig,
    pub stats: Arc<AeStats>,
    /// One byte budget for the `anti_entropy` and `gc` workers' regular
    /// rounds: each call books its bytes and waits for its turn, so they
    /// together stay under `anti_entropy_bytes_per_sec` × the governor's share.
    throttle: Arc<Pacer>,
    /// Work this node owes (a refill of partitions it lost, a transfer of
    /// partitions it newly homes): never below [`OWED_FLOOR`] of the rate.
    owed: Arc<Pacer>,
    /// This node's answers to peers' exchanges, while the governor is on
    /// (see [`endpoints`]).
    answers: Option<Arc<Pacer>>,
    /// Periodic tree rebuilds (bytes read) while the governor is on; a
    /// rebuild of a dirty tree, which exchanges wait for, is not paced.
    rebuilds: Option<Arc<Pacer>>,
}

/// The lowest share of `anti_entropy_bytes_per_sec` a refill or transfer
/// runs at, however slow the foreground: a node missing data must not stay
/// so for hours because it is busy.
const OWED_FLOOR: f64 = 0.25;

impl AntiEntropy {
    pub fn new(
        replica: Replica,
        membership: Arc<Membership>,
        peers: PeerClient,
        config: RepairConfig,
        governor: &Arc<Governor>,
    ) -> Self {
        let rate = config.anti_entropy_bytes_per_sec;
        let throttle = Arc::new(governor.pacer(rate));
        let owed = Arc::new(governor.pacer_with_floor(rate, OWED_FLOOR));
        let rebuilds = governor.enabled().then(|| Arc::new(governor.pacer(rate)));
        let answers = governor.enabled().then(|| Arc::new(governor.pacer_with_floor(rate, OWED_FLOOR)));
        AntiEntropy {
            replica,
            membership,
            peers,
            config,
            stats: Arc::default(),
            throttle,
            owed,
            answers,
            rebuilds,
        }
    }

    /// The pacer of this node's answers to peers' exchanges (`None`: not paced).
    pub fn answers(&self) -> Option<Arc<Pacer>> {
        self.answers.clone()
    }

    fn storage(&self) -> &Arc<Storage> {
        self.replica.storage()
    }

    /// Runs a storage call on the blocking pool (scans take milliseconds).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, AeError> {
        self.replica.blocking(f).await?.map_err(AeError::from)
    }

    /// One anti-entropy call to `peer`; its bytes count against the throttle.
    async fn call(&self, peer: &str, request: AeRequest, throttle: &Pacer) -> Result<AeResponse, AeError> {
        let sent = crate::rpc::codec::encode(&request).len();
        let answer: Result<AeResponse, PeerError> =
            self.peers.call(peer, routes::ANTI_ENTROPY, &request, CALL_TIMEOUT).await?;
        let answer = answer?;
        let bytes = sent + crate::rpc::codec::encode(&answer).len();
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        throttle.spend(bytes).await;
        Ok(answer)
    }

    /// The `anti_entropy` worker: runs until cancelled. With `anti_entropy` off in the
    /// config it still refills unsynced partitions after a data loss (a
    /// correctness duty, not an optimisation), then stops.
    pub async fn run(self, worker: Worker) {
        let interval = Duration::from_millis(self.config.anti_entropy_interval_ms);
        let throttle = self.throttle.clone();
        let mut next_peer = 0usize;
        let mut next_stray_sweep = 0u64;
        let mut round_no = 0u64;
        // A layout change makes strays (a finished move's old copies): a
        // sweep follows each one.
        let mut swept_layout = (0u64, 0usize);
        loop {
            // A move may have made a partition's refill moot, or its list
            // name a node that left.
            let membership = self.membership.clone();
            if let Err(error) = self.blocking(move |s| recovery::apply_layout(s, &membership)).await {
                tracing::warn!(%error, "cannot update the unsynced partitions to the layout");
            }
            let recovering = self.storage().unsynced().all();
            if !self.config.anti_entropy && recovering.is_empty() {
                return;
            }
            let wait = if recovering.is_empty() { interval } else { RECOVERY_INTERVAL.min(interval) };
            if !worker.idle(wait).await {
                return;
            }
            let round = async {
                // While recovering, dirty trees must be right even with
                // anti-entropy off: the refill compares them.
                if self.config.anti_entropy || !recovering.is_empty() {
                    self.rebuild_trees(recovering.is_empty()).await;
                }
                let mut sorted: Vec<String> = if recovering.is_empty() {
                    self.membership.peer_ids()
                } else {
                    // Recovering: only the peers some partition still waits for.
                    let wanted: std::collections::BTreeSet<&String> = recovering.values().flatten().collect();
                    wanted.into_iter().cloned().collect()
                };
                sorted.sort();
                let reachable: Vec<&String> =
                    sorted.iter().filter(|p| self.membership.is_reachable(p)).collect();
                if !reachable.is_empty() {
                    let peer = reachable[next_peer % reachable.len()].clone();
                    next_peer = next_peer.wrapping_add(1);
                    let differing = self.stats.partitions_differing.load(Ordering::Relaxed);
                    let pace = if recovering.is_empty() { &throttle } else { &self.owed };
                    match self.exchange_with(&peer, pace).await {
                        Ok(complete) => {
                            if complete {
                                let shared: Vec<u32> =
                                    self.shared_with(&peer).iter().map(|(p, _)| *p).collect();
                                if let Err(error) = self.storage().unsynced().synced_with(&peer, &shared) {
                                    tracing::warn!(%peer, %error, "cannot record a completed refill");
                                }
                            }
                            if complete
                                && self.stats.partitions_differing.load(Ordering::Relaxed) == differing
                            {
                                self.stats.clean_in_a_row.fetch_add(1, Ordering::Relaxed);
                            } else {
                                self.stats.clean_in_a_row.store(0, Ordering::Relaxed);
                            }
                        }
                        Err(error) => {
                            self.stats.clean_in_a_row.store(0, Ordering::Relaxed);
                            tracing::warn!(%peer, %error, "anti-entropy exchange stopped");
                            worker.failed(&error);
                        }
                    }
                }
                let layout = self.membership.layout();
                let now_layout = (layout.version(), layout.history().versions().len());
                if now_layout != swept_layout {
                    next_stray_sweep = round_no;
                }
                if self.config.anti_entropy && recovering.is_empty() && round_no >= next_stray_sweep {
                    swept_layout = now_layout;
                    let swept = self.hand_off_strays(&throttle).await;
                    self.stats.strays_left.store(*swept.as_ref().unwrap_or(&1), Ordering::Relaxed);
                    if swept.is_ok() {
                        self.stats.strays_swept_version.store(now_layout.0, Ordering::Relaxed);
                    }
                    next_stray_sweep = match swept {
                        Ok(0) => round_no + STRAY_SWEEP_ROUNDS,
                        Ok(left) => {
                            tracing::info!(left, "stray copies not yet handed off; next round retries");
                            round_no + 1
                        }
                        Err(error) => {
                            tracing::warn!(%error, "stray hand-off stopped; next round retries");
                            round_no + 1
                        }
                    };
                }
                self.stats.rounds.fetch_add(1, Ordering::Relaxed);
                round_no += 1;
            };
            tokio::select! {
                () = worker.cancelled() => return,
                () = round => {}
            }
            worker.round_done();
        }
    }

    /// The `gc` worker: every anti-entropy interval, reaps the tombstones
    /// every home holds ([`gc`]); not at all with anti-entropy off.
    pub async fn run_gc(self, worker: Worker) {
        if !self.config.anti_entropy {
            return;
        }
        let interval = Duration::from_millis(self.config.anti_entropy_interval_ms);
        let throttle = self.throttle.clone();
        let mut cursors = std::collections::HashMap::new();
        while worker.idle(interval).await {
            tokio::select! {
                () = worker.cancelled() => return,
                result = self.collect_tombstones(&throttle, &mut cursors) => if let Err(error) = result {
                    tracing::warn!(%error, "tombstone collection stopped");
                    worker.failed(&error);
                }
            }
            worker.round_done();
        }
    }

    /// Rebuilds the trees marked dirty, then those older than
    /// `tree_rebuild_secs` (a few per round, oldest first; not during the
    /// 100 ms rounds of a refill, which need only the dirty ones). Both the
    /// marks and the rebuild times are persisted, so restarts postpone nothing.
    async fn rebuild_trees(&self, periodic: bool) {
        let dirty = self.storage().trees().dirty_partitions();
        let mut due = dirty.clone();
        let every = self.config.tree_rebuild_secs;
        if every > 0 && periodic && self.config.anti_entropy {
            let every_ms = every.saturating_mul(1000);
            let mine = self.membership.layout().partitions_of(self.membership.self_id());
            let now = crate::util::now_ms();
            let stale = self
                .blocking(move |s| {
                    let mut stale = Vec::new();
                    for p in mine {
                        let at = s.trees().rebuilt_at_ms(p)?;
                        if now.saturating_sub(at) >= every_ms {
                            stale.push((at, p));
                        }
                    }
                    stale.sort();
                    Ok(stale)
                })
                .await;
            match stale {
                Ok(stale) => due.extend(stale.into_iter().take(16).map(|(_, p)| p)),
                Err(error) => tracing::warn!(%error, "cannot read tree rebuild times"),
            }
        }
        for p in due {
            match self.blocking(move |s| s.trees().rebuild(p)).await {
                Ok(read) => {
                    self.stats.trees_rebuilt.fetch_add(1, Ordering::Relaxed);
                    if let Some(pacer) = self.rebuilds.as_ref().filter(|_| !dirty.contains(&p)) {
                        pacer.spend(read as usize).await;
                    }
                }
                Err(error) => tracing::warn!(partition = p, %error, "tree rebuild failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two workers share one budget: their calls queue behind each
    /// other rather than each getting the configured rate (virtual time).
    #[tokio::test(start_paused = true)]
    async fn concurrent_spenders_share_one_byte_budget() {
        let throttle = Arc::new(Governor::fixed().pacer(1_000));
        let started = tokio::time::Instant::now();
        let (a, b) = (throttle.clone(), throttle.clone());
        tokio::join!(a.spend(1_000), b.spend(1_000));
        assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
        // An idle budget does not bank: after a pause the next call waits its own share only.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let again = tokio::time::Instant::now();
        throttle.spend(500).await;
        let waited = again.elapsed();
        assert!(waited >= Duration::from_millis(499) && waited < Duration::from_millis(600), "{waited:?}");
    }
}
