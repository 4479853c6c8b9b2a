//! Per-connection limits on the requests that make a node do work for others:
//! joins and leaves (`limits.joins_per_second`), joins that bring a room into being
//! (`limits.room_creations_per_minute`), renames (`limits.renames_per_minute`) and
//! direct messages (`limits.directs_per_second`).
//!
//! Owned by one Session each: a join or leave is a presence change fanned out to every
//! member of the room and every node holding it, a rename one to every room the user
//! is in, a new room an actor; a connection that sends them in a loop is answered
//! `rate_limited` (with `retry_after_ms`) and stays open. Each refusal is counted in
//! `hubbub_limit_refusals{limit}`. A limit set to 0 is off.
//!
//! The bound per receiving user for direct messages lives in Presence, which sees
//! every sender at once.

use super::bucket::{self, Bucket};
use crate::config::LimitSettings;
use crate::protocol::{ErrorBody, ErrorCode};
use crate::telemetry::Metrics;
use governor::Quota;
use std::num::NonZeroU32;
use std::sync::Arc;

/// Renames one connection may make at once before `renames_per_minute` applies.
const RENAME_BURST: u32 = 5;

/// One connection's buckets; `None` where the limit is off.
pub struct ChurnLimits {
    joins: Option<Bucket>,
    creations: Option<Bucket>,
    renames: Option<Bucket>,
    directs: Option<Bucket>,
    metrics: Arc<Metrics>,
}

impl ChurnLimits {
    /// The buckets `[limits]` describes, full.
    pub fn new(limits: &LimitSettings, metrics: Arc<Metrics>) -> Self {
        // A reconnecting client rejoins every room it was in at once.
        let join_burst = u32::try_from(limits.max_rooms_per_session).unwrap_or(u32::MAX);
        Self {
            joins: bucket(limits.joins_per_second, |rate| {
                Quota::per_second(rate).allow_burst(rate.max(nonzero(join_burst)))
            }),
            creations: bucket(limits.room_creations_per_minute, Quota::per_minute),
            renames: bucket(limits.renames_per_minute, |rate| {
                Quota::per_minute(rate).allow_burst(rate.min(nonzero(RENAME_BURST)))
            }),
            directs: bucket(limits.directs_per_second, Quota::per_second),
            metrics,
        }
    }

    /// Takes a join or a leave.
    pub fn join_or_leave(&self) -> Result<(), ErrorBody> {
        self.take(&self.joins, "joins", "too many joins and leaves; slow down")
    }

    /// Takes a join that would start a room on this node.
    pub fn room_creation(&self) -> Result<(), ErrorBody> {
        self.take(
            &self.creations,
            "room_creations",
            "too many new rooms from this connection; join one that exists or wait",
        )
    }

    /// Takes a rename.
    pub fn rename(&self) -> Result<(), ErrorBody> {
        self.take(&self.renames, "renames", "too many renames; slow down")
    }

    /// Takes a direct message.
    pub fn direct(&self) -> Result<(), ErrorBody> {
        self.take(
            &self.directs,
            "directs",
            "too many direct messages; slow down",
        )
    }

    fn take(
        &self,
        bucket: &Option<Bucket>,
        limit: &'static str,
        message: &str,
    ) -> Result<(), ErrorBody> {
        let Some(bucket) = bucket else {
            return Ok(());
        };
        let Err(wait) = bucket::take(bucket) else {
            return Ok(());
        };
        self.metrics.limit_refused(limit);
        Err(refusal(message, wait))
    }
}

/// A `rate_limited` error that says when to retry.
pub fn refusal(message: &str, wait: std::time::Duration) -> ErrorBody {
    ErrorBody {
        code: ErrorCode::RateLimited,
        message: message.to_owned(),
        retry_after_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
    }
}

fn bucket(rate: u32, quota: impl FnOnce(NonZeroU32) -> Quota) -> Option<Bucket> {
    NonZeroU32::new(rate).map(|rate| bucket::bucket(quota(rate)))
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(adjust: impl FnOnce(&mut LimitSettings)) -> ChurnLimits {
        let mut settings = LimitSettings::default();
        adjust(&mut settings);
        ChurnLimits::new(&settings, Arc::new(Metrics::new()))
    }

    #[test]
    fn joins_allow_a_full_rejoin_at_once_then_the_sustained_rate() {
        let churn = limits(|l| {
            l.joins_per_second = 2;
            l.max_rooms_per_session = 7;
        });
        for _ in 0..7 {
            assert!(churn.join_or_leave().is_ok());
        }
        let refused = churn.join_or_leave().unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(refused
            .retry_after_ms
            .is_some_and(|ms| (1..=500).contains(&ms)));
    }

    #[test]
    fn renames_have_a_small_burst() {
        let churn = limits(|l| l.renames_per_minute = 600);
        for _ in 0..RENAME_BURST {
            assert!(churn.rename().is_ok());
        }
        assert!(churn.rename().is_err());
    }

    #[test]
    fn zero_turns_each_limit_off() {
        let churn = limits(|l| {
            l.joins_per_second = 0;
            l.room_creations_per_minute = 0;
            l.renames_per_minute = 0;
            l.directs_per_second = 0;
        });
        for _ in 0..1_000 {
            assert!(churn.join_or_leave().is_ok());
            assert!(churn.room_creation().is_ok());
            assert!(churn.rename().is_ok());
            assert!(churn.direct().is_ok());
        }
    }
}
