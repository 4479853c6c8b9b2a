//! Test support: a real node on port 0 and a real WebSocket client (the shared
//! [`Client`] of tests/common/ws_client.rs), over plain HTTP/WS or, for a node started
//! with [`TestNode::start_https`], HTTPS/WSS.
//!
//! Every wait is bounded by [`DEADLINE`]; nothing sleeps for a fixed time. To check
//! that something did NOT happen, a test sends a request that the server answers only
//! after the thing would have happened (a `barrier`), then looks at what arrived.

#![allow(dead_code)]

use crate::ws_client::Dial;
pub use crate::ws_client::{Client, Refusal};
use hubbub::{Application, Behaviours, Settings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

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
    // Nodes of one test process share its working directory: their room logs stay in
    // memory (tests of durable history set a data directory of their own).
    settings.storage.engine = hubbub::config::StorageEngine::Memory;
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

    /// Tries a WebSocket upgrade with a raw query string; a refused upgrade gives its
    /// HTTP status and JSON body instead of a client.
    pub async fn try_connect(&self, query: &str) -> Result<Client, Refusal> {
        Client::try_connect(self, query).await
    }
}

/// Clients of a test node: over WSS when it serves it, each wait bounded by
/// [`DEADLINE`]; nothing is retried.
impl Dial for TestNode {
    fn ws_url(&self, query: &str) -> String {
        TestNode::ws_url(self, query)
    }

    fn tls(&self) -> Option<Arc<ClientConfig>> {
        self.tls.clone()
    }

    fn deadline(&self) -> Duration {
        DEADLINE
    }
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
