//! JWT verification, by the `jsonwebtoken` crate.
//!
//! Owns: the verifying key and the `Validation` built from `[auth]`, and turning a
//! verified token's claims into an [`Identity`]. The accepted algorithms are always
//! given explicitly, and all of one family, which is what keeps `alg: none` and
//! algorithm confusion (an HS256 token signed with an RSA public key as its secret)
//! out: jsonwebtoken refuses a token whose header names an algorithm not in the list,
//! and a key of another family. The header's `alg` is read first only to name the
//! reason of a refusal; it never decides how a token is verified.

use super::{AuthFailure, FailureReason, Grants, Identity, RoomClaim};
use crate::config::{AuthSettings, JwtAlgorithm};
use crate::protocol::{validate_display_name, validate_user_id, UserInfo};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// Why `[auth]` cannot verify tokens: the key at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    pub key: &'static str,
    pub reason: String,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for KeyProblem {}

/// HMAC keys shorter than the hash are refused (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;

/// The kinds of key a token can be verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Secret,
    Rsa,
    Ec,
    Ed25519,
}

impl KeyKind {
    /// The algorithm used when `auth.algorithms` is empty.
    fn default_algorithm(self) -> JwtAlgorithm {
        match self {
            Self::Secret => JwtAlgorithm::HS256,
            Self::Rsa => JwtAlgorithm::RS256,
            Self::Ec => JwtAlgorithm::ES256,
            Self::Ed25519 => JwtAlgorithm::EdDSA,
        }
    }

    fn accepts(self, algorithm: JwtAlgorithm) -> bool {
        use JwtAlgorithm::*;
        match self {
            Self::Secret => matches!(algorithm, HS256 | HS384 | HS512),
            Self::Rsa => matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::Ec => matches!(algorithm, ES256 | ES384),
            Self::Ed25519 => algorithm == EdDSA,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Secret => "auth.secret (HS256, HS384, HS512)",
            Self::Rsa => "an RSA key (RS256, RS384, RS512, PS256, PS384, PS512)",
            Self::Ec => "an EC key (ES256, ES384)",
            Self::Ed25519 => "an Ed25519 key (EdDSA)",
        }
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Verifies tokens with one key and a fixed list of algorithms.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    /// The accepted algorithms as they appear in a header's `alg`.
    accepted: Vec<String>,
    leeway: u64,
}

impl TokenVerifier {
    /// The verifier `[auth]` (jwt mode) describes: its key (read from
    /// `public_key_path` now), algorithms, issuer, audience and leeway.
    pub fn from_settings(auth: &AuthSettings) -> Result<Self, KeyProblem> {
        let (key, kind) = decoding_key(auth)?;
        let algorithms = if auth.algorithms.is_empty() {
            vec![kind.default_algorithm()]
        } else {
            auth.algorithms.clone()
        };
        if let Some(wrong) = algorithms.iter().find(|alg| !kind.accepts(**alg)) {
            return Err(KeyProblem {
                key: "auth.algorithms",
                reason: format!(
                    "{wrong} cannot be verified with {}; list only algorithms of that key",
                    kind.describe()
                ),
            });
        }
        let mut validation = Validation::new(algorithm(algorithms[0]));
        validation.algorithms = algorithms.iter().copied().map(algorithm).collect();
        validation.leeway = auth.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !auth.issuer.is_empty() {
            validation.set_issuer(&[&auth.issuer]);
            // jsonwebtoken only compares `iss` when the token has one.
            required.push("iss");
        }
        if auth.audience.is_empty() {
            // Without a configured audience, a token's `aud` is not ours to judge.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&auth.audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            accepted: algorithms.iter().map(ToString::to_string).collect(),
            leeway: auth.leeway_secs,
        })
    }

    /// Verifies `token` and gives the identity its claims describe.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthFailure> {
        self.check_header(token)?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|error| refusal(error.kind()))?;
        self.identity(data.claims)
    }

    /// Names an unacceptable `alg` before verification, so the refusal can say so
    /// (jsonwebtoken cannot even parse `alg: none`, and would call it malformed).
    fn check_header(&self, token: &str) -> Result<(), AuthFailure> {
        let malformed = |why: &str| AuthFailure::new(FailureReason::Malformed, why);
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "a JWT is three base64url parts separated by dots",
            ));
        };
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed("the token's header is not base64url"))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|_| malformed("the token's header is not JSON"))?;
        let Some(alg) = header.get("alg").and_then(serde_json::Value::as_str) else {
            return Err(malformed("the token's header has no alg"));
        };
        if self.accepted.iter().any(|accepted| accepted == alg) {
            return Ok(());
        }
        // Only a short, plain `alg` is repeated back.
        let shown = if alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_alphanumeric()) {
            format!("alg {alg:?}")
        } else {
            "the token's alg".to_owned()
        };
        Err(AuthFailure::new(
            FailureReason::AlgNotAllowed,
            format!(
                "{shown} is not accepted; this node accepts {}",
                self.accepted.join(", ")
            ),
        ))
    }

    /// The identity of verified claims: `sub` is the user id, `name` the display
    /// name (else the id), `roles` and `rooms` the grants.
    fn identity(&self, claims: serde_json::Value) -> Result<Identity, AuthFailure> {
        let invalid = |why: String| AuthFailure::new(FailureReason::InvalidClaims, why);
        let claims: Claims = serde_json::from_value(claims)
            .map_err(|e| invalid(format!("the token's claims are unusable: {e}")))?;
        let id =
            validate_user_id(&claims.sub).map_err(|e| invalid(format!("sub: {}", e.message)))?;
        let (name, name_given) = match &claims.name {
            Some(name) => (
                validate_display_name(name).map_err(|e| invalid(format!("name: {}", e.message)))?,
                true,
            ),
            None => (id.clone(), false),
        };
        let rooms = claims
            .rooms
            .map(RoomClaim::new)
            .transpose()
            .map_err(|e| invalid(format!("rooms: {e}")))?;
        let expires_at = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs_f64(claims.exp.clamp(0.0, 1e12)))
            .and_then(|exp| exp.checked_add(Duration::from_secs(self.leeway)));
        // jsonwebtoken compares whole seconds and still accepts a token during the
        // second of its `exp`; a Session closes at `exp` exactly. Refuse from that
        // instant too, so a client closed with 4001 cannot come straight back.
        if expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err(AuthFailure::new(
                FailureReason::Expired,
                "the token has expired",
            ));
        }
        Ok(Identity {
            user: UserInfo { id, name },
            name_given,
            grants: Grants {
                roles: claims.roles.unwrap_or_default(),
                rooms,
                expires_at,
            },
        })
    }
}

/// The claims hubbub reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    /// Seconds since the epoch; JSON numbers may be fractional.
    exp: f64,
}

/// The failure a jsonwebtoken error stands for.
fn refusal(kind: &ErrorKind) -> AuthFailure {
    let (reason, message) = match kind {
        ErrorKind::InvalidSignature => (
            FailureReason::BadSignature,
            "the token's signature does not verify".to_owned(),
        ),
        ErrorKind::ExpiredSignature => (FailureReason::Expired, "the token has expired".to_owned()),
        ErrorKind::ImmatureSignature => (
            FailureReason::NotYetValid,
            "the token is not valid yet (nbf)".to_owned(),
        ),
        ErrorKind::InvalidIssuer => (
            FailureReason::WrongIssuer,
            "the token's iss is not this node's issuer".to_owned(),
        ),
        ErrorKind::InvalidAudience => (
            FailureReason::WrongAudience,
            "the token's aud does not name this node's audience".to_owned(),
        ),
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => (
            FailureReason::WrongIssuer,
            "the token has no iss claim".to_owned(),
        ),
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => (
            FailureReason::WrongAudience,
            "the token has no aud claim".to_owned(),
        ),
        ErrorKind::MissingRequiredClaim(claim) => (
            FailureReason::InvalidClaims,
            format!("the token has no {claim} claim"),
        ),
        ErrorKind::InvalidClaimFormat(claim) => (
            FailureReason::InvalidClaims,
            format!("the token's {claim} claim is not a number of seconds"),
        ),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => (
            FailureReason::AlgNotAllowed,
            "the token's alg is not accepted".to_owned(),
        ),
        _ => (
            FailureReason::Malformed,
            "the token is not a well-formed JWT".to_owned(),
        ),
    };
    AuthFailure::new(reason, message)
}

/// The verifying key `[auth]` names, and its kind.
fn decoding_key(auth: &AuthSettings) -> Result<(DecodingKey, KeyKind), KeyProblem> {
    let has_secret = !auth.secret.is_blank();
    let path = &auth.public_key_path;
    match (has_secret, path.as_os_str().is_empty()) {
        (true, true) => {
            let secret = auth.secret.expose().as_bytes();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(KeyProblem {
                    key: "auth.secret",
                    reason: format!(
                        "must be at least {MIN_SECRET_BYTES} bytes (256 bits) long, not {}: \
                         a short HMAC key can be guessed offline from any one token",
                        secret.len()
                    ),
                });
            }
            Ok((DecodingKey::from_secret(secret), KeyKind::Secret))
        }
        (false, false) => read_public_key(path),
        (true, false) => Err(KeyProblem {
            key: "auth.public_key_path",
            reason: "and auth.secret are both set: give one of them".to_owned(),
        }),
        (false, true) => Err(KeyProblem {
            key: "auth.mode",
            reason: "is \"jwt\", which needs auth.secret or auth.public_key_path".to_owned(),
        }),
    }
}

fn read_public_key(path: &std::path::Path) -> Result<(DecodingKey, KeyKind), KeyProblem> {
    let problem = |reason: String| KeyProblem {
        key: "auth.public_key_path",
        reason,
    };
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => problem(format!("file {shown} not found")),
        _ => problem(format!("file {shown} cannot be read: {e}")),
    })?;
    if String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
        return Err(problem(format!(
            "{shown} holds a private key; give the public key only \
             (`openssl pkey -in private.pem -pubout`)"
        )));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, KeyKind::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, KeyKind::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, KeyKind::Ed25519));
    }
    Err(problem(format!(
        "{shown} holds no RSA, EC or Ed25519 public key in PEM \
         (a \"-----BEGIN PUBLIC KEY-----\" block)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, Secret};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "an-hs256-test-secret-of-32-bytes-or-more";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs_settings() -> AuthSettings {
        AuthSettings {
            mode: AuthMode::Jwt,
            secret: Secret::new(SECRET),
            leeway_secs: 0,
            ..AuthSettings::default()
        }
    }

    fn hs_token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn reason(verifier: &TokenVerifier, token: &str) -> FailureReason {
        verifier.verify(token).unwrap_err().reason
    }

    #[test]
    fn claims_become_the_identity() {
        let verifier = TokenVerifier::from_settings(&hs_settings()).unwrap();
        let exp = now() + 60;
        let who = verifier
            .verify(&hs_token(json!({
                "sub": "alice", "name": " Alice ", "exp": exp,
                "roles": ["staff"], "rooms": ["team:red:*"], "extra": true
            })))
            .unwrap();
        assert_eq!(who.user.id, "alice");
        assert_eq!(who.user.name, "Alice");
        assert!(who.name_given);
        assert_eq!(who.grants.roles, ["staff"]);
        assert!(who.grants.claims_room("team:red:1"));
        assert_eq!(
            who.grants.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
        );

        let plain = verifier
            .verify(&hs_token(json!({"sub": "bob", "exp": now() + 60})))
            .unwrap();
        assert_eq!(plain.user.name, "bob");
        assert!(!plain.name_given);
        assert!(plain.grants.roles.is_empty() && plain.grants.rooms.is_none());
    }

    #[test]
    fn unusable_claims_are_refused_only_when_signed() {
        let verifier = TokenVerifier::from_settings(&hs_settings()).unwrap();
        let exp = now() + 60;
        for claims in [
            json!({"exp": exp}),
            json!({"sub": "a b", "exp": exp}),
            json!({"sub": "", "exp": exp}),
            json!({"sub": "alice"}),
            json!({"sub": "alice", "exp": "soon"}),
            json!({"sub": 7, "exp": exp}),
            json!({"sub": "alice", "exp": exp, "name": "\u{7}"}),
            json!({"sub": "alice", "exp": exp, "rooms": "lobby"}),
            json!({"sub": "alice", "exp": exp, "rooms": ["a{b"]}),
            json!({"sub": "alice", "exp": exp, "roles": [1]}),
        ] {
            assert_eq!(
                reason(&verifier, &hs_token(claims.clone())),
                FailureReason::InvalidClaims,
                "{claims}"
            );
        }
    }

    #[test]
    fn times_issuer_and_audience_are_checked() {
        let mut settings = hs_settings();
        settings.issuer = "https://issuer.example".into();
        settings.audience = "hubbub".into();
        let verifier = TokenVerifier::from_settings(&settings).unwrap();
        let good = json!({"sub": "a", "exp": now() + 60, "iss": "https://issuer.example", "aud": "hubbub"});
        assert!(verifier.verify(&hs_token(good.clone())).is_ok());
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = good.clone();
            claims[key] = value;
            hs_token(claims)
        };
        let without = |key: &str| {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(key);
            hs_token(claims)
        };
        assert!(verifier
            .verify(&with("aud", json!(["other", "hubbub"])))
            .is_ok());
        assert_eq!(
            reason(&verifier, &with("exp", json!(now() - 5))),
            FailureReason::Expired
        );
        assert_eq!(
            reason(&verifier, &with("nbf", json!(now() + 60))),
            FailureReason::NotYetValid
        );
        assert_eq!(
            reason(&verifier, &with("iss", json!("https://evil.example"))),
            FailureReason::WrongIssuer
        );
        assert_eq!(
            reason(&verifier, &without("iss")),
            FailureReason::WrongIssuer
        );
        assert_eq!(
            reason(&verifier, &with("aud", json!("other"))),
            FailureReason::WrongAudience
        );
        assert_eq!(
            reason(&verifier, &without("aud")),
            FailureReason::WrongAudience
        );

        // Without an audience configured, a token's aud is not judged.
        let open = TokenVerifier::from_settings(&hs_settings()).unwrap();
        assert!(open.verify(&with("aud", json!("anyone"))).is_ok());
    }

    #[test]
    fn leeway_applies_to_exp_and_expiry() {
        let mut settings = hs_settings();
        settings.leeway_secs = 30;
        let verifier = TokenVerifier::from_settings(&settings).unwrap();
        let exp = now() - 10;
        let who = verifier
            .verify(&hs_token(json!({"sub": "a", "exp": exp})))
            .unwrap();
        assert_eq!(
            who.grants.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp + 30))
        );
    }

    #[test]
    fn alg_none_and_strangers_are_not_allowed() {
        let verifier = TokenVerifier::from_settings(&hs_settings()).unwrap();
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let claims = b64(json!({"sub": "mallory", "exp": now() + 60}));
        for alg in ["none", "None", "NONE", "HS512", "RS256"] {
            let token = format!("{}.{claims}.", b64(json!({"alg": alg, "typ": "JWT"})));
            assert_eq!(
                reason(&verifier, &token),
                FailureReason::AlgNotAllowed,
                "{alg}"
            );
        }
        let sneaky = format!("{}.{claims}.", b64(json!({"alg": "x".repeat(40)})));
        let failure = verifier.verify(&sneaky).unwrap_err();
        assert_eq!(failure.reason, FailureReason::AlgNotAllowed);
        assert!(!failure.message.contains("xxxx"), "{}", failure.message);
    }

    #[test]
    fn garbage_is_malformed() {
        let verifier = TokenVerifier::from_settings(&hs_settings()).unwrap();
        for token in ["x", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.", "bnVsbA.e30."] {
            assert_eq!(
                reason(&verifier, token),
                FailureReason::Malformed,
                "{token}"
            );
        }
        let good = hs_token(json!({"sub": "a", "exp": now() + 60}));
        let (rest, _signature) = good.rsplit_once('.').unwrap();
        assert_eq!(
            reason(&verifier, &format!("{rest}.AAAA")),
            FailureReason::BadSignature
        );
    }

    #[test]
    fn key_problems_name_the_key() {
        let short = AuthSettings {
            secret: Secret::new("short"),
            ..hs_settings()
        };
        assert_eq!(
            TokenVerifier::from_settings(&short).err().unwrap().key,
            "auth.secret"
        );
        let wrong_family = AuthSettings {
            algorithms: vec![JwtAlgorithm::RS256],
            ..hs_settings()
        };
        let problem = TokenVerifier::from_settings(&wrong_family).err().unwrap();
        assert_eq!(problem.key, "auth.algorithms");
        let missing = AuthSettings {
            secret: Secret::default(),
            public_key_path: "/nonexistent/hubbub-test.pem".into(),
            ..hs_settings()
        };
        let problem = TokenVerifier::from_settings(&missing).err().unwrap();
        assert_eq!(problem.key, "auth.public_key_path");
        assert!(problem.reason.contains("not found"), "{problem}");
    }
}
