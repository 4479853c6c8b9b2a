//! The limits a node puts on one client: frame size, frame rate, outbound queue in
//! frames and in bytes (slow consumers), the node's outbound budget, heartbeat,
//! connection cap; and room expiry and the health endpoints. Where a limit ends a
//! connection, the other clients must not notice.

use crate::scrape::Metrics;
use crate::support::{eventually, Client, TestNode, DEADLINE};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Waits until `watcher` hears that `user` left `room`.
async fn expect_leave(watcher: &mut Client, room: &str, user: &str) {
    watcher
        .expect(
            |f| f["type"] == "presence_diff" && f["room"] == room && f["leaves"][0]["id"] == user,
            &format!("{user} leaving {room}"),
        )
        .await;
}

/// The ids of `room`'s members, as `client` is told.
async fn member_ids(client: &mut Client, room: &str) -> Vec<String> {
    let data = client.ok(json!({"type": "presence", "room": room})).await;
    data["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// Publishes 4,000-character messages to one room from one client, keeping a few
/// publishes in flight so its own replies keep the data flowing. Each publish puts two
/// frames (message, reply) in the publisher's own queue, so at most `2 * WINDOW` (and a
/// presence_diff) wait there: the publisher itself is never a slow consumer.
struct Firehose {
    room: &'static str,
    content: String,
    sent: u64,
    acked: u64,
}

impl Firehose {
    const WINDOW: u64 = 3;

    fn new(room: &'static str) -> Self {
        Firehose {
            room,
            content: "x".repeat(4_000),
            sent: 0,
            acked: 0,
        }
    }

    /// Tops up the publishes in flight (sending at most `limit` in all), then waits for
    /// the next reply, which must be ok. The room's messages coming back are dropped.
    async fn step(&mut self, publisher: &mut Client, limit: u64) {
        while self.sent < limit && self.sent < self.acked + Self::WINDOW {
            let publish = json!({
                "type": "publish", "room": self.room, "content": self.content, "ref": self.sent,
            });
            publisher.send(publish).await;
            self.sent += 1;
        }
        let acked = self.acked;
        let reply = publisher
            .expect(
                |f| f["type"] == "reply" && f["ref"] == acked,
                "a publish reply",
            )
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        self.acked += 1;
        publisher.discard_pending_where(|f| f["type"] == "message");
    }

    /// Waits for the replies to every publish sent.
    async fn drain(&mut self, publisher: &mut Client) {
        while self.acked < self.sent {
            self.step(publisher, self.sent).await;
        }
    }
}

/// One scrape of the node's `/metrics`.
async fn scrape(node: &TestNode) -> Metrics {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    Metrics::parse(&body)
}

/// `hubbub_slow_consumer_disconnects_total{reason}`.
fn slow_consumers(metrics: &Metrics, reason: &str) -> f64 {
    metrics.value(
        "hubbub_slow_consumer_disconnects_total",
        &[("reason", reason)],
    )
}

/// `hubbub_outbound_bytes`: what the node's outboxes hold.
fn outbound_bytes(metrics: &Metrics) -> f64 {
    metrics.value("hubbub_outbound_bytes", &[])
}

/// Polls until the node's outboxes hold nothing.
async fn expect_nothing_held(node: &TestNode) {
    eventually("the node's outbound bytes back to 0", || async {
        (outbound_bytes(&scrape(node).await) == 0.0).then_some(())
    })
    .await;
}

/// Fills `room`'s history (100 messages, the default) with 5,000-character messages,
/// so that a `history` request for it is answered with one frame of about 500 KB.
/// Every other member must read them (`drain_messages`).
async fn fill_with_large_history(publisher: &mut Client, room: &str) {
    let content = "x".repeat(5_000);
    for _ in 0..100 {
        publisher.publish(room, &content).await;
        publisher.discard_pending_where(|f| f["type"] == "message");
    }
}

/// Reads `room`'s messages up to `seq`.
async fn drain_messages(client: &mut Client, room: &str, seq: u64) {
    client
        .expect(
            |f| f["type"] == "message" && f["room"] == room && f["seq"] == seq,
            &format!("message {seq} of {room}"),
        )
        .await;
    client.discard_pending_where(|f| f["type"] == "message");
}

fn history_request(room: &str) -> Value {
    json!({"type": "history", "room": room, "limit": 1000})
}

/// `hubbub_messages_total{direction="out",type="reply"}`: replies queued to clients.
async fn replies_queued(node: &TestNode) -> f64 {
    scrape(node).await.messages("out", "reply")
}

/// Sends one `history` request and waits until the node has queued its reply (the
/// client does not read it): the node's outbound bytes are then the reply's own effect.
async fn request_history_unread(node: &TestNode, client: &mut Client, room: &str) -> Metrics {
    let before = replies_queued(node).await;
    client.send(history_request(room)).await;
    eventually("the history reply queued", || async {
        let metrics = scrape(node).await;
        (metrics.messages("out", "reply") > before).then_some(metrics)
    })
    .await
}

/// A publish frame of exactly `bytes` bytes, with `ref` "sized".
fn publish_of_size(room: &str, bytes: usize) -> String {
    let frame = |content: &str| {
        json!({"type": "publish", "room": room, "content": content, "ref": "sized"}).to_string()
    };
    let overhead = frame("").len();
    let text = frame(&"x".repeat(bytes - overhead));
    assert_eq!(text.len(), bytes);
    text
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_closes_with_1009() {
    let node = TestNode::start_adjusted(|s| s.limits.max_frame_bytes = 1024).await;
    let mut bob = node.connect("bob", "Bob").await;
    let mut mallory = node.connect("mallory", "Mallory").await;
    bob.join("lobby").await;
    mallory.join("lobby").await;

    // Exactly the limit is fine.
    mallory.send_text(&publish_of_size("lobby", 1024)).await;
    let reply = mallory.expect_type("reply").await;
    assert_eq!(
        (&reply["ref"], &reply["ok"]),
        (&json!("sized"), &json!(true))
    );

    mallory.send_text(&publish_of_size("lobby", 1025)).await;
    assert_eq!(mallory.expect_close().await, Some(1009));
    assert!(
        mallory.seen(|f| f["type"] == "reply").is_empty(),
        "the oversized frame was processed"
    );

    // Bob saw the first message only, then mallory leave, and carries on.
    let message = bob.expect_type("message").await;
    assert_eq!(message["from"]["id"], "mallory");
    expect_leave(&mut bob, "lobby", "mallory").await;
    bob.publish("lobby", "still here").await;
    assert_eq!(bob.expect_type("message").await["content"], "still here");
    assert!(bob.seen(|f| f["type"] == "message").is_empty());
}

#[tokio::test]
async fn a_fragmented_message_over_max_frame_bytes_closes_with_1009() {
    let node = TestNode::start_adjusted(|s| s.limits.max_frame_bytes = 1024).await;
    let mut bob = node.connect("bob", "Bob").await;
    let mut mallory = node.connect("mallory", "Mallory").await;
    bob.join("lobby").await;
    mallory.join("lobby").await;

    // Each fragment is small; what counts is the whole message.
    async fn send_in_three(client: &mut Client, text: &str) {
        let bytes = text.as_bytes();
        let (a, rest) = bytes.split_at(bytes.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        for (part, opcode, fin) in [
            (a, Data::Text, false),
            (b, Data::Continue, false),
            (c, Data::Continue, true),
        ] {
            let frame = Frame::message(part.to_vec(), OpCode::Data(opcode), fin);
            client.send_raw(Message::Frame(frame)).await;
        }
    }
    send_in_three(&mut mallory, &publish_of_size("lobby", 1024)).await;
    let reply = mallory.expect_type("reply").await;
    assert_eq!(
        (&reply["ref"], &reply["ok"]),
        (&json!("sized"), &json!(true))
    );

    send_in_three(&mut mallory, &publish_of_size("lobby", 1500)).await;
    assert_eq!(mallory.expect_close().await, Some(1009));

    expect_leave(&mut bob, "lobby", "mallory").await;
    bob.publish("lobby", "still here").await;
    assert_eq!(member_ids(&mut bob, "lobby").await, ["bob"]);
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_recovers() {
    let node = TestNode::start_adjusted(|s| {
        s.limits.frames_per_second = 5;
        s.limits.frames_burst = 5;
    })
    .await;
    let mut flooder = node.connect("flooder", "Flooder").await;
    let mut bob = node.connect("bob", "Bob").await;

    let started = Instant::now();
    for i in 0..30 {
        flooder.send(json!({"type": "ping", "ref": i})).await;
    }
    let mut pongs = 0;
    let mut retry_after_ms = 0;
    for i in 0..30 {
        let answer = flooder.next_frame().await;
        assert_eq!(answer["ref"], i, "answers come in order: {answer}");
        if answer["type"] == "pong" {
            pongs += 1;
            continue;
        }
        assert_eq!(answer["type"], "reply", "{answer}");
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
        retry_after_ms = answer["error"]["retry_after_ms"].as_u64().unwrap_or(0);
        // One frame's worth of tokens comes back every 200 ms at 5 per second.
        assert!(
            (1..=200).contains(&retry_after_ms),
            "retry_after_ms {retry_after_ms}"
        );
    }
    // The burst passes; after it, one more per 200 ms at most.
    let refills = started.elapsed().as_millis() as usize / 200;
    assert!(
        (5..=5 + refills + 1).contains(&pongs),
        "{pongs} of 30 passed in {:?}",
        started.elapsed()
    );
    assert!(retry_after_ms > 0, "nothing was rate limited");

    // The limit is per connection: bob is not held back by the flooder.
    for i in 0..5 {
        bob.send(json!({"type": "ping", "ref": i})).await;
        assert_eq!(bob.next_frame().await, json!({"type": "pong", "ref": i}));
    }

    // The connection stayed open, and waiting as long as told is enough (+1: the
    // server rounds down to whole milliseconds).
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 1)).await;
    flooder.send(json!({"type": "ping", "ref": "after"})).await;
    assert_eq!(
        flooder.next_frame().await,
        json!({"type": "pong", "ref": "after"})
    );
}

#[tokio::test]
async fn undecodable_frames_count_against_the_rate_limit() {
    let node = TestNode::start_adjusted(|s| {
        s.limits.frames_per_second = 5;
        s.limits.frames_burst = 5;
    })
    .await;
    let mut flooder = node.connect("flooder", "Flooder").await;
    let started = Instant::now();
    for _ in 0..10 {
        flooder.send_text("not json").await;
    }
    flooder.send(json!({"type": "ping", "ref": "last"})).await;
    let mut passed = 0;
    let mut limited = 0;
    for _ in 0..10 {
        let answer = flooder.next_frame().await;
        assert_eq!(answer["type"], "error", "{answer}");
        match answer["error"]["code"].as_str() {
            Some("bad_request") => passed += 1,
            Some("rate_limited") => limited += 1,
            _ => panic!("unexpected answer {answer}"),
        }
    }
    let last = flooder.next_frame().await;
    if last["type"] == "pong" {
        passed += 1;
    } else {
        assert_eq!(last["error"]["code"], "rate_limited", "{last}");
    }
    let refills = started.elapsed().as_millis() as usize / 200;
    assert!(
        passed <= 5 + refills + 1,
        "{passed} of 11 frames passed in {:?}",
        started.elapsed()
    );
    assert!(limited > 0);
}

#[tokio::test]
async fn the_default_limits_let_a_burst_of_50_frames_through() {
    let node = TestNode::start().await;
    let mut c = node.connect("alice", "Alice").await;
    c.join("lobby").await;
    for i in 0..25 {
        c.send(json!({"type": "ping", "ref": i})).await;
        c.send(json!({"type": "publish", "room": "lobby", "content": "hi", "ref": 100 + i}))
            .await;
    }
    for i in 0..25 {
        let pong = c.expect(|f| f["ref"] == i, "a pong").await;
        assert_eq!(pong["type"], "pong", "{pong}");
        let reply = c.expect(|f| f["ref"] == 100 + i, "a reply").await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4009_and_the_room_carries_on() {
    const QUEUE: usize = 8;
    let node = TestNode::start_adjusted(|s| {
        s.limits.outbound_queue = QUEUE;
        s.limits.frames_per_second = 0;
    })
    .await;
    let mut publisher = node.connect("publisher", "Publisher").await;
    let mut slow = node.connect("slow", "Slow").await;
    publisher.join("firehose").await;
    slow.join("firehose").await;
    // From here on `slow` reads nothing until it is closed.

    // Publish until the slow client is dropped: first the loopback TCP buffers (a few
    // MB) fill up, then its queue.
    const _: () = assert!(2 * Firehose::WINDOW as usize + 1 < QUEUE);
    const MAX_MESSAGES: u64 = 20_000;
    let is_slow_leaving =
        |f: &Value| f["type"] == "presence_diff" && f["leaves"][0]["id"] == "slow";
    let mut firehose = Firehose::new("firehose");
    while publisher.seen(is_slow_leaving).is_empty() {
        assert!(
            firehose.sent < MAX_MESSAGES,
            "the slow client was not dropped after {} messages",
            firehose.sent
        );
        firehose.step(&mut publisher, MAX_MESSAGES).await;
    }
    let sent = firehose.sent;

    // The close frame comes after everything that was already on its way to it.
    assert_eq!(slow.expect_close().await, Some(4009));
    let received = slow.seen(|f| f["type"] == "message").len() as u64;
    assert!(received < sent, "the slow client got all {sent} messages");

    // The publisher is unaffected, and alone in the room.
    firehose.drain(&mut publisher).await;
    let ack = publisher.publish("firehose", "after").await;
    assert_eq!(ack["seq"], sent + 1);
    assert_eq!(member_ids(&mut publisher, "firehose").await, ["publisher"]);
}

#[tokio::test]
async fn a_client_that_requests_large_replies_and_does_not_read_is_closed_with_4009() {
    // Default limits (1 MiB per client), but for the frame rate: the hog asks fast.
    let node = TestNode::start_adjusted(|s| s.limits.frames_per_second = 0).await;
    let mut publisher = node.connect("publisher", "Publisher").await;
    let mut reader = node.connect("reader", "Reader").await;
    let mut hog = node.connect("hog", "Hog").await;
    for client in [&mut publisher, &mut reader, &mut hog] {
        client.join("archive").await;
    }
    fill_with_large_history(&mut publisher, "archive").await;
    drain_messages(&mut reader, "archive", 100).await;
    // From here on `hog` sends history requests and reads nothing: each reply is one
    // frame of about 500 KB, and the replies pile up past the loopback TCP buffers.
    const MAX_REQUESTS: u64 = 400;
    let mut requested = 0;
    while slow_consumers(&scrape(&node).await, "bytes") == 0.0 {
        assert!(
            requested < MAX_REQUESTS,
            "the hog was not closed after {requested} history requests"
        );
        for _ in 0..4 {
            hog.send(history_request("archive")).await;
            requested += 1;
        }
        // The reader of the same room is served all along.
        let ack = publisher.publish("archive", "still flowing").await;
        let seq = ack["seq"].as_u64().expect("seq");
        drain_messages(&mut reader, "archive", seq).await;
    }

    expect_leave(&mut reader, "archive", "hog").await;
    assert_eq!(hog.expect_close().await, Some(4009));
    let answered = hog.seen(|f| f["type"] == "reply" && f["data"]["messages"].is_array());
    assert!(
        (answered.len() as u64) < requested,
        "the hog got all {requested} replies"
    );

    let ack = publisher.publish("archive", "after").await;
    let seq = ack["seq"].as_u64().expect("seq");
    drain_messages(&mut reader, "archive", seq).await;
    assert_eq!(member_ids(&mut reader, "archive").await.len(), 2);
    let metrics = scrape(&node).await;
    assert_eq!(slow_consumers(&metrics, "bytes"), 1.0);
    assert_eq!(slow_consumers(&metrics, "frames"), 0.0);
    assert_eq!(slow_consumers(&metrics, "node_budget"), 0.0);
    expect_nothing_held(&node).await;
}

#[tokio::test]
async fn past_the_node_budget_the_connection_holding_the_most_is_closed_first() {
    // No bound per client: only the node's budget.
    const MIB: f64 = 1_048_576.0;
    const BUDGET: u64 = 8 << 20;
    let node = TestNode::start_adjusted(|s| {
        s.limits.frames_per_second = 0;
        s.limits.outbound_bytes = 0;
        s.limits.node_outbound_bytes = BUDGET;
    })
    .await;
    let mut publisher = node.connect("publisher", "Publisher").await;
    let mut reader = node.connect("reader", "Reader").await;
    let mut small = node.connect("small", "Small").await;
    let mut big = node.connect("big", "Big").await;
    for client in [&mut publisher, &mut reader, &mut small, &mut big] {
        client.join("archive").await;
    }
    fill_with_large_history(&mut publisher, "archive").await;
    drain_messages(&mut reader, "archive", 100).await;
    // `small` and `big` read nothing from here on (until the end, for `small`). One
    // request at a time, each waiting until its ~500 KB reply is queued, so what the
    // node holds is known after each: `small` gets to hold at least 1 MiB...
    const MAX_REQUESTS: u64 = 400;
    let mut small_requests = 0;
    loop {
        let metrics = request_history_unread(&node, &mut small, "archive").await;
        small_requests += 1;
        if outbound_bytes(&metrics) >= MIB {
            break;
        }
        assert!(small_requests < MAX_REQUESTS, "small never held 1 MiB");
    }
    // ...then `big` brings the node to 6.5 MiB, under the budget: `big` alone holds
    // more than `small` can hold by the time the node crosses 8 MiB.
    let mut big_requests = 0;
    loop {
        let metrics = request_history_unread(&node, &mut big, "archive").await;
        big_requests += 1;
        if outbound_bytes(&metrics) >= 6.5 * MIB {
            break;
        }
        assert!(
            big_requests < MAX_REQUESTS,
            "big never got the node to 6.5 MiB"
        );
    }
    assert_eq!(slow_consumers(&scrape(&node).await, "node_budget"), 0.0);

    // Now `small` asks for more and takes the node past its budget: the connection
    // closed is `big`, which holds the most, not `small`, whose push crossed it.
    while slow_consumers(&scrape(&node).await, "node_budget") == 0.0 {
        request_history_unread(&node, &mut small, "archive").await;
        small_requests += 1;
        assert!(small_requests < 2 * MAX_REQUESTS, "nobody was closed");
    }
    expect_leave(&mut reader, "archive", "big").await;
    assert_eq!(big.expect_close().await, Some(4009));
    assert!(outbound_bytes(&scrape(&node).await) <= BUDGET as f64);

    // `small` was not closed: reading now, it gets every reply it asked for.
    for _ in 0..small_requests {
        small
            .expect(
                |f| f["type"] == "reply" && f["data"]["messages"].is_array(),
                "a history reply",
            )
            .await;
    }
    small.ping().await;
    // The reader carried on, and the budget closed one connection only.
    let ack = publisher.publish("archive", "after").await;
    let seq = ack["seq"].as_u64().expect("seq");
    drain_messages(&mut reader, "archive", seq).await;
    let metrics = scrape(&node).await;
    assert_eq!(slow_consumers(&metrics, "node_budget"), 1.0);
    assert_eq!(slow_consumers(&metrics, "bytes"), 0.0);
    expect_nothing_held(&node).await;
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4008() {
    let node = TestNode::start_adjusted(|s| {
        s.heartbeat.interval_ms = 100;
        s.heartbeat.timeout_ms = 400;
    })
    .await;
    let mut watcher = node.connect("watcher", "Watcher").await;
    watcher.join("lobby").await;
    let mut silent = node.connect("silent", "Silent").await;
    let last_sent = Instant::now();
    silent.join("lobby").await;
    // From here on `silent` neither writes nor reads, so it answers no pings either.

    expect_leave(&mut watcher, "lobby", "silent").await;
    let after = last_sent.elapsed();
    assert!(
        after >= Duration::from_millis(400),
        "closed {after:?} after its last frame"
    );
    assert_eq!(silent.expect_close().await, Some(4008));
    assert_eq!(member_ids(&mut watcher, "lobby").await, ["watcher"]);
}

/// A WebSocket client on a bare TCP stream, which writes only what it is told to: no
/// automatic pongs. (A library client answers the node's pings as it reads; a pong
/// reaching the node after it has closed its socket makes the kernel reset the
/// connection and drop the close frame still on its way.)
struct RawClient {
    tcp: tokio::net::TcpStream,
    /// Read and not yet parsed.
    unread: Vec<u8>,
}

impl RawClient {
    async fn connect(node: &TestNode, query: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let handshake = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        tcp.write_all(handshake.as_bytes()).await.unwrap();
        let mut unread = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        let body = loop {
            if let Some(end) = unread.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
                .await
                .expect("the upgrade in time")
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            unread.extend_from_slice(&chunk[..n]);
        };
        assert!(unread.starts_with(b"HTTP/1.1 101"), "not upgraded");
        unread.drain(..body);
        RawClient { tcp, unread }
    }

    /// Sends one masked frame (RFC 6455: every client frame is masked).
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mask = [0x1d, 0x7e, 0x42, 0x99];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.tcp.write_all(&frame).await.unwrap();
    }

    async fn send_json(&mut self, frame: Value) {
        self.send(0x1, frame.to_string().as_bytes()).await;
    }

    async fn pong(&mut self) {
        self.send(0xA, b"").await;
    }

    /// Reads (and skips) every frame until the node's close frame; its code, or None
    /// if the connection ended without one.
    async fn expect_close(&mut self) -> Option<u16> {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + DEADLINE;
        loop {
            // Server frames are unmasked: a 2-byte header, then 2 or 8 more bytes of
            // length for payloads over 125.
            let buf = &self.unread;
            let frame = match buf.get(1).map(|b| b & 0x7f) {
                Some(126) if buf.len() >= 4 => {
                    Some((4, u16::from_be_bytes([buf[2], buf[3]]) as usize))
                }
                Some(127) if buf.len() >= 10 => {
                    let len: [u8; 8] = buf[2..10].try_into().unwrap();
                    Some((10, u64::from_be_bytes(len) as usize))
                }
                Some(short) if short < 126 => Some((2, short as usize)),
                _ => None,
            };
            if let Some((head, len)) = frame.filter(|(head, len)| buf.len() >= head + len) {
                if buf[0] & 0x0f == 0x8 {
                    return (len >= 2).then(|| u16::from_be_bytes([buf[head], buf[head + 1]]));
                }
                self.unread.drain(..head + len);
                continue;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .expect("the node should close in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.unread.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test]
async fn a_silent_client_whose_socket_is_full_is_still_closed_with_4008() {
    // Silence must be noticed even while nothing more can be written to the client:
    // the node's write side is then stalled, so it cannot be the one to notice.
    //
    // The socket is filled while the client still talks (unsolicited WebSocket pongs,
    // which the node hears and does not answer), so filling, however long a loaded
    // machine takes, never races the timeout; the silence starts once the node shows,
    // in what its outboxes hold, that its writes to the client have stalled.
    const TIMEOUT: Duration = Duration::from_millis(3_000);
    const STALLED_BYTES: f64 = 1_048_576.0;
    let node = TestNode::start_adjusted(|s| {
        s.heartbeat.interval_ms = 500;
        s.heartbeat.timeout_ms = TIMEOUT.as_millis() as u64;
        s.limits.frames_per_second = 0;
        // Far more than this test sends: the client is never a slow consumer.
        s.limits.outbound_queue = 100_000;
        s.limits.outbound_bytes = 0;
        s.limits.node_outbound_bytes = 0;
    })
    .await;
    let mut publisher = node.connect("publisher", "Publisher").await;
    publisher.join("firehose").await;
    // `silent` reads nothing, and writes only its join and its pongs.
    let mut silent = RawClient::connect(&node, "user=silent&name=Silent").await;
    silent
        .send_json(json!({"type": "join", "room": "firehose", "ref": 1}))
        .await;
    publisher
        .expect(
            |f| f["type"] == "presence_diff" && f["joins"][0]["id"] == "silent",
            "silent joining",
        )
        .await;

    const MAX_MESSAGES: u64 = 50_000;
    let mut firehose = Firehose::new("firehose");
    let mut last_pong = Instant::now();
    let filling = Instant::now();
    loop {
        if last_pong.elapsed() >= TIMEOUT / 8 {
            silent.pong().await;
            last_pong = Instant::now();
        }
        firehose.step(&mut publisher, MAX_MESSAGES).await;
        if firehose.acked.is_multiple_of(100)
            && outbound_bytes(&scrape(&node).await) >= STALLED_BYTES
        {
            break;
        }
        assert!(
            firehose.sent < MAX_MESSAGES,
            "the node's writes to the silent client never stalled"
        );
    }
    silent.pong().await;
    firehose.drain(&mut publisher).await;
    let filled = filling.elapsed();
    // The last frame `silent` sends; its silence starts when the node hears it.
    let last_sent = Instant::now();
    silent.pong().await;

    expect_leave(&mut publisher, "firehose", "silent").await;
    let after = last_sent.elapsed();
    assert!(
        after >= TIMEOUT,
        "closed {after:?} after its last frame (filling took {filled:?})"
    );
    assert_eq!(silent.expect_close().await, Some(4008));
    assert_eq!(member_ids(&mut publisher, "firehose").await, ["publisher"]);
}

#[tokio::test]
async fn a_client_that_keeps_sending_outlives_the_heartbeat_timeout() {
    let node = TestNode::start_adjusted(|s| {
        s.heartbeat.interval_ms = 100;
        s.heartbeat.timeout_ms = 400;
    })
    .await;
    let mut talker = node.connect("talker", "Talker").await;
    // App-level pings only: the client reads nothing meanwhile, so it answers none of
    // the node's WebSocket pings, and its frames alone must keep it alive.
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1_200) {
        every.tick().await;
        talker.send(json!({"type": "ping", "ref": sent})).await;
        sent += 1;
    }
    for i in 0..sent {
        let pong = talker.next_frame().await;
        assert_eq!(pong, json!({"type": "pong", "ref": i}));
    }
    talker.join("lobby").await;
}

#[tokio::test]
async fn an_idle_room_retires_after_the_ttl_and_its_history_stays_in_the_log() {
    let node = TestNode::start_adjusted(|s| {
        s.rooms.idle_ttl_secs = 1;
        s.rooms.history = 10;
    })
    .await;
    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    alice.join("lobby").await;
    for i in 1..=3 {
        alice.publish("lobby", &format!("m{i}")).await;
    }
    let leave = json!({"type": "leave", "room": "lobby"});
    alice.ok(leave.clone()).await;

    // Empty, within the TTL: the room still runs.
    let data = bob.join("lobby").await;
    assert_eq!(data["seq"], 3);
    assert_eq!(data["history"].as_array().map(Vec::len), Some(3));
    bob.ok(leave.clone()).await;

    // Past the TTL the room's actor stops ...
    eventually("the idle room retired", || async {
        let (_, body) = node.get("/metrics").await;
        (Metrics::parse(&body).value("hubbub_rooms", &[]) == 0.0).then_some(())
    })
    .await;
    // ... and its messages are still in the room's log: a join starts it from there.
    let data = bob.join("lobby").await;
    assert_eq!(data["seq"], 3, "{data}");
    assert_eq!(data["history"].as_array().map(Vec::len), Some(3), "{data}");
    assert_eq!(data["gap"], false);
    let resumed = alice
        .ok(json!({"type": "join", "room": "lobby", "since": 2}))
        .await;
    assert_eq!(resumed["gap"], false, "{resumed}");
    assert_eq!(resumed["history"][0]["content"], "m3", "{resumed}");
    let ack = alice.publish("lobby", "m4").await;
    assert_eq!(ack["seq"], 4);
}

#[tokio::test]
async fn the_connection_cap_refuses_with_503_until_a_slot_frees() {
    let node = TestNode::start_adjusted(|s| s.limits.max_connections = 2).await;
    let a = node.connect("a", "A").await;
    let mut b = node.connect("b", "B").await;
    let refusal = match node.try_connect("user=c").await {
        Ok(_) => panic!("a third connection was accepted"),
        Err(refusal) => refusal,
    };
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert_eq!(refusal.body["error"]["code"], "unavailable", "{refusal:?}");
    assert!(refusal.body["error"]["message"].as_str().is_some());
    // HTTP still answers at the cap.
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    a.close().await;
    let node_ref = &node;
    let mut c = eventually("a slot to free up", || async move {
        node_ref.try_connect("user=c").await.ok()
    })
    .await;
    c.join("lobby").await;
    b.join("lobby").await;
    // And the cap holds again.
    let refusal = node.try_connect("user=d").await.err().map(|r| r.status);
    assert_eq!(refusal, Some(503));
}

#[tokio::test]
async fn health_and_readiness_answer_with_json() {
    let node = TestNode::start().await;
    let json_of = |body: &str| -> Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["status"], "ok");

    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"status": "ready", "node": "test-node", "connections": 0})
    );
    // It counts open WebSockets, and forgets closed ones.
    let client = node.connect("alice", "Alice").await;
    let (_, body) = node.get("/readyz").await;
    assert_eq!(json_of(&body)["connections"], 1, "{body}");
    client.close().await;
    let node_ref = &node;
    eventually("the closed connection to be forgotten", || async move {
        let (_, body) = node_ref.get("/readyz").await;
        (serde_json::from_str::<Value>(&body).ok()?["connections"] == 0).then_some(())
    })
    .await;
}

/// A raw WebSocket to `target` (`/ws?...` or `/socket.io/?...`), upgraded; the bytes
/// that came after the upgrade's head are kept for [`close_code`].
async fn raw_ws(node: &TestNode, target: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let handshake = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            seen.drain(..end + 4);
            return (tcp, seen);
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
            .await
            .expect("the upgrade's answer")
            .unwrap();
        assert!(n > 0, "closed before the upgrade's answer");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A masked client frame header: FIN and `opcode`, announcing `len` bytes.
fn client_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut header = vec![0x80 | opcode, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

/// Reads server frames (after `seen`) until the node's close frame: its code, or None
/// when the connection ended without one. Panics if neither comes within DEADLINE.
async fn close_code(tcp: &mut tokio::net::TcpStream, mut seen: Vec<u8>) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut i = 0;
    loop {
        // Server frames are unmasked; lengths over 125 use 2 (or 8) more bytes.
        while i + 2 <= seen.len() {
            let (len, head) = match seen[i + 1] & 0x7f {
                126 if i + 4 <= seen.len() => {
                    (u16::from_be_bytes([seen[i + 2], seen[i + 3]]) as usize, 4)
                }
                126 | 127 => break,
                short => (short as usize, 2),
            };
            if i + head + len > seen.len() {
                break;
            }
            if seen[i] == 0x88 {
                return (len >= 2)
                    .then(|| u16::from_be_bytes([seen[i + head], seen[i + head + 1]]));
            }
            i += head + len;
        }
        let mut buf = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("the node should close the connection")
        {
            Ok(n) => n,
            Err(_) => return None,
        };
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// actix-http buffers a whole frame before checking its size; the node's frame guard
/// refuses it from its header. A client that announces 1 GiB and sends only the header
/// must be closed with 1009 at once, not left waiting while the node buffers.
#[tokio::test]
async fn a_frame_announcing_too_much_is_refused_from_its_header() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start_adjusted(|s| s.limits.max_frame_bytes = 1024).await;
    let (mut tcp, seen) = raw_ws(&node, "/ws?user=raw").await;
    // A masked text frame header announcing 1 GiB, and no payload.
    tcp.write_all(&client_header(0x1, 1 << 30)).await.unwrap();
    assert_eq!(close_code(&mut tcp, seen).await, Some(1009));
}

/// The same on a Socket.IO WebSocket, bounded by `socketio.max_payload_bytes`: before
/// the guard was there, a node buffered what such a frame announced (150 MiB of a 200
/// MiB frame took a node from 40 to 190 MiB resident).
#[tokio::test]
async fn a_socketio_frame_announcing_too_much_is_refused_from_its_header() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start().await;
    let (mut tcp, seen) = raw_ws(&node, "/socket.io/?EIO=4&transport=websocket&user=raw").await;
    tcp.write_all(&client_header(0x1, 1 << 30)).await.unwrap();
    // The connection ends at once (close_code waits at most DEADLINE; a Socket.IO
    // WebSocket closes with 1000, Engine.IO has no codes of its own). Without the guard
    // the node waits for the 1 GiB.
    let _ = close_code(&mut tcp, seen).await;
}

/// `limits.node_inbound_bytes`: frames begun and not finished are held at the length
/// their header announces; one that takes the node past the budget closes the
/// connection whose frame began first with 1013, and the others go on.
#[tokio::test]
async fn frames_stalled_past_the_node_inbound_budget_close_the_oldest_with_1013() {
    use tokio::io::AsyncWriteExt;
    const FRAME: u64 = 65_536;
    // Most of each stalled frame is sent: what the node has read of it is held too.
    const STALL_SENT: usize = 65_000;
    // Room for three stalled frames of 64 KiB, not four.
    let node = TestNode::start_adjusted(|s| s.limits.node_inbound_bytes = 200_000).await;
    let mut stalled = Vec::new();
    for i in 0..3 {
        let (mut tcp, seen) = raw_ws(&node, &format!("/ws?user=stall-{i}")).await;
        tcp.write_all(&client_header(0x1, FRAME)).await.unwrap();
        tcp.write_all(&vec![b' '; STALL_SENT]).await.unwrap();
        stalled.push((tcp, seen));
        let held = (i + 1) as f64 * FRAME as f64;
        eventually("the frame held", || async {
            (scrape(&node).await.value("hubbub_inbound_bytes", &[]) == held).then_some(())
        })
        .await;
    }
    // A fourth: past 200,000, so the first goes.
    let (mut fourth, fourth_seen) = raw_ws(&node, "/ws?user=stall-3").await;
    fourth.write_all(&client_header(0x1, FRAME)).await.unwrap();
    fourth.write_all(&vec![b' '; STALL_SENT]).await.unwrap();
    let (mut first, first_seen) = stalled.remove(0);
    assert_eq!(close_code(&mut first, first_seen).await, Some(1013));
    let metrics = scrape(&node).await;
    assert_eq!(metrics.value("hubbub_inbound_shed_total", &[]), 1.0);
    assert_eq!(
        metrics.value("hubbub_inbound_bytes", &[]),
        3.0 * FRAME as f64
    );
    // The others are still there: the fourth finishes its frame (a JSON text of
    // spaces and a ping, read as a bad frame), and gets its error, not a close.
    let mut rest = vec![b' '; FRAME as usize - STALL_SENT - 2];
    rest.splice(0..0, *b"{}");
    fourth.write_all(&rest).await.unwrap();
    let mut seen = fourth_seen;
    read_until(
        &mut fourth,
        &mut seen,
        "an error frame for the finished frame",
        |seen| String::from_utf8_lossy(seen).contains("bad_request"),
    )
    .await;
    eventually("the finished frame released", || async {
        let bytes = scrape(&node).await.value("hubbub_inbound_bytes", &[]);
        (bytes == 2.0 * FRAME as f64).then_some(())
    })
    .await;
    // And a client that sends what it starts is served as ever.
    let mut alice = node.connect("alice", "Alice").await;
    alice.ok(json!({"type": "join", "room": "lobby"})).await;
    drop(stalled);
}

/// Typing is a cast the room fans out to every member; a client that floods it (with
/// the frame limiter off) gets at most one typing event per second into the room.
#[tokio::test]
async fn a_typing_flood_reaches_the_room_at_most_once_a_second() {
    let node = TestNode::start_adjusted(|s| s.limits.frames_per_second = 0).await;
    let mut flooder = node.connect("flood", "Flood").await;
    let mut watcher = node.connect("watch", "Watch").await;
    flooder.join("lobby").await;
    watcher.join("lobby").await;
    let started = std::time::Instant::now();
    for _ in 0..300 {
        flooder
            .send(serde_json::json!({"type": "typing", "room": "lobby"}))
            .await;
    }
    // Every typing frame has been handled once a later request is answered.
    flooder.barrier("lobby").await;
    let elapsed = started.elapsed();
    watcher.barrier("lobby").await;
    let seen = watcher.seen(|f| f["type"] == "typing").len();
    let allowed = 1 + elapsed.as_secs() as usize;
    assert!(seen >= 1, "the first typing event must get through");
    assert!(
        seen <= allowed,
        "{seen} typing events reached the room in {elapsed:?} (at most {allowed})"
    );
}

/// A polling body still arriving holds its bytes against `limits.node_inbound_bytes`
/// too: two Socket.IO POSTs that stall past the budget, and the older gets 503 (and
/// its connection ends) while the younger goes on.
#[tokio::test]
async fn polling_bodies_stalled_past_the_node_inbound_budget_answer_the_oldest_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SENT: usize = 60_000;
    // Room for one such body, not two (the least the budget may be: maxPayload).
    let node = TestNode::start_adjusted(|s| s.limits.node_inbound_bytes = 100_000).await;
    let mut posts = Vec::new();
    for i in 0..2 {
        let (status, open) = node
            .get(&format!(
                "/socket.io/?EIO=4&transport=polling&user=poster-{i}"
            ))
            .await;
        assert_eq!(status, 200, "{open}");
        let sid = open
            .split(r#""sid":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a sid in the OPEN packet")
            .to_owned();
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let head = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: text/plain\r\nContent-Length: 99000\r\n\r\n",
            node.addr
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&vec![b'4'; SENT]).await.unwrap();
        posts.push(tcp);
        if i == 0 {
            eventually("the first body held", || async {
                let held = scrape(&node).await.value("hubbub_inbound_bytes", &[]);
                (held == SENT as f64).then_some(())
            })
            .await;
        }
    }
    // The second took the node past 100,000: the first is answered 503.
    let mut answer = Vec::new();
    let mut first = posts.remove(0);
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, first.read(&mut buf))
            .await
            .expect("an answer to the older POST")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let metrics = scrape(&node).await;
    assert_eq!(metrics.value("hubbub_inbound_shed_total", &[]), 1.0);
    assert_eq!(metrics.value("hubbub_inbound_bytes", &[]), SENT as f64);
}

/// The attachments of a Socket.IO event that have come, kept until the rest come, hold
/// their bytes against `limits.node_inbound_bytes` too: connections that each park a
/// part and never send the next, and the one that takes the node past the budget
/// closes the connection that parked first, with 1013, while the others stay.
#[tokio::test]
async fn socketio_attachments_parked_past_the_node_inbound_budget_close_the_oldest_with_1013() {
    use tokio::io::AsyncWriteExt;
    // Within what one message's data can hold (12,288 bytes of base64 by default).
    const PART: usize = 12_000;
    // Eight parked parts fit in 100,000 bytes (the least the budget may be), nine not.
    const FIT: usize = 8;
    let node = TestNode::start_adjusted(|s| s.limits.node_inbound_bytes = 100_000).await;
    let event = r#"452-2["publish",{"room":"r","data":[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]}]"#;
    let mut parked = Vec::new();
    for i in 0..=FIT {
        let target = format!("/socket.io/?EIO=4&transport=websocket&user=parker-{i}");
        let (mut tcp, mut seen) = raw_ws(&node, &target).await;
        tcp.write_all(&client_frame(0x1, b"40")).await.unwrap();
        // Connected (`40{"sid":…}`) before the event, so that it is not ignored.
        read_until(&mut tcp, &mut seen, "a CONNECT answer", |seen| {
            String::from_utf8_lossy(seen).contains("40{")
        })
        .await;
        // Joined, so that the event, once whole, is published.
        tcp.write_all(&client_frame(0x1, br#"421["join",{"room":"r"}]"#))
            .await
            .unwrap();
        read_until(&mut tcp, &mut seen, "the join's ack", |seen| {
            acked(seen, "431[")
        })
        .await;
        tcp.write_all(&client_frame(0x1, event.as_bytes()))
            .await
            .unwrap();
        tcp.write_all(&client_frame(0x2, &[0xab; PART]))
            .await
            .unwrap();
        parked.push((tcp, seen));
        if i < FIT {
            let held = ((i + 1) * PART) as f64;
            eventually("the part held", || async {
                (scrape(&node).await.value("hubbub_inbound_bytes", &[]) == held).then_some(())
            })
            .await;
        }
    }
    // The ninth took the node past 100,000: the first goes.
    let (mut first, first_seen) = parked.remove(0);
    assert_eq!(close_code(&mut first, first_seen).await, Some(1013));
    let metrics = scrape(&node).await;
    assert_eq!(metrics.value("hubbub_inbound_shed_total", &[]), 1.0);
    assert_eq!(
        metrics.value("hubbub_inbound_bytes", &[]),
        (FIT * PART) as f64
    );
    // The others are still open: the second sends its last part, its event is
    // published (the ack says so), and what it held is given back.
    let (second, seen) = &mut parked[0];
    second.write_all(&client_frame(0x2, b"end")).await.unwrap();
    read_until(second, seen, "the ack of the completed event", |seen| {
        acked(seen, "432[")
    })
    .await;
    eventually("the completed event released", || async {
        let bytes = scrape(&node).await.value("hubbub_inbound_bytes", &[]);
        (bytes == ((FIT - 1) * PART) as f64).then_some(())
    })
    .await;
}

/// Reads from `tcp` into `seen` until `done(seen)`; panics with `what` and what was
/// seen if the connection ends or DEADLINE passes first.
async fn read_until(
    tcp: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&[u8]) -> bool,
) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done(seen) {
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            other => panic!(
                "no {what} ({other:?}); seen: {}",
                String::from_utf8_lossy(seen)
            ),
        };
        seen.extend_from_slice(&buf[..n]);
    }
}

/// True when `seen` holds a Socket.IO ack starting with `prefix` that says `ok`.
fn acked(seen: &[u8], prefix: &str) -> bool {
    String::from_utf8_lossy(seen)
        .split(prefix)
        .skip(1)
        .any(|ack| {
            ack.split(r#""ok":"#)
                .nth(1)
                .is_some_and(|ok| ok.starts_with("true"))
        })
}

/// A whole masked client frame (mask key 0, so the payload goes as it is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_header(opcode, payload.len() as u64);
    frame.extend_from_slice(payload);
    frame
}

/// Sends `head` (the start of a request, or all of it) on a new connection and returns
/// the status of the answer, or None if the connection closed without one.
async fn status_after_head(node: &TestNode, head: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let _ = tcp.write_all(head).await;
    let mut answer = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
            .await
            .expect("an answer or a close")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

/// A request head is read up to 16 KiB (Node's default): past it the node answers 431
/// whether the head came whole or is still coming, so a connection that has not sent a
/// whole head holds at most that much.
#[tokio::test]
async fn a_request_head_past_16_kib_gets_431() {
    let node = TestNode::start().await;
    let head = |pad: usize, end: bool| {
        let mut head = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
            "a".repeat(pad)
        );
        if end {
            head.push_str("\r\n\r\n");
        }
        head.into_bytes()
    };
    assert_eq!(
        status_after_head(&node, &head(15_000, true)).await,
        Some(200)
    );
    assert_eq!(
        status_after_head(&node, &head(17_000, true)).await,
        Some(431)
    );
    // Never finished: refused once 16 KiB are in, not after the request timeout.
    assert_eq!(
        status_after_head(&node, &head(17_000, false)).await,
        Some(431)
    );
}

/// `limits.max_http_connections`: the listener holds at most that many connections at
/// once; the next waits (in the kernel's backlog) until one of them closes.
#[tokio::test]
async fn past_max_http_connections_a_connection_waits_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 8;
    let node = TestNode::start_adjusted(|s| {
        // Two workers of four connections each.
        s.node.threads = 2;
        s.limits.max_connections = 4;
        s.limits.max_http_connections = CAP;
    })
    .await;
    // CAP connections that begin a request and stall (within the 5 s request timeout).
    let mut stalled = Vec::new();
    for _ in 0..CAP {
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(tcp);
    }
    let mut next = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    // Proving a wait means watching for a while: 500 ms without an answer (the node
    // answers /healthz in about a millisecond once it has accepted).
    let early = tokio::time::timeout(Duration::from_millis(500), next.read(&mut buf)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    drop(stalled.pop());
    let n = tokio::time::timeout(DEADLINE, next.read(&mut buf))
        .await
        .expect("answered once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// `rooms.delivery_backlog_bytes`: committed messages that do not fit on their way to
/// a room's actor are not queued there; the room reads them from the log instead. At
/// the least bound (1 byte: every batch goes that way), two publishers that fire 100
/// publishes each without waiting still reach every member with every message once,
/// in seq order, without a gap (the log holds them all: `rooms.history` 1,000). Here
/// each publish's own append also makes the room read the log; a room that has only
/// the bound's way to its messages is tested in tests/cluster/backlog.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_least_delivery_backlog_every_member_gets_every_message_once_in_order() {
    const EACH: usize = 100;
    let node = TestNode::start_adjusted(|s| {
        s.rooms.delivery_backlog_bytes = 1;
        // The log holds every message of the test: a room behind reads them all.
        s.rooms.history = 1_000;
        s.limits.frames_per_second = 0;
        s.rate_limit.messages_per_minute = 0;
    })
    .await;
    let mut members = Vec::new();
    for i in 0..3 {
        let mut member = node.connect(&format!("member-{i}"), "Member").await;
        member.join("lobby").await;
        members.push(member);
    }
    let mut publishers = Vec::new();
    for i in 0..2 {
        let mut publisher = node.connect(&format!("pub-{i}"), "Pub").await;
        publisher.join("lobby").await;
        publishers.push(publisher);
    }
    let mut refs = Vec::new();
    for n in 0..EACH {
        for (i, publisher) in publishers.iter_mut().enumerate() {
            let content = format!("{i}-{n}");
            let reference = publisher
                .send_request(json!({"type": "publish", "room": "lobby", "content": content}))
                .await;
            refs.push((i, reference));
        }
    }
    for (i, reference) in refs {
        let reply = publishers[i].reply_to(&reference).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let total = (2 * EACH) as u64;
    for member in &mut members {
        let mut seqs = Vec::new();
        while seqs.len() < total as usize {
            let frame = member
                .expect(
                    |f| f["type"] == "message" || f["type"] == "gap",
                    "every message",
                )
                .await;
            assert_eq!(frame["type"], "message", "no gap may come: {frame}");
            seqs.push(frame["seq"].as_u64().expect("a seq"));
        }
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    }
    // They went the way the bound sends them, and the rooms hold nothing on their way.
    let metrics = scrape(&node).await;
    assert!(
        metrics.value("hubbub_delivery_behind_total", &[]) >= 1.0,
        "the room was never told to catch up"
    );
}
