//! One admission controller for all of a node's background work (Dynamo
//! §6.5): hinted handoff, anti-entropy exchanges and tombstone GC,
//! partition transfers, tree rebuilds and RocksDB compaction all draw on
//! the same *share*, which this module moves by watching the latency of
//! the foreground requests (`/keys`) the node answers.
//!
//! Why a feedback loop rather than fixed rates: a fixed rate is either too
//! low for an idle cluster (a refill that could take a minute takes an
//! hour) or too high for a loaded one (the background work takes the
//! foreground's tail). The configured byte rates stay the reference: at
//! share 1 each background task runs at its configured rate.
//!
//! The control law moves the share once per [`TICK`], from the foreground
//! p99 of the tick's window (its slowest request when the window holds
//! fewer than [`MIN_SAMPLES`]: "idle"):
//! - p99 above `target_p99_ms`: the share halves, down to [`MIN_SHARE`]
//!   (never zero: a hint flood must still drain under a sustained overload,
//!   only slowly);
//! - p99 under half the target: the share grows by a quarter;
//! - in between: it grows by [`MIN_SHARE`] (a foreground that meets its
//!   target must not leave background work at the floor after one spike);
//! - it never passes 1 while the foreground is busy, nor `idle_boost`
//!   while it is idle.
//!
//! Work a node owes for correctness — refilling partitions it lost, filling
//! partitions it newly homes — takes a pacer with a floor
//! ([`Governor::pacer_with_floor`]), so an overloaded node still finishes
//! it in a bounded time.
//!
//! Off (`enabled = false`) the share is fixed at 1: the configured rates,
//! as before the governor existed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

pub use crate::config::GovernorConfig;
use crate::metrics::{Registry, counter, gauge};
use crate::worker::Worker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// How often the share is recomputed: short enough to react within a few
/// hundred milliseconds, long enough for a p99 to mean something at a few
/// thousand requests per second.
pub const TICK: Duration = Duration::from_millis(200);
/// Fewer foreground requests than this in a tick is "idle".
pub const MIN_SAMPLES: u64 = 20;
/// The lowest share: background work slowed 64-fold, never stopped.
pub const MIN_SHARE: f64 = 1.0 / 64.0;
/// Below this share RocksDB's automatic compactions are held off (within
/// the storage's own bound on level-0 files), and they resume once the
/// share is back to [`RESUME_COMPACTIONS_FROM`].
pub const DEFER_COMPACTIONS_BELOW: f64 = 0.25;
pub const RESUME_COMPACTIONS_FROM: f64 = 0.5;
/// A [`Pacer`] sleeps at most this long at once, so a share that rose while
/// it waited takes effect within this.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Share arithmetic in fixed point, so it fits an atomic.
const ONE: f64 = 1_000_000.0;

/// The node's governor: fed by the API, read by every background task.
#[derive(Debug)]
pub struct Governor {
    config: GovernorConfig,
    /// Foreground latencies (µs) since the last tick.
    window: Mutex<Histogram<u64>>,
    /// The share × [`ONE`].
    share: AtomicU64,
    /// The last tick's estimate of the foreground p99 (µs) and its sample count.
    last_p99_us: AtomicU64,
    last_samples: AtomicU64,
    /// Ticks that cut the share (for `/metrics`).
    cuts: AtomicU64,
}

/// What `/cluster` and `/metrics` show of the governor.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GovernorView {
    pub enabled: bool,
    pub target_p99_ms: u64,
    pub share: f64,
    /// The last window's p99 of `/keys` requests (its slowest when idle).
    pub foreground_p99_ms: f64,
    pub foreground_samples: u64,
    pub cuts: u64,
}

impl Governor {
    pub fn new(config: GovernorConfig) -> Arc<Governor> {
        // 1 µs .. 60 s at 2 significant digits (~1 % resolution), a few KiB.
        let window = Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant, valid histogram bounds");
        Arc::new(Governor {
            config,
            window: Mutex::new(window),
            share: AtomicU64::new(ONE as u64),
            last_p99_us: AtomicU64::new(0),
            last_samples: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        })
    }

    /// A governor that never moves (tests, tools): share 1.
    pub fn fixed() -> Arc<Governor> {
        Governor::new(GovernorConfig { enabled: false, ..GovernorConfig::default() })
    }

    /// Records one foreground request's latency. A lock held for a
    /// histogram increment: tens of nanoseconds per request.
    pub fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000);
        if let Ok(mut window) = self.window.lock() {
            let _ = window.record(us);
        }
    }

    /// The current share: the factor every background rate is scaled by.
    pub fn share(&self) -> f64 {
        self.share.load(Ordering::Relaxed) as f64 / ONE
    }

    /// Closes the window and moves the share (see the module's doc).
    pub fn tick(&self) {
        let (samples, p99_us, max_us) = match self.window.lock() {
            Ok(mut window) => {
                let seen = (window.len(), window.value_at_quantile(0.99), window.max());
                window.reset();
                seen
            }
            Err(_) => (0, 0, 0),
        };
        let estimate = if samples < MIN_SAMPLES { max_us } else { p99_us };
        self.last_p99_us.store(estimate, Ordering::Relaxed);
        self.last_samples.store(samples, Ordering::Relaxed);
        let next = next_share(&self.config, self.share(), samples, estimate);
        if next < self.share() {
            self.cuts.fetch_add(1, Ordering::Relaxed);
        }
        self.share.store((next * ONE) as u64, Ordering::Relaxed);
    }

    pub fn view(&self) -> GovernorView {
        GovernorView {
            enabled: self.config.enabled,
            target_p99_ms: self.config.target_p99_ms,
            share: self.share(),
            foreground_p99_ms: self.last_p99_us.load(Ordering::Relaxed) as f64 / 1000.0,
            foreground_samples: self.last_samples.load(Ordering::Relaxed),
            cuts: self.cuts.load(Ordering::Relaxed),
        }
    }

    /// The `governor` worker: a tick every [`TICK`], after which
    /// `after_tick` gets the new share (the node defers RocksDB compactions
    /// with it, which this base module cannot reach).
    pub async fn run(self: Arc<Self>, worker: Worker, mut after_tick: impl FnMut(f64) + Send + 'static) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = worker.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.tick();
            after_tick(self.share());
            worker.round_done();
        }
    }

    /// Exposes the share, the foreground p99 it saw and its cuts at `/metrics`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(Collected(self.clone())));
    }

    /// A pacer for one kind of background work at `bytes_per_sec` × share.
    pub fn pacer(self: &Arc<Self>, bytes_per_sec: u64) -> Pacer {
        self.pacer_with_floor(bytes_per_sec, MIN_SHARE)
    }

    /// A pacer that never goes below `floor` × `bytes_per_sec`: for work
    /// the node owes (a refill, a transfer), which must end in bounded time.
    pub fn pacer_with_floor(self: &Arc<Self>, bytes_per_sec: u64, floor: f64) -> Pacer {
        Pacer {
            governor: self.clone(),
            bytes_per_sec: bytes_per_sec.max(1),
            floor,
            debt: Mutex::new(Debt { bytes: 0.0, at: Instant::now() }),
        }
    }

    /// Whether the share moves (`enabled`); off, it is fixed at 1.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }
}

/// The control law, pure so it is tested without clocks.
pub fn next_share(config: &GovernorConfig, share: f64, samples: u64, p99_us: u64) -> f64 {
    if !config.enabled {
        return 1.0;
    }
    let target_us = config.target_p99_ms.saturating_mul(1000);
    let idle = samples < MIN_SAMPLES;
    let ceiling = if idle { config.idle_boost.max(1) as f64 } else { 1.0 };
    let share = share.min(ceiling);
    if p99_us > target_us {
        (share / 2.0).max(MIN_SHARE)
    } else if p99_us <= target_us / 2 {
        (share * 1.25).min(ceiling)
    } else {
        (share + MIN_SHARE).min(ceiling)
    }
}

#[derive(Debug)]
struct Collected(Arc<Governor>);

impl Collector for Collected {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.view();
        gauge(
            &mut e,
            "governor_share_permille",
            "Background work's rate as a share of its configured rate, in thousandths",
            (view.share * 1000.0) as i64,
        )?;
        gauge(
            &mut e,
            "governor_foreground_p99_us",
            "Foreground /keys p99 over the governor's last window, microseconds",
            self.0.last_p99_us.load(Ordering::Relaxed) as i64,
        )?;
        counter(&mut e, "governor_cuts", "Windows in which the governor slowed background work", view.cuts)
    }
}

#[derive(Debug)]
struct Debt {
    /// Bytes spent and not yet paid for at the current rate.
    bytes: f64,
    at: Instant,
}

/// Sleeps each caller so the bytes its kind of work spends stay under its
/// rate × the governor's share. Callers that share a pacer share the rate.
#[derive(Debug)]
pub struct Pacer {
    governor: Arc<Governor>,
    bytes_per_sec: u64,
    /// The lowest share this pacer runs at.
    floor: f64,
    debt: Mutex<Debt>,
}

impl Pacer {
    fn rate(&self) -> f64 {
        self.bytes_per_sec as f64 * self.governor.share().max(self.floor)
    }

    /// How long to sleep before the debt is paid (zero: go on), after
    /// adding `bytes` to it.
    fn book(&self, bytes: f64) -> Duration {
        let rate = self.rate();
        let Ok(mut debt) = self.debt.lock() else { return Duration::ZERO };
        let now = Instant::now();
        let paid = now.saturating_duration_since(debt.at).as_secs_f64() * rate;
        // Never below zero: a correction (`charge` of a negative amount)
        // must not bank credit for a later burst.
        debt.bytes = ((debt.bytes - paid).max(0.0) + bytes).max(0.0);
        debt.at = now;
        if debt.bytes <= 0.0 {
            return Duration::ZERO;
        }
        // Bounded: a nap is at most MAX_NAP anyway.
        Duration::from_secs_f64((debt.bytes / rate.max(1.0)).min(3600.0))
    }

    /// Accounts `bytes` of background work, then waits until the rate
    /// allows it. Waits in short naps, so a share that rises (the
    /// foreground went quiet) speeds up a wait already under way.
    pub async fn spend(&self, bytes: usize) {
        let _ = self.book(bytes as f64);
        self.settle(None).await;
    }

    /// Accounts `bytes` of work without waiting: the next
    /// [`Pacer::settle`] (or `spend`) pays for it. Negative: a correction
    /// of an earlier estimate that was too high. For a node answering a
    /// peer's background request: it books an estimate, waits (bounded:
    /// the peer waits with a deadline), answers, then books the
    /// difference to the answer's real size.
    pub fn charge(&self, bytes: i64) {
        let _ = self.book(bytes as f64);
    }

    /// Waits until the work accounted so far is paid for at the rate, or
    /// at most `limit` (the debt left then paces later work).
    pub async fn settle(&self, limit: Option<Duration>) {
        let until = limit.map(|l| Instant::now() + l);
        let mut wait = self.book(0.0);
        while wait > Duration::from_micros(200) {
            let nap = match until {
                Some(until) => wait.min(until.saturating_duration_since(Instant::now())),
                None => wait,
            };
            if nap.is_zero() {
                return;
            }
            tokio::time::sleep(nap.min(MAX_NAP)).await;
            wait = self.book(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> GovernorConfig {
        GovernorConfig { enabled: true, target_p99_ms: 10, idle_boost: 8 }
    }

    /// The share after `ticks` windows of `samples` requests at `p99_us`.
    fn after(ticks: usize, mut share: f64, samples: u64, p99_us: u64) -> f64 {
        for _ in 0..ticks {
            share = next_share(&on(), share, samples, p99_us);
        }
        share
    }

    #[test]
    fn a_slow_foreground_halves_the_share_down_to_the_floor() {
        assert_eq!(after(3, 1.0, 1000, 25_000), 0.125);
        assert_eq!(after(23, 1.0, 1000, 25_000), MIN_SHARE, "slowed, never stopped");
    }

    #[test]
    fn a_busy_but_fast_foreground_brings_the_share_back_to_one_not_above() {
        let mut share = MIN_SHARE;
        let mut ticks = 0;
        while share < 1.0 {
            share = next_share(&on(), share, 1000, 2_000);
            ticks += 1;
            assert!(ticks < 100, "never recovered");
        }
        assert_eq!(share, 1.0);
        assert_eq!(next_share(&on(), share, 1000, 2_000), 1.0);
        // Between half the target and the target: a small step up, so
        // one spike does not leave the share at the floor for good.
        assert_eq!(next_share(&on(), 0.5, 1000, 7_000), 0.5 + MIN_SHARE);
        assert_eq!(after(70, MIN_SHARE, 1000, 7_000), 1.0);
    }

    #[test]
    fn an_idle_foreground_lets_background_work_run_above_its_rate() {
        let share = after(50, 1.0, 3, 400);
        assert_eq!(share, 8.0);
        // The first busy tick within target brings it back under 1.
        assert_eq!(next_share(&on(), share, 500, 400), 1.0);
        // A single slow request while nearly idle still counts.
        assert_eq!(next_share(&on(), share, 3, 40_000), 4.0);
        // Busy and slow: halved from the busy ceiling, not from the boost.
        assert_eq!(next_share(&on(), 8.0, 500, 40_000), 0.5);
    }

    #[test]
    fn off_means_the_configured_rates() {
        let off = GovernorConfig { enabled: false, ..on() };
        assert_eq!(next_share(&off, 0.25, 1000, 90_000), 1.0);
        assert_eq!(next_share(&off, 8.0, 0, 0), 1.0);
    }

    #[test]
    fn ticks_read_the_window_of_observed_latencies() {
        let g = Governor::new(on());
        for _ in 0..200 {
            g.observe(Duration::from_millis(30));
        }
        g.tick();
        assert_eq!(g.share(), 0.5);
        let view = g.view();
        assert_eq!(view.foreground_samples, 200);
        assert!((29.0..31.0).contains(&view.foreground_p99_ms), "{view:?}");
        // The window was reset: an empty tick is idle and fast.
        g.tick();
        assert_eq!(g.share(), 0.625);
        assert_eq!(g.view().cuts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_with_a_floor_keeps_its_pace_at_the_floor() {
        let g = Governor::new(on());
        for _ in 0..10 {
            for _ in 0..200 {
                g.observe(Duration::from_millis(30));
            }
            g.tick();
        }
        assert_eq!(g.share(), MIN_SHARE);
        let owed = g.pacer_with_floor(1_000_000, 0.25);
        let start = Instant::now();
        owed.spend(250_000).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(950) && took <= Duration::from_millis(1100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answering_pacer_answers_at_once_and_delays_the_next_answer() {
        let g = Governor::new(on());
        let answers = g.pacer(1_000_000);
        let start = Instant::now();
        answers.settle(None).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "nothing owed yet: the first answer goes at once");
        answers.charge(800_000);
        answers.charge(-300_000);
        assert_eq!(start.elapsed(), Duration::ZERO, "charging never waits");
        answers.settle(None).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450) && took <= Duration::from_millis(550), "{took:?}");
        // A correction larger than the debt banks no credit.
        answers.charge(-5_000_000);
        answers.charge(100_000);
        let start = Instant::now();
        answers.settle(None).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(90) && took <= Duration::from_millis(110), "{took:?}");
        // A huge answer: the next one waits at most the limit, the debt stays.
        answers.charge(60_000_000);
        let start = Instant::now();
        answers.settle(Some(Duration::from_secs(10))).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(10) && took <= Duration::from_millis(10_050), "{took:?}");
        answers.settle(Some(Duration::from_secs(10))).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(20) && took <= Duration::from_millis(20_100),
            "still owed: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_runs_at_the_rate_times_the_share() {
        let g = Governor::new(on());
        let pacer = g.pacer(1_000_000);
        let start = Instant::now();
        for _ in 0..10 {
            pacer.spend(100_000).await;
        }
        let at_one = start.elapsed();
        assert!(at_one >= Duration::from_millis(850) && at_one <= Duration::from_millis(1100), "{at_one:?}");
        for _ in 0..200 {
            g.observe(Duration::from_millis(30));
        }
        g.tick(); // share 0.5
        let start = Instant::now();
        for _ in 0..10 {
            pacer.spend(100_000).await;
        }
        let at_half = start.elapsed();
        assert!(
            at_half >= Duration::from_millis(1900) && at_half <= Duration::from_millis(2200),
            "{at_half:?}"
        );
    }
}
