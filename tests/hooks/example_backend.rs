//! The example backend (examples/backend/server.js, Node.js) end to end against a real
//! node: it is the connect hook, the publish hook and a webhook endpoint, it stores
//! every message it is sent, and it answers `!count` with a system message posted
//! through the node's real server API (`POST /api/publish`, docs/api.md).
//!
//! Needs `node` on the PATH (.ci/run installs it before the tests).

use crate::support::{TestNode, DEADLINE};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "example-backend-secret-0123456789";
const API_KEY: &str = "example-backend-api-key-0123456789";

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

/// A port free now, for the example: the node's configuration must name the example's
/// address before the example can be told the node's (both start at run time).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_example(port: u16, store: &Path, api: &str) -> Example {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/backend/server.js");
    let mut child = Command::new("node")
        .arg(&script)
        .env("PORT", port.to_string())
        .env("HUBBUB_WEBHOOK_SECRET", SECRET)
        .env("STORE", store)
        .env("HUBBUB_API_URL", api)
        .env("HUBBUB_API_KEY", API_KEY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("`node` runs (install Node.js: .ci/run does)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, after the first line too: a closed pipe would make the
        // example's next console.log fail (EPIPE) and end it mid-test.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
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
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = dir.path().join("messages.jsonl");
    let base = format!("http://127.0.0.1:{}", free_port());
    let hooks_base = base.clone();
    let node = TestNode::start_adjusted(move |s| {
        s.api.keys = vec![hubbub::config::Secret::new(API_KEY)];
        s.hooks.connect_url = format!("{hooks_base}/hubbub/connect");
        s.hooks.publish_url = format!("{hooks_base}/hubbub/publish");
        s.webhooks = vec![hubbub::config::WebhookSettings {
            name: "example".into(),
            url: format!("{hooks_base}/hubbub/events"),
            events: hubbub::config::WebhookEvent::ALL.to_vec(),
            secret: hubbub::config::Secret::new(SECRET),
            ..Default::default()
        }];
    })
    .await;
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let example = start_example(port, &store, &node.http_url(""));
    assert_eq!(example.port, port);

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
    // The first three (the system message below may be stored already).
    let contents: Vec<&str> = lines[..3]
        .iter()
        .map(|l| l["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hello", "oh d**n", "!count"]);
    let seqs: Vec<u64> = lines[..3]
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    // `!count` was answered through the node's server API: a system message that
    // every member gets, ordered after the three, and that the webhook stored too.
    let system = alice
        .expect(
            |f| f["type"] == "message" && f["from"]["id"] == "system",
            "the system message posted through the API",
        )
        .await;
    assert_eq!(system["content"], "3 messages stored for lobby");
    assert_eq!(system["seq"], 4);
    let until = Instant::now() + DEADLINE;
    loop {
        let lines = stored(&store);
        if lines.len() >= 4 {
            assert_eq!(lines[3]["content"], "3 messages stored for lobby");
            assert_eq!(lines[3]["seq"], 4);
            break;
        }
        assert!(Instant::now() < until, "stored {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
