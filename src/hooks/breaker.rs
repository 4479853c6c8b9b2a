//! A circuit breaker for one hook: a pure state machine, no clock of its own and no
//! I/O (the caller hands in `now`).
//!
//! Closed: every call goes through; `failures` failures in a row open it. Open: no
//! call goes through until `cooldown` has passed; then it is half-open and lets one
//! call through to try. That call's success closes it; its failure opens it again for
//! another cool-down. While the trial call is out, other calls are refused.

use std::time::{Duration, Instant};

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Make the call.
    Call,
    /// Do not: the breaker is open (apply the failure policy at once).
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out.
    HalfOpen,
}

/// The breaker of one hook.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` failures in a row (0: never).
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: State::Closed { failures: 0 },
        }
    }

    /// Whether a call may be made at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Call,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Admission::Call
            }
            State::Open { .. } | State::HalfOpen => Admission::Refuse,
        }
    }

    /// The call admitted last succeeded.
    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// The call admitted last failed at `now`. True when this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { failures } => {
                let failures = failures + 1;
                if self.threshold > 0 && failures >= self.threshold {
                    self.state = State::Open {
                        until: now + self.cooldown,
                    };
                    true
                } else {
                    self.state = State::Closed { failures };
                    false
                }
            }
            State::HalfOpen | State::Open { .. } => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
        }
    }

    /// Whether calls are being refused (open, or half-open with its trial out).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOL);
        assert_eq!(b.admit(t0), Admission::Call);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        // A success in between starts the count again.
        b.success();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(!b.is_open());
        assert!(b.failure(t0), "the third failure in a row opens it");
        assert!(b.is_open());
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), Admission::Refuse);
    }

    #[test]
    fn half_open_after_the_cooldown_lets_one_trial_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        assert!(b.failure(t0));
        assert_eq!(
            b.admit(t0 + COOL - Duration::from_millis(1)),
            Admission::Refuse
        );
        let later = t0 + COOL;
        assert_eq!(b.admit(later), Admission::Call, "the trial call");
        assert_eq!(
            b.admit(later),
            Admission::Refuse,
            "only one trial at a time"
        );
        // The trial fails: open for another cool-down from then.
        assert!(b.failure(later));
        assert_eq!(b.admit(later + COOL / 2), Admission::Refuse);
        assert_eq!(b.admit(later + COOL), Admission::Call);
        b.success();
        assert!(!b.is_open());
        assert_eq!(b.admit(later + COOL), Admission::Call);
        assert_eq!(b.admit(later + COOL), Admission::Call);
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, COOL);
        for _ in 0..100 {
            assert!(!b.failure(t0));
        }
        assert_eq!(b.admit(t0), Admission::Call);
    }
}
