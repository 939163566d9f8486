//! Push-pull gossip of the layout history, and this node's own steps in a
//! layout change. Each round the node sends its history to a few random
//! members and merges what they answer (their merge of both), so a change
//! known to one node reaches all of them in O(log n) rounds, with no node
//! in charge and no coordinator outside the cluster. Every peer call also
//! carries the caller's history digest (`rpc::client::LAYOUT_HEADER`); a
//! node that receives one unlike its own exchanges with the caller at once.
//!
//! Between rounds the node moves its own tracker marks (see
//! [`super::history`]): it acknowledges the newest version once every
//! request it started under an older one is over (`grace`: the longest a
//! request lives), marks it synced when it has nothing to receive (the
//! transfer worker marks the others), and acknowledges the read version
//! after the same grace. The lowest-id reachable member commits the
//! wishes nobody committed yet (a join that raced another).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Membership;
use super::history::{Delta, Digest, History, Summary, Tracker};
use super::join::{JoinReply, JoinRequest};
use crate::rpc::client::{PeerClient, RpcError, routes};
use crate::rpc::server::Endpoints;
use crate::worker::{State, Worker};

/// Peers each round talks to.
pub const FANOUT: usize = 2;
/// Shortest pause between two prompted exchanges with one peer.
const PROMPT_MIN: Duration = Duration::from_millis(250);
/// Deadline of one exchange.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A gossip call: open an exchange with a summary, or push what differs.
#[derive(Debug, Serialize, Deserialize)]
pub enum LayoutCall {
    Offer(Summary),
    Push(Delta),
}

/// The answer to a [`LayoutCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum LayoutAnswer {
    /// The caller's summary is this node's history: nothing to exchange.
    Same,
    /// This node's summary, and what of its history the caller lacks.
    Differ { summary: Box<Summary>, delta: Box<Delta> },
    /// A push was merged.
    Pushed,
    /// Another cluster or ring, or a malformed delta: why.
    Refused(String),
}

/// The answer to an offer, from `history` alone (no change to it): what
/// the sim and the peer endpoint both run.
pub fn answer_offer(history: &History, theirs: &Summary) -> LayoutAnswer {
    let checked = history
        .check_peer(&theirs.cluster, theirs.partitions, theirs.max_n)
        .and_then(|()| history.check_genesis(theirs.chain.first().copied()));
    if let Err(error) = checked {
        return LayoutAnswer::Refused(error.to_string());
    }
    if theirs.digest == history.digest() {
        return LayoutAnswer::Same;
    }
    LayoutAnswer::Differ { summary: Box::new(history.summary()), delta: Box::new(history.delta_for(theirs)) }
}

/// Serves `routes::LAYOUT`: answer an offer, merge a push.
pub fn register_endpoints(membership: &Arc<Membership>, endpoints: &mut Endpoints) {
    let membership = membership.clone();
    endpoints.add(routes::LAYOUT, move |from, call: LayoutCall| {
        let membership = membership.clone();
        async move {
            let answer = match call {
                LayoutCall::Offer(theirs) => answer_offer(membership.layout().history(), &theirs),
                LayoutCall::Push(delta) => match membership.apply(&delta) {
                    Ok(_) => LayoutAnswer::Pushed,
                    Err(error) => LayoutAnswer::Refused(error.to_string()),
                },
            };
            if let LayoutAnswer::Refused(why) = &answer {
                tracing::warn!(peer = %from, %why, "refusing a peer's layout");
            }
            Ok(answer)
        }
    });
}

/// When this node first saw a version (by digest): the start of its grace.
#[derive(Default)]
struct Seen {
    newest: Option<(Digest, Instant)>,
    read: Option<(Digest, Instant)>,
}

fn since(slot: &mut Option<(Digest, Instant)>, digest: Digest) -> Duration {
    match slot {
        Some((d, at)) if *d == digest => at.elapsed(),
        _ => {
            *slot = Some((digest, Instant::now()));
            Duration::ZERO
        }
    }
}

/// The `gossip` worker: runs until cancelled.
pub async fn run(
    membership: Arc<Membership>,
    peers: PeerClient,
    interval: Duration,
    grace: Duration,
    worker: Worker,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Seen::default();
    let mut last_pushed: std::collections::HashMap<String, Instant> = Default::default();
    loop {
        worker.set(State::Idle);
        tokio::select! {
            () = worker.cancelled() => return,
            _ = tick.tick() => {}
            differing = membership.differing_peers() => {
                // A peer's call carried another digest: exchange with it now
                // (at most once per peer every `PROMPT_MIN`).
                for peer in differing {
                    if last_pushed.get(&peer).is_some_and(|at| at.elapsed() < PROMPT_MIN) {
                        continue;
                    }
                    last_pushed.insert(peer.clone(), Instant::now());
                    let (membership, peers) = (membership.clone(), peers.clone());
                    worker.spawn(async move { exchange(&membership, &peers, &peer, CALL_TIMEOUT).await });
                }
                continue;
            }
        }
        worker.set(State::Busy);
        if let Err(error) = step(&membership, &mut seen, grace) {
            tracing::warn!(%error, "cannot store a layout change");
        }
        for peer in pick(&membership, FANOUT) {
            let (membership, peers) = (membership.clone(), peers.clone());
            worker.spawn(async move { exchange(&membership, &peers, &peer, CALL_TIMEOUT).await });
        }
        worker.round_done();
    }
}

/// Up to `k` random other members, reachable ones first.
fn pick(membership: &Membership, k: usize) -> Vec<String> {
    use rand::seq::SliceRandom;
    let mut ids = membership.peer_ids();
    ids.shuffle(&mut rand::rng());
    ids.sort_by_key(|id| !membership.is_reachable(id));
    ids.truncate(k);
    ids
}

/// One push-pull exchange with `peer`, within `timeout` per call: a
/// summary out, what differs back, what still differs out.
pub async fn exchange(membership: &Membership, peers: &PeerClient, peer: &str, timeout: Duration) {
    let mine = membership.layout().history().summary();
    let answer = peers.call::<_, LayoutAnswer>(peer, routes::LAYOUT, &LayoutCall::Offer(mine), timeout).await;
    match answer {
        Ok(LayoutAnswer::Same | LayoutAnswer::Pushed) => {}
        Ok(LayoutAnswer::Differ { summary, delta }) => {
            if let Err(error) = membership.apply(&delta) {
                tracing::warn!(%peer, %error, "refusing a peer's layout");
                return;
            }
            let push = membership.layout().history().delta_for(&summary);
            if push.is_empty() {
                return;
            }
            match peers.call::<_, LayoutAnswer>(peer, routes::LAYOUT, &LayoutCall::Push(push), timeout).await
            {
                Ok(LayoutAnswer::Refused(why)) => {
                    tracing::warn!(%peer, %why, "peer refused this node's layout")
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%peer, %error, "gossip push failed"),
            }
        }
        Ok(LayoutAnswer::Refused(why)) => tracing::warn!(%peer, %why, "peer refused this node's layout"),
        // Not a member in the peer's eyes (removed, or left): it may still
        // read the layout, to learn so.
        Err(RpcError::Status { status: 403, .. }) => {
            let layout = membership.layout();
            let me = membership.self_member().clone();
            let cluster = layout.history().cluster().to_string();
            let request = JoinRequest { cluster, member: me, join: false };
            if let Ok(Ok(theirs)) = peers.call::<_, JoinReply>(peer, routes::JOIN, &request, timeout).await {
                adopt(membership, peer, &theirs);
            }
        }
        Err(error) => tracing::debug!(%peer, %error, "gossip call failed"),
    }
}

/// Merges `peer`'s history, logging a refusal.
fn adopt(membership: &Membership, peer: &str, theirs: &History) {
    if let Err(error) = membership.merge(theirs) {
        tracing::warn!(%peer, %error, "refusing a peer's layout");
    }
}

/// A push-pull with every peer at once, before the node serves clients: a
/// node that was down (or restored, or wiped and started from its config)
/// must not coordinate with a layout the cluster has moved past.
pub async fn catch_up(membership: &Membership, peers: &PeerClient, timeout: Duration) {
    use futures::StreamExt;
    let all = membership.peer_ids();
    // Bounded: a large cluster is not opened thousands of connections at
    // once (an exchange with a peer that agrees is one small call).
    futures::stream::iter(
        all.into_iter().map(|p| async move { exchange(membership, peers, &p, timeout).await }),
    )
    .buffer_unordered(CATCH_UP_CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
}

/// Exchanges a catch-up or a broadcast runs at once.
const CATCH_UP_CONCURRENCY: usize = 32;

/// Pushes a change this node just made to every member at once (bounded
/// by `CALL_TIMEOUT`), rather than waiting for rounds: a node that joined
/// is then recognised by every reachable member before it serves, and a
/// leave starts moving at once. Gossip covers those not reached.
pub async fn broadcast(membership: &Membership, peers: &PeerClient) {
    catch_up(membership, peers, CALL_TIMEOUT).await;
}

/// This node's own moves (see the module docs).
fn step(membership: &Membership, seen: &mut Seen, grace: Duration) -> Result<(), super::MembershipError> {
    let layout = membership.layout();
    let history = layout.history();
    let me = membership.self_id().to_string();
    if is_committer(membership) && history.uncommitted() {
        membership.update(History::commit)?;
    }
    let layout = membership.layout();
    let history = layout.history();
    let newest = history.current().digest();
    if since(&mut seen.newest, newest) >= grace {
        membership.update(|h| mark_digest(h, Tracker::Ack, &me, newest))?;
    }
    let layout = membership.layout();
    if layout.incoming(&me).is_empty() && layout.history().all_reached(Tracker::Ack, last(layout.history())) {
        membership.update(|h| mark_digest(h, Tracker::Sync, &me, newest))?;
    }
    let layout = membership.layout();
    let history = layout.history();
    let read = history.versions()[history.read_index_for(&me)].digest();
    if since(&mut seen.read, read) >= grace {
        membership.update(|h| mark_digest(h, Tracker::SyncAck, &me, read))?;
    }
    Ok(())
}

fn last(h: &History) -> usize {
    h.versions().len() - 1
}

/// Marks `node` on `t` at the version of `digest`, if it is still in force.
pub fn mark_digest(h: &mut History, t: Tracker, node: &str, digest: Digest) -> bool {
    match h.versions().iter().position(|v| v.digest() == digest) {
        Some(index) => h.mark(t, node, index),
        None => false,
    }
}

/// Whether this node commits wishes others have not: the lowest id among
/// the newest version's members it sees as reachable (itself included).
fn is_committer(membership: &Membership) -> bool {
    let layout = membership.layout();
    let me = membership.self_id();
    layout.history().current().members().iter().map(|m| m.id.as_str()).find(|id| membership.is_reachable(id))
        == Some(me)
}
