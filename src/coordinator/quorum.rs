//! The one quorum helper every operation uses: send to all targets, return
//! as soon as the replies gathered so far are enough (or the deadline
//! passes, or every target has answered), and hand back the calls still in
//! flight so the caller can let them finish in the background.

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

/// One target's answer.
pub struct Reply<T> {
    pub node: String,
    /// The home the reply counts for: `node` itself, or the home a
    /// fallback stands in for (a write's quorum is counted per replica set).
    pub stands_for: String,
    /// The node is one of the key's first N home replicas (not a fallback).
    pub primary: bool,
    pub result: Result<T, crate::rpc::error::PeerError>,
}

pub type Call<T> = BoxFuture<'static, Reply<T>>;

pub struct Gathered<T> {
    /// Successful replies, in arrival order.
    pub ok: Vec<Reply<T>>,
    pub failed: Vec<Reply<T>>,
    pub timed_out: bool,
    rest: FuturesUnordered<Call<T>>,
}

impl<T> Gathered<T> {
    pub fn primaries(&self) -> usize {
        self.ok.iter().filter(|r| r.primary).count()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.ok.iter().filter_map(|r| r.result.as_ref().ok())
    }
}

impl<T: Send + 'static> Gathered<T> {
    /// Lets the calls not yet answered run to completion without anyone
    /// waiting for them (a slow replica still gets the write), on `tasks`,
    /// so shutdown waits for them.
    pub fn finish_in_background(mut self, tasks: &tokio_util::task::TaskTracker) {
        if self.rest.is_empty() {
            return;
        }
        let mut rest = std::mem::take(&mut self.rest);
        tasks.spawn(async move { while rest.next().await.is_some() {} });
    }
}

impl<T: Send + 'static> Gathered<T> {
    /// Waits (until `deadline`) for the calls still in flight and returns
    /// every successful reply, early and late.
    pub async fn all_replies(mut self, deadline: Instant) -> Vec<Reply<T>> {
        let mut ok = std::mem::take(&mut self.ok);
        let rest = &mut self.rest;
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(reply) = rest.next().await {
                if reply.result.is_ok() {
                    ok.push(reply);
                }
            }
        })
        .await;
        ok
    }
}

/// Drives `calls` until `enough(&ok_replies)` holds, all calls are done, or
/// `deadline` passes.
pub async fn gather<T: Send + 'static>(
    calls: Vec<Call<T>>,
    deadline: Instant,
    enough: impl Fn(&[Reply<T>]) -> bool,
) -> Gathered<T> {
    let mut rest: FuturesUnordered<Call<T>> = calls.into_iter().collect();
    let mut ok = Vec::with_capacity(rest.len());
    let mut failed = Vec::new();
    let mut timed_out = false;
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    while !enough(&ok) {
        tokio::select! {
            next = rest.next() => match next {
                None => break,
                Some(reply) if reply.result.is_ok() => ok.push(reply),
                Some(reply) => failed.push(reply),
            },
            () = &mut sleep => {
                timed_out = true;
                break;
            }
        }
    }
    Gathered { ok, failed, timed_out, rest }
}

/// Like [`gather`], for reads that ask only as many replicas as the quorum
/// needs: `first` are sent at once, `spares` one at a time, each when a
/// reply arrives that does not `count` (a failure, or an answer that cannot
/// stand for the replica), or when no reply came within `hedge_after` of
/// the last send (a slow replica: speculative retry). Spares never sent
/// are dropped, so they cost nothing. Returns the gathered replies and how
/// many spares were sent because of the delay alone.
pub async fn gather_hedged<T: Send + 'static>(
    first: Vec<Call<T>>,
    spares: Vec<Call<T>>,
    hedge_after: std::time::Duration,
    deadline: Instant,
    counts: impl Fn(&Reply<T>) -> bool,
    enough: impl Fn(&[Reply<T>]) -> bool,
) -> (Gathered<T>, usize) {
    let mut rest: FuturesUnordered<Call<T>> = first.into_iter().collect();
    let mut spares = spares.into_iter();
    let mut ok = Vec::with_capacity(rest.len() + spares.len());
    let mut failed = Vec::new();
    let mut timed_out = false;
    let mut speculative = 0;
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    let hedge = tokio::time::sleep(hedge_after);
    tokio::pin!(hedge);
    let mut hedging = true;
    // Nothing in flight (every first call answered without a quorum, or
    // there were none): the next spare goes at once.
    let mut send_next = |rest: &mut FuturesUnordered<Call<T>>| match spares.next() {
        Some(call) => {
            rest.push(call);
            true
        }
        None => false,
    };
    if rest.is_empty() {
        send_next(&mut rest);
    }
    while !enough(&ok) {
        tokio::select! {
            next = rest.next() => match next {
                None => break,
                Some(reply) => {
                    if !counts(&reply) && send_next(&mut rest) {
                        hedge.as_mut().reset(Instant::now() + hedge_after);
                    }
                    if reply.result.is_ok() { ok.push(reply) } else { failed.push(reply) }
                    if rest.is_empty() && !enough(&ok) && !send_next(&mut rest) {
                        break;
                    }
                }
            },
            () = &mut hedge, if hedging => {
                if send_next(&mut rest) {
                    speculative += 1;
                    hedge.as_mut().reset(Instant::now() + hedge_after);
                } else {
                    // No spare left: nothing more to hedge with.
                    hedging = false;
                }
            }
            () = &mut sleep => {
                timed_out = true;
                break;
            }
        }
    }
    (Gathered { ok, failed, timed_out, rest }, speculative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::time::Duration;

    fn call(node: &str, delay_ms: u64, ok: bool) -> Call<u32> {
        let node = node.to_string();
        async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Reply {
                stands_for: node.clone(),
                node,
                primary: true,
                result: if ok {
                    Ok(1)
                } else {
                    Err(crate::rpc::error::PeerError::QueueFull { peer: "down".into() })
                },
            }
        }
        .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn returns_at_the_first_w_successes_and_leaves_the_rest() {
        let calls = vec![call("a", 10, true), call("b", 20, true), call("c", 5_000, true)];
        let g = gather(calls, Instant::now() + Duration::from_secs(60), |ok| ok.len() >= 2).await;
        assert_eq!(g.ok.len(), 2);
        assert_eq!(g.rest.len(), 1, "the slow call is still in flight");
        assert!(!g.timed_out);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_do_not_count_and_exhaustion_stops() {
        let calls = vec![call("a", 10, false), call("b", 20, true), call("c", 30, false)];
        let g = gather(calls, Instant::now() + Duration::from_secs(60), |ok| ok.len() >= 2).await;
        assert_eq!((g.ok.len(), g.failed.len()), (1, 2));
    }

    fn two_of(ok: &[Reply<u32>]) -> bool {
        ok.len() >= 2
    }

    fn is_ok(r: &Reply<u32>) -> bool {
        r.result.is_ok()
    }

    /// Two successes wanted, hedged after 50 ms, a minute's deadline.
    async fn hedged(first: Vec<Call<u32>>, spare: Vec<Call<u32>>) -> (Gathered<u32>, usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        gather_hedged(first, spare, Duration::from_millis(50), deadline, is_ok, two_of).await
    }

    #[tokio::test(start_paused = true)]
    async fn hedged_spares_stay_unsent_when_the_first_calls_answer() {
        let first = vec![call("a", 1, true), call("b", 2, true)];
        let spare = vec![call("c", 1, true)];
        let (g, speculative) = hedged(first, spare).await;
        let asked: Vec<&str> = g.ok.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(asked, ["a", "b"]);
        assert_eq!((g.rest.len(), speculative), (0, 0), "the spare was never sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_sends_a_spare_at_once() {
        let start = Instant::now();
        let first = vec![call("a", 1, true), call("b", 2, false)];
        let spare = vec![call("c", 1, true)];
        let (g, speculative) = hedged(first, spare).await;
        assert_eq!(g.ok.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(speculative, 0);
        assert_eq!(Instant::now() - start, Duration::from_millis(3), "no wait for the hedge delay");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_is_hedged_after_the_delay() {
        let start = Instant::now();
        let first = vec![call("a", 1, true), call("b", 10_000, true)];
        let spare = vec![call("c", 5, true)];
        let (g, speculative) = hedged(first, spare).await;
        assert_eq!(g.ok.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(speculative, 1);
        assert_eq!(Instant::now() - start, Duration::from_millis(55));
        assert_eq!(g.rest.len(), 1, "the slow call is still in flight, for read repair");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_does_not_count_sends_a_spare_and_no_spares_left_stops() {
        let start = Instant::now();
        // "b" answers, but its answer does not count (a wiped replica).
        let counts = |r: &Reply<u32>| r.node != "b";
        let enough = |ok: &[Reply<u32>]| ok.iter().filter(|r| counts(r)).count() >= 2;
        let first = vec![call("a", 1, true), call("b", 2, true)];
        let spare = vec![call("c", 3, false)];
        let (g, _) = gather_hedged(
            first,
            spare,
            Duration::from_millis(50),
            start + Duration::from_secs(60),
            counts,
            enough,
        )
        .await;
        assert_eq!((g.ok.len(), g.failed.len()), (2, 1), "everyone was asked, and the quorum is not met");
        assert!(!g.timed_out);
        assert_eq!(Instant::now() - start, Duration::from_millis(5), "the spare went when b answered");
    }

    #[tokio::test(start_paused = true)]
    async fn spares_go_one_by_one_and_the_deadline_still_cuts() {
        let start = Instant::now();
        let first = vec![call("a", 10_000, true)];
        let spares = vec![call("b", 10_000, true), call("c", 10_000, true), call("d", 1, true)];
        let one = |ok: &[Reply<u32>]| !ok.is_empty();
        let (g, speculative) = gather_hedged(
            first,
            spares,
            Duration::from_millis(50),
            start + Duration::from_millis(120),
            is_ok,
            one,
        )
        .await;
        // b at 50 ms, c at 100 ms, the deadline at 120 ms before d's turn.
        assert!(g.timed_out);
        assert_eq!((g.ok.len(), g.rest.len(), speculative), (0, 3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_cuts_the_wait() {
        let calls = vec![call("a", 10, true), call("b", 10_000, true)];
        let g = gather(calls, Instant::now() + Duration::from_millis(100), |ok| ok.len() >= 2).await;
        assert!(g.timed_out);
        assert_eq!(g.ok.len(), 1);
    }
}
