//! The metrics of the node's calls to the application's backend: the connect and
//! publish hooks (outcomes, latency, breaker openings) and each webhook endpoint
//! (delivered, retried, dropped, latency, queued). Part of the node's one registry
//! ([`super::Metrics`]); docs/operations.md lists them.
//!
//! Label values come from fixed lists, but for `endpoint`: the `[[webhooks]]` entry's
//! name, which the operator chose (never a URL: it could hold a token).

use super::metrics::{DurationHistogram, LATENCY_BUCKETS};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The outcomes of a hook call: the label values of `hubbub_hook_calls_total{outcome}`.
pub const HOOK_OUTCOMES: [&str; 8] = [
    "allow",
    "deny",
    "accept",
    "reject",
    "rewrite",
    "timeout",
    "error",
    "breaker_open",
];

type HookLabels = [(&'static str, &'static str); 2];
type EndpointLabels = [(&'static str, String); 1];
type DropLabels = [(&'static str, String); 2];

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

fn latency_histogram() -> DurationHistogram {
    DurationHistogram::new(&WEBHOOK_BUCKETS)
}

/// Webhook POSTs take longer than a hop inside the node: up to 60 s (the longest
/// timeout allowed).
const WEBHOOK_BUCKETS: [f64; 14] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// The hook and webhook metrics of one node.
#[derive(Clone)]
pub struct HookMetrics {
    calls: Family<HookLabels, Counter>,
    connect_duration: DurationHistogram,
    publish_duration: DurationHistogram,
    breaker_opened: Family<[(&'static str, &'static str); 1], Counter>,
    delivered: Family<EndpointLabels, Counter>,
    retried: Family<EndpointLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    latency: Family<EndpointLabels, DurationHistogram, fn() -> DurationHistogram>,
    queued: Family<EndpointLabels, Gauge>,
}

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Publish,
}

impl Hook {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Publish => "publish",
        }
    }
}

impl HookMetrics {
    /// Registers every hook and webhook metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::default(),
            connect_duration: DurationHistogram::new(&LATENCY_BUCKETS),
            publish_duration: DurationHistogram::new(&LATENCY_BUCKETS),
            breaker_opened: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dropped: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queued: Family::default(),
        };
        registry.register(
            "hubbub_hook_calls",
            "Calls of the connect and publish hooks by outcome (allow, deny, accept, \
             reject, rewrite; timeout, error and breaker_open are failures, after which \
             the hook's failure policy applied)",
            metrics.calls.clone(),
        );
        registry.register(
            "hubbub_connect_hook_duration_seconds",
            "How long the connect hook took to answer (or to fail)",
            metrics.connect_duration.clone(),
        );
        registry.register(
            "hubbub_publish_hook_duration_seconds",
            "How long the publish hook took to answer (or to fail)",
            metrics.publish_duration.clone(),
        );
        registry.register(
            "hubbub_hook_breaker_opened",
            "Times a hook's circuit breaker opened",
            metrics.breaker_opened.clone(),
        );
        registry.register(
            "hubbub_webhook_delivered",
            "Webhook events delivered (a 2xx answer), per endpoint",
            metrics.delivered.clone(),
        );
        registry.register(
            "hubbub_webhook_retried",
            "Webhook POSTs sent again after a timeout, a connection error, 5xx, 408 or \
             429, per endpoint",
            metrics.retried.clone(),
        );
        registry.register(
            "hubbub_webhook_dropped",
            "Webhook events dropped, per endpoint and reason (overflow: the endpoint's \
             queue was full; refused: the endpoint answered 4xx other than 408 and 429)",
            metrics.dropped.clone(),
        );
        registry.register(
            "hubbub_webhook_duration_seconds",
            "How long one webhook POST took, per endpoint (failed ones included)",
            metrics.latency.clone(),
        );
        registry.register(
            "hubbub_webhook_queued",
            "Webhook events waiting (and in flight) per endpoint",
            metrics.queued.clone(),
        );
        for hook in [Hook::Connect, Hook::Publish] {
            let _ = metrics
                .breaker_opened
                .get_or_create(&[("hook", hook.label())]);
            for outcome in HOOK_OUTCOMES {
                let _ = metrics
                    .calls
                    .get_or_create(&[("hook", hook.label()), ("outcome", outcome)]);
            }
        }
        metrics
    }

    /// One hook call ended with `outcome` (one of [`HOOK_OUTCOMES`]) after `took`.
    pub fn hook_call(&self, hook: Hook, outcome: &'static str, took: Duration) {
        self.calls
            .get_or_create(&[("hook", hook.label()), ("outcome", outcome)])
            .inc();
        match hook {
            Hook::Connect => self.connect_duration.observe(took),
            Hook::Publish => self.publish_duration.observe(took),
        }
    }

    /// A hook refused a call at once because its breaker is open.
    pub fn hook_breaker_refused(&self, hook: Hook) {
        self.calls
            .get_or_create(&[("hook", hook.label()), ("outcome", "breaker_open")])
            .inc();
    }

    /// A hook's breaker opened.
    pub fn hook_breaker_opened(&self, hook: Hook) {
        self.breaker_opened
            .get_or_create(&[("hook", hook.label())])
            .inc();
    }

    /// The handles of one webhook endpoint, its series created at zero.
    pub fn endpoint(&self, name: &str) -> EndpointMetrics {
        let label = [("endpoint", name.to_owned())];
        let dropped = |reason: &str| {
            self.dropped
                .get_or_create(&[("endpoint", name.to_owned()), ("reason", reason.to_owned())])
                .clone()
        };
        EndpointMetrics {
            delivered: self.delivered.get_or_create(&label).clone(),
            retried: self.retried.get_or_create(&label).clone(),
            overflow: dropped("overflow"),
            refused: dropped("refused"),
            latency: self.latency.get_or_create(&label).clone(),
            queued: self.queued.get_or_create(&label).clone(),
        }
    }
}

/// One webhook endpoint's series.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    pub delivered: Counter,
    pub retried: Counter,
    pub overflow: Counter,
    pub refused: Counter,
    pub latency: DurationHistogram,
    pub queued: Gauge,
}
