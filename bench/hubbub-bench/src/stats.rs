//! What the scenarios count and measure: latency histograms, the error tally, and the
//! bench's clock.
//!
//! Latencies are microseconds in an HdrHistogram (1 µs to 60 s, two significant
//! digits: a percentile is within 1 % of the true value). Errors are counted by kind
//! in an [`ErrorTally`] that every task shares; the reports print every kind, so an
//! error is never folded into an average.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The largest latency a histogram holds, in microseconds; larger ones saturate.
const MAX_LATENCY_US: u64 = 60_000_000;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench process first asked: the clock every stamp uses, so
/// that a sender and a receiver in this process agree on it.
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The bench clock's reading at `instant` (0 for instants before the clock started).
pub fn us_at(instant: Instant) -> u64 {
    instant
        .saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_micros() as u64
}

/// A histogram of latencies in microseconds.
pub fn latency_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    /// Summarises `hist` (all zeros when it is empty).
    pub fn of(hist: &Histogram<u32>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }

    /// `p50/p90/p99/max` for a summary line.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Errors by kind, shared by every task of a scenario.
#[derive(Debug, Default)]
pub struct ErrorTally {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ErrorTally {
    /// Counts one error of `kind`.
    pub fn add(&self, kind: impl Into<String>) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(kind.into()).or_default() += 1;
        }
    }

    /// Every kind counted so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// How many errors, all kinds together.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// The counts that grew between two snapshots.
pub fn tally_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(kind, n)| {
            let grew = n - before.get(kind).copied().unwrap_or(0);
            (grew > 0).then(|| (kind.clone(), grew))
        })
        .collect()
}

/// `kind ×n, kind ×n` or `none`.
pub fn tally_line(tally: &BTreeMap<String, u64>) -> String {
    if tally.is_empty() {
        return "none".to_owned();
    }
    tally
        .iter()
        .map(|(kind, n)| format!("{kind} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_in_milliseconds() {
        let mut hist = latency_histogram();
        for us in 1..=1000u64 {
            hist.record(us * 100).unwrap();
        }
        let s = LatencySummary::of(&hist);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 50.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 1.5, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 1.5, "{s:?}");
        assert_eq!(LatencySummary::of(&latency_histogram()).count, 0);
    }

    #[test]
    fn tallies_report_growth_by_kind() {
        let tally = ErrorTally::default();
        tally.add("timeout");
        let before = tally.snapshot();
        tally.add("timeout");
        tally.add("closed");
        let grown = tally_since(&before, &tally.snapshot());
        assert_eq!(grown.get("timeout"), Some(&1));
        assert_eq!(grown.get("closed"), Some(&1));
        assert_eq!(tally.total(), 3);
        assert_eq!(tally_line(&BTreeMap::new()), "none");
    }
}
