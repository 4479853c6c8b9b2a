//! SIGTERM in a cluster: the node leaves at once (its peers do not wait for the
//! failure timeout), its rooms move with their history, its clients are told goodbye
//! and closed with 1012, and it exits 0. A rolling restart of every node while
//! clients publish and reconnect with `since` loses no acknowledged message.

use crate::support::{find_room, owner_of, Client, Cluster, DEADLINE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Long enough that a leave seen well before it cannot be the failure detector.
const SLOW_FAILURE_TIMEOUT_MS: u64 = 5000;

#[tokio::test]
async fn sigterm_leaves_at_once_and_the_rooms_keep_their_history() {
    let mut cluster = Cluster::plan("leave", 3).await;
    let names = cluster.names();
    for name in &names {
        cluster
            .config(name)
            .set("cluster", "failure_timeout_ms", SLOW_FAILURE_TIMEOUT_MS)
            .set("shutdown", "timeout_secs", 10);
    }
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;

    // A room owned by a and held by nobody else: its history lives only on a.
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let room = find_room("solo", |room| owner_of(room, &all) == "a");
    let mut on_a = cluster.connect("a", "alice").await;
    on_a.join_retry(&room).await;
    for i in 1..=5 {
        on_a.publish_retry(&room, &format!("m{i}")).await;
    }

    let signalled = Instant::now();
    cluster.sigterm("a");
    // The client on a is told goodbye, then closed with 1012.
    let code = on_a.expect_close().await;
    let goodbye = on_a.expect_type("goodbye").await;
    assert_eq!(goodbye["reason"], "shutdown");
    assert_eq!(code, Some(1012));
    // The peers take a out of their views long before the failure timeout.
    let rest = vec!["b".to_owned(), "c".to_owned()];
    cluster.wait_view(&rest).await;
    let left_after = signalled.elapsed();
    eprintln!("[leave] peers dropped a {left_after:?} after SIGTERM (failure timeout {SLOW_FAILURE_TIMEOUT_MS} ms)");
    assert!(
        left_after < Duration::from_millis(2_500),
        "the peers waited {left_after:?}: they must not wait for the failure timeout"
    );
    let status = cluster.wait_exit("a", Duration::from_secs(12)).await;
    assert!(status.success(), "a exited with {status}");
    // a's shards are led by b or c once their leader lease on a has run out.
    let took = cluster.wait_converged(&rest).await;
    eprintln!("[leave] every shard led by b or c {took:?} after a exited");

    // The room moved with its history: a client on b resumes from the start.
    let mut on_b = cluster.connect("b", "bob").await;
    let data = on_b
        .ok_retry(json!({"type": "join", "room": room, "since": 0}))
        .await
        .0;
    let contents: Vec<&str> = data["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(data["gap"], false);
    let ack = on_b.publish_retry(&room, "after").await;
    assert_eq!(ack["seq"], 6);
}

/// A client that follows the cluster through restarts: on any close it reconnects to
/// the next node and re-joins with `since`.
struct Roamer {
    user: String,
    client: Client,
    node: usize,
    last_seq: u64,
    /// seq → message id, as seen live or in join replies.
    seen: BTreeMap<u64, String>,
    reconnects: usize,
}

impl Roamer {
    async fn start(
        cluster: &Cluster,
        names: &[String],
        node: usize,
        user: &str,
        room: &str,
    ) -> Self {
        let client = cluster.connect(&names[node], user).await;
        let mut roamer = Self {
            user: user.to_owned(),
            client,
            node,
            last_seq: 0,
            seen: BTreeMap::new(),
            reconnects: 0,
        };
        roamer.rejoin(room).await;
        roamer
    }

    fn note(&mut self, message: &Value) {
        let (Some(seq), Some(id)) = (message["seq"].as_u64(), message["id"].as_str()) else {
            return;
        };
        if let Some(before) = self.seen.insert(seq, id.to_owned()) {
            assert_eq!(before, id, "{}: seq {seq} seen as two messages", self.user);
        }
        self.last_seq = self.last_seq.max(seq);
    }

    /// Joins with `since`, retrying while the room moves; false if the connection ended.
    async fn rejoin(&mut self, room: &str) -> bool {
        let started = Instant::now();
        loop {
            let frame = json!({"type": "join", "room": room, "since": self.last_seq});
            let Some(reply) = self.client.try_request(frame).await else {
                return false;
            };
            if reply["ok"] == true {
                let history = reply["data"]["history"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(
                    reply["data"]["gap"],
                    false,
                    "{}: a gap on resume since {} (node {}): room seq {}, history {}..{} ({} messages)",
                    self.user,
                    self.last_seq,
                    self.node,
                    reply["data"]["seq"],
                    history.first().map_or(json!(null), |m| m["seq"].clone()),
                    history.last().map_or(json!(null), |m| m["seq"].clone()),
                    history.len()
                );
                for message in reply["data"]["history"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    self.note(&message);
                }
                return true;
            }
            assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
            assert!(
                started.elapsed() < DEADLINE,
                "{}: join refused too long",
                self.user
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Moves to the next running node until a join succeeds there.
    async fn roam(&mut self, cluster: &mut Cluster, names: &[String], room: &str) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < DEADLINE,
                "{}: no node to reconnect to",
                self.user
            );
            self.node = (self.node + 1) % names.len();
            let name = &names[self.node];
            if !cluster.is_running(name) {
                continue;
            }
            let query = format!("user={}&name={}", self.user, self.user);
            let Some(client) = Client::connect_or_none(cluster.http_addr(name), &query).await
            else {
                continue;
            };
            self.client = client;
            self.reconnects += 1;
            if self.rejoin(room).await {
                return;
            }
        }
    }

    /// Takes in the messages read so far.
    fn absorb_pending(&mut self) {
        for message in self.client.take_seen(|f| f["type"] == "message") {
            self.note(&message);
        }
    }
}

#[tokio::test]
async fn a_rolling_restart_loses_no_acknowledged_message() {
    let mut cluster = Cluster::plan("rolling", 3).await;
    let names = cluster.names();
    for name in &names {
        cluster
            .config(name)
            .set("shutdown", "timeout_secs", 10)
            .set("shutdown", "reconnect_spread_ms", 200);
    }
    for name in &names {
        cluster.start_node(name).await;
    }
    cluster.wait_converged(&names).await;
    let room = "rolling".to_owned();
    let mut publisher = Roamer::start(&cluster, &names, 0, "pub", &room).await;
    let mut reader = Roamer::start(&cluster, &names, 1, "reader", &room).await;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut counter = 0u64;

    for victim in names.clone() {
        cluster.sigterm(&victim);
        let stopping = Instant::now();
        // Publish through the restart: reconnect wherever the connection ends.
        while cluster.is_running(&victim) || stopping.elapsed() < Duration::from_millis(300) {
            counter += 1;
            let frame = json!({"type": "publish", "room": room, "content": format!("m{counter}")});
            match publisher.client.try_request(frame).await {
                Some(reply) if reply["ok"] == true => {
                    let seq = reply["data"]["seq"].as_u64().unwrap();
                    let id = reply["data"]["id"].as_str().unwrap().to_owned();
                    assert!(
                        acked.insert(seq, id).is_none(),
                        "seq {seq} acknowledged twice"
                    );
                }
                Some(reply) => {
                    let code = reply["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    assert!(
                        ["unavailable", "internal"].contains(&code.as_str()),
                        "{reply}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None => publisher.roam(&mut cluster, &names, &room).await,
            }
            publisher.absorb_pending();
            assert!(
                stopping.elapsed() < Duration::from_secs(15),
                "{victim} never exited"
            );
        }
        let status = cluster.wait_exit(&victim, DEADLINE).await;
        assert!(status.success(), "{victim} exited with {status}");
        // The reader may have been on the victim: it follows too.
        let alive = json!({"type": "presence", "room": room});
        if reader.client.try_request(alive).await.is_none() {
            reader.roam(&mut cluster, &names, &room).await;
        }
        reader.absorb_pending();
        cluster.start_node(&victim).await;
        cluster.wait_converged(&names).await;
        eprintln!("[rolling] {victim} restarted; {} acks so far", acked.len());
    }

    // A last round of messages after the whole cluster has turned over.
    for i in 0..5 {
        let ack = publisher
            .client
            .publish_retry(&room, &format!("final{i}"))
            .await;
        acked.insert(
            ack["seq"].as_u64().unwrap(),
            ack["id"].as_str().unwrap().to_owned(),
        );
    }
    assert!(
        acked.len() >= 10,
        "too few messages went through: {}",
        acked.len()
    );
    // The reader's node may not lead the room's shard: its copy can trail the acks.
    let last_acked = acked.keys().max().copied().unwrap_or(0);
    let history = reader.client.full_history_through(&room, last_acked).await;
    let held: BTreeMap<u64, String> = history
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(held.len(), history.len(), "a seq appears twice in history");
    let seqs: Vec<u64> = held.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "history has holes"
    );
    for (seq, id) in &acked {
        assert_eq!(
            held.get(seq),
            Some(id),
            "acknowledged seq {seq} lost or changed"
        );
    }
    // What the reader saw, live or on resume, agrees with history.
    reader.absorb_pending();
    for (seq, id) in &reader.seen {
        assert_eq!(
            held.get(seq),
            Some(id),
            "the reader saw seq {seq} as another message"
        );
    }
    eprintln!(
        "[rolling] {} acks, {} in history, publisher reconnected {} times, reader {}",
        acked.len(),
        held.len(),
        publisher.reconnects,
        reader.reconnects
    );
}
