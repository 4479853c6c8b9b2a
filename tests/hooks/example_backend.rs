//! The example backend (examples/backend/server.js, Node.js) against a real node: it
//! is the connect hook, the publish hook and a webhook endpoint, and it answers
//! `!count` through the server API — here a stand-in for `POST /api/publish` (the
//! contract of docs/api.md), recording what the example sends.
//!
//! Needs `node` on the PATH (.ci/run installs it before the tests).

use crate::backend::{Backend, Reply};
use crate::support::{TestNode, DEADLINE};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "example-backend-secret-0123456789";

/// The example's process; killed when dropped.
struct Example {
    child: Child,
    port: u16,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_example(store: &Path, api: &str) -> Example {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/backend/server.js");
    let mut child = Command::new("node")
        .arg(&script)
        .env("PORT", "0")
        .env("HUBBUB_WEBHOOK_SECRET", SECRET)
        .env("STORE", store)
        .env("HUBBUB_API_URL", api)
        .env("HUBBUB_API_KEY", "test-api-key")
        .stdout(Stdio::piped())
        .spawn()
        .expect("`node` runs (install Node.js: .ci/run does)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("the example says where it listens");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("a port in {line:?}"));
    Example { child, port }
}

fn stored(store: &Path) -> Vec<Value> {
    std::fs::read_to_string(store)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn the_example_backend_moderates_stores_and_answers_through_the_api() {
    let api = Backend::start().await;
    api.respond(|r| {
        let room = r.json()["room"].clone();
        Reply::ok(json!({"room": room, "id": "01938c1e-0000-7000-8000-000000000000", "seq": 99}))
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = dir.path().join("messages.jsonl");
    let example = start_example(&store, &api.url(""));
    let base = format!("http://127.0.0.1:{}", example.port);
    let node = TestNode::start_adjusted(|s| {
        s.hooks.connect_url = format!("{base}/hubbub/connect");
        s.hooks.publish_url = format!("{base}/hubbub/publish");
        s.webhooks = vec![hubbub::config::WebhookSettings {
            name: "example".into(),
            url: format!("{base}/hubbub/events"),
            events: hubbub::config::WebhookEvent::ALL.to_vec(),
            secret: hubbub::config::Secret::new(SECRET),
            ..Default::default()
        }];
    })
    .await;

    let refused = node
        .try_connect("user=mallory&banned")
        .await
        .err()
        .expect("banned");
    assert_eq!(refused.status, 403, "{}", refused.body);
    let mut alice = node
        .try_connect("user=alice&name=Alice")
        .await
        .expect("let in");
    // The connect hook joined alice to the lobby.
    alice
        .expect(
            |f| f["type"] == "reply" && f["data"]["room"] == "lobby",
            "the lobby join",
        )
        .await;
    alice.publish("lobby", "hello").await;
    let code = alice
        .refused(json!({"type": "publish", "room": "lobby", "content": "cheap spam"}))
        .await;
    assert_eq!(code, "forbidden");
    alice.publish("lobby", "oh darn").await;
    alice.publish("lobby", "!count").await;

    let until = Instant::now() + DEADLINE;
    let lines = loop {
        let lines = stored(&store);
        if lines.len() >= 3 {
            break lines;
        }
        assert!(Instant::now() < until, "stored {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let contents: Vec<&str> = lines
        .iter()
        .map(|l| l["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hello", "oh d**n", "!count"]);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);

    // `!count` was answered through the server API, as docs/api.md says to call it.
    let posted = api
        .wait_for("/api/publish", "the system message", |seen| {
            !seen.is_empty()
        })
        .await;
    assert_eq!(posted[0].headers["authorization"], "Bearer test-api-key");
    assert_eq!(
        posted[0].json(),
        json!({"room": "lobby", "content": "3 messages stored for lobby"})
    );
}
