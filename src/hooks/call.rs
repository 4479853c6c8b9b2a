//! One call to a deciding hook (connect or publish), the same for both: ask the
//! circuit breaker, POST the body within the timeout, read a bounded answer, parse
//! it, count it, and tell the breaker how it went. What a failure means (the failure
//! policy) is the hook's own business: [`HookCall::call`] only says why it failed.

use super::breaker::{Admission, Breaker};
use super::client::{HttpClient, Outcome};
use crate::telemetry::hook_metrics::{Hook, HookMetrics};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a hook is and how it is called.
pub struct HookCall {
    pub hook: Hook,
    pub url: String,
    pub timeout: Duration,
    /// The largest answer read.
    pub max_bytes: usize,
    pub breaker: Mutex<Breaker>,
    pub client: HttpClient,
    pub metrics: HookMetrics,
}

impl HookCall {
    /// POSTs `body`; a 2xx answer goes through `parse`, and `outcome` names the
    /// verdict in metrics. Err: why the hook gave no verdict (breaker open, timeout,
    /// an error status, a failed call, an answer `parse` refused).
    pub async fn call<T>(
        &self,
        body: Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
        outcome: impl FnOnce(&T) -> &'static str,
    ) -> Result<T, String> {
        let name = self.hook.label();
        let started = Instant::now();
        let admitted = self
            .breaker
            .lock()
            .map_or(Admission::Call, |mut b| b.admit(started));
        if admitted == Admission::Refuse {
            self.metrics.hook_breaker_refused(self.hook);
            return Err(format!("the {name} hook's circuit breaker is open"));
        }
        let answer = self
            .client
            .post_json(&self.url, &[], body, self.timeout, self.max_bytes)
            .await;
        let took = started.elapsed();
        let verdict = match &answer {
            Outcome::Answered { status, body } if (200..300).contains(status) => parse(body),
            Outcome::Answered { status, .. } => Err(format!("the {name} hook answered {status}")),
            Outcome::Timeout => Err(format!("the {name} hook did not answer in time")),
            Outcome::Failed(e) => Err(format!("the {name} hook failed: {e}")),
        };
        match verdict {
            Ok(verdict) => {
                if let Ok(mut b) = self.breaker.lock() {
                    b.success();
                }
                self.metrics.hook_call(self.hook, outcome(&verdict), took);
                Ok(verdict)
            }
            Err(reason) => {
                let label = if answer == Outcome::Timeout {
                    "timeout"
                } else {
                    "error"
                };
                self.metrics.hook_call(self.hook, label, took);
                let opened = self
                    .breaker
                    .lock()
                    .is_ok_and(|mut b| b.failure(Instant::now()));
                if opened {
                    self.metrics.hook_breaker_opened(self.hook);
                    tracing::warn!(%reason, hook = name, "hook failing: its circuit breaker opened");
                } else {
                    tracing::debug!(%reason, hook = name, "hook failed");
                }
                Err(reason)
            }
        }
    }
}
