//! Settings of who may connect and what a client may do: `[auth]`, `[[rooms.acl]]`,
//! `[rate_limit]` and `[http]`.
//!
//! Owns the typed sections and their rules. What a rule needs beyond the text (that a
//! key file parses and fits the algorithms, that an ACL pattern compiles) is asked of
//! [`crate::auth`], which owns using them, so the two can never disagree; the PEM
//! files of `[http.tls]` are checked as those of `[cluster.tls]` are (`pem.rs`).

use super::pem::{check_pem_file, PemHolds};
use super::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// `[auth]`: how a connecting client proves who it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// The HS256/384/512 key (jwt mode). Never printed; give it as
    /// `HUBBUB_AUTH__SECRET`.
    pub secret: Secret,
    /// A PEM public key (RSA, EC or Ed25519) that verifies tokens (jwt mode); empty
    /// means none. Exactly one of `secret` and `public_key_path` is set in jwt mode.
    pub public_key_path: PathBuf,
    /// The signature algorithms accepted; empty picks by key: HS256 for a secret,
    /// RS256 for an RSA key, ES256 for an EC key, EdDSA for an Ed25519 key.
    pub algorithms: Vec<JwtAlgorithm>,
    /// When not empty, a token's `iss` must be this.
    pub issuer: String,
    /// When not empty, a token's `aud` must be (or contain) this.
    pub audience: String,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Anonymous,
            secret: Secret::default(),
            public_key_path: PathBuf::new(),
            algorithms: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
        }
    }
}

/// How clients are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The client names itself: `?user=ID&name=NAME`. No roles, no room claims.
    Anonymous,
    /// The client presents a signed JWT; its `sub` is the user id.
    Jwt,
}

/// A JWS signature algorithm hubbub can verify.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One `[[rooms.acl]]` entry: who may join and who may publish in the rooms whose
/// name matches `pattern`. Which entry applies to a room is decided by
/// [`crate::auth::RoomAccess`] (the most specific pattern wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// A glob over room names, as for room behaviours: `*`, `?`, `[abc]`, `{a,b}`.
    pub pattern: String,
    /// Who may join; default `"public"`.
    #[serde(default)]
    pub join: JoinRule,
    /// Who may publish once joined; default `"members"`.
    #[serde(default)]
    pub publish: PublishRule,
}

/// Who may join a room.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RuleText", into = "RuleText")]
pub enum JoinRule {
    /// `"public"`: anyone.
    #[default]
    Public,
    /// `"claim"`: users whose token's `rooms` claim has a pattern matching the room.
    Claim,
    /// `["role", ...]`: users with at least one of these roles.
    Roles(Vec<String>),
}

/// Who may publish in a room they joined.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RuleText", into = "RuleText")]
pub enum PublishRule {
    /// `"members"`: anyone who joined.
    #[default]
    Members,
    /// `["role", ...]`: members with at least one of these roles.
    Roles(Vec<String>),
}

/// A rule as written: a word or a list of roles.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum RuleText {
    Word(String),
    Roles(Vec<String>),
}

/// By hand rather than `untagged`, whose error ("data did not match any variant")
/// would not say what is expected.
impl<'de> Deserialize<'de> for RuleText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;

        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = RuleText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"public\", \"claim\", \"members\" or a list of roles")
            }

            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<RuleText, E> {
                Ok(RuleText::Word(word.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RuleText, A::Error> {
                let mut roles = Vec::new();
                while let Some(role) = seq.next_element::<String>()? {
                    roles.push(role);
                }
                Ok(RuleText::Roles(roles))
            }
        }

        deserializer.deserialize_any(Text)
    }
}

fn roles_of(roles: Vec<String>) -> Result<Vec<String>, String> {
    if roles.is_empty() {
        return Err("a list of roles must name at least one role".to_owned());
    }
    if let Some(bad) = roles.iter().find(|role| role.trim().is_empty()) {
        return Err(format!("role {bad:?} is blank"));
    }
    Ok(roles)
}

impl TryFrom<RuleText> for JoinRule {
    type Error = String;

    fn try_from(text: RuleText) -> Result<Self, String> {
        match text {
            RuleText::Word(word) if word == "public" => Ok(Self::Public),
            RuleText::Word(word) if word == "claim" => Ok(Self::Claim),
            RuleText::Word(word) => Err(format!(
                "join {word:?} is not \"public\", \"claim\" or a list of roles"
            )),
            RuleText::Roles(roles) => roles_of(roles).map(Self::Roles),
        }
    }
}

impl From<JoinRule> for RuleText {
    fn from(rule: JoinRule) -> Self {
        match rule {
            JoinRule::Public => Self::Word("public".to_owned()),
            JoinRule::Claim => Self::Word("claim".to_owned()),
            JoinRule::Roles(roles) => Self::Roles(roles),
        }
    }
}

impl TryFrom<RuleText> for PublishRule {
    type Error = String;

    fn try_from(text: RuleText) -> Result<Self, String> {
        match text {
            RuleText::Word(word) if word == "members" => Ok(Self::Members),
            RuleText::Word(word) => Err(format!(
                "publish {word:?} is not \"members\" or a list of roles"
            )),
            RuleText::Roles(roles) => roles_of(roles).map(Self::Roles),
        }
    }
}

impl From<PublishRule> for RuleText {
    fn from(rule: PublishRule) -> Self {
        match rule {
            PublishRule::Members => Self::Word("members".to_owned()),
            PublishRule::Roles(roles) => Self::Roles(roles),
        }
    }
}

/// `[rate_limit]`: what one user or one client address may ask of the node. 0 turns
/// a limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `publish` and `direct` per user per minute, sustained, shared by all of the
    /// user's connections on this node; past it a `rate_limited` reply.
    pub messages_per_minute: u32,
    /// Messages a user may send at once before the sustained rate applies.
    pub burst: u32,
    /// Open WebSockets per client IP address; past it an upgrade gets HTTP 429.
    pub connections_per_ip: u32,
    /// WebSocket upgrades per client IP address per second (as many at once); past it
    /// HTTP 429.
    pub handshakes_per_ip_per_sec: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            messages_per_minute: 50,
            burst: 10,
            connections_per_ip: 100,
            handshakes_per_ip_per_sec: 20,
        }
    }
}

/// `[http]`: the HTTP face of the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Origins (`https://chat.example.com`) whose pages may open WebSockets; empty
    /// allows any. Upgrades without an `Origin` header (non-browser clients) are
    /// always allowed.
    pub allowed_origins: Vec<String>,
    /// Addresses (`10.0.0.2`) or networks (`10.0.0.0/24`) of reverse proxies whose
    /// `X-Forwarded-For` header is believed; empty believes none, and the client
    /// address is the TCP peer's.
    pub trusted_proxies: Vec<String>,
    /// `[http.tls]`: serve HTTPS and WSS on `node.http_addr`; absent means plain HTTP
    /// (and WS), as behind a proxy that terminates TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpTls>,
}

/// `[http.tls]`: the PEM files the node serves HTTPS and WSS with (both required),
/// and how it reaches the other nodes' HTTPS listeners when it relays a Socket.IO
/// request (optional: without `peer_ca`, no relay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The node's certificate, followed by any intermediates clients need.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// The authorities (PEM) the other nodes' `cert` chains to. With it, Socket.IO
    /// requests for a session another node holds are relayed there over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ca: Option<PathBuf>,
    /// The name every other node's certificate is checked for; absent, the host the
    /// relay dials (`[[nodes]] http_addr`, or what the node gossips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<String>,
}

/// A `trusted_proxies` entry: an address (a network of one) or a network in CIDR
/// notation.
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// Every broken rule of these sections, as (key, reason).
pub(super) fn problems(
    auth: &AuthSettings,
    acl: &[AclEntry],
    rate: &RateLimitSettings,
    http: &HttpSettings,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    check_auth(auth, &mut problems);
    for problem in crate::auth::RoomAccess::problems(acl) {
        problems.push(problem);
    }
    if rate.messages_per_minute > 0 && rate.burst < 1 {
        problems.push((
            "rate_limit.burst".to_owned(),
            "must be at least 1 when rate_limit.messages_per_minute is above 0 \
             (set messages_per_minute = 0 to turn the limit off)"
                .to_owned(),
        ));
    }
    for (i, origin) in http.allowed_origins.iter().enumerate() {
        if let Err(reason) = check_origin(origin) {
            problems.push((
                "http.allowed_origins".to_owned(),
                format!("origin {} {origin:?} {reason}", i + 1),
            ));
        }
    }
    for (i, proxy) in http.trusted_proxies.iter().enumerate() {
        if parse_network(proxy).is_none() {
            problems.push((
                "http.trusted_proxies".to_owned(),
                format!(
                    "entry {} {proxy:?} is not an IP address (10.0.0.2) or a network \
                     (10.0.0.0/24)",
                    i + 1
                ),
            ));
        }
    }
    if let Some(tls) = &http.tls {
        for (key, path, holds) in [
            ("http.tls.cert", &tls.cert, PemHolds::Certificates),
            ("http.tls.key", &tls.key, PemHolds::PrivateKey),
        ] {
            if let Err(reason) = check_pem_file(path, holds) {
                problems.push((key.to_owned(), reason));
            }
        }
        if let Some(ca) = &tls.peer_ca {
            if let Err(reason) = check_pem_file(ca, PemHolds::Certificates) {
                problems.push(("http.tls.peer_ca".to_owned(), reason));
            }
        }
        if let Some(name) = &tls.peer_name {
            if tokio_rustls::rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                problems.push((
                    "http.tls.peer_name".to_owned(),
                    format!("{name:?} is not a DNS name or an IP address"),
                ));
            } else if tls.peer_ca.is_none() {
                problems.push((
                    "http.tls.peer_name".to_owned(),
                    "is only used with http.tls.peer_ca, which is not set".to_owned(),
                ));
            }
        }
    }
    problems
}

fn check_auth(auth: &AuthSettings, problems: &mut Vec<(String, String)>) {
    let mut add = |key: &str, reason: String| problems.push((key.to_owned(), reason));
    let has_secret = !auth.secret.is_blank();
    let has_key = !auth.public_key_path.as_os_str().is_empty();
    match auth.mode {
        AuthMode::Anonymous => {
            // A key without jwt mode is almost certainly a forgotten `mode`, which
            // would leave the node open to anyone claiming any id.
            if has_secret || has_key {
                add(
                    "auth.mode",
                    format!(
                        "is \"anonymous\", but auth.{} is set: set mode = \"jwt\" to check \
                         tokens, or remove it",
                        if has_secret {
                            "secret"
                        } else {
                            "public_key_path"
                        }
                    ),
                );
            }
        }
        AuthMode::Jwt => match (has_secret, has_key) {
            (false, false) => add(
                "auth.mode",
                "is \"jwt\", which needs auth.secret (HS256) or auth.public_key_path \
                 (RS256, ES256): give one"
                    .to_owned(),
            ),
            (true, true) => add(
                "auth.public_key_path",
                "and auth.secret are both set: give one of them".to_owned(),
            ),
            _ => {
                if let Err(problem) = crate::auth::TokenVerifier::from_settings(auth) {
                    add(problem.key, problem.reason);
                }
            }
        },
    }
}

/// Why `origin` is not `scheme://host[:port]` as browsers send it, if it is not.
fn check_origin(origin: &str) -> Result<(), String> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("is not scheme://host[:port] (e.g. \"https://chat.example.com\")".to_owned());
    };
    if !matches!(scheme, "http" | "https") {
        return Err("must start with http:// or https://".to_owned());
    }
    if rest.is_empty() {
        return Err("has no host".to_owned());
    }
    if rest.contains('/') {
        return Err(
            "has a path or a trailing `/`; an origin is only scheme://host[:port]".to_owned(),
        );
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains spaces".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_with_env, ConfigError, ConfigSource, Settings};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file under the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "hubbub-access-unit-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let file = TempFile::new(toml);
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>();
        load_with_env(&ConfigSource::File(file.0.clone()), None, env)
    }

    /// The keys of the problems loading `toml` reports.
    fn problem_keys(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
        match load(toml, env) {
            Err(ConfigError::Invalid(problems)) => problems
                .iter()
                .map(|p| p.split_once(": ").map_or("", |(k, _)| k).to_owned())
                .collect(),
            Ok(_) => Vec::new(),
            Err(other) => panic!("expected Invalid, got {other}"),
        }
    }

    fn public_key_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .public_key_pem()
    }

    #[test]
    fn defaults_are_anonymous_and_open() {
        let settings = load("", &[]).unwrap();
        assert_eq!(settings.auth, AuthSettings::default());
        assert_eq!(settings.auth.mode, AuthMode::Anonymous);
        assert_eq!(settings.auth.leeway_secs, 30);
        assert!(settings.rooms.acl.is_empty());
        assert_eq!(settings.rate_limit.messages_per_minute, 50);
        assert_eq!(settings.rate_limit.burst, 10);
        assert_eq!(settings.rate_limit.connections_per_ip, 100);
        assert_eq!(settings.rate_limit.handshakes_per_ip_per_sec, 20);
        assert!(settings.http.allowed_origins.is_empty());
        assert!(settings.http.trusted_proxies.is_empty());
    }

    #[test]
    fn jwt_mode_needs_exactly_one_key() {
        assert_eq!(problem_keys("[auth]\nmode = \"jwt\"\n", &[]), ["auth.mode"]);
        let key = TempFile::new(&public_key_pem());
        let both = format!(
            "[auth]\nmode = \"jwt\"\nsecret = \"{SECRET}\"\npublic_key_path = {:?}\n",
            key.0.display().to_string()
        );
        assert_eq!(problem_keys(&both, &[]), ["auth.public_key_path"]);
        let just_key = format!(
            "[auth]\nmode = \"jwt\"\npublic_key_path = {:?}\n",
            key.0.display().to_string()
        );
        assert_eq!(problem_keys(&just_key, &[]), Vec::<String>::new());
    }

    #[test]
    fn a_key_without_jwt_mode_is_a_mistake() {
        let keys = problem_keys(&format!("[auth]\nsecret = \"{SECRET}\"\n"), &[]);
        assert_eq!(keys, ["auth.mode"]);
    }

    #[test]
    fn the_secret_comes_from_the_environment_and_never_shows() {
        let settings = load(
            "[auth]\nmode = \"jwt\"\n",
            &[("HUBBUB_AUTH__SECRET", SECRET)],
        )
        .unwrap();
        assert_eq!(settings.auth.secret.expose(), SECRET);
        for shown in [format!("{settings:?}"), format!("{:#?}", settings.auth)] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
        let keys = problem_keys(
            "[auth]\nmode = \"jwt\"\n",
            &[("HUBBUB_AUTH__SECRET", "short")],
        );
        assert_eq!(keys, ["auth.secret"]);
        // The problem names the key and its length, never the value.
        let Err(ConfigError::Invalid(problems)) =
            load("[auth]\nmode = \"jwt\"\nsecret = \"shortsecret\"\n", &[])
        else {
            panic!("a short secret is a problem");
        };
        assert!(!problems[0].contains("shortsecret"), "{problems:?}");
    }

    #[test]
    fn the_key_file_must_exist_and_hold_a_public_key() {
        let with_path =
            |path: &str| format!("[auth]\nmode = \"jwt\"\npublic_key_path = {path:?}\n");
        let missing = std::env::temp_dir().join("hubbub-access-unit-no-such.pem");
        let garbage = TempFile::new("not a key");
        let private = TempFile::new(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        );
        for path in [&missing, &garbage.0, &private.0] {
            let keys = problem_keys(&with_path(&path.display().to_string()), &[]);
            assert_eq!(keys, ["auth.public_key_path"], "{}", path.display());
        }
        let Err(ConfigError::Invalid(problems)) =
            load(&with_path(&private.0.display().to_string()), &[])
        else {
            panic!("a private key is a problem");
        };
        assert!(problems[0].contains("private key"), "{problems:?}");
    }

    #[test]
    fn algorithms_must_suit_the_key_and_come_from_the_environment_as_a_list() {
        let key = TempFile::new(&public_key_pem());
        let text = format!(
            "[auth]\nmode = \"jwt\"\npublic_key_path = {:?}\n",
            key.0.display().to_string()
        );
        let settings = load(&text, &[("HUBBUB_AUTH__ALGORITHMS", "ES256, ES384")]).unwrap();
        assert_eq!(
            settings.auth.algorithms,
            [JwtAlgorithm::ES256, JwtAlgorithm::ES384]
        );
        assert_eq!(
            problem_keys(&text, &[("HUBBUB_AUTH__ALGORITHMS", "RS256")]),
            ["auth.algorithms"]
        );
        let unknown = load(&format!("{text}algorithms = [\"none\"]\n"), &[])
            .expect_err("none is no algorithm")
            .to_string();
        assert!(unknown.contains("none"), "{unknown}");
    }

    #[test]
    fn acl_entries_load_from_the_file() {
        let settings = load(
            r#"
[[rooms.acl]]
pattern = "team:*"
join = "claim"

[[rooms.acl]]
pattern = "announce:*"
join = ["staff", "reader"]
publish = ["editor"]

[[rooms.acl]]
pattern = "lobby"
"#,
            &[],
        )
        .unwrap();
        let acl = &settings.rooms.acl;
        assert_eq!(acl.len(), 3);
        assert_eq!(acl[0].join, JoinRule::Claim);
        assert_eq!(acl[0].publish, PublishRule::Members);
        assert_eq!(
            acl[1].join,
            JoinRule::Roles(vec!["staff".into(), "reader".into()])
        );
        assert_eq!(acl[1].publish, PublishRule::Roles(vec!["editor".into()]));
        assert_eq!(acl[2].join, JoinRule::Public);
        // Written back as it was read.
        let text = toml::to_string(&settings.rooms).unwrap();
        assert!(text.contains("join = \"claim\""), "{text}");
        assert!(text.contains("publish = \"members\""), "{text}");
    }

    #[test]
    fn bad_acl_entries_are_named() {
        for (text, expect) in [
            ("pattern = \"a\"\njoin = \"publc\"\n", "publc"),
            ("pattern = \"a\"\npublish = \"everyone\"\n", "everyone"),
            ("pattern = \"a\"\njoin = []\n", "at least one role"),
            ("pattern = \"a\"\njoin = 5\n", "a list of roles"),
            ("pattern = \"a\"\nwho = \"x\"\n", "who"),
            ("join = \"public\"\n", "pattern"),
        ] {
            let message = load(&format!("[[rooms.acl]]\n{text}"), &[])
                .expect_err(text)
                .to_string();
            assert!(message.contains(expect), "{text}: {message}");
        }
        let keys = problem_keys(
            "[[rooms.acl]]\npattern = \"a*\"\n[[rooms.acl]]\npattern = \"b{\"\n\
             [[rooms.acl]]\npattern = \"a*\"\n",
            &[],
        );
        assert_eq!(keys, ["rooms.acl[1].pattern", "rooms.acl[2].pattern"]);
    }

    #[test]
    fn the_message_burst_is_needed_only_when_limited() {
        assert_eq!(
            problem_keys("[rate_limit]\nburst = 0\n", &[]),
            ["rate_limit.burst"]
        );
        assert!(problem_keys("[rate_limit]\nburst = 0\nmessages_per_minute = 0\n", &[]).is_empty());
    }

    #[test]
    fn origins_and_proxies_are_checked() {
        let settings = load(
            "",
            &[
                (
                    "HUBBUB_HTTP__ALLOWED_ORIGINS",
                    "https://chat.example.com,http://localhost:8080",
                ),
                ("HUBBUB_HTTP__TRUSTED_PROXIES", "10.0.0.2, 10.1.0.0/16,::1"),
            ],
        )
        .unwrap();
        assert_eq!(settings.http.allowed_origins.len(), 2);
        assert_eq!(settings.http.trusted_proxies.len(), 3);
        for bad in [
            "chat.example.com",
            "ftp://x",
            "https://",
            "https://x/",
            "https://x/path",
        ] {
            let text = format!("[http]\nallowed_origins = [{bad:?}]\n");
            assert_eq!(problem_keys(&text, &[]), ["http.allowed_origins"], "{bad}");
        }
        for bad in ["10.0.0.300", "proxy.internal", "10.0.0.0/33"] {
            let text = format!("[http]\ntrusted_proxies = [{bad:?}]\n");
            assert_eq!(problem_keys(&text, &[]), ["http.trusted_proxies"], "{bad}");
        }
        assert_eq!(
            parse_network("10.0.0.2").map(|n| n.to_string()),
            Some("10.0.0.2/32".into())
        );
    }

    /// Well-formed PEM that is no real certificate or key: validation checks the PEM
    /// only, start-up the rest (transport::tls).
    const PEM_CERTIFICATE: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBCgKCAQEA\n-----END PRIVATE KEY-----\n";

    fn http_tls(cert: &Path, key: &Path) -> String {
        format!(
            "[http.tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    }

    #[test]
    fn http_tls_is_off_by_default_and_reads_both_files() {
        assert_eq!(load("", &[]).unwrap().http.tls, None);
        let cert = TempFile::new(PEM_CERTIFICATE);
        let key = TempFile::new(PEM_KEY);
        let settings = load(&http_tls(&cert.0, &key.0), &[]).expect("valid");
        assert_eq!(
            settings.http.tls,
            Some(HttpTls {
                cert: cert.0.clone(),
                key: key.0.clone(),
                peer_ca: None,
                peer_name: None,
            })
        );
    }

    #[test]
    fn the_relay_over_https_needs_an_authority_file_and_a_checkable_name() {
        let cert = TempFile::new(PEM_CERTIFICATE);
        let key = TempFile::new(PEM_KEY);
        let ca = TempFile::new(PEM_CERTIFICATE);
        let base = http_tls(&cert.0, &key.0);
        let with = |extra: &str| format!("{base}{extra}");
        let ca_line = format!("peer_ca = {:?}\n", ca.0.display().to_string());
        let settings = load(
            &with(&format!("{ca_line}peer_name = \"chat.example.com\"\n")),
            &[],
        )
        .expect("valid");
        let tls = settings.http.tls.expect("tls");
        assert_eq!(tls.peer_ca.as_deref(), Some(ca.0.as_path()));
        assert_eq!(tls.peer_name.as_deref(), Some("chat.example.com"));
        // A key file is no authority.
        assert_eq!(
            problem_keys(
                &with(&format!("peer_ca = {:?}\n", key.0.display().to_string())),
                &[]
            ),
            ["http.tls.peer_ca"]
        );
        assert_eq!(
            problem_keys(
                &with(&format!("{ca_line}peer_name = \"not a name\"\n")),
                &[]
            ),
            ["http.tls.peer_name"]
        );
        // A name with nothing to check it against says so.
        assert_eq!(
            problem_keys(&with("peer_name = \"chat.example.com\"\n"), &[]),
            ["http.tls.peer_name"]
        );
        // And from the environment.
        let env = [("HUBBUB_HTTP__TLS__PEER_CA", ca.0.to_str().expect("utf-8"))];
        let settings = load(&base, &env).expect("valid");
        assert_eq!(
            settings.http.tls.and_then(|t| t.peer_ca).as_deref(),
            Some(ca.0.as_path())
        );
    }

    #[test]
    fn http_tls_files_must_exist_and_hold_pem_of_their_kind() {
        let cert = TempFile::new(PEM_CERTIFICATE);
        let key = TempFile::new(PEM_KEY);
        let missing = std::env::temp_dir().join(format!(
            "hubbub-access-unit-{}-missing.pem",
            std::process::id()
        ));
        assert_eq!(
            problem_keys(&http_tls(&missing, &key.0), &[]),
            ["http.tls.cert"]
        );
        assert_eq!(
            problem_keys(&http_tls(&cert.0, &std::env::temp_dir()), &[]),
            ["http.tls.key"]
        );
        // Swapped: neither file holds what its key asks for.
        let problems = match load(&http_tls(&key.0, &cert.0), &[]) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("http.tls.cert: ")
                && problems[0].contains("holds no PEM certificate"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("http.tls.key: ")
                && problems[1].contains("holds no PEM private key"),
            "{problems:?}"
        );
    }

    #[test]
    fn http_tls_needs_both_files() {
        let message = load("[http.tls]\ncert = \"/x.crt\"\n", &[])
            .expect_err("a table without key fails")
            .to_string();
        assert!(message.contains("key"), "{message}");
        assert!(message.contains("http.tls"), "{message}");
    }

    #[test]
    fn http_tls_files_can_come_from_the_environment() {
        let pem = TempFile::new(&format!("{PEM_CERTIFICATE}{PEM_KEY}"));
        let path = pem.0.display().to_string();
        let settings = load(
            "",
            &[
                ("HUBBUB_HTTP__TLS__CERT", &path),
                ("HUBBUB_HTTP__TLS__KEY", &path),
            ],
        )
        .expect("env TLS loads");
        assert_eq!(settings.http.tls.expect("tls set").key, pem.0);
    }
}
