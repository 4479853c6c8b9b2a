//! Reading a node's `GET /metrics` with a real Prometheus text parser
//! (prometheus-parse), for the single-node and the multi-process suites (each includes
//! this file with `#[path]`).

#![allow(dead_code)]

use prometheus_parse::{Scrape, Value};

/// One scrape of a node's `/metrics`, parsed.
pub struct Metrics(Scrape);

impl Metrics {
    /// Parses an exposition; it must be complete (OpenMetrics ends it with `# EOF`).
    pub fn parse(body: &str) -> Self {
        assert!(
            body.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends in # EOF: {body}"
        );
        let scrape = Scrape::parse(body.lines().map(|line| Ok(line.to_owned())))
            .expect("the exposition parses");
        Self(scrape)
    }

    /// The value of the one sample called `name` with exactly `labels`. Counters come
    /// out untyped: prometheus-parse reads the TYPE line of `x` but not the OpenMetrics
    /// rule that its samples are called `x_total`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = (self.0.samples.iter())
            .filter(|s| s.metric == name && s.labels.len() == labels.len())
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        match found[..] {
            [one] => one,
            _ => panic!("{name}{labels:?}: {found:?} in {:#?}", self.0.samples),
        }
    }

    /// `hubbub_messages_total{direction, type}`.
    pub fn messages(&self, direction: &str, kind: &str) -> f64 {
        self.value(
            "hubbub_messages_total",
            &[("direction", direction), ("type", kind)],
        )
    }

    /// `hubbub_cluster_messages_total{direction, kind}`.
    pub fn cluster_messages(&self, direction: &str, kind: &str) -> f64 {
        self.value(
            "hubbub_cluster_messages_total",
            &[("direction", direction), ("kind", kind)],
        )
    }

    /// A histogram's observations: its `_count`, which must equal its `+Inf` bucket.
    pub fn histogram_count(&self, name: &str) -> f64 {
        let count = self.value(&format!("{name}_count"), &[]);
        let buckets = (self.0.samples.iter())
            .find_map(|s| match (&s.value, s.metric == name) {
                (Value::Histogram(buckets), true) => Some(buckets),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {name}"));
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count);
        assert_eq!(inf, Some(count), "{name}: +Inf bucket against _count");
        count
    }
}
