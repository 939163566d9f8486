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

    #[tokio::test(start_paused = true)]
    async fn deadline_cuts_the_wait() {
        let calls = vec![call("a", 10, true), call("b", 10_000, true)];
        let g = gather(calls, Instant::now() + Duration::from_millis(100), |ok| ok.len() >= 2).await;
        assert!(g.timed_out);
        assert_eq!(g.ok.len(), 1);
    }
}
