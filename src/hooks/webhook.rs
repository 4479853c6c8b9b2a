//! Delivery to one webhook endpoint: a queue bounded in events and in bytes, and one
//! task that POSTs what waits, in order, signed, retried until it is delivered.
//!
//! - **Queue.** [`Endpoint::push`] adds an encoded event body, or drops it when the
//!   queue holds `queue_events` events or `queue_bytes` bytes (the batch in flight
//!   included). Drops are counted (`hubbub_webhook_dropped{reason="overflow"}`) and
//!   logged once per burst: the first drop logs, and the next event that fits logs
//!   how many were dropped in between.
//! - **Batching.** The task takes what waits, up to `batch_max` events: one event is
//!   POSTed as its JSON object, several as a JSON array of them, oldest first. An
//!   endpoint that answers fast gets one event per POST; one that is slow gets bigger
//!   POSTs while events pile up.
//! - **Retries.** A timeout, a connection error, 5xx, 408 or 429 sends the same batch
//!   again after a backoff: `retry_initial_ms` doubled each time up to
//!   `retry_max_ms`, each wait drawn at random between half and all of it (jitter).
//!   It is retried until delivered: while the backend is down, events wait in the
//!   queue, and those past its bound are dropped. Any other 4xx is the backend's
//!   refusal: the batch is dropped (`reason="refused"`) and logged.
//! - **Signature.** Every POST is signed afresh ([`super::signing`]), so a retry
//!   carries the time it was sent.
//!
//! Must not know: actors, rooms, the cluster. It moves bytes.

use super::client::HttpClient;
use super::signing;
use crate::config::WebhookSettings;
use crate::telemetry::hook_metrics::EndpointMetrics;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// The largest answer body read from a webhook endpoint (it is ignored).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// One endpoint: its settings, its queue, its metrics.
pub struct Endpoint {
    pub name: String,
    settings: WebhookSettings,
    queue: Mutex<Queue>,
    wake: Notify,
    metrics: EndpointMetrics,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Arc<str>>,
    /// Bytes of `waiting` and of the batch in flight.
    bytes: u64,
    /// Events of the batch in flight (they count against `queue_events` too).
    in_flight: usize,
    /// Events dropped since the last one that fitted; > 0 while a burst lasts.
    dropping: u64,
    /// Events ever queued: the last one's position.
    pushed: u64,
    /// Events ever done with (delivered or refused), in queue order: every event at
    /// a position up to this one has left the queue.
    done: u64,
}

impl Endpoint {
    /// An endpoint for `settings`, named `name` in metrics and logs.
    pub fn new(name: String, settings: WebhookSettings, metrics: EndpointMetrics) -> Self {
        Self {
            name,
            settings,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            metrics,
        }
    }

    /// Whether this endpoint wants `event`.
    pub fn wants(&self, event: crate::config::WebhookEvent) -> bool {
        self.settings.events.contains(&event)
    }

    /// Queues one encoded event; false when it was dropped (the queue is full).
    pub fn push(&self, body: Arc<str>) -> bool {
        self.push_at(body).is_some()
    }

    /// Queues one encoded event and answers its position in the queue (see
    /// [`Endpoint::done`]); None when it was dropped (the queue is full).
    pub fn push_at(&self, body: Arc<str>) -> Option<u64> {
        let size = body.len() as u64;
        let Ok(mut queue) = self.queue.lock() else {
            return None;
        };
        let events = queue.waiting.len() + queue.in_flight;
        if events >= self.settings.queue_events || queue.bytes + size > self.settings.queue_bytes {
            if queue.dropping == 0 {
                tracing::warn!(
                    endpoint = %self.name,
                    events,
                    bytes = queue.bytes,
                    "webhook queue full: dropping events until the endpoint catches up"
                );
            }
            queue.dropping += 1;
            self.metrics.overflow.inc();
            return None;
        }
        if queue.dropping > 0 {
            tracing::warn!(endpoint = %self.name, dropped = queue.dropping, "webhook queue has room again");
            queue.dropping = 0;
        }
        queue.bytes += size;
        queue.waiting.push_back(body);
        queue.pushed += 1;
        let position = queue.pushed;
        self.metrics.queued.inc();
        drop(queue);
        self.wake.notify_one();
        Some(position)
    }

    /// How far the queue is done with: the event at a position up to this one was
    /// delivered or refused.
    pub fn done(&self) -> u64 {
        self.queue.lock().map_or(0, |q| q.done)
    }

    /// Whether nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.queue
            .lock()
            .map_or(true, |q| q.waiting.is_empty() && q.in_flight == 0)
    }

    /// The next batch: up to `batch_max` events, moved in flight. None when empty.
    fn take_batch(&self) -> Option<Vec<Arc<str>>> {
        let mut queue = self.queue.lock().ok()?;
        if queue.waiting.is_empty() {
            return None;
        }
        let n = queue.waiting.len().min(self.settings.batch_max.max(1));
        let batch: Vec<Arc<str>> = queue.waiting.drain(..n).collect();
        queue.in_flight = batch.len();
        Some(batch)
    }

    /// The batch in flight is done with (delivered or refused).
    fn finish_batch(&self, batch: &[Arc<str>]) {
        let bytes: u64 = batch.iter().map(|b| b.len() as u64).sum();
        if let Ok(mut queue) = self.queue.lock() {
            queue.in_flight = 0;
            queue.bytes = queue.bytes.saturating_sub(bytes);
            queue.done += batch.len() as u64;
        }
        self.metrics.queued.dec_by(batch.len() as i64);
    }

    /// Delivers forever (until the runtime stops).
    pub async fn run(self: Arc<Self>, client: HttpClient) {
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        loop {
            let Some(batch) = self.take_batch() else {
                self.wake.notified().await;
                continue;
            };
            let body = encode_batch(&batch);
            let mut attempt: u32 = 0;
            loop {
                let started = Instant::now();
                let timestamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let signature =
                    signing::sign(self.settings.secret.expose().as_bytes(), timestamp, &body);
                let headers = [(signing::HEADER, signature)];
                let outcome = client
                    .post_json(
                        &self.settings.url,
                        &headers,
                        body.clone(),
                        timeout,
                        MAX_ANSWER_BYTES,
                    )
                    .await;
                self.metrics.latency.observe(started.elapsed());
                if outcome.is_success() {
                    self.metrics.delivered.inc_by(batch.len() as u64);
                    break;
                }
                if !outcome.is_transient() {
                    tracing::warn!(
                        endpoint = %self.name,
                        events = batch.len(),
                        outcome = ?outcome_summary(&outcome),
                        "webhook endpoint refused a delivery; dropped"
                    );
                    self.metrics.refused.inc_by(batch.len() as u64);
                    break;
                }
                if attempt == 0 {
                    tracing::debug!(endpoint = %self.name, outcome = ?outcome_summary(&outcome), "webhook delivery failed; retrying");
                }
                self.metrics.retried.inc();
                tokio::time::sleep(backoff(
                    attempt,
                    self.settings.retry_initial_ms,
                    self.settings.retry_max_ms,
                    jitter(),
                ))
                .await;
                attempt = attempt.saturating_add(1);
            }
            self.finish_batch(&batch);
        }
    }
}

/// What a failed POST came to, for logs (never the body).
fn outcome_summary(outcome: &super::client::Outcome) -> String {
    match outcome {
        super::client::Outcome::Answered { status, .. } => format!("HTTP {status}"),
        other => other.label().to_owned(),
    }
}

/// One event as its object; several as an array of them, oldest first.
fn encode_batch(batch: &[Arc<str>]) -> Vec<u8> {
    if let [one] = batch {
        return one.as_bytes().to_vec();
    }
    let size = batch.iter().map(|b| b.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(size);
    body.push(b'[');
    for (i, event) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event.as_bytes());
    }
    body.push(b']');
    body
}

/// A number in [0, 1) for the jitter.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait before retry `attempt` (0 first): `initial · 2^attempt` capped at `max`,
/// then scaled into [½, 1] of that by `jitter` in [0, 1).
fn backoff(attempt: u32, initial_ms: u64, max_ms: u64, jitter: f64) -> Duration {
    let full = initial_ms
        .saturating_mul(1u64 << attempt.min(32))
        .min(max_ms);
    let ms = full as f64 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    Duration::from_millis(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, WebhookEvent};
    use crate::telemetry::Metrics;

    fn endpoint(adjust: impl FnOnce(&mut WebhookSettings)) -> Endpoint {
        let mut settings = WebhookSettings {
            url: "http://127.0.0.1:9/".into(),
            events: vec![WebhookEvent::Publish],
            secret: Secret::new("k"),
            ..WebhookSettings::default()
        };
        adjust(&mut settings);
        let metrics = Metrics::new();
        Endpoint::new("t".into(), settings, metrics.hooks.endpoint("t"))
    }

    #[test]
    fn the_queue_is_bounded_in_events_and_in_bytes() {
        let e = endpoint(|s| {
            s.queue_events = 3;
            s.queue_bytes = 1024;
        });
        let small: Arc<str> = Arc::from("{}");
        assert!(e.push(small.clone()));
        assert!(e.push(small.clone()));
        let batch = e.take_batch().unwrap();
        assert_eq!(batch.len(), 2);
        // In flight still counts: one more fits, not two.
        assert!(e.push(small.clone()));
        assert!(!e.push(small.clone()));
        assert_eq!(e.metrics.overflow.get(), 1);
        e.finish_batch(&batch);
        assert!(e.push(small.clone()));
        // Bytes: a body that would pass the byte bound is dropped whatever the count.
        let e = endpoint(|s| s.queue_bytes = 1024);
        let big: Arc<str> = Arc::from("x".repeat(1000));
        assert!(e.push(big.clone()));
        assert!(!e.push(big));
        assert_eq!(e.metrics.queued.get(), 1);
    }

    #[test]
    fn batches_are_objects_alone_and_arrays_together() {
        let a: Arc<str> = Arc::from(r#"{"a":1}"#);
        let b: Arc<str> = Arc::from(r#"{"b":2}"#);
        assert_eq!(encode_batch(std::slice::from_ref(&a)), br#"{"a":1}"#);
        assert_eq!(encode_batch(&[a, b]), br#"[{"a":1},{"b":2}]"#);
        let e = endpoint(|s| s.batch_max = 2);
        for _ in 0..5 {
            assert!(e.push(Arc::from("{}")));
        }
        assert_eq!(e.take_batch().unwrap().len(), 2);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        assert_eq!(backoff(0, 500, 30_000, 0.999_9), Duration::from_millis(499));
        assert_eq!(backoff(0, 500, 30_000, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(3, 500, 30_000, 0.0), Duration::from_millis(2_000));
        assert_eq!(backoff(10, 500, 30_000, 0.0), Duration::from_millis(15_000));
        assert_eq!(
            backoff(200, 500, 30_000, 0.0),
            Duration::from_millis(15_000)
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
