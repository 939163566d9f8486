//! How long a read waits for a replica before asking a spare one
//! (speculative retry, Cassandra's `speculative_retry = '99p'`).
//!
//! A read asks only as many replicas as its quorum needs (see
//! [`crate::config::ReadFanout`]). A replica that is paused, swapping or behind a
//! full queue would then hold the read until the failure detector gives up
//! on it, so a reply slower than nearly every recent one sends the next
//! replica the request too. The delay is the p99 of this node's recent
//! replica reads: under load it grows with the load (and hedges stay ~1 %
//! of reads, never a storm). It is capped, so a spike of stalled replies
//! cannot push it past a request's deadline (a stalled replica would then
//! fail reads the spare could answer), and a quiet window (too few reads
//! to say anything) moves it halfway back to its initial value.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Replica reads are summed over this long before the delay moves.
const WINDOW: Duration = Duration::from_secs(1);
/// Fewer reads than this in a window say nothing about a p99: the delay stays.
const MIN_SAMPLES: u64 = 50;
/// Never hedge sooner: a reply this fast is never "slow".
const FLOOR: Duration = Duration::from_millis(2);
/// Never wait longer for a replica before asking a spare.
const CEILING: Duration = Duration::from_millis(250);
/// Before any window is full (a node just started, or quiet).
const INITIAL: Duration = Duration::from_millis(20);

pub struct HedgeDelay {
    window: Mutex<Window>,
    delay_us: AtomicU64,
}

struct Window {
    latencies: Histogram<u64>,
    started: Instant,
}

impl Default for HedgeDelay {
    fn default() -> Self {
        let latencies =
            Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant, valid histogram bounds");
        HedgeDelay {
            window: Mutex::new(Window { latencies, started: Instant::now() }),
            delay_us: AtomicU64::new(INITIAL.as_micros() as u64),
        }
    }
}

impl HedgeDelay {
    /// How long a read waits for its first replicas before a spare.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Records how long one replica read took (a reply, not a failure: a
    /// refused connection is not slow, it sends the spare at once).
    pub fn record(&self, took: Duration) {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.latencies.saturating_record(took.as_micros().max(1) as u64);
        if now.duration_since(w.started) < WINDOW {
            return;
        }
        let next = if w.latencies.len() >= MIN_SAMPLES {
            w.latencies.value_at_quantile(0.99)
        } else {
            let initial = INITIAL.as_micros() as u64;
            self.delay_us.load(Ordering::Relaxed).midpoint(initial)
        };
        let (floor, ceiling) = (FLOOR.as_micros() as u64, CEILING.as_micros() as u64);
        self.delay_us.store(next.clamp(floor, ceiling), Ordering::Relaxed);
        w.latencies.reset();
        w.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_delay_follows_the_p99_of_the_last_full_window() {
        let d = HedgeDelay::default();
        assert_eq!(d.delay(), INITIAL);
        for i in 0..1000u64 {
            // 99 % of reads take 1–3 ms, 1 % take 40 ms.
            let ms = if i % 100 == 0 { 40 } else { 1 + i % 3 };
            d.record(Duration::from_millis(ms));
        }
        assert_eq!(d.delay(), INITIAL, "the window is not over yet");
        tokio::time::advance(WINDOW).await;
        d.record(Duration::from_millis(1));
        let p99 = d.delay();
        assert!(p99 >= Duration::from_millis(3) && p99 < Duration::from_millis(4), "{p99:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_never_goes_below_the_floor_and_a_quiet_window_moves_it_back() {
        let d = HedgeDelay::default();
        for _ in 0..100 {
            d.record(Duration::from_micros(100));
        }
        tokio::time::advance(WINDOW).await;
        d.record(Duration::from_micros(100));
        assert_eq!(d.delay(), FLOOR, "fast replicas: hedged at the floor, not at 100 µs");
        for _ in 0..10 {
            d.record(Duration::from_millis(500));
        }
        tokio::time::advance(WINDOW).await;
        d.record(Duration::from_millis(500));
        assert_eq!(d.delay(), (FLOOR + INITIAL) / 2, "eleven reads: halfway back to the initial delay");
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_replies_cannot_push_the_delay_past_the_ceiling_for_good() {
        let d = HedgeDelay::default();
        for _ in 0..100 {
            d.record(Duration::from_secs(6));
        }
        tokio::time::advance(WINDOW).await;
        d.record(Duration::from_secs(6));
        assert_eq!(d.delay(), CEILING);
        // Then quiet: a window or two of a few reads brings it back down.
        for _ in 0..20 {
            tokio::time::advance(WINDOW).await;
            d.record(Duration::from_millis(1));
        }
        assert!(d.delay() < INITIAL + Duration::from_millis(1), "{:?}", d.delay());
    }
}
