//! The benchmark's measurements and their summary (text and JSON).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What one worker measured; merged at the end.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Answers by the HTTP version the connection negotiated ("HTTP/1.1",
    /// "HTTP/2.0"): what was measured, not only what was asked for.
    pub versions: BTreeMap<&'static str, u64>,
    /// Requests that got no HTTP answer at all (connect, TLS, timeout).
    pub transport_errors: u64,
    pub reads_with_siblings: u64,
    pub max_siblings: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// When the run started: samples are timed from it.
    origin: Instant,
    /// Requests that complete before this are not measured (the warm-up).
    measure_from: Instant,
    /// `(ms since origin at completion, latency µs)` of every request, for
    /// the report's throughput and latency over time (8 bytes a request).
    pub samples: Vec<(u32, u32)>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally::starting_at(Instant::now(), Duration::ZERO)
    }

    /// A tally whose samples are timed from `origin` (the run's start),
    /// measuring only what completes after `warmup`.
    pub fn starting_at(origin: Instant, warmup: Duration) -> Tally {
        Tally {
            origin,
            measure_from: origin + warmup,
            samples: Vec::new(),
            // 1 µs to 60 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid"),
            statuses: BTreeMap::new(),
            versions: BTreeMap::new(),
            transport_errors: 0,
            reads_with_siblings: 0,
            max_siblings: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    /// Past the warm-up (answers are counted).
    pub fn measuring(&self) -> bool {
        self.measure_from <= self.origin || Instant::now() >= self.measure_from
    }

    /// Records a request's latency, unless it started during the warm-up
    /// (an open-loop request queued then would carry the warm-up's waits).
    pub fn record(&mut self, latency: Duration) {
        if self.measure_from > self.origin
            && Instant::now().checked_sub(latency).is_none_or(|start| start < self.measure_from)
        {
            return;
        }
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.latency_us.record(us);
        let at = u32::try_from(self.origin.elapsed().as_millis()).unwrap_or(u32::MAX);
        self.samples.push((at, us as u32));
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        for (v, n) in &other.versions {
            *self.versions.entry(v).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.reads_with_siblings += other.reads_with_siblings;
        self.max_siblings = self.max_siblings.max(other.max_siblings);
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.samples.extend_from_slice(&other.samples);
    }

    /// Throughput and latency per second of the run, from the samples.
    pub fn timeline(&self) -> Vec<Second> {
        let mut by_second: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (at, us) in &self.samples {
            by_second.entry(at / 1000).or_default().push(*us);
        }
        by_second
            .into_iter()
            .map(|(second, mut us)| {
                us.sort_unstable();
                let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
                Second {
                    t_s: second,
                    ops: us.len() as u64,
                    p50_ms: at(0.50),
                    p99_ms: at(0.99),
                    max_ms: at(1.0),
                }
            })
            .collect()
    }

    pub fn ops(&self) -> u64 {
        self.latency_us.len()
    }

    /// Requests without an answer plus 4xx/5xx answers. A `300` (siblings)
    /// is a full answer; a 404 counts, since on a preloaded key space it
    /// means a value was lost.
    pub fn errors(&self) -> u64 {
        self.transport_errors + self.statuses.iter().filter(|(s, _)| **s >= 400).map(|(_, n)| n).sum::<u64>()
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// One second of a run: requests completed in it and their latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    pub t_s: u32,
    pub ops: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The latency percentile curve of a whole run (an HDR percentile plot):
/// `(percentile, ms)` at points that crowd towards 100 %.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut curve: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to() as f64 / 1000.0))
        .collect();
    curve.dedup_by(|a, b| a.0 == b.0);
    curve
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub workload: String,
    pub nodes: usize,
    pub concurrency: usize,
    pub protocol: String,
    pub value_size: String,
    pub keys: u64,
    pub distribution: String,
    pub consistency: String,
    pub open_loop_rate: Option<f64>,
    pub key_prefix: String,
    pub elapsed_s: f64,
    /// Requests sent, errors included.
    pub ops: u64,
    /// Successful requests per second (errors left out).
    pub ops_per_sec: f64,
    pub latency: Latency,
    pub statuses: BTreeMap<String, u64>,
    /// Answers by negotiated HTTP version (see `Tally::versions`).
    #[serde(default)]
    pub http_versions: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub errors: u64,
    /// The `--max-errors` the run was held to.
    pub max_errors: u64,
    /// At most `max_errors` errors, and at least one request done.
    pub passed: bool,
    pub reads_with_siblings: u64,
    pub max_siblings: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Per second of the run (the report's throughput and latency over time).
    #[serde(default)]
    pub timeline: Vec<Second>,
    /// `(percentile, ms)`: the run's latency percentile curve.
    #[serde(default)]
    pub percentiles: Vec<(f64, f64)>,
}

impl Summary {
    pub fn latency_of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    pub fn text(&self) -> String {
        let l = &self.latency;
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
        let versions: Vec<String> = self.http_versions.iter().map(|(v, n)| format!("{v}:{n}")).collect();
        let verdict = if self.passed {
            String::new()
        } else {
            format!(
                "FAILED: {} errors of {} requests (--max-errors {})\n",
                self.errors, self.ops, self.max_errors
            )
        };
        format!(
            "{verdict}{scenario}: {ops} ops in {el:.1}s = {rate:.0} ops/s ({workload}, {conc} conns, {proto}, value {vs} B, {keys} keys {dist}, {cons})\n  latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}  mean {mean:.2}\n  statuses: {st}  over: {vers}  transport errors: {te}  errors: {err}\n  siblings: {rws} reads saw >1 (max {ms})  bytes: sent {bs}, received {br}",
            verdict = verdict,
            scenario = self.scenario,
            ops = self.ops,
            el = self.elapsed_s,
            rate = self.ops_per_sec,
            workload = self.workload,
            conc = self.concurrency,
            proto = self.protocol,
            vs = self.value_size,
            keys = self.keys,
            dist = self.distribution,
            cons = self.consistency,
            p50 = l.p50_ms,
            p90 = l.p90_ms,
            p99 = l.p99_ms,
            p999 = l.p999_ms,
            max = l.max_ms,
            mean = l.mean_ms,
            st = if statuses.is_empty() { "-".into() } else { statuses.join(" ") },
            vers = if versions.is_empty() { "-".into() } else { versions.join(" ") },
            te = self.transport_errors,
            err = self.errors,
            rws = self.reads_with_siblings,
            ms = self.max_siblings,
            bs = self.bytes_sent,
            br = self.bytes_received,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_percentiles() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for i in 1..=100 {
            a.record(Duration::from_micros(i * 10));
        }
        b.record(Duration::from_millis(50));
        b.statuses.insert(503, 1);
        a.statuses.insert(204, 100);
        a.merge(&b);
        assert_eq!(a.ops(), 101);
        assert_eq!(a.errors(), 1);
        let l = Summary::latency_of(&a.latency_us);
        assert!((l.p50_ms - 0.51).abs() < 0.02, "{l:?}");
        assert!((l.max_ms - 50.0).abs() < 0.1, "{l:?}");
    }
}
