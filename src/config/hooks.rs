//! Settings of the node's calls to the application's backend: `[hooks]` (the connect
//! and publish hooks, which decide) and `[[webhooks]]` (signed events, which inform).
//!
//! Owns the typed sections and their rules; `src/hooks/` owns using them. Webhook
//! secrets are [`Secret`]s and never printed.

use super::Secret;
use serde::{Deserialize, Serialize};

/// What a hook does when the backend cannot answer (a timeout, a connection error, a
/// status that is not 2xx, an answer that does not parse, or an open circuit breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// As if the backend had allowed: the publish goes through unchanged; the
    /// connection is identified as it would be without the hook (the query's
    /// `user`/`name`, or the verified JWT).
    FailOpen,
    /// Refused: the publish is answered `unavailable`; the upgrade gets HTTP 503.
    FailClosed,
}

/// `[hooks]`: the backend decides who connects and what is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksSettings {
    /// `http://` or `https://` URL the node POSTs each WebSocket upgrade to. Empty: no
    /// connect hook.
    pub connect_url: String,
    /// Request headers of the upgrade passed to the connect hook (case-insensitive
    /// names). Empty: none.
    pub pass_headers: Vec<String>,
    /// Milliseconds the connect hook may take.
    pub connect_timeout_ms: u64,
    /// What an upgrade does when the connect hook cannot answer.
    pub connect_failure: FailurePolicy,
    /// URL the node POSTs each publish to, before it is ordered. Empty: no publish hook.
    pub publish_url: String,
    /// Room-name patterns (globs, as in `[[rooms.acl]]`) whose publishes go to the
    /// hook. Empty: every room.
    pub publish_rooms: Vec<String>,
    /// Milliseconds the publish hook may take.
    pub publish_timeout_ms: u64,
    /// What a publish does when the publish hook cannot answer.
    pub publish_failure: FailurePolicy,
    /// Failures in a row after which a hook's circuit breaker opens: the hook is not
    /// called (its failure policy applies at once) until the cool-down has passed.
    /// 0: no breaker.
    pub breaker_failures: u32,
    /// Milliseconds an open breaker waits before it lets one call through to try.
    pub breaker_cooldown_ms: u64,
    /// The largest answer body a hook may send; a longer one is a failure.
    pub max_response_bytes: usize,
    /// Seconds of `publish` webhook events a node replays when it becomes the leader
    /// of a shard (the old leader may not have sent them). 0: no replay.
    pub webhook_replay_secs: u64,
}

impl Default for HooksSettings {
    fn default() -> Self {
        Self {
            connect_url: String::new(),
            pass_headers: Vec::new(),
            connect_timeout_ms: 2_000,
            connect_failure: FailurePolicy::FailClosed,
            publish_url: String::new(),
            publish_rooms: Vec::new(),
            publish_timeout_ms: 1_000,
            publish_failure: FailurePolicy::FailOpen,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
            max_response_bytes: 65_536,
            webhook_replay_secs: 60,
        }
    }
}

/// The events a webhook endpoint may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    Connect,
    Disconnect,
    Join,
    Leave,
    Publish,
    RoomCreated,
    RoomEmptied,
}

impl WebhookEvent {
    /// Every event.
    pub const ALL: [WebhookEvent; 7] = [
        Self::Connect,
        Self::Disconnect,
        Self::Join,
        Self::Leave,
        Self::Publish,
        Self::RoomCreated,
        Self::RoomEmptied,
    ];

    /// The event's name, as in `events` and the body's `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Disconnect => "disconnect",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Publish => "publish",
            Self::RoomCreated => "room_created",
            Self::RoomEmptied => "room_emptied",
        }
    }
}

/// One `[[webhooks]]` entry: an endpoint of the backend and what it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The endpoint's name in metrics and logs. Empty: `webhook-N` (N from 1, in file
    /// order).
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// The events this endpoint is sent; at least one.
    pub events: Vec<WebhookEvent>,
    /// The HMAC-SHA256 key of the `X-Hubbub-Signature` header; required. Never printed.
    pub secret: Secret,
    /// Milliseconds one POST may take before it counts as failed and is retried.
    pub timeout_ms: u64,
    /// Events waiting for this endpoint, at most; past it new events are dropped (and
    /// counted).
    pub queue_events: usize,
    /// Bytes of event bodies waiting for this endpoint, at most; likewise.
    pub queue_bytes: u64,
    /// Events one POST carries at most. While more than one is waiting the POST body
    /// is a JSON array. 1: one event per POST, always an object.
    pub batch_max: usize,
    /// Milliseconds before the first retry of a failed POST; doubled each time.
    pub retry_initial_ms: u64,
    /// The longest wait between two retries.
    pub retry_max_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            events: Vec::new(),
            secret: Secret::default(),
            timeout_ms: 5_000,
            queue_events: 10_000,
            queue_bytes: 16 * 1024 * 1024,
            batch_max: 100,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

impl WebhookSettings {
    /// The name in metrics and logs (`index` from 0 in file order).
    pub fn display_name(&self, index: usize) -> String {
        if self.name.trim().is_empty() {
            format!("webhook-{}", index + 1)
        } else {
            self.name.clone()
        }
    }
}

/// The longest a hook or a webhook POST may be given, in milliseconds.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// Every broken rule of `[hooks]` and `[[webhooks]]`, as (key, reason).
pub(super) fn problems(
    hooks: &HooksSettings,
    webhooks: &[WebhookSettings],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut add = |key: &str, reason: String| problems.push((key.to_owned(), reason));
    for (key, url) in [
        ("hooks.connect_url", &hooks.connect_url),
        ("hooks.publish_url", &hooks.publish_url),
    ] {
        if !url.is_empty() {
            if let Err(reason) = check_url(url) {
                add(key, reason);
            }
        }
    }
    for (key, ms) in [
        ("hooks.connect_timeout_ms", hooks.connect_timeout_ms),
        ("hooks.publish_timeout_ms", hooks.publish_timeout_ms),
    ] {
        if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
            add(
                key,
                format!("must be between 1 and {MAX_TIMEOUT_MS}, not {ms}"),
            );
        }
    }
    if hooks.breaker_failures > 0 && hooks.breaker_cooldown_ms == 0 {
        add(
            "hooks.breaker_cooldown_ms",
            "must be above 0 when hooks.breaker_failures is (set breaker_failures = 0 to \
             turn the breaker off)"
                .to_owned(),
        );
    }
    if hooks.max_response_bytes == 0 {
        add("hooks.max_response_bytes", "must be above 0".to_owned());
    }
    for (i, name) in hooks.pass_headers.iter().enumerate() {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            add(
                "hooks.pass_headers",
                format!("header {} {name:?} is not a header name", i + 1),
            );
        }
    }
    for (i, pattern) in hooks.publish_rooms.iter().enumerate() {
        if let Err(e) = globset::Glob::new(pattern) {
            add(
                "hooks.publish_rooms",
                format!("pattern {} {pattern:?} does not compile: {e}", i + 1),
            );
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, hook) in webhooks.iter().enumerate() {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        match check_url(&hook.url) {
            Ok(()) => {}
            Err(reason) => add(&key("url"), reason),
        }
        if hook.events.is_empty() {
            add(
                &key("events"),
                format!(
                    "must name at least one event of {}",
                    WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ")
                ),
            );
        }
        if hook.secret.is_blank() {
            add(
                &key("secret"),
                "is required: every delivery is signed with it".to_owned(),
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&hook.timeout_ms) {
            add(
                &key("timeout_ms"),
                format!(
                    "must be between 1 and {MAX_TIMEOUT_MS}, not {}",
                    hook.timeout_ms
                ),
            );
        }
        if hook.queue_events == 0 {
            add(&key("queue_events"), "must be at least 1".to_owned());
        }
        if hook.queue_bytes < 1024 {
            add(&key("queue_bytes"), "must be at least 1024".to_owned());
        }
        if hook.batch_max == 0 {
            add(
                &key("batch_max"),
                "must be at least 1 (1: one event per POST)".to_owned(),
            );
        }
        if hook.retry_initial_ms == 0 || hook.retry_max_ms < hook.retry_initial_ms {
            add(
                &key("retry_max_ms"),
                "retry_initial_ms must be above 0 and retry_max_ms at least retry_initial_ms"
                    .to_owned(),
            );
        }
        if !names.insert(hook.display_name(i)) {
            add(
                &key("name"),
                format!("{:?} names another webhook too", hook.display_name(i)),
            );
        }
    }
    problems
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> WebhookSettings {
        WebhookSettings {
            name: "crm".into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![WebhookEvent::Publish],
            secret: Secret::new("s3cret"),
            ..WebhookSettings::default()
        }
    }

    #[test]
    fn the_environment_sets_hooks_lists_comma_separated() {
        let env = [
            ("HUBBUB_HOOKS__PASS_HEADERS", "cookie,x-tenant"),
            ("HUBBUB_HOOKS__PUBLISH_ROOMS", "mod-*,support.*"),
            ("HUBBUB_HOOKS__PUBLISH_FAILURE", "fail_closed"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let settings =
            crate::config::load_with_env(&crate::config::ConfigSource::Defaults, None, env)
                .expect("loads");
        assert_eq!(settings.hooks.pass_headers, ["cookie", "x-tenant"]);
        assert_eq!(settings.hooks.publish_rooms, ["mod-*", "support.*"]);
        assert_eq!(settings.hooks.publish_failure, FailurePolicy::FailClosed);
    }

    #[test]
    fn defaults_are_valid_and_every_rule_names_its_key() {
        assert!(problems(&HooksSettings::default(), &[hook()]).is_empty());
        let hooks = HooksSettings {
            connect_url: "ftp://x".into(),
            publish_timeout_ms: 0,
            publish_rooms: vec!["[".into()],
            pass_headers: vec!["bad header".into()],
            ..HooksSettings::default()
        };
        let bad = WebhookSettings {
            url: "http://".into(),
            events: vec![],
            secret: Secret::new(" "),
            batch_max: 0,
            ..WebhookSettings::default()
        };
        let keys: Vec<String> = problems(&hooks, &[bad, hook(), hook()])
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            keys,
            [
                "hooks.connect_url",
                "hooks.publish_timeout_ms",
                "hooks.pass_headers",
                "hooks.publish_rooms",
                "webhooks[0].url",
                "webhooks[0].events",
                "webhooks[0].secret",
                "webhooks[0].batch_max",
                "webhooks[2].name",
            ]
        );
    }
}
