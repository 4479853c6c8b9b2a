//! HTTPS and WSS (`[http.tls]`) with a self-signed certificate made by the test for
//! 127.0.0.1 and localhost: chat and `/healthz` over TLS, nothing served in the clear
//! on the TLS port (a plain request gets a TLS alert at most), ALPN `http/1.1` alone
//! with TLS 1.2 and 1.3, Nagle off on TLS connections as on plain ones, and a bad
//! certificate or key stopping start-up with the setting named.

use crate::support::{https_get, test_settings, TestNode, DEADLINE};
use hubbub::config::HttpTls;
use hubbub::{Application, Settings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{
    ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion,
};

/// A self-signed certificate for 127.0.0.1 and localhost, its key, both as PEM files
/// in a directory of their own (removed on drop).
struct SelfSigned {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl SelfSigned {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hubbub-tls-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("a self-signed certificate");
        let cert = dir.join("http.crt");
        let key = dir.join("http.key");
        std::fs::write(&cert, made.cert.pem()).expect("certificate written");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("key written");
        Self {
            dir,
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }

    /// The `[http.tls]` table naming these files.
    fn table(&self) -> HttpTls {
        HttpTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            peer_ca: None,
            peer_name: None,
        }
    }

    /// Test settings serving HTTPS with this certificate.
    fn settings(&self) -> Settings {
        let mut settings = test_settings();
        settings.http.tls = Some(self.table());
        settings
    }

    /// A client trusting this certificate alone, with the given versions and ALPN.
    fn client(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("a trust anchor");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(versions)
                .expect("versions the provider supports")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// What a WebSocket client offers: TLS 1.2 and 1.3, no ALPN (as tungstenite).
    fn trust(&self) -> Arc<ClientConfig> {
        self.client(&[&TLS13, &TLS12], &[])
    }

    /// Writes `text` as another file in the directory; returns its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("file written");
        path
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS handshake with the node: (negotiated version, negotiated ALPN protocol).
async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (ProtocolVersion, Option<Vec<u8>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(ServerName::from(addr.ip()), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let (_, connection) = tls.get_ref();
    (
        connection
            .protocol_version()
            .expect("a version once connected"),
        connection.alpn_protocol().map(<[u8]>::to_vec),
    )
}

#[tokio::test]
async fn chat_and_health_checks_work_over_wss_and_https() {
    let certificate = SelfSigned::new();
    let mut node = TestNode::start_https(certificate.settings(), certificate.trust()).await;
    assert!(
        node.ws_url("").starts_with("wss://127.0.0.1:"),
        "{}",
        node.ws_url("")
    );

    let mut alice = node.connect("alice", "Alice").await;
    let mut bob = node.connect("bob", "Bob").await;
    assert_eq!(alice.welcome["node"], "test-node", "{}", alice.welcome);
    alice.join("lobby").await;
    bob.join("lobby").await;
    let ack = alice.publish("lobby", "over TLS").await;
    assert_eq!(ack["seq"], 1);
    for client in [&mut alice, &mut bob] {
        let message = client.expect_type("message").await;
        assert_eq!(message["content"], "over TLS");
        assert_eq!(message["from"]["id"], "alice");
    }

    let (status, body) = node.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    // The drain works over TLS too: goodbye, then 1012.
    let goodbye = tokio::spawn(async move {
        let frame = alice.expect_type("goodbye").await;
        (frame, alice.expect_close().await)
    });
    node.shut_down().await.expect("the node stops cleanly");
    let (frame, code) = goodbye.await.expect("the client task");
    assert_eq!(frame["reason"], "shutdown");
    assert_eq!(code, Some(1012));
}

#[tokio::test]
async fn the_tls_port_serves_nothing_in_the_clear() {
    let certificate = SelfSigned::new();
    let node = TestNode::start_https(certificate.settings(), certificate.trust()).await;

    let mut plain = TcpStream::connect(node.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    // The node closes the connection (at most after a TLS alert): reading ends.
    let read = timeout(DEADLINE, plain.read_to_end(&mut answer))
        .await
        .expect("the node closes a plain-text connection in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("HTTP/") && !text.contains("status"),
        "plain HTTP got an answer in the clear: {text:?} ({read:?})"
    );
    // At most a TLS alert record (content type 21), never application data.
    assert!(
        answer.is_empty() || answer[0] == 21,
        "expected nothing or a TLS alert, got {answer:?}"
    );

    // A ws:// upgrade fails the same way, without any HTTP answer.
    let upgrade = timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws?user=eve", node.addr)),
    )
    .await
    .expect("the plain upgrade ends in time");
    assert!(
        matches!(
            upgrade,
            Err(ref e) if !matches!(e, tokio_tungstenite::tungstenite::Error::Http(_))
        ),
        "a plain WebSocket upgrade on the TLS port must fail: {upgrade:?}"
    );

    // The node still serves TLS clients afterwards.
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_served_with_http_1_1_as_the_only_alpn() {
    let certificate = SelfSigned::new();
    let node = TestNode::start_https(certificate.settings(), certificate.trust()).await;

    // A browser offers h2 first; WebSocket needs HTTP/1.1, which is what it gets.
    let browser_like = certificate.client(&[&TLS13, &TLS12], &[b"h2", b"http/1.1"]);
    let (version, alpn) = handshake(node.addr, browser_like).await;
    assert_eq!(version, ProtocolVersion::TLSv1_3);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    let h2_only = certificate.client(&[&TLS13], &[b"h2"]);
    let tcp = TcpStream::connect(node.addr).await.expect("connect");
    let refused = timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(h2_only).connect(ServerName::from(node.addr.ip()), tcp),
    )
    .await
    .expect("handshake ends in time");
    assert!(refused.is_err(), "a client that speaks only h2 is refused");

    let tls12 = certificate.client(&[&TLS12], &[]);
    let (version, alpn) = handshake(node.addr, tls12.clone()).await;
    assert_eq!(version, ProtocolVersion::TLSv1_2);
    assert_eq!(alpn, None);
    let (status, _) = https_get(node.addr, "/healthz", &[], tls12).await;
    assert_eq!(status, 200);
}

/// Small frames must not wait for the client's delayed ACK (Nagle's algorithm adds
/// about 40 ms to a reply written right after a broadcast), so TCP_NODELAY must hold
/// for TLS connections as for plain ones. The node runs in this process, so its end
/// of the connection is among this process's file descriptors: find it and ask.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn connections_have_nagle_turned_off_with_tls_or_without() {
    let certificate = SelfSigned::new();
    let node = TestNode::start_https(certificate.settings(), certificate.trust()).await;
    let alice = node.connect("alice", "Alice").await;
    let nodelay = server_end_nodelay(node.addr, alice.local_addr())
        .expect("the node's end of the connection is found");
    assert!(
        nodelay,
        "TCP_NODELAY is off on the node's end of a TLS connection"
    );

    let plain_node = TestNode::start().await;
    let bob = plain_node.connect("bob", "Bob").await;
    let nodelay = server_end_nodelay(plain_node.addr, bob.local_addr())
        .expect("the node's end of the connection is found");
    assert!(
        nodelay,
        "TCP_NODELAY is off on the node's end of a plain connection"
    );
}

/// TCP_NODELAY on this process's socket connected from `local` to `peer`, if any.
#[cfg(target_os = "linux")]
fn server_end_nodelay(local: SocketAddr, peer: SocketAddr) -> Option<bool> {
    use std::os::fd::{BorrowedFd, RawFd};
    let fds = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed to duplicate it, at once; if it was
        // closed meanwhile, the duplication fails and it is skipped.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(owned) = borrowed.try_clone_to_owned() else {
            continue;
        };
        let socket = std::net::TcpStream::from(owned);
        if socket.local_addr().ok() == Some(local) && socket.peer_addr().ok() == Some(peer) {
            return socket.nodelay().ok();
        }
    }
    None
}

/// `Application::build`'s error with `[http.tls]` naming these files.
fn start_up_error(cert: &Path, key: &Path) -> String {
    let mut settings = test_settings();
    settings.http.tls = Some(HttpTls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        peer_ca: None,
        peer_name: None,
    });
    match Application::build(settings) {
        Ok(_) => panic!("a node started with a bad [http.tls]"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_bad_certificate_or_key_stops_start_up_naming_it() {
    let certificate = SelfSigned::new();
    let other = SelfSigned::new();

    let error = start_up_error(&certificate.cert, &other.key);
    assert!(
        error.starts_with("http.tls.key: ") && error.contains("is not the private key"),
        "{error}"
    );

    let garbled = certificate.file(
        "garbled.crt",
        "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
    );
    let error = start_up_error(&garbled, &certificate.key);
    assert!(error.starts_with("http.tls.cert: "), "{error}");

    let no_certificate = certificate.file("empty.crt", "");
    let error = start_up_error(&no_certificate, &certificate.key);
    assert!(error.starts_with("http.tls.cert: "), "{error}");

    let error = start_up_error(&certificate.cert, &certificate.cert);
    assert!(error.starts_with("http.tls.key: "), "{error}");

    let garbled_key = certificate.file(
        "garbled.key",
        "-----BEGIN PRIVATE KEY-----\nMIIBCgKCAQEA\n-----END PRIVATE KEY-----\n",
    );
    let error = start_up_error(&certificate.cert, &garbled_key);
    assert!(error.starts_with("http.tls.key: "), "{error}");
}
