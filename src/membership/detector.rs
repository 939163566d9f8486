//! Failure detection, local and cheap: every node keeps its own view of its
//! peers. Real RPC outcomes update it as they happen (see
//! [`Membership::observe`]); this worker only probes peers it has not heard
//! from lately, so an idle peer that dies is marked down within
//! `IDLE + PROBE_TIMEOUT` (< 2 s), and a down peer is probed with
//! exponential back-off until it answers.

use std::sync::Arc;
use std::time::Duration;

use super::Membership;
use crate::rpc::client::{PeerClient, routes};
use crate::worker::{State, Worker};

/// How often the worker looks at its peers.
pub const TICK: Duration = Duration::from_millis(250);
/// A reachable peer not heard from for this long gets a probe.
pub const IDLE: Duration = Duration::from_millis(1000);
/// Deadline of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// Longest wait between probes of a down peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Probe interval for a peer after `failures` failed calls in a row.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    TICK.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// Worst case from a peer's death to "down" for an idle peer: it goes quiet
/// for `IDLE`, the next tick comes within `TICK`, the probe times out.
pub const WORST_DETECTION: Duration = Duration::from_millis(1000 + 250 + 700);

/// The `detector` worker: runs until cancelled.
pub async fn run(membership: Arc<Membership>, peers: PeerClient, worker: Worker) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        worker.set(State::Idle);
        tokio::select! {
            () = worker.cancelled() => return,
            _ = tick.tick() => {}
        }
        worker.set(State::Busy);
        for id in &membership.peer_ids() {
            let id = id.as_str();
            let since_probe = membership.since_probe(id);
            let due = if membership.is_reachable(id) {
                membership.since_ok(id).is_none_or(|d| d >= IDLE) && since_probe >= PROBE_TIMEOUT
            } else {
                since_probe >= backoff(membership.failures(id)).max(PROBE_TIMEOUT)
            };
            if due {
                membership.probe_started(id);
                let (peers, id) = (peers.clone(), id.to_string());
                let membership = membership.clone();
                // The call's outcome updates the membership view itself.
                worker.spawn(async move {
                    if peers.call::<_, ()>(&id, routes::PING, &(), PROBE_TIMEOUT).await.is_err() {
                        membership.probe_failed(&id);
                    }
                });
            }
        }
        worker.round_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), TICK);
        assert_eq!(backoff(2), TICK * 2);
        assert_eq!(backoff(4), TICK * 8);
        assert_eq!(backoff(40), MAX_BACKOFF);
        assert_eq!(WORST_DETECTION, IDLE + TICK + PROBE_TIMEOUT);
        assert!(WORST_DETECTION < Duration::from_secs(2), "a dead idle peer is marked down within 2 s");
    }
}
