//! The `X-Hubbub-Signature` header of webhook deliveries (docs/webhooks.md):
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! Pure: no clock, no I/O. [`verify`] is what a backend does, here so the tests and
//! the docs check the same rule the node signs by.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "X-Hubbub-Signature";

type HmacSha256 = Hmac<Sha256>;

/// The header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not `t=…,v1=…`.
    Malformed,
    /// `t` is further than the tolerance from `now`.
    Stale,
    /// The HMAC does not match.
    Mismatch,
}

/// Checks a header value against `body` as a backend would: the timestamp within
/// `tolerance_secs` of `now` (unix seconds), and the HMAC compared in constant time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), Invalid> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Invalid::Malformed)?;
    if signatures.is_empty() {
        return Err(Invalid::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(Invalid::Stale);
    }
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    for signature in signatures {
        let Some(bytes) = unhex(signature) else {
            continue;
        };
        if mac.clone().verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(Invalid::Mismatch)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_vector() {
        // python3 -c 'import hmac,hashlib;
        //   print(hmac.new(b"whsec", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"whsec", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
    }

    #[test]
    fn verify_accepts_the_signed_body_only() {
        let body = br#"{"event":"publish"}"#;
        let header = sign(b"k", 100, body);
        assert_eq!(verify(b"k", &header, body, 100, 300), Ok(()));
        assert_eq!(verify(b"k", &header, body, 350, 300), Ok(()));
        assert_eq!(
            verify(b"k", &header, br#"{"event":"join"}"#, 100, 300),
            Err(Invalid::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, body, 100, 300),
            Err(Invalid::Mismatch)
        );
        assert_eq!(verify(b"k", &header, body, 1_000, 300), Err(Invalid::Stale));
        assert_eq!(
            verify(b"k", "v1=00", body, 100, 300),
            Err(Invalid::Malformed)
        );
        // A rotated secret: either signature in the header may match.
        let both = format!("{header},v1={}", "ab".repeat(32));
        assert_eq!(verify(b"k", &both, body, 100, 300), Ok(()));
    }
}
