//! Who sent a frame: per-peer sender keys (pure).
//!
//! ractor_cluster hands the Endpoint a peer's cast without saying which connection it
//! came over, so an envelope's `from` is only a claim: any peer holding the cookie could
//! name another node there and, say, announce that node leaving, or keep a frozen one
//! alive with its pings. This is the one place that works around it.
//!
//! Each node issues every peer it accepted a session for (name and incarnation) a
//! random key, and sends it to that peer's Endpoint through that peer's own session
//! (`Body::SenderKey`): only the peer reached over its authenticated connection learns
//! it. Every other frame the peer sends us carries that key, and we drop frames whose
//! key is not the one we issued to the node they claim to come from.
//!
//! A key offer itself cannot be checked (that is what it sets up), so one is taken only
//! when it names the incarnation of the session we accepted for its sender, and only the
//! first for that incarnation: a forged offer can then only race the real one at session
//! set-up. The issuer keeps the same key for a peer's whole incarnation, so a
//! reconnection needs no new offer; it re-offers every heartbeat until a frame carrying
//! the key proves the peer has it.

use std::collections::HashMap;

/// A sender key, as it travels (32 hex digits, 128 random bits).
pub type Key = String;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// We issued no key to a node of that name (we accepted no session for it).
    UnknownSender,
    /// The key is not the one issued to the named node's current incarnation.
    BadKey,
}

impl Refusal {
    /// The `reason` label of `hubbub_cluster_frames_dropped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownSender => "unknown_sender",
            Self::BadKey => "bad_key",
        }
    }
}

struct Issued {
    inc: u64,
    key: Key,
    /// A frame carrying the key arrived: the peer has it, stop offering.
    confirmed: bool,
}

/// The keys this node issued to its peers and the ones its peers issued to it.
#[derive(Default)]
pub struct SenderKeys {
    /// By peer name: the key frames from that peer must carry.
    issued: HashMap<String, Issued>,
    /// By peer name: the key our frames to that peer carry, and the peer's incarnation
    /// that issued it.
    received: HashMap<String, (u64, Key)>,
}

impl SenderKeys {
    /// We accepted a session for `name` in incarnation `inc`: the key it must use from
    /// now on (the same for the whole incarnation; a new one for a new incarnation).
    /// A key it gave us in an earlier life is forgotten.
    pub fn accept(&mut self, name: &str, inc: u64) -> Key {
        if self.received.get(name).is_some_and(|(i, _)| *i != inc) {
            self.received.remove(name);
        }
        match self.issued.get(name) {
            Some(issued) if issued.inc == inc => issued.key.clone(),
            _ => {
                let key = fresh_key();
                self.issued.insert(
                    name.to_owned(),
                    Issued {
                        inc,
                        key: key.clone(),
                        confirmed: false,
                    },
                );
                key
            }
        }
    }

    /// The key to offer `name` while it has not shown it holds it.
    pub fn to_offer(&self, name: &str) -> Option<Key> {
        self.issued
            .get(name)
            .filter(|issued| !issued.confirmed)
            .map(|issued| issued.key.clone())
    }

    /// Checks a frame claiming to come from `name` in incarnation `inc`.
    pub fn check(&mut self, name: &str, inc: u64, key: &str) -> Result<(), Refusal> {
        let issued = self.issued.get_mut(name).ok_or(Refusal::UnknownSender)?;
        if issued.inc != inc || !constant_time_eq(issued.key.as_bytes(), key.as_bytes()) {
            return Err(Refusal::BadKey);
        }
        issued.confirmed = true;
        Ok(())
    }

    /// `name` (incarnation `inc`) offers us the key for our frames to it. Taken only
    /// when we accepted a session of that incarnation and hold no key of it yet; true
    /// when taken.
    pub fn offered(&mut self, name: &str, inc: u64, key: &str) -> bool {
        let accepted = self.issued.get(name).is_some_and(|i| i.inc == inc);
        let known = self.received.get(name).is_some_and(|(i, _)| *i == inc);
        if !accepted || known || !is_key(key) {
            return false;
        }
        self.received.insert(name.to_owned(), (inc, key.to_owned()));
        true
    }

    /// The key our frames to `name` carry, once it offered one.
    pub fn key_for(&self, name: &str) -> Option<&str> {
        self.received.get(name).map(|(_, key)| key.as_str())
    }
}

fn fresh_key() -> Key {
    // Two v4 UUIDs' random bits would do; one carries 122, plenty against guessing.
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    format!("{high:016x}{low:016x}")
}

fn is_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_passes_only_with_the_key_issued_to_its_sender() {
        let mut keys = SenderKeys::default();
        let for_a = keys.accept("a", 7);
        let for_b = keys.accept("b", 9);
        assert_ne!(for_a, for_b);
        assert_eq!(keys.check("a", 7, &for_a), Ok(()));
        // b's key does not make a frame a's, nor an old incarnation's a current one.
        assert_eq!(keys.check("a", 7, &for_b), Err(Refusal::BadKey));
        assert_eq!(keys.check("a", 6, &for_a), Err(Refusal::BadKey));
        assert_eq!(keys.check("a", 7, ""), Err(Refusal::BadKey));
        assert_eq!(
            keys.check("mallory", 1, &for_a),
            Err(Refusal::UnknownSender)
        );
    }

    #[test]
    fn a_key_lasts_the_incarnation_and_is_offered_until_used() {
        let mut keys = SenderKeys::default();
        let first = keys.accept("a", 7);
        assert_eq!(keys.to_offer("a"), Some(first.clone()));
        // A reconnection of the same life keeps the key.
        assert_eq!(keys.accept("a", 7), first);
        assert_eq!(keys.check("a", 7, &first), Ok(()));
        assert_eq!(keys.to_offer("a"), None, "a has shown it holds the key");
        // A restart (new incarnation) gets a new key, offered again; the old one fails.
        let second = keys.accept("a", 8);
        assert_ne!(first, second);
        assert_eq!(keys.to_offer("a"), Some(second.clone()));
        assert_eq!(keys.check("a", 8, &first), Err(Refusal::BadKey));
        assert_eq!(keys.check("a", 8, &second), Ok(()));
    }

    #[test]
    fn only_the_first_offer_of_the_accepted_incarnation_is_taken() {
        let mut keys = SenderKeys::default();
        let real = "0123456789abcdef0123456789abcdef";
        let forged = "ffffffffffffffffffffffffffffffff";
        // No session accepted for b yet: nothing is taken.
        assert!(!keys.offered("b", 3, real));
        keys.accept("b", 3);
        // An offer naming another incarnation, or not a key at all, is not taken.
        assert!(!keys.offered("b", 4, real));
        assert!(!keys.offered("b", 3, "not a key"));
        assert!(keys.offered("b", 3, real));
        assert_eq!(keys.key_for("b"), Some(real));
        // A later offer (a forgery racing too late, or a repeat) changes nothing.
        assert!(!keys.offered("b", 3, forged));
        assert_eq!(keys.key_for("b"), Some(real));
        // b restarted: its old key is forgotten, and its new life's offer is taken.
        keys.accept("b", 5);
        assert_eq!(keys.key_for("b"), None);
        assert!(keys.offered("b", 5, forged));
        assert_eq!(keys.key_for("b"), Some(forged));
    }
}
