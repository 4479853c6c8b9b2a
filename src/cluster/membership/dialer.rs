//! The addresses Membership dials, each with its own exponential backoff.
//!
//! Pure bookkeeping (time is passed in as monotonic milliseconds): which address is
//! idle, being dialled, or carrying a connection, and when it may be dialled again.
//! The actor decides what "already connected" means (a peer reached some other way)
//! and runs the dials; nothing in ractor_cluster redials, so this is all there is.

use ractor::ActorId;
use std::collections::BTreeMap;

/// The first retry delay after a failed dial.
pub(super) const FIRST_BACKOFF_MS: u64 = 100;
/// The longest retry delay.
pub(super) const MAX_BACKOFF_MS: u64 = 5_000;
/// A dial that connected but whose session never showed up is given up after this.
const UNBOUND_GRACE_MS: u64 = 2_000;
/// An address learnt from gossip (not a seed) that has not led anywhere for this
/// long is forgotten; gossip brings it back if some node still has it up.
const FORGET_GOSSIPED_AFTER_MS: u64 = 10 * 60 * 1_000;

/// What is happening on one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Link {
    /// Nothing: dial when due.
    Idle,
    /// A dial task is running.
    Dialing,
    /// TCP is up to `sock`; `session` is the NodeSession once its event arrived.
    Connected {
        sock: String,
        since: u64,
        session: Option<ActorId>,
    },
}

/// One address to dial.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// From `cluster.seeds` (never forgotten) rather than from gossip.
    pub seed: bool,
    pub link: Link,
    /// The delay before the next dial after a failure.
    backoff_ms: u64,
    /// Not dialled before this time.
    next_dial_at: u64,
    /// The node (our name) this address led to last time, if any.
    pub reached: Option<String>,
    /// This address turned out to be this node itself: never dialled again.
    pub is_self: bool,
    /// The last time this address was useful (learnt, or led to an up peer).
    last_useful: u64,
}

impl Target {
    fn new(seed: bool, now: u64) -> Self {
        Self {
            seed,
            link: Link::Idle,
            backoff_ms: FIRST_BACKOFF_MS,
            next_dial_at: now,
            reached: None,
            is_self: false,
            last_useful: now,
        }
    }

    fn failed(&mut self, now: u64) {
        self.link = Link::Idle;
        self.next_dial_at = now + self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
    }
}

/// Every address this node dials.
#[derive(Debug, Default)]
pub(super) struct Targets {
    /// This node's own advertised address, never dialled.
    own: String,
    map: BTreeMap<String, Target>,
}

impl Targets {
    /// The seeds, minus `own`.
    pub fn new(own: &str, seeds: &[String], now: u64) -> Self {
        let mut targets = Self {
            own: own.to_owned(),
            map: BTreeMap::new(),
        };
        for seed in seeds {
            if seed != own {
                targets.map.insert(seed.clone(), Target::new(true, now));
            }
        }
        targets
    }

    /// An address gossiped by a peer.
    pub fn learn(&mut self, addr: &str, now: u64) {
        if addr.is_empty() || addr == self.own {
            return;
        }
        self.map
            .entry(addr.to_owned())
            .or_insert_with(|| Target::new(false, now))
            .last_useful = now;
    }

    #[cfg(test)]
    pub fn get(&self, addr: &str) -> Option<&Target> {
        self.map.get(addr)
    }

    pub fn get_mut(&mut self, addr: &str) -> Option<&mut Target> {
        self.map.get_mut(addr)
    }

    /// The idle addresses due for a dial and not `covered` (reached some other way);
    /// they are marked as being dialled.
    pub fn due(&mut self, now: u64, covered: impl Fn(&str, &Target) -> bool) -> Vec<String> {
        let mut due = Vec::new();
        for (addr, target) in &mut self.map {
            if target.link == Link::Idle
                && !target.is_self
                && now >= target.next_dial_at
                && !covered(addr, target)
            {
                target.link = Link::Dialing;
                due.push(addr.clone());
            }
        }
        due
    }

    /// A dial failed before a session existed.
    pub fn dial_failed(&mut self, addr: &str, now: u64) {
        if let Some(target) = self.map.get_mut(addr) {
            target.failed(now);
        }
    }

    /// A dial reached TCP `sock`; `session` is its NodeSession if already known.
    pub fn dial_connected(&mut self, addr: &str, sock: String, session: Option<ActorId>, now: u64) {
        if let Some(target) = self.map.get_mut(addr) {
            target.link = Link::Connected {
                sock,
                since: now,
                session,
            };
        }
    }

    /// The address whose dial reached `sock` and is still waiting for its session;
    /// binds `session` to it.
    pub fn bind(&mut self, sock: &str, session: ActorId) -> Option<String> {
        for (addr, target) in &mut self.map {
            if let Link::Connected {
                sock: s,
                session: bound @ None,
                ..
            } = &mut target.link
            {
                if s == sock {
                    *bound = Some(session);
                    return Some(addr.clone());
                }
            }
        }
        None
    }

    /// The session dialled for `addr` closed. A session that never led to an up
    /// peer counts as a failure (the backoff grows); otherwise the next dial is soon.
    pub fn session_closed(&mut self, addr: &str, session: ActorId, was_useful: bool, now: u64) {
        let Some(target) = self.map.get_mut(addr) else {
            return;
        };
        let bound_here =
            matches!(&target.link, Link::Connected { session: Some(s), .. } if *s == session);
        if !bound_here {
            return;
        }
        if was_useful {
            target.link = Link::Idle;
            target.next_dial_at = now + target.backoff_ms;
        } else {
            target.failed(now);
        }
    }

    /// A session on `addr` led to an up peer: the backoff starts over.
    pub fn succeeded(&mut self, addr: &str, now: u64) {
        if let Some(target) = self.map.get_mut(addr) {
            target.backoff_ms = FIRST_BACKOFF_MS;
            target.last_useful = now;
        }
    }

    /// Housekeeping on every tick: dials whose session never appeared are given up,
    /// gossiped addresses that lead nowhere for long are forgotten.
    pub fn expire(&mut self, now: u64, still_useful: impl Fn(&str) -> bool) {
        for (addr, target) in &mut self.map {
            if let Link::Connected {
                session: None,
                since,
                ..
            } = target.link
            {
                if now.saturating_sub(since) > UNBOUND_GRACE_MS {
                    target.failed(now);
                }
            }
            if still_useful(addr) {
                target.last_useful = now;
            }
        }
        self.map.retain(|_, target| {
            target.seed
                || target.link != Link::Idle
                || now.saturating_sub(target.last_useful) < FORGET_GOSSIPED_AFTER_MS
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(addrs: &[&str]) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn own_address_is_never_a_target() {
        let mut targets = Targets::new("a:1", &seeds(&["a:1", "b:1"]), 0);
        targets.learn("a:1", 0);
        assert_eq!(targets.due(0, |_, _| false), vec!["b:1".to_string()]);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let never = |_: &str, _: &Target| false;
        let mut targets = Targets::new("a:1", &seeds(&["b:1"]), 0);
        let mut now = 0;
        for wait in [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000] {
            targets.dial_failed("b:1", now);
            assert!(targets.due(now + wait - 1, never).is_empty(), "{wait}");
            assert_eq!(targets.due(now + wait, never).len(), 1, "{wait}");
            now += wait;
        }
        targets.succeeded("b:1", now);
        targets.dial_failed("b:1", now);
        assert!(targets.due(now + 99, never).is_empty());
        assert_eq!(targets.due(now + 100, never).len(), 1);
    }

    #[test]
    fn a_session_is_bound_to_its_dial_and_its_close_frees_the_address() {
        let mut targets = Targets::new("a:1", &seeds(&["b:1"]), 0);
        targets.due(0, |_, _| false);
        targets.dial_connected("b:1", "10.0.0.2:1".into(), None, 0);
        assert!(targets.due(10_000, |_, _| false).is_empty(), "busy");
        let session = ActorId::Local(7);
        assert_eq!(targets.bind("10.0.0.2:1", session), Some("b:1".into()));
        targets.expire(10_000, |_| false);
        assert!(matches!(
            targets.get("b:1").unwrap().link,
            Link::Connected { .. }
        ));
        targets.session_closed("b:1", session, false, 10_000);
        assert!(targets.due(10_099, |_, _| false).is_empty(), "backed off");
        assert_eq!(targets.due(10_100, |_, _| false).len(), 1);
    }

    #[test]
    fn a_dial_whose_session_never_appears_is_given_up() {
        let mut targets = Targets::new("a:1", &seeds(&["b:1"]), 0);
        targets.due(0, |_, _| false);
        targets.dial_connected("b:1", "10.0.0.2:1".into(), None, 0);
        targets.expire(UNBOUND_GRACE_MS + 1, |_| false);
        assert_eq!(targets.get("b:1").unwrap().link, Link::Idle);
    }

    #[test]
    fn covered_addresses_are_not_dialled_and_gossip_is_forgotten_in_time() {
        let mut targets = Targets::new("a:1", &seeds(&["b:1"]), 0);
        targets.learn("c:1", 0);
        assert_eq!(
            targets.due(0, |addr, _| addr == "b:1"),
            vec!["c:1".to_string()]
        );
        targets.dial_failed("c:1", 0);
        targets.expire(FORGET_GOSSIPED_AFTER_MS, |_| false);
        assert!(targets.get("c:1").is_none());
        assert!(targets.get("b:1").is_some(), "seeds stay");
    }
}
