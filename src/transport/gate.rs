//! The checks a WebSocket upgrade passes before it is accepted, each refused with a
//! plain HTTP answer and a JSON body:
//!
//! 1. `Origin`: when `http.allowed_origins` is not empty, a browser page from another
//!    origin gets **403**. A request without `Origin` (not a browser) passes.
//! 2. Handshakes per client address per second (`rate_limit.handshakes_per_ip_per_sec`)
//!    → **429** with `retry_after_ms`. Counted before authentication, so guessing
//!    tokens is throttled too.
//! 3. Who the client is ([`Authenticator`]) → **400** for a bad query (anonymous), **401**
//!    for a missing or bad token (jwt).
//! 4. Open connections per client address (`rate_limit.connections_per_ip`) → **429**.
//!    The slot is held by the [`IpSlot`] for the connection's lifetime.
//!
//! The client address is the TCP peer's, unless the peer is one of
//! `http.trusted_proxies`: then it is read from `X-Forwarded-For`. IPv6 clients are
//! counted by their /64, which is what one host is usually given.
//!
//! Must not know: actors. It sees the request and settings only.

use crate::auth::{AuthFailure, Authenticator, FailureReason, Identity, KeyProblem, Refusal};
use crate::config::{parse_network, Settings};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Handshake checks between two sweeps of the limiter's idle entries.
const SWEEP_EVERY: u64 = 1024;
/// The longest `Origin` repeated in a 403 body.
const MAX_ORIGIN_SHOWN: usize = 100;

/// What every WebSocket upgrade is checked against.
pub struct Gate {
    auth: Authenticator,
    /// Lower-cased; empty allows any.
    origins: Vec<String>,
    proxies: Vec<IpNet>,
    handshakes: Option<DefaultKeyedRateLimiter<IpAddr>>,
    handshake_checks: AtomicU64,
    connections: Option<Arc<IpConnections>>,
}

/// Why the gate turned an upgrade away; [`Refused::response`] is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// 403: a page from an origin not in `http.allowed_origins`.
    Origin(String),
    /// 429: over `rate_limit.handshakes_per_ip_per_sec`.
    Handshakes { retry_after_ms: u64 },
    /// 400 or 401: who the client is could not be established.
    Identity(Refusal),
    /// 429: the address has `rate_limit.connections_per_ip` connections open.
    Connections { max: u32 },
}

impl Refused {
    /// The plain HTTP answer, with a JSON body `{"error":{"code","reason","message"}}`.
    pub fn response(&self) -> HttpResponse {
        match self {
            Self::Origin(origin) => HttpResponse::Forbidden().json(json!({
                "error": {
                    "code": "forbidden",
                    "reason": "origin_not_allowed",
                    "message": format!("pages from {origin} may not connect to this node"),
                }
            })),
            Self::Handshakes { retry_after_ms } => HttpResponse::TooManyRequests()
                .insert_header((
                    header::RETRY_AFTER,
                    retry_after_ms.div_ceil(1000).to_string(),
                ))
                .json(json!({
                    "error": {
                        "code": "rate_limited",
                        "reason": "handshakes_per_ip",
                        "message": "too many connection attempts from this address; retry later",
                        "retry_after_ms": retry_after_ms,
                    }
                })),
            Self::Identity(Refusal::BadRequest(error)) => {
                HttpResponse::BadRequest().json(json!({ "error": error }))
            }
            Self::Identity(Refusal::Unauthorized(failure)) => unauthorized(failure),
            Self::Connections { max } => HttpResponse::TooManyRequests().json(json!({
                "error": {
                    "code": "rate_limited",
                    "reason": "connections_per_ip",
                    "message": format!(
                        "this address has {max} connections open, the most allowed; close one first"
                    ),
                }
            })),
        }
    }
}

/// An upgrade that passed the gate.
pub struct Admitted {
    pub identity: Identity,
    /// Holds the client address's connection slot until dropped.
    pub slot: IpSlot,
    /// The client's address (see [`Gate`]), for the connect hook.
    pub client: Option<IpAddr>,
}

impl Gate {
    /// The gate the settings describe; in jwt mode this reads the key file.
    pub fn new(settings: &Settings) -> Result<Self, KeyProblem> {
        let auth = Authenticator::from_settings(&settings.auth)?;
        let limits = &settings.rate_limit;
        let handshakes = NonZeroU32::new(limits.handshakes_per_ip_per_sec)
            .map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        let connections = (limits.connections_per_ip > 0).then(|| {
            Arc::new(IpConnections {
                max: limits.connections_per_ip,
                open: Mutex::new(HashMap::new()),
            })
        });
        Ok(Self {
            auth,
            origins: settings
                .http
                .allowed_origins
                .iter()
                .map(|origin| origin.to_ascii_lowercase())
                .collect(),
            proxies: settings
                .http
                .trusted_proxies
                .iter()
                .filter_map(|proxy| parse_network(proxy))
                .collect(),
            handshakes,
            handshake_checks: AtomicU64::new(0),
            connections,
        })
    }

    /// Runs the checks in order; the HTTP answer of the first that fails.
    pub fn admit(&self, req: &HttpRequest) -> Result<Admitted, Refused> {
        self.check_origin(req)?;
        let address = self.client_ip(req);
        let client = address.map(limit_key);
        if let Some(ip) = client {
            self.check_handshake_rate(ip)?;
        }
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes());
        let identity = self
            .auth
            .authenticate(req.query_string(), authorization)
            .map_err(|refusal| {
                if let Refusal::Unauthorized(failure) = &refusal {
                    let reason = failure.reason.as_str();
                    tracing::debug!(reason, ip = ?client, "upgrade refused: unauthorized");
                }
                Refused::Identity(refusal)
            })?;
        let slot = match (&self.connections, client) {
            (Some(connections), Some(ip)) => connections.take(ip)?,
            _ => IpSlot(None),
        };
        Ok(Admitted {
            identity,
            slot,
            client: address,
        })
    }

    /// The gate's checks but who the client is, which a Socket.IO client may say
    /// later (in its CONNECT's `auth`): origin, handshakes per address, then the
    /// address's connection slot. [`Gate::authenticator`] does the rest.
    pub fn admit_unidentified(&self, req: &HttpRequest) -> Result<IpSlot, Refused> {
        self.check_origin(req)?;
        let client = self.client_ip(req).map(limit_key);
        if let Some(ip) = client {
            self.check_handshake_rate(ip)?;
        }
        match (&self.connections, client) {
            (Some(connections), Some(ip)) => connections.take(ip),
            _ => Ok(IpSlot(None)),
        }
    }

    /// Whether a browser page of the request's `Origin` may talk to this node (no
    /// `Origin` passes): what Socket.IO's polling answers carry CORS headers for.
    pub fn allows_origin(&self, req: &HttpRequest) -> bool {
        self.check_origin(req).is_ok()
    }

    /// The client's address (the peer's, or what a trusted proxy forwarded): what the
    /// connect hook is told.
    pub fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        self.client_ip(req)
    }

    /// Who clients are, as `[auth]` says.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    fn check_origin(&self, req: &HttpRequest) -> Result<(), Refused> {
        if self.origins.is_empty() {
            return Ok(());
        }
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return Ok(());
        }
        let shown: String = origin.chars().take(MAX_ORIGIN_SHOWN).collect();
        tracing::debug!(origin = %shown, "upgrade refused: origin not allowed");
        Err(Refused::Origin(shown))
    }

    fn check_handshake_rate(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(limiter) = &self.handshakes else {
            return Ok(());
        };
        if self.handshake_checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let Err(not_until) = limiter.check_key(&ip) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after_ms = (wait.as_millis() as u64).max(1);
        tracing::debug!(%ip, "upgrade refused: too many handshakes");
        Err(Refused::Handshakes { retry_after_ms })
    }

    /// The client's address: the TCP peer's, or, when the peer is a trusted proxy,
    /// the nearest address in `X-Forwarded-For` that is not a trusted proxy.
    fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip().to_canonical();
        Some(self.forwarded_for(peer, req))
    }

    fn forwarded_for(&self, peer: IpAddr, req: &HttpRequest) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<String> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|hop| hop.trim().to_owned())
            .collect();
        let mut client = peer;
        // The right-most hops were added by our own proxies; the first one that is
        // not a trusted proxy is the client. Hops to its left are the client's word.
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            client = ip.to_canonical();
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The address limits are counted by: an IPv4 address, or an IPv6 address's /64.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// A 401 (RFC 6750: `WWW-Authenticate: Bearer`, with `error="invalid_token"` when a
/// token was given).
fn unauthorized(failure: &AuthFailure) -> HttpResponse {
    let reason = failure.reason.as_str();
    let challenge = if failure.reason == FailureReason::MissingToken {
        "Bearer".to_owned()
    } else {
        "Bearer error=\"invalid_token\"".to_owned()
    };
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, challenge))
        .json(json!({
            "error": {
                "code": "unauthorized",
                "reason": reason,
                "message": failure.message,
            }
        }))
}

/// Open WebSockets per client address.
struct IpConnections {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl IpConnections {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, Refused> {
        let Ok(mut open) = self.open.lock() else {
            return Ok(IpSlot(None));
        };
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            tracing::debug!(%ip, open = *count, "upgrade refused: too many connections");
            return Err(Refused::Connections { max: self.max });
        }
        *count += 1;
        Ok(IpSlot(Some((self.clone(), ip))))
    }
}

/// One open connection of a client address; gives the slot back when dropped.
pub struct IpSlot(Option<(Arc<IpConnections>, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((connections, ip)) = self.0.take() else {
            return;
        };
        let Ok(mut open) = connections.open.lock() else {
            return;
        };
        if let Some(count) = open.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn gate(adjust: impl FnOnce(&mut Settings)) -> Gate {
        let mut settings = Settings::default();
        adjust(&mut settings);
        Gate::new(&settings).unwrap()
    }

    fn request(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut req = TestRequest::get()
            .uri("/ws?user=alice")
            .peer_addr(peer.parse().unwrap());
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        req.to_http_request()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let gate = gate(|s| s.http.trusted_proxies = vec!["10.0.0.0/24".into(), "::1".into()]);
        let ip = |peer: &str, xff: &str| {
            let req = request(peer, &[("x-forwarded-for", xff)]);
            gate.client_ip(&req).unwrap().to_string()
        };
        // An untrusted peer's header is ignored.
        assert_eq!(ip("192.0.2.9:5000", "203.0.113.7"), "192.0.2.9");
        // A trusted peer: the right-most hop that is not a trusted proxy.
        assert_eq!(ip("10.0.0.2:5000", "203.0.113.7"), "203.0.113.7");
        assert_eq!(
            ip("10.0.0.2:5000", "198.51.100.1, 203.0.113.7, 10.0.0.5"),
            "203.0.113.7"
        );
        assert_eq!(ip("[::1]:5000", "203.0.113.7"), "203.0.113.7");
        // Garbage ends the walk at the last good hop.
        assert_eq!(ip("10.0.0.2:5000", "evil, 10.0.0.3"), "10.0.0.3");
        let no_header = request("10.0.0.2:5000", &[]);
        assert_eq!(gate.client_ip(&no_header).unwrap().to_string(), "10.0.0.2");
        // Without trusted proxies, never.
        let plain = super::tests::gate(|_| {});
        let req = request("10.0.0.2:5000", &[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(plain.client_ip(&req).unwrap().to_string(), "10.0.0.2");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
    }

    #[test]
    fn connection_slots_are_given_back() {
        let gate = gate(|s| s.rate_limit.connections_per_ip = 2);
        let req = || request("192.0.2.1:1", &[]);
        let first = gate.admit(&req()).ok().unwrap();
        let second = gate.admit(&req()).ok().unwrap();
        let refused = gate.admit(&req()).err().unwrap();
        assert_eq!(refused, Refused::Connections { max: 2 });
        assert_eq!(refused.response().status(), 429);
        // Another address is counted apart.
        assert!(gate.admit(&request("192.0.2.2:1", &[])).is_ok());
        drop(first);
        let third = gate.admit(&req()).ok().unwrap();
        drop((second, third));
        let open = gate.connections.as_ref().unwrap().open.lock().unwrap();
        assert!(open.is_empty(), "{open:?}");
    }

    #[test]
    fn origins_are_compared_without_case() {
        let gate = gate(|s| s.http.allowed_origins = vec!["https://Chat.example.com".into()]);
        let status = |headers: &[(&str, &str)]| match gate.admit(&request("192.0.2.1:1", headers)) {
            Ok(_) => 101,
            Err(refused) => refused.response().status().as_u16(),
        };
        assert_eq!(status(&[("origin", "https://chat.example.com")]), 101);
        assert_eq!(status(&[("origin", "https://CHAT.example.com")]), 101);
        assert_eq!(status(&[("origin", "https://evil.example")]), 403);
        assert_eq!(status(&[("origin", "null")]), 403);
        assert_eq!(status(&[]), 101);
    }
}
