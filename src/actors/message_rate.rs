//! The per-user message rate: `rate_limit.messages_per_minute` with
//! `rate_limit.burst`, for `publish` and `direct`.
//!
//! One token bucket per user id, shared by all of that user's connections on this
//! node (a user cannot multiply its rate by opening more sockets). It lives in the
//! [`NodeContext`](super::NodeContext); Sessions check it before they forward a
//! message. Each node counts its own connections: a user connected to three nodes
//! may send three times the rate in all.
//!
//! The per-connection frame limit (`limits.frames_per_second`) is separate and still
//! applies to every frame.

use crate::config::RateLimitSettings;
use crate::protocol::{ErrorBody, ErrorCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Checks between two sweeps of buckets that are full again (users who went quiet),
/// which keeps the map from growing with every user ever seen.
const SWEEP_EVERY: u64 = 4096;

/// One token bucket per user; `None` inside when the limit is off.
pub struct MessageRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// The bucket's size (`rate_limit.burst`, at least 1).
    burst: NonZeroU32,
    checks: AtomicU64,
}

impl MessageRate {
    /// The limiter `[rate_limit]` describes; off when `messages_per_minute` is 0.
    pub fn new(settings: &RateLimitSettings) -> Self {
        let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
        let limiter = NonZeroU32::new(settings.messages_per_minute)
            .map(|rate| RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)));
        Self {
            limiter,
            burst,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one message from `user`'s bucket; the `rate_limited` error to answer
    /// with when it is empty.
    pub fn check(&self, user: &str) -> Result<(), ErrorBody> {
        self.check_n(user, 1)
    }

    /// Takes `n` messages from `user`'s bucket at once (a publish to `n` rooms), or
    /// none: the `rate_limited` error when fewer are left. `n` counts as at most the
    /// bucket's size, so a publish to more rooms than `burst` needs a full bucket
    /// rather than being refused for ever.
    pub fn check_n(&self, user: &str, n: usize) -> Result<(), ErrorBody> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let n = u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .map_or(NonZeroU32::MIN, |n| n.min(self.burst));
        let Ok(Err(not_until)) = limiter.check_key_n(&user.to_owned(), n) else {
            // Ok(Ok): taken. Err: n over the bucket's size, which the clamp rules out.
            return Ok(());
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Err(ErrorBody {
            code: ErrorCode::RateLimited,
            message: "too many messages from this user; slow down".to_owned(),
            retry_after_ms: Some((wait.as_millis() as u64).max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_minute: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            messages_per_minute: per_minute,
            burst,
            ..RateLimitSettings::default()
        }
    }

    #[test]
    fn each_user_has_a_bucket_of_burst_messages() {
        let rate = MessageRate::new(&settings(60, 3));
        for _ in 0..3 {
            assert!(rate.check("alice").is_ok());
        }
        let limited = rate.check("alice").unwrap_err();
        assert_eq!(limited.code, ErrorCode::RateLimited);
        let retry = limited.retry_after_ms.unwrap();
        assert!((1..=1_000).contains(&retry), "{retry}");
        assert!(rate.check("bob").is_ok());
    }

    #[test]
    fn a_publish_to_several_rooms_takes_one_message_per_room_or_none() {
        let rate = MessageRate::new(&settings(60, 5));
        assert!(rate.check_n("alice", 3).is_ok());
        // Two left: three more are refused and take nothing.
        assert_eq!(
            rate.check_n("alice", 3).unwrap_err().code,
            ErrorCode::RateLimited
        );
        assert!(rate.check_n("alice", 2).is_ok());
        assert!(rate.check("alice").is_err());
        // More rooms than the burst need a full bucket, not the impossible.
        let fresh = MessageRate::new(&settings(60, 5));
        assert!(fresh.check_n("carol", 16).is_ok());
        assert!(fresh.check("carol").is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let rate = MessageRate::new(&settings(0, 0));
        for _ in 0..1_000 {
            assert!(rate.check("alice").is_ok());
        }
    }
}
