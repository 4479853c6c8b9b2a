//! The token buckets a connection or a user holds: its frame rate, its joins, room
//! creations, renames and direct messages, and the direct messages a user may receive.
//!
//! governor's direct (GCRA) limiter on std's monotonic clock rather than its default
//! clock: with the default (quanta) every limiter carries the clock's calibration and
//! is 72 bytes; on `std::time::Instant` it is 40, and a connection holds five. Reading
//! std's clock costs a vDSO call, a few tens of nanoseconds, once per request checked.

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::time::{Duration, Instant};

/// One token bucket.
pub type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<Instant>>;

/// A full bucket for `quota`.
pub fn bucket(quota: Quota) -> Bucket {
    RateLimiter::direct_with_clock(quota, MonotonicClock)
}

/// Takes one token; when there is none, how long until there is.
pub fn take(bucket: &Bucket) -> Result<(), Duration> {
    bucket
        .check()
        .map_err(|not_until| not_until.wait_time_from(MonotonicClock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn a_bucket_holds_its_burst_then_says_how_long_to_wait() {
        let quota = Quota::per_second(NonZeroU32::new(2).unwrap());
        let b = bucket(quota);
        assert!(take(&b).is_ok());
        assert!(take(&b).is_ok());
        let wait = take(&b).expect_err("a third take within the second is refused");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[test]
    fn a_bucket_is_smaller_than_governors_default() {
        assert!(
            std::mem::size_of::<Bucket>()
                < std::mem::size_of::<governor::DefaultDirectRateLimiter>()
        );
    }
}
