//! The publish hook (`[hooks] publish_url`): before a message is ordered, the node
//! POSTs it to the backend, which accepts it, rejects it (the client's reply carries
//! the backend's code and message) or rewrites its content.
//!
//! The request body: `{"room", "user": {"id","name"}, "content", "data" (the
//! publish's structured data, or null; never rewritten), "idempotency_key" (the
//! client's, or null), "session", "node"}`.
//! The answer, 2xx with a JSON object (an empty body accepts):
//! - `{"action": "accept"}` (or `{}`),
//! - `{"action": "reject", "code": "forbidden", "message": "…"}`: `code` one of the
//!   protocol's error codes (docs/protocol.md), else `forbidden`,
//! - `{"action": "rewrite", "content": "…"}`.
//!
//! Anything else (a timeout, no connection, a status that is not 2xx, an answer that
//! does not parse, an open breaker) is a failure, and `publish_failure` decides:
//! `fail_open` accepts unchanged, `fail_closed` refuses with `unavailable`.
//!
//! The Session awaits the hook in its own path, before it hands the publish to the
//! room: a slow backend slows that connection's publishes only, never the room or
//! its other members.

use super::breaker::Breaker;
use super::call::HookCall;
use super::client::HttpClient;
use crate::config::{FailurePolicy, HooksSettings};
use crate::protocol::{ErrorBody, ErrorCode, MessageData, UserInfo};
use crate::telemetry::hook_metrics::{Hook, HookMetrics};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::json;
use std::sync::Mutex;
use std::time::Duration;

/// What the hook decided for one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Order it as it is.
    Accept,
    /// Order this content instead.
    Rewrite(String),
    /// Refuse it with this error.
    Reject(ErrorBody),
}

/// One publish, as the hook is asked about it.
pub struct PublishCheck<'a> {
    pub room: &'a str,
    pub user: &'a UserInfo,
    /// The connection's id (its `welcome`'s `session`).
    pub session: &'a str,
    pub content: &'a str,
    /// The publish's structured data (protocol v1 `data`), if any: shown to the hook,
    /// never rewritten by it.
    pub data: Option<&'a MessageData>,
    /// The client's key for retries, if it gave one: a backend can tell a retry.
    pub idempotency_key: Option<&'a str>,
}

/// The publish hook of a node.
pub struct PublishHook {
    call: HookCall,
    node: String,
    /// None: every room.
    rooms: Option<GlobSet>,
    failure: FailurePolicy,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

impl PublishHook {
    /// The hook `[hooks]` describes (its patterns were validated).
    pub fn new(
        hooks: &HooksSettings,
        node: &str,
        client: HttpClient,
        metrics: HookMetrics,
    ) -> Self {
        let rooms = (!hooks.publish_rooms.is_empty()).then(|| {
            let mut builder = GlobSetBuilder::new();
            for pattern in &hooks.publish_rooms {
                if let Ok(glob) = Glob::new(pattern) {
                    builder.add(glob);
                }
            }
            builder.build().unwrap_or_else(|_| GlobSet::empty())
        });
        Self {
            call: HookCall {
                hook: Hook::Publish,
                url: hooks.publish_url.clone(),
                timeout: Duration::from_millis(hooks.publish_timeout_ms),
                max_bytes: hooks.max_response_bytes,
                breaker: Mutex::new(Breaker::new(
                    hooks.breaker_failures,
                    Duration::from_millis(hooks.breaker_cooldown_ms),
                )),
                client,
                metrics,
            },
            node: node.to_owned(),
            rooms,
            failure: hooks.publish_failure,
        }
    }

    /// Whether publishes in `room` go to the hook.
    pub fn applies(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|set| set.is_match(room))
    }

    /// Asks the backend about one publish; never fails (a failure becomes what the
    /// failure policy says).
    pub async fn check(&self, publish: PublishCheck<'_>) -> Verdict {
        let PublishCheck {
            room,
            user,
            session,
            content,
            data,
            idempotency_key,
        } = publish;
        let body = json!({
            "room": room,
            "user": user,
            "content": content,
            "data": data,
            "idempotency_key": idempotency_key,
            "session": session,
            "node": self.node,
        });
        let label = |verdict: &Verdict| match verdict {
            Verdict::Accept => "accept",
            Verdict::Rewrite(_) => "rewrite",
            Verdict::Reject(_) => "reject",
        };
        match self
            .call
            .call(body.to_string().into_bytes(), parse, label)
            .await
        {
            Ok(verdict) => verdict,
            Err(reason) => self.failed(&reason),
        }
    }

    fn failed(&self, reason: &str) -> Verdict {
        match self.failure {
            FailurePolicy::FailOpen => Verdict::Accept,
            FailurePolicy::FailClosed => Verdict::Reject(ErrorBody::new(
                ErrorCode::Unavailable,
                format!("{reason}; retry"),
            )),
        }
    }
}

/// The verdict a 2xx answer body holds; Err when it holds none.
fn parse(body: &[u8]) -> Result<Verdict, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Verdict::Accept);
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the publish hook's answer is not a JSON object: {e}"))?;
    match answer.action.as_deref().unwrap_or("accept") {
        "accept" => Ok(Verdict::Accept),
        "rewrite" => match answer.content {
            Some(content) => Ok(Verdict::Rewrite(content)),
            None => Err("the publish hook's rewrite has no content".to_owned()),
        },
        "reject" => {
            let code = answer
                .code
                .and_then(|c| serde_json::from_value::<ErrorCode>(json!(c)).ok())
                .unwrap_or(ErrorCode::Forbidden);
            let message = answer
                .message
                .unwrap_or_else(|| "the message was rejected".to_owned());
            Ok(Verdict::Reject(ErrorBody::new(code, message)))
        }
        other => Err(format!(
            "the publish hook answered an unknown action {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_verdicts() {
        assert_eq!(parse(b""), Ok(Verdict::Accept));
        assert_eq!(parse(b"{}"), Ok(Verdict::Accept));
        assert_eq!(parse(br#"{"action":"accept"}"#), Ok(Verdict::Accept));
        assert_eq!(
            parse(br#"{"action":"rewrite","content":"***"}"#),
            Ok(Verdict::Rewrite("***".into()))
        );
        assert_eq!(
            parse(br#"{"action":"reject","code":"too_long","message":"shorter"}"#),
            Ok(Verdict::Reject(ErrorBody::new(
                ErrorCode::TooLong,
                "shorter"
            )))
        );
        // A code the protocol does not have becomes forbidden.
        assert_eq!(
            parse(br#"{"action":"reject","code":"spam","message":"no"}"#),
            Ok(Verdict::Reject(ErrorBody::new(ErrorCode::Forbidden, "no")))
        );
        assert!(parse(br#"{"action":"rewrite"}"#).is_err());
        assert!(parse(br#"{"action":"explode"}"#).is_err());
        assert!(parse(b"[1]").is_err());
    }
}
