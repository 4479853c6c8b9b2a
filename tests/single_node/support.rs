//! Test support: a real node on port 0 and a real WebSocket client, over plain
//! HTTP/WS or, for a node started with [`TestNode::start_https`], HTTPS/WSS.
//!
//! Every wait is bounded by [`DEADLINE`]; nothing sleeps for a fixed time. To check
//! that something did NOT happen, a test sends a request that the server answers only
//! after the thing would have happened (a `barrier`), then looks at what arrived.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use hubbub::{Application, Behaviours, Settings};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// The longest any single expectation waits.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Settings for a test node: port 0, a fixed name, everything else default.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.node.name = "test-node".to_owned();
    settings.node.http_addr = "127.0.0.1:0".parse().unwrap();
    settings.log.level = "warn".to_owned();
    // Tests publish in bursts of their own; abuse.rs turns the per-user limit on.
    settings.rate_limit.messages_per_minute = 0;
    if let Ok(level) = std::env::var("TEST_LOG") {
        settings.log.level = level;
        let _ = hubbub::telemetry::init(&settings.log, &settings.node.name);
    }
    settings
}

/// A node running in this test's runtime.
pub struct TestNode {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// For a node serving HTTPS and WSS: a client configuration trusting its
    /// certificate, which every request and connection of this harness then uses.
    tls: Option<Arc<ClientConfig>>,
}

impl TestNode {
    /// Starts a node with default test settings.
    pub async fn start() -> Self {
        Self::start_with(test_settings(), Behaviours::new()).await
    }

    /// Starts a node with the given settings, adjusted by `adjust`.
    pub async fn start_adjusted(adjust: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings();
        adjust(&mut settings);
        Self::start_with(settings, Behaviours::new()).await
    }

    /// Starts a node with settings and room behaviours.
    pub async fn start_with(settings: Settings, behaviours: Behaviours) -> Self {
        let app = Application::build_with(settings, behaviours).expect("node builds");
        let addr = app.local_addr();
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let stopped = tokio::spawn(app.run(async move {
            let _ = signal.await;
        }));
        Self {
            addr,
            shutdown: Some(shutdown),
            stopped: Some(stopped),
            tls: None,
        }
    }

    /// Starts a node serving HTTPS and WSS (`settings.http.tls` must be set); the
    /// harness's requests and clients reach it over TLS, trusting what `trust` trusts.
    pub async fn start_https(settings: Settings, trust: Arc<ClientConfig>) -> Self {
        assert!(settings.http.tls.is_some(), "start_https needs [http.tls]");
        let mut node = Self::start_with(settings, Behaviours::new()).await;
        node.tls = Some(trust);
        node
    }

    /// Shuts the node down as SIGTERM would (a drain) and waits until it has stopped.
    pub async fn shut_down(&mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let stopped = self.stopped.take().expect("the node was running");
        timeout(DEADLINE, stopped)
            .await
            .expect("the node stops in time")
            .expect("the node task did not panic")
    }

    pub fn ws_url(&self, query: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws?{}", self.addr, query)
    }

    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// Connects as `user` with display name `name`, and reads the welcome.
    pub async fn connect(&self, user: &str, name: &str) -> Client {
        Client::connect(self, &format!("user={user}&name={name}")).await
    }

    /// An HTTP GET (HTTPS for a node started with [`TestNode::start_https`]):
    /// (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        match &self.tls {
            Some(trust) => https_get(self.addr, path, &[], trust.clone()).await,
            None => http_get(self.addr, path, &[]).await,
        }
    }

    /// Opens a WebSocket to this node, over TLS when it serves WSS.
    async fn open_websocket(
        &self,
        request: impl IntoClientRequest + Unpin,
    ) -> Result<
        (WebSocketStream<MaybeTlsStream<TcpStream>>, Response),
        tokio_tungstenite::tungstenite::Error,
    > {
        match &self.tls {
            Some(trust) => {
                let connector = Connector::Rustls(trust.clone());
                tokio_tungstenite::connect_async_tls_with_config(
                    request,
                    None,
                    false,
                    Some(connector),
                )
                .await
            }
            None => tokio_tungstenite::connect_async(request).await,
        }
    }

    /// Tries a WebSocket upgrade with a raw query string; a refused upgrade gives its
    /// HTTP status and JSON body instead of a client.
    pub async fn try_connect(&self, query: &str) -> Result<Client, Refusal> {
        Client::try_connect(self, query).await
    }
}

/// An upgrade the node answered with an HTTP error instead of switching protocols.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// The response body parsed as JSON (`Null` when it is not JSON).
    pub body: Value,
}

/// A minimal HTTP/1.1 GET over a raw socket, so tests need no HTTP client crate.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    get_over(stream, addr, path, headers).await
}

/// [`http_get`] over TLS (a raw rustls client), verifying the server's certificate
/// for its IP address with `trust`.
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    trust: Arc<ClientConfig>,
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(trust).connect(ServerName::from(addr.ip()), tcp),
    )
    .await
    .expect("TLS handshake in time")
    .expect("TLS handshake");
    get_over(tls, addr, path, headers).await
}

/// The GET of [`http_get`] over any byte stream.
async fn get_over(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A WebSocket client speaking protocol v1.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    /// Frames read while waiting for something else, oldest first.
    pending: VecDeque<Value>,
    next_ref: u64,
}

impl Client {
    /// Connects with a raw query string and reads the welcome frame.
    pub async fn connect(node: &TestNode, query: &str) -> Self {
        let (ws, _) = timeout(DEADLINE, node.open_websocket(node.ws_url(query)))
            .await
            .expect("connect in time")
            .expect("websocket upgrade");
        let mut client = Self {
            ws,
            welcome: Value::Null,
            pending: VecDeque::new(),
            next_ref: 0,
        };
        client.welcome = client.expect_type("welcome").await;
        client
    }

    /// Like [`Client::connect`], but an upgrade refused with an HTTP error status is an
    /// `Err` carrying the status and body; any other failure panics.
    pub async fn try_connect(node: &TestNode, query: &str) -> Result<Self, Refusal> {
        Self::try_connect_with(node, query, &[]).await
    }

    /// [`Client::try_connect`] with extra request headers (`Authorization`, `Origin`).
    pub async fn try_connect_with(
        node: &TestNode,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refusal> {
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        use tokio_tungstenite::tungstenite::Error;
        let mut request = node
            .ws_url(query)
            .into_client_request()
            .expect("a valid request");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let connected = timeout(DEADLINE, node.open_websocket(request))
            .await
            .expect("connect in time");
        match connected {
            Ok((ws, _)) => {
                let mut client = Self {
                    ws,
                    welcome: Value::Null,
                    pending: VecDeque::new(),
                    next_ref: 0,
                };
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

    /// Sends a frame with a fresh `ref` and returns the reply that echoes it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        frame["ref"] = json!(reference);
        self.send(frame).await;
        self.expect(
            |f| f["type"] == "reply" && f["ref"] == json!(reference),
            &format!("reply to {reference}"),
        )
        .await
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

    pub async fn join(&mut self, room: &str) -> Value {
        self.ok(json!({"type": "join", "room": room})).await
    }

    pub async fn publish(&mut self, room: &str, content: &str) -> Value {
        self.ok(json!({"type": "publish", "room": room, "content": content}))
            .await
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

    /// The next frame, whatever its type (a pending one first).
    pub async fn next_frame(&mut self) -> Value {
        self.expect(|_| true, "any frame").await
    }

    /// Frames read so far and not yet consumed that match `pred`.
    pub fn seen(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.pending.iter().filter(|f| pred(f)).cloned().collect()
    }

    /// The next frame matching `pred` (earlier non-matching frames stay pending).
    pub async fn expect(&mut self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index is valid");
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
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

    /// Reads until the server closes; returns the close code (None: closed without a
    /// close frame). Text frames read on the way are kept pending.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the server should close the connection in time");
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

/// Polls `check` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
