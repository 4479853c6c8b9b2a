//! The connect hook (`[hooks] connect_url`): at a WebSocket upgrade, the node POSTs
//! what the client presented and the backend allows or denies the connection.
//!
//! The request body: `{"headers": {name: value} (only those in `pass_headers`, names
//! lower-case), "query": "<raw query string>", "remote_addr": "<client IP>" | null,
//! "user": {"id","name"} | null (the identity a verified JWT gave), "node"}`.
//! The answer, 2xx with a JSON object:
//! - `{"action": "allow", "user_id": "…", "name": "…", "rooms": ["lobby", …]}`:
//!   `user_id` and `name` name the user (without a verified JWT; with one, the token's
//!   identity wins and these are ignored); `rooms`, optional, are joined at once as if
//!   the client had sent `join` for each.
//! - `{"action": "deny", "status": 401 | 403, "reason": "…"}`: the upgrade is answered
//!   with that status (403 for any other) and the reason.
//!
//! Anything else is a failure, and `connect_failure` decides: `fail_closed` answers
//! 503, `fail_open` identifies the client as it would be without the hook.
//!
//! Asked at both doors: a `/ws` upgrade (src/transport/connect_hook.rs turns the
//! request into a [`ConnectRequest`] and a refusal into an HTTP answer) and a
//! Socket.IO CONNECT (src/socketio/connection.rs: the handshake's headers, query and
//! address, plus the CONNECT's `auth` object and `namespace`; a refusal is a
//! CONNECT_ERROR). [`ConnectHook::admit`] applies the verdict the same way for both.
//!
//! Who wins: with `[auth] mode = "jwt"` the token is verified first (a bad one is
//! refused before the backend is asked) and its identity is the connection's; the hook
//! may still deny, and may name rooms to join. In anonymous mode the hook's `user_id`
//! and `name` are the identity (an allow without `user_id` keeps the client's, or the
//! guest id made for it).
//!
//! Must not know: actix, actors.

use super::breaker::Breaker;
use super::call::HookCall;
use super::client::HttpClient;
use crate::auth::Identity;
use crate::config::{FailurePolicy, HooksSettings};
use crate::protocol::{validate_display_name, validate_user_id, UserInfo};
use crate::telemetry::hook_metrics::{Hook, HookMetrics};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// What the hook is told of the HTTP request that opened a connection (the upgrade,
/// or a Socket.IO handshake).
#[derive(Debug, Clone, Default)]
pub struct ConnectInput {
    /// The passed headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The raw query string.
    pub query: String,
    pub remote_addr: Option<IpAddr>,
}

/// What the hook is told about one connection.
pub struct ConnectRequest<'a> {
    pub input: &'a ConnectInput,
    /// The identity of a verified JWT, if any.
    pub user: Option<&'a UserInfo>,
    /// A Socket.IO CONNECT's `auth` object (None for `/ws`).
    pub auth: Option<&'a Value>,
    /// A Socket.IO CONNECT's namespace (None for `/ws`).
    pub namespace: Option<&'a str>,
}

/// Why the hook turned a connection away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The backend denied it: 401 or 403, and its reason for the client.
    Denied { status: u16, reason: String },
    /// The hook gave no usable answer and `connect_failure = "fail_closed"`.
    Unavailable(String),
}

/// A connection the hook let in: who it is, and the rooms the hook named for it to
/// join at once (as the hook wrote them; the caller checks and places them).
pub type Admission = Result<(Identity, Vec<String>), ConnectRefusal>;

/// What the hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectVerdict {
    Allow {
        user_id: Option<String>,
        name: Option<String>,
        rooms: Vec<String>,
    },
    Deny {
        /// 401 or 403.
        status: u16,
        reason: String,
    },
    /// The hook could not answer: the failure policy applies.
    Failed(String),
}

/// The connect hook of a node.
pub struct ConnectHook {
    call: HookCall,
    pass_headers: Vec<String>,
    /// What the caller does with [`ConnectVerdict::Failed`].
    pub failure: FailurePolicy,
}

#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

impl ConnectHook {
    /// The hook `[hooks]` describes.
    pub fn new(hooks: &HooksSettings, client: HttpClient, metrics: HookMetrics) -> Self {
        Self {
            call: HookCall {
                hook: Hook::Connect,
                url: hooks.connect_url.clone(),
                timeout: Duration::from_millis(hooks.connect_timeout_ms),
                max_bytes: hooks.max_response_bytes,
                breaker: Mutex::new(Breaker::new(
                    hooks.breaker_failures,
                    Duration::from_millis(hooks.breaker_cooldown_ms),
                )),
                client,
                metrics,
            },
            pass_headers: hooks
                .pass_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            failure: hooks.connect_failure,
        }
    }

    /// The (lower-case) names of the headers to pass.
    pub fn pass_headers(&self) -> &[String] {
        &self.pass_headers
    }

    /// Asks the backend about one upgrade.
    pub async fn ask(&self, request: ConnectRequest<'_>, node: &str) -> ConnectVerdict {
        let input = request.input;
        let headers: Map<String, Value> = input
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect();
        let mut body = json!({
            "headers": headers,
            "query": input.query,
            "remote_addr": input.remote_addr.map(|ip| ip.to_string()),
            "user": request.user,
            "node": node,
        });
        if let Some(namespace) = request.namespace {
            body["namespace"] = Value::from(namespace);
            body["auth"] = request.auth.cloned().unwrap_or(Value::Null);
        }
        let label = |verdict: &ConnectVerdict| match verdict {
            ConnectVerdict::Deny { .. } => "deny",
            _ => "allow",
        };
        self.call
            .call(body.to_string().into_bytes(), parse, label)
            .await
            .unwrap_or_else(ConnectVerdict::Failed)
    }
}

impl ConnectHook {
    /// Asks the backend about a connection the node admitted as `identity` (`jwt`:
    /// a verified token's, which the hook cannot rename) and applies its verdict.
    pub async fn admit(
        &self,
        request: ConnectRequest<'_>,
        node: &str,
        identity: Identity,
        jwt: bool,
    ) -> Admission {
        let verdict = self.ask(request, node).await;
        self.apply(verdict, identity, jwt)
    }

    fn apply(&self, verdict: ConnectVerdict, mut identity: Identity, jwt: bool) -> Admission {
        let (user_id, name, rooms) = match verdict {
            ConnectVerdict::Allow {
                user_id,
                name,
                rooms,
            } => (user_id, name, rooms),
            ConnectVerdict::Deny { status, reason } => {
                return Err(ConnectRefusal::Denied { status, reason })
            }
            ConnectVerdict::Failed(reason) => return self.failed(identity, reason),
        };
        if !jwt {
            if let Some(id) = user_id {
                let Ok(id) = validate_user_id(&id) else {
                    let reason = "the connect hook's user_id is not a valid user id";
                    return self.failed(identity, reason.to_owned());
                };
                identity.user.name = id.clone();
                identity.user.id = id;
                identity.name_given = false;
            }
            if let Some(name) = name {
                let Ok(name) = validate_display_name(&name) else {
                    let reason = "the connect hook's name is not a valid name";
                    return self.failed(identity, reason.to_owned());
                };
                identity.user.name = name;
                identity.name_given = true;
            }
        }
        Ok((identity, rooms))
    }

    /// No usable answer: what `connect_failure` says.
    fn failed(&self, identity: Identity, reason: String) -> Admission {
        tracing::debug!(%reason, "connect hook gave no usable answer");
        match self.failure {
            FailurePolicy::FailOpen => Ok((identity, Vec::new())),
            FailurePolicy::FailClosed => Err(ConnectRefusal::Unavailable(reason)),
        }
    }
}

fn parse(body: &[u8]) -> Result<ConnectVerdict, String> {
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the connect hook's answer is not an allow or a deny: {e}"))?;
    match answer.action.as_str() {
        "allow" => Ok(ConnectVerdict::Allow {
            user_id: answer.user_id,
            name: answer.name,
            rooms: answer.rooms,
        }),
        "deny" => Ok(ConnectVerdict::Deny {
            status: match answer.status {
                Some(401) => 401,
                _ => 403,
            },
            reason: answer
                .reason
                .unwrap_or_else(|| "the application refused this connection".to_owned()),
        }),
        other => Err(format!(
            "the connect hook answered an unknown action {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_verdicts() {
        assert_eq!(
            parse(br#"{"action":"allow","user_id":"u1","name":"Ann","rooms":["lobby"]}"#),
            Ok(ConnectVerdict::Allow {
                user_id: Some("u1".into()),
                name: Some("Ann".into()),
                rooms: vec!["lobby".into()],
            })
        );
        assert_eq!(
            parse(br#"{"action":"deny","status":401,"reason":"who?"}"#),
            Ok(ConnectVerdict::Deny {
                status: 401,
                reason: "who?".into()
            })
        );
        // Any status but 401 is a 403.
        assert!(matches!(
            parse(br#"{"action":"deny","status":500}"#),
            Ok(ConnectVerdict::Deny { status: 403, .. })
        ));
        assert!(parse(b"{}").is_err());
        assert!(parse(b"").is_err());
    }
}
