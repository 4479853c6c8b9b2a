//! Who a client is, and what it may do.
//!
//! Owns: turning a WebSocket upgrade request into an [`Identity`] ([`Authenticator`]:
//! the `?user=&name=` query in anonymous mode, a verified JWT in jwt mode), the
//! [`Grants`] an identity carries (roles, the rooms it may join by claim, when its
//! token expires), and the room access rules of `[[rooms.acl]]` ([`RoomAccess`]).
//!
//! Must not know: HTTP or actors. The transport asks [`Authenticator::authenticate`]
//! and maps a [`Refusal`] to a status; the Session asks [`RoomAccess`] before it
//! forwards a join or a publish. Tokens are verified by the `jsonwebtoken` crate
//! ([`token`]); nothing here parses a signature by hand, and no token is ever logged.

mod access;
mod token;

pub use access::RoomAccess;
pub use token::{KeyProblem, TokenVerifier};

use crate::config::{AuthMode, AuthSettings};
use crate::protocol::{validate_display_name, validate_user_id, ErrorBody, ErrorCode, UserInfo};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

/// Who a connection is, as established at the upgrade.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserInfo,
    /// False when no name was given (no `name` parameter or claim): the connection
    /// then takes the name the user already has on its other connections, if any.
    pub name_given: bool,
    pub grants: Grants,
}

impl Identity {
    /// An identity with no user, to hold a place while it is moved out.
    pub fn placeholder() -> Self {
        Self {
            user: UserInfo {
                id: String::new(),
                name: String::new(),
            },
            name_given: false,
            grants: Grants::default(),
        }
    }
}

/// What an identity may do beyond being itself. Empty for anonymous clients: no
/// roles, no room claims, no expiry.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// The token's `roles`.
    pub roles: Vec<String>,
    /// The token's `rooms` claim: patterns of the rooms the user may join where
    /// `[[rooms.acl]]` says `join = "claim"`. None without the claim.
    pub rooms: Option<RoomClaim>,
    /// When the connection must close with 4001: the token's `exp` plus the leeway.
    pub expires_at: Option<SystemTime>,
}

impl Grants {
    /// Whether the identity holds at least one of `roles`.
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        self.roles.iter().any(|held| roles.contains(held))
    }

    /// Whether the `rooms` claim covers `room`.
    pub fn claims_room(&self, room: &str) -> bool {
        self.rooms.as_ref().is_some_and(|claim| claim.matches(room))
    }
}

/// The compiled `rooms` claim of a token.
#[derive(Clone)]
pub struct RoomClaim {
    patterns: Vec<String>,
    set: GlobSet,
}

impl RoomClaim {
    /// Compiles the claim's patterns (globs, as in `[[rooms.acl]]`).
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &patterns {
            let glob = Glob::new(pattern).map_err(|e| format!("rooms pattern {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { patterns, set })
    }

    /// Whether any pattern matches `room`.
    pub fn matches(&self, room: &str) -> bool {
        self.set.is_match(room)
    }
}

impl fmt::Debug for RoomClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RoomClaim").field(&self.patterns).finish()
    }
}

/// Why an upgrade was refused before any WebSocket existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 400: the query string (anonymous mode: `user`, `name`) is malformed.
    BadRequest(ErrorBody),
    /// HTTP 401: no valid token (jwt mode).
    Unauthorized(AuthFailure),
}

/// A refused token: the reason clients switch on, and a message for people. Neither
/// ever holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub reason: FailureReason,
    pub message: String,
}

impl AuthFailure {
    pub(crate) fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Why a token was refused; the `reason` of a 401 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No `?token=` and no `Authorization: Bearer` header.
    MissingToken,
    /// Not a JWT: not three base64url parts of JSON, or a header that is not
    /// `Bearer <token>`.
    Malformed,
    /// `exp` (plus the leeway) is past.
    Expired,
    /// `nbf` (less the leeway) is still ahead.
    NotYetValid,
    /// The signature does not verify with the configured key.
    BadSignature,
    /// `issuer` is configured and `iss` is missing or different.
    WrongIssuer,
    /// `audience` is configured and `aud` is missing or does not hold it.
    WrongAudience,
    /// The header's `alg` is not one this node accepts (`none` never is).
    AlgNotAllowed,
    /// Correctly signed, but `sub`, `name`, `rooms`, `roles` or `exp` is missing or
    /// unusable.
    InvalidClaims,
}

impl FailureReason {
    /// Every reason, for whoever wants to count them.
    pub const ALL: [FailureReason; 9] = [
        Self::MissingToken,
        Self::Malformed,
        Self::Expired,
        Self::NotYetValid,
        Self::BadSignature,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::AlgNotAllowed,
        Self::InvalidClaims,
    ];

    /// The reason as it appears in the 401 body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::InvalidClaims => "invalid_claims",
        }
    }
}

/// Establishes who a connecting client is, as `[auth]` says.
pub enum Authenticator {
    /// The client names itself with `?user=ID&name=NAME`.
    Anonymous,
    /// The client presents a JWT, in `?token=` or `Authorization: Bearer`.
    Jwt(Box<TokenVerifier>),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Authenticator::Anonymous"),
            Self::Jwt(_) => f.write_str("Authenticator::Jwt"),
        }
    }
}

impl Authenticator {
    /// The authenticator `[auth]` describes; in jwt mode this reads the key file.
    pub fn from_settings(auth: &AuthSettings) -> Result<Self, KeyProblem> {
        match auth.mode {
            AuthMode::Anonymous => Ok(Self::Anonymous),
            AuthMode::Jwt => TokenVerifier::from_settings(auth).map(|v| Self::Jwt(Box::new(v))),
        }
    }

    /// Who the client of an upgrade is. `query` is the raw query string and
    /// `authorization` the `Authorization` header, if any.
    ///
    /// In jwt mode the token is taken from the header when there is one, else from
    /// `?token=`; `user` and `name` in the query are ignored, so a client cannot
    /// claim another identity than its token's.
    pub fn authenticate(
        &self,
        query: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Identity, Refusal> {
        let params = parse_query(query).map_err(Refusal::BadRequest)?;
        self.authenticate_params(&params, authorization)
    }

    /// [`Authenticator::authenticate`] once the query is read: the same rules over
    /// parameters gathered elsewhere too (a Socket.IO CONNECT's `auth` object).
    pub fn authenticate_params(
        &self,
        params: &HashMap<String, String>,
        authorization: Option<&[u8]>,
    ) -> Result<Identity, Refusal> {
        match self {
            Self::Anonymous => identity_from_query(params).map_err(Refusal::BadRequest),
            Self::Jwt(verifier) => {
                let token = token_of(params, authorization).map_err(Refusal::Unauthorized)?;
                verifier.verify(token).map_err(Refusal::Unauthorized)
            }
        }
    }
}

/// The parameters of a query string, as [`Authenticator::authenticate`] reads them.
pub fn parse_query(query: &str) -> Result<HashMap<String, String>, ErrorBody> {
    actix_web::web::Query::<HashMap<String, String>>::from_query(query)
        .map(|q| q.into_inner())
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("bad query string: {e}")))
}

/// The token of a request: the `Authorization: Bearer` header wins over `?token=`.
fn token_of<'a>(
    params: &'a HashMap<String, String>,
    authorization: Option<&'a [u8]>,
) -> Result<&'a str, AuthFailure> {
    let malformed_header = || {
        AuthFailure::new(
            FailureReason::Malformed,
            "the Authorization header must be `Bearer <token>`",
        )
    };
    let token = match authorization {
        Some(header) => {
            let header = std::str::from_utf8(header).map_err(|_| malformed_header())?;
            let (scheme, token) = header.trim().split_once(' ').ok_or_else(malformed_header)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(malformed_header());
            }
            token.trim()
        }
        None => params.get("token").map_or("", |token| token.trim()),
    };
    if token.is_empty() {
        return Err(AuthFailure::new(
            FailureReason::MissingToken,
            "a token is required: give it as ?token= or in an Authorization: Bearer header",
        ));
    }
    Ok(token)
}

/// Anonymous mode: `user` and `name` from the query; a guest id is made up when
/// `user` is absent.
fn identity_from_query(params: &HashMap<String, String>) -> Result<Identity, ErrorBody> {
    let id = match params.get("user") {
        Some(id) => validate_user_id(id)?,
        None => format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    };
    let (name, name_given) = match params.get("name") {
        Some(name) => (validate_display_name(name)?, true),
        None => (id.clone(), false),
    };
    Ok(Identity {
        user: UserInfo { id, name },
        name_given,
        grants: Grants::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anonymous(query: &str) -> Result<Identity, Refusal> {
        Authenticator::Anonymous.authenticate(query, None)
    }

    fn bad_request_code(refusal: Refusal) -> ErrorCode {
        match refusal {
            Refusal::BadRequest(body) => body.code,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn anonymous_query_gives_user_or_a_guest() {
        let alice = anonymous("user=alice&name=Alice%20A").unwrap();
        assert_eq!(
            (alice.user.id.as_str(), alice.user.name.as_str()),
            ("alice", "Alice A")
        );
        assert!(alice.name_given);
        assert!(alice.grants.roles.is_empty() && alice.grants.rooms.is_none());
        assert!(alice.grants.expires_at.is_none());
        let guest = anonymous("").unwrap();
        assert!(guest.user.id.starts_with("guest-"));
        assert_eq!(guest.user.name, guest.user.id);
        assert!(!guest.name_given);
        assert_eq!(
            bad_request_code(anonymous("user=a%20b").unwrap_err()),
            ErrorCode::BadRequest
        );
        assert_eq!(
            bad_request_code(anonymous(&format!("name={}", "x".repeat(65))).unwrap_err()),
            ErrorCode::TooLong
        );
    }

    #[test]
    fn anonymous_mode_ignores_tokens() {
        let who = Authenticator::Anonymous
            .authenticate("user=bob&token=abc", Some(b"Bearer xyz"))
            .unwrap();
        assert_eq!(who.user.id, "bob");
    }

    #[test]
    fn the_bearer_header_wins_over_the_query() {
        let params = parse_query("token=from-query").unwrap();
        assert_eq!(
            token_of(&params, Some(b"Bearer from-header")),
            Ok("from-header")
        );
        assert_eq!(token_of(&params, Some(b"bearer   spaced  ")), Ok("spaced"));
        assert_eq!(token_of(&params, None), Ok("from-query"));
        let none = parse_query("user=x").unwrap();
        assert_eq!(
            token_of(&none, None).unwrap_err().reason,
            FailureReason::MissingToken
        );
        assert_eq!(
            token_of(&none, Some(b"Bearer ")).unwrap_err().reason,
            FailureReason::Malformed
        );
        for header in [&b"Basic abc"[..], b"Bearer", b"\xff\xfe"] {
            assert_eq!(
                token_of(&none, Some(header)).unwrap_err().reason,
                FailureReason::Malformed,
                "{header:?}"
            );
        }
    }

    #[test]
    fn room_claims_are_globs() {
        let claim = RoomClaim::new(vec!["team:red:*".into(), "lobby".into()]).unwrap();
        assert!(claim.matches("team:red:chat"));
        assert!(claim.matches("lobby"));
        assert!(!claim.matches("team:blue:chat"));
        assert!(!claim.matches("lobby2"));
        assert!(RoomClaim::new(vec!["a{b".into()]).is_err());
        let grants = Grants {
            roles: vec!["staff".into()],
            rooms: Some(claim),
            expires_at: None,
        };
        assert!(grants.claims_room("lobby"));
        assert!(grants.has_any_role(&["admin".into(), "staff".into()]));
        assert!(!grants.has_any_role(&["admin".into()]));
        assert!(!Grants::default().claims_room("lobby"));
    }
}
