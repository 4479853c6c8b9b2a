//! Who may call the server API: the bearer keys of `[api] keys`, compared in constant
//! time, and each key's rate limit (a token bucket per key, `api.requests_per_second`
//! and `api.burst`). Pure: no HTTP, no actors; the routes ask it about each request.
//!
//! Keys are held as bytes and never shown: this type has no `Debug` that prints them,
//! and nothing here logs.

use crate::config::ApiSettings;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// The configured keys and one bucket per key.
pub struct Keys {
    keys: Vec<Vec<u8>>,
    /// `buckets[i]` limits key `i`; empty when the limit is off.
    buckets: Vec<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured, [redacted])", self.keys.len())
    }
}

impl Keys {
    /// The keys of `settings` (blank ones, which validation refuses, are left out).
    pub fn new(settings: &ApiSettings) -> Self {
        let keys: Vec<Vec<u8>> = settings
            .keys
            .iter()
            .filter(|k| !k.is_blank())
            .map(|k| k.expose().as_bytes().to_vec())
            .collect();
        let buckets = match NonZeroU32::new(settings.requests_per_second) {
            Some(rate) => {
                let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
                keys.iter()
                    .map(|_| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
                    .collect()
            }
            None => Vec::new(),
        };
        Self { keys, buckets }
    }

    /// Whether any key is configured (otherwise the API is off).
    pub fn any(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Which key an `Authorization` header value carries (`Bearer <key>`), if any.
    /// Every configured key is compared, each over all its bytes, so the time taken
    /// does not tell how much of a guess was right, nor which key it was near.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Option<usize> {
        let presented = authorization.and_then(bearer)?;
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if constant_time_eq(key, presented) {
                found = Some(i);
            }
        }
        found
    }

    /// Takes one call from key `key`'s bucket; how long to wait when it is empty.
    pub fn admit(&self, key: usize) -> Result<(), Duration> {
        match self.buckets.get(key) {
            Some(bucket) => bucket
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
            None => Ok(()),
        }
    }
}

/// The credentials of `Bearer <credentials>` (the scheme in any case, RFC 7235).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if header.len() <= SCHEME.len() || !header[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let credentials = header[SCHEME.len()..].trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let longest = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..longest {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(list: &[&str], rate: u32, burst: u32) -> Keys {
        Keys::new(&ApiSettings {
            keys: list.iter().map(|k| Secret::new(*k)).collect(),
            requests_per_second: rate,
            burst,
            ..ApiSettings::default()
        })
    }

    #[test]
    fn a_bearer_key_is_found_among_several_and_nothing_else_is() {
        let k = keys(&["old-key-0123456789", "new-key-0123456789"], 0, 0);
        assert_eq!(k.identify(Some(b"Bearer old-key-0123456789")), Some(0));
        assert_eq!(k.identify(Some(b"bearer new-key-0123456789")), Some(1));
        assert_eq!(k.identify(Some(b"BEARER  new-key-0123456789 ")), Some(1));
        for wrong in [
            &b"Bearer new-key-012345678"[..],
            b"Bearer new-key-01234567890",
            b"Bearer ",
            b"Bearer",
            b"new-key-0123456789",
            b"Basic new-key-0123456789",
            b"",
        ] {
            assert_eq!(
                k.identify(Some(wrong)),
                None,
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert_eq!(k.identify(None), None);
        assert!(!keys(&[], 0, 0).any());
        assert_eq!(keys(&[], 0, 0).identify(Some(b"Bearer x")), None);
    }

    #[test]
    fn equality_compares_every_byte_and_the_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let k = keys(&["key-a-0123456789", "key-b-0123456789"], 1, 2);
        assert!(k.admit(0).is_ok());
        assert!(k.admit(0).is_ok());
        let wait = k
            .admit(0)
            .expect_err("the third call at once is over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // The other key is untouched.
        assert!(k.admit(1).is_ok());
        // Off: never refused.
        let off = keys(&["key-a-0123456789"], 0, 0);
        for _ in 0..1000 {
            assert!(off.admit(0).is_ok());
        }
    }

    #[test]
    fn debug_never_shows_a_key() {
        let k = keys(&["very-secret-key-0123"], 0, 0);
        assert!(!format!("{k:?}").contains("very-secret"));
    }
}
