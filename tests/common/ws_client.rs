//! A WebSocket client speaking protocol v1, shared by the single-node and the
//! multi-process suites (each includes this file with `#[path]`).
//!
//! A suite says how its clients reach a node by implementing [`Dial`]: the URL (`ws://`
//! or `wss://`), the TLS configuration for `wss://`, the longest any single wait of a
//! client lasts, and which error codes [`Client::ok_retry`] retries. Every wait is
//! bounded by that deadline; nothing sleeps for a fixed time except between retries.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// How a suite's clients reach a node and how long they wait.
pub trait Dial {
    /// The WebSocket URL for a raw query string.
    fn ws_url(&self, query: &str) -> String;

    /// For a node serving WSS: a client configuration trusting its certificate.
    fn tls(&self) -> Option<Arc<ClientConfig>> {
        None
    }

    /// The longest any single wait of a client lasts.
    fn deadline(&self) -> Duration;

    /// Error codes after which [`Client::ok_retry`] sends a request again.
    fn retryable(&self) -> &'static [&'static str] {
        &[]
    }
}

impl<T: Dial + ?Sized> Dial for &T {
    fn ws_url(&self, query: &str) -> String {
        (**self).ws_url(query)
    }

    fn tls(&self) -> Option<Arc<ClientConfig>> {
        (**self).tls()
    }

    fn deadline(&self) -> Duration {
        (**self).deadline()
    }

    fn retryable(&self) -> &'static [&'static str] {
        (**self).retryable()
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket, over TLS when `to` serves WSS.
async fn open_websocket(
    to: &impl Dial,
    request: impl IntoClientRequest + Unpin,
) -> Result<(Socket, Response), tokio_tungstenite::tungstenite::Error> {
    match to.tls() {
        Some(trust) => {
            let connector = Connector::Rustls(trust);
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await
        }
        None => tokio_tungstenite::connect_async(request).await,
    }
}

/// An upgrade the node answered with an HTTP error instead of switching protocols.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// The response body parsed as JSON (`Null` when it is not JSON).
    pub body: Value,
}

/// A WebSocket client speaking protocol v1.
pub struct Client {
    ws: Socket,
    pub welcome: Value,
    /// Frames read while waiting for something else, oldest first.
    pending: VecDeque<Value>,
    next_ref: u64,
    /// The longest any single wait lasts ([`Dial::deadline`]).
    deadline: Duration,
    /// What [`Client::ok_retry`] retries ([`Dial::retryable`]).
    retryable: &'static [&'static str],
}

impl Client {
    /// A client on an open socket, before its welcome is read.
    fn new(ws: Socket, to: &impl Dial) -> Self {
        Self {
            ws,
            welcome: Value::Null,
            pending: VecDeque::new(),
            next_ref: 0,
            deadline: to.deadline(),
            retryable: to.retryable(),
        }
    }

    /// Connects with a raw query string and reads the welcome frame.
    pub async fn connect(to: impl Dial, query: &str) -> Self {
        let (ws, _) = timeout(to.deadline(), open_websocket(&to, to.ws_url(query)))
            .await
            .expect("connect in time")
            .expect("websocket upgrade");
        let mut client = Self::new(ws, &to);
        client.welcome = client.expect_type("welcome").await;
        client
    }

    /// Like [`Client::connect`], but an upgrade refused with an HTTP error status is an
    /// `Err` carrying the status and body; any other failure panics.
    pub async fn try_connect(to: impl Dial, query: &str) -> Result<Self, Refusal> {
        Self::try_connect_with(to, query, &[]).await
    }

    /// [`Client::try_connect`] with extra request headers (`Authorization`, `Origin`).
    pub async fn try_connect_with(
        to: impl Dial,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refusal> {
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        use tokio_tungstenite::tungstenite::Error;
        let mut request = to
            .ws_url(query)
            .into_client_request()
            .expect("a valid request");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let connected = timeout(to.deadline(), open_websocket(&to, request))
            .await
            .expect("connect in time");
        match connected {
            Ok((ws, _)) => {
                let mut client = Self::new(ws, &to);
                client.welcome = client.expect_type("welcome").await;
                Ok(client)
            }
            Err(Error::Http(response)) => Err(Refusal {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null),
            }),
            Err(e) => panic!("websocket upgrade failed without an HTTP answer: {e}"),
        }
    }

    /// Connects like [`Client::connect`]; None when the node refuses, is gone, or
    /// does not send its welcome first and in time.
    pub async fn connect_or_none(to: impl Dial, query: &str) -> Option<Self> {
        let (ws, _) = timeout(to.deadline(), open_websocket(&to, to.ws_url(query)))
            .await
            .ok()?
            .ok()?;
        let mut client = Self::new(ws, &to);
        let welcome = timeout(client.deadline, client.read_frame()).await.ok()??;
        (welcome["type"] == "welcome").then_some(())?;
        client.welcome = welcome;
        Some(client)
    }

    /// The client's end of the TCP connection.
    pub fn local_addr(&self) -> SocketAddr {
        let tcp = match self.ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => tcp,
            MaybeTlsStream::Rustls(tls) => tls.get_ref().0,
            _ => panic!("a stream this harness does not open"),
        };
        tcp.local_addr().expect("a connected socket")
    }

    pub fn user_id(&self) -> String {
        self.welcome["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Sends a JSON frame as is.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sets a fresh `ref` on `frame`; returns it.
    fn stamp(&mut self, frame: &mut Value) -> String {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        frame["ref"] = json!(reference);
        reference
    }

    /// Sends a frame with a fresh `ref` and returns that ref (read the reply later
    /// with [`Client::reply_to`]).
    pub async fn send_request(&mut self, mut frame: Value) -> String {
        let reference = self.stamp(&mut frame);
        self.send(frame).await;
        reference
    }

    /// Like [`Client::send_request`], but None instead of a panic when the connection
    /// is gone (the fault suite's clients outlive the nodes they talk to).
    pub async fn try_send_request(&mut self, mut frame: Value) -> Option<String> {
        let reference = self.stamp(&mut frame);
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .ok()?;
        Some(reference)
    }

    /// The reply echoing `reference`.
    pub async fn reply_to(&mut self, reference: &str) -> Value {
        self.expect(
            |f| f["type"] == "reply" && f["ref"] == json!(reference),
            &format!("reply to {reference}"),
        )
        .await
    }

    /// Sends a frame with a fresh `ref` and returns the reply that echoes it.
    pub async fn request(&mut self, frame: Value) -> Value {
        let reference = self.send_request(frame).await;
        self.reply_to(&reference).await
    }

    /// Sends a request and waits for its reply; None when the connection ends first
    /// (a node draining or dying), so a test can reconnect elsewhere.
    pub async fn try_request(&mut self, mut frame: Value) -> Option<Value> {
        let reference = self.stamp(&mut frame);
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .ok()?;
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f["type"] == "reply" && f["ref"] == json!(reference))
        {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .ok()??;
            if frame["type"] == "reply" && frame["ref"] == json!(reference) {
                return Some(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// A request that must succeed; returns its `data`.
    pub async fn ok(&mut self, frame: Value) -> Value {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["ok"], true, "request {frame} failed: {reply}");
        reply["data"].clone()
    }

    /// A request that must fail; returns its error code.
    pub async fn refused(&mut self, frame: Value) -> String {
        let reply = self.request(frame.clone()).await;
        assert_eq!(reply["ok"], false, "request {frame} should fail: {reply}");
        reply["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A request sent again while it fails with a retryable code ([`Dial::retryable`]),
    /// until it succeeds (its `data`) or the deadline passes. Any other failure panics.
    /// Returns the data and how many times the request was refused first.
    pub async fn ok_retry(&mut self, frame: Value) -> (Value, u32) {
        let started = Instant::now();
        let mut refusals = 0;
        loop {
            let reply = self.request(frame.clone()).await;
            if reply["ok"] == true {
                return (reply["data"].clone(), refusals);
            }
            let code = reply["error"]["code"].as_str().unwrap_or_default();
            assert!(
                self.retryable.contains(&code),
                "request {frame} failed with a code that is not retryable: {reply}"
            );
            assert!(
                started.elapsed() < self.deadline,
                "request {frame} still refused after {:?} ({refusals} tries): {reply}",
                self.deadline
            );
            refusals += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends an application ping and waits for its pong; false when the connection
    /// ended instead.
    pub async fn ping_or_end(&mut self) -> bool {
        let reference = self.send_request(json!({"type": "ping"})).await;
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .unwrap_or_else(|_| panic!("no pong to {reference} and no close"));
            match frame {
                Some(f) if f["type"] == "pong" && f["ref"] == json!(reference) => return true,
                Some(f) => self.pending.push_back(f),
                None => return false,
            }
        }
    }

    /// Sends an application ping; panics unless its pong comes back.
    pub async fn ping(&mut self) {
        assert!(self.ping_or_end().await, "the connection ended");
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.ok(json!({"type": "join", "room": room})).await
    }

    /// Joins, retrying while the room is unavailable (moving, or no quorum).
    pub async fn join_retry(&mut self, room: &str) -> Value {
        self.ok_retry(json!({"type": "join", "room": room})).await.0
    }

    pub async fn publish(&mut self, room: &str, content: &str) -> Value {
        self.ok(json!({"type": "publish", "room": room, "content": content}))
            .await
    }

    /// Publishes, retrying while the room is unavailable. A retried publish may have
    /// been ordered already (its ack was lost), so the message can appear twice.
    pub async fn publish_retry(&mut self, room: &str, content: &str) -> Value {
        self.ok_retry(json!({"type": "publish", "room": room, "content": content}))
            .await
            .0
    }

    /// The room's members as this node knows them: user id → connections.
    pub async fn presence(&mut self, room: &str) -> BTreeMap<String, u64> {
        let data = self.ok(json!({"type": "presence", "room": room})).await;
        members(&data["members"])
    }

    /// Every message the room holds, oldest first, paging back with `history`.
    pub async fn full_history(&mut self, room: &str) -> Vec<Value> {
        let mut messages: Vec<Value> = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut frame = json!({"type": "history", "room": room, "limit": 1000});
            if let Some(before) = before {
                frame["before"] = json!(before);
            }
            let data = self.ok_retry(frame).await.0;
            let page = data["messages"].as_array().cloned().unwrap_or_default();
            let Some(first) = page.first() else { break };
            before = first["seq"].as_u64();
            let mut older = page;
            older.append(&mut messages);
            messages = older;
            if before.is_none_or(|b| b <= 1) {
                break;
            }
        }
        messages
    }

    /// [`Self::full_history`] once this node's copy of the room's log holds `seq`: a
    /// node that does not lead the room's shard serves history from its own copy, which
    /// may trail the leader by a heartbeat. Read again until it does, within the
    /// client's deadline.
    pub async fn full_history_through(&mut self, room: &str, seq: u64) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let history = self.full_history(room).await;
            let last = history.last().and_then(|m| m["seq"].as_u64());
            if last.is_some_and(|last| last >= seq) {
                return history;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{room}'s history here still ends at {last:?}, not at {seq} or later"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A round trip through `room`: every frame the room sent this client before
    /// answering has been read (into `pending`) when this returns.
    pub async fn barrier(&mut self, room: &str) {
        self.ok(json!({"type": "presence", "room": room})).await;
    }

    /// Forgets every frame read and not yet consumed; returns how many there were.
    /// For tests that make the server send many frames they do not look at one by one.
    pub fn discard_pending(&mut self) -> usize {
        let discarded = self.pending.len();
        self.pending.clear();
        discarded
    }

    /// Forgets the frames read and not yet consumed that match `pred`; returns how many.
    pub fn discard_pending_where(&mut self, pred: impl Fn(&Value) -> bool) -> usize {
        let before = self.pending.len();
        self.pending.retain(|f| !pred(f));
        before - self.pending.len()
    }

    /// Frames read so far and not yet consumed that match `pred`.
    pub fn seen(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.pending.iter().filter(|f| pred(f)).cloned().collect()
    }

    /// Removes and returns the frames read so far that match `pred`, oldest first.
    pub fn take_seen(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut taken = Vec::new();
        self.pending.retain(|f| {
            if pred(f) {
                taken.push(f.clone());
                false
            } else {
                true
            }
        });
        taken
    }

    /// The next frame, whatever its type (a pending one first).
    pub async fn next_frame(&mut self) -> Value {
        self.expect(|_| true, "any frame").await
    }

    /// The next frame, or None when the connection ended (the frame is consumed, not
    /// kept pending). Pending frames come first.
    pub async fn next_frame_or_end(&mut self) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        self.read_frame().await
    }

    /// The next frame matching `pred` (earlier non-matching frames stay pending).
    pub async fn expect(&mut self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        self.expect_within(self.deadline, pred, what).await
    }

    /// [`Client::expect`] with its own deadline.
    pub async fn expect_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index is valid");
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out waiting for {what}; pending: {:?}", self.pending)
                });
            match frame {
                Some(frame) if pred(&frame) => return frame,
                Some(frame) => self.pending.push_back(frame),
                None => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// The next frame of `type`.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        self.expect(|f| f["type"] == kind, kind).await
    }

    /// Reads until the node closes; returns the close code (None: closed without a
    /// close frame). Text frames read on the way are kept pending.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the node should close the connection in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(text))) => {
                    if let Ok(v) = serde_json::from_str(&text) {
                        self.pending.push_back(v);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads one JSON frame; None when the connection ended.
    async fn read_frame(&mut self) -> Option<Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Stops reading and writing without a close frame: the TCP connection is dropped.
    pub fn vanish(self) {
        drop(self.ws);
    }

    /// Closes politely with a close frame.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// A `members` array as user id → connections.
pub fn members(list: &Value) -> BTreeMap<String, u64> {
    list.as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| Some((m["id"].as_str()?.to_owned(), m["connections"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}
