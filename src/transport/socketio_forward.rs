//! Socket.IO without sticky sessions: requests for a sid another node holds are
//! relayed to that node, between the nodes' listeners: over HTTP, or over HTTPS when
//! the nodes serve it and `http.tls.peer_ca` says whom to trust.
//!
//! An Engine.IO connection (its outbox, its Sessions, its upgrade state) lives on the
//! node that answered its handshake, and stays there. That node's name is in the sid
//! (`<node>.<random>`, the random part 32 hex digits). A node asked about a sid it
//! does not hold looks the named node's HTTP address up (its `http_addr` in
//! `[[nodes]]`, else what it gossiped for itself in the cluster's heartbeats,
//! `Cluster::http_addr`) and:
//!
//! - **polling GET / POST** ([`relay_polling`]): reads the body (at most
//!   `socketio.max_payload_bytes`, 413 past it), sends the request on over plain
//!   HTTP/1.1 (one connection per request, `connection: close`) and relays the
//!   holder's status, content type and body. A long poll waits at the holder as it
//!   would for a client of its own; the relay gives up after the ping interval + ping
//!   timeout + 5 s. The answer is bounded ([`Peers`]' `max_answer`: 4 MiB, or twice
//!   `limits.outbound_bytes` + 512 KiB when that is larger).
//! - **WebSocket upgrade** (`GET ?transport=websocket&sid=`, [`relay_websocket`]):
//!   opens the same upgrade to the holder first (a refusal there is the answer here),
//!   then accepts the client's and relays messages both ways unchanged. The holder
//!   runs the upgrade (`2probe`, `3probe`, the noop to the waiting GET, `5`) exactly as
//!   for a client of its own, so nothing is lost or repeated; the connection just
//!   keeps one more hop. Frames are bounded as on the holder (`max_payload_bytes`
//!   from the client, `max_answer` from the holder), and each direction holds at most
//!   one message while its send waits.
//!
//! A relayed request carries `x-hubbub-forwarded` and is never relayed again: a sid
//! its holder does not know either gets "Session ID unknown". When the holder cannot
//! be reached or does not answer in time the answer is 502 with an Engine.IO error
//! body; socket.io-client takes it as a transport error and reconnects (a new
//! handshake, on whichever node the load balancer picks; with `[socketio] recovery`
//! it gets its rooms and what it missed back there).
//!
//! Why HTTP and not the cluster's Endpoint (docs/cluster.md): the Endpoint is one
//! ordered stream of actor messages per peer; a long poll held for up to a ping
//! interval, and a WebSocket per client, are streams of their own that need their own
//! flow control, and behind a large poll answer the Raft and presence traffic would
//! wait. One TCP connection per relayed request or WebSocket gives each its own.
//!
//! **Over HTTPS** (`[http.tls]`): each relayed request and upgrade dials the holder
//! with TLS ([`RelayTls`]: the holder's certificate must chain to `http.tls.peer_ca`
//! and name `http.tls.peer_name`, or the host dialled when that is not set). Without
//! `peer_ca` nothing is relayed: such sids get "Session ID unknown" on other nodes,
//! and the nodes need sticky sessions.

use super::inbound_budget::Hold;
use super::polling_body::{self, BodyError};
use super::tls::RelayTls;
use crate::cluster::Cluster;
use actix_http::ws::{CloseCode, CloseReason};
use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use futures_util::SinkExt;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The header a forwarded request carries.
pub const FORWARDED: &str = "x-hubbub-forwarded";

/// The least answer size relayed. A poll answers at most 256 KiB of packets plus the
/// frame that crosses that bound, itself at most `limits.outbound_bytes` (when set).
const MIN_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Where each other node's HTTP listener is.
pub struct Peers {
    node: String,
    /// From `[[nodes]]`: `http_addr` of every entry but this node's.
    configured: HashMap<String, SocketAddr>,
    /// What peers gossiped for themselves (nodes known through `cluster.seeds`).
    cluster: Option<Arc<Cluster>>,
    /// No relay at all: this node serves HTTPS and `http.tls.peer_ca` is not set.
    off: bool,
    /// Dial the holders with TLS (the nodes serve HTTPS).
    tls: Option<RelayTls>,
    /// The largest answer relayed; past it the request fails (502).
    max_answer: usize,
}

impl Peers {
    /// From the settings and the cluster handle: the `[[nodes]]` entries but this
    /// node, none whose address is unspecified (`0.0.0.0` cannot be dialled), then
    /// the addresses peers gossip; over TLS with `tls`, and nothing when the nodes
    /// serve HTTPS without it (`http.tls.peer_ca`).
    pub fn new(
        settings: &crate::config::Settings,
        cluster: Option<Arc<Cluster>>,
        tls: Option<RelayTls>,
    ) -> Self {
        let configured = settings
            .nodes
            .iter()
            .filter(|entry| {
                entry.name != settings.node.name && !entry.http_addr.ip().is_unspecified()
            })
            .map(|entry| (entry.name.clone(), entry.http_addr))
            .collect();
        let frame = usize::try_from(settings.limits.outbound_bytes).unwrap_or(usize::MAX);
        Self {
            node: settings.node.name.clone(),
            configured,
            cluster,
            off: settings.http.tls.is_some() && tls.is_none(),
            tls,
            max_answer: frame
                .saturating_mul(2)
                .saturating_add(512 * 1024)
                .max(MIN_ANSWER_BYTES),
        }
    }

    /// A new sid naming this node.
    pub fn new_sid(&self) -> String {
        format!("{}.{}", self.node, uuid::Uuid::new_v4().simple())
    }

    /// The HTTP address (`host:port`) to send a request for `sid` to, when another
    /// node holds it.
    pub fn holder(&self, req: &HttpRequest, sid: &str) -> Option<String> {
        if self.off || req.headers().contains_key(FORWARDED) {
            return None;
        }
        let (node, _) = sid.rsplit_once('.')?;
        if node == self.node {
            return None;
        }
        match self.configured.get(node) {
            Some(addr) => Some(addr.to_string()),
            None => self.cluster.as_ref()?.http_addr(node),
        }
    }
}

/// A polling GET or POST for a sid `addr` holds: its body read (at most
/// `max_payload` bytes, 413 past it as the holder would answer), the request sent on
/// and the answer relayed; 502 when the holder cannot be reached or does not answer
/// within `deadline`.
pub async fn relay_polling(
    req: &HttpRequest,
    body: web::Payload,
    peers: &Peers,
    addr: &str,
    max_payload: u64,
    hold: Hold,
    deadline: Duration,
) -> HttpResponse {
    let bytes = match polling_body::read(body, max_payload, hold).await {
        Ok(bytes) => bytes,
        Err(BodyError::Broken) => return error(StatusCode::BAD_REQUEST),
        Err(BodyError::TooLarge) => return error(StatusCode::PAYLOAD_TOO_LARGE),
        Err(BodyError::Shed) => return error(StatusCode::SERVICE_UNAVAILABLE),
    };
    let exchange = exchange(req, &bytes, peers, addr);
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(why)) => {
            tracing::debug!(error = %why, %addr, "could not forward a Socket.IO request");
            error(StatusCode::BAD_GATEWAY)
        }
        Err(_) => {
            tracing::debug!(%addr, "a forwarded Socket.IO request timed out");
            error(StatusCode::BAD_GATEWAY)
        }
    }
}

/// An Engine.IO error answer (`Bad request`) with this status.
fn error(status: StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(r#"{"code":3,"message":"Bad request"}"#)
}

/// A byte stream to a holder: TCP, or TLS over TCP.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// A connection to the holder's listener at `addr` (`host:port`): TCP without delay,
/// then TLS when the nodes serve HTTPS.
async fn dial(peers: &Peers, addr: &str) -> std::io::Result<Box<dyn PeerIo>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let Some(tls) = &peers.tls else {
        return Ok(Box::new(stream));
    };
    let name = match &tls.name {
        Some(name) => name.clone(),
        None => dialled_name(addr)?,
    };
    Ok(Box::new(tls.connector.connect(name, stream).await?))
}

/// The name a holder's certificate is checked for when `http.tls.peer_name` is not
/// set: the host of `addr` (`10.0.0.2:8080`, `[::1]:8080`, `node-b:8080`).
fn dialled_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| std::io::Error::other(format!("{host:?} is not a name TLS can check")))
}

async fn exchange(
    req: &HttpRequest,
    body: &[u8],
    peers: &Peers,
    addr: &str,
) -> std::io::Result<HttpResponse> {
    let max_answer = peers.max_answer;
    let mut stream = dial(peers, addr).await?;
    let target = req
        .uri()
        .path_and_query()
        .map_or("/socket.io/", |p| p.as_str());
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{FORWARDED}: 1\r\ncontent-length: {}\r\n",
        req.method(),
        body.len()
    );
    if let Some(kind) = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
    {
        head.push_str(&format!("content-type: {kind}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if answer.len() + n > max_answer {
            return Err(std::io::Error::other("answer too large"));
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    parse_answer(&answer).ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// Status, content type and body of an HTTP/1.1 answer read to its end (the
/// connection was `close`; a chunked body is decoded).
fn parse_answer(answer: &[u8]) -> Option<HttpResponse> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut kind = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-type" {
            kind = Some(value.to_owned());
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let raw = &answer[end + 4..];
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    let mut response = HttpResponse::build(StatusCode::from_u16(status).ok()?);
    if let Some(kind) = kind {
        response.content_type(kind);
    }
    Some(response.body(body))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A WebSocket upgrade for a sid `addr` holds: the holder is asked for the same
/// upgrade first (its refusal, "Session ID unknown" or another, is the answer here);
/// once it accepts, the client's upgrade is accepted and messages are relayed both
/// ways, unchanged, until either side closes. The holder runs the upgrade (probe,
/// `5`, the outbox's reader moving over) as for a client of its own: through the
/// relay, the connection stays where it was opened.
pub async fn relay_websocket(
    req: HttpRequest,
    body: web::Payload,
    peers: &Peers,
    addr: &str,
    max_payload: usize,
    silence: Duration,
) -> Result<HttpResponse, actix_web::Error> {
    // The client's handshake is checked before the holder is dialled.
    actix_http::ws::verify_handshake(req.head())?;
    let target = req
        .uri()
        .path_and_query()
        .map_or("/socket.io/", |p| p.as_str());
    let Ok(mut request) = format!("ws://{addr}{target}").into_client_request() else {
        return Ok(error(StatusCode::BAD_REQUEST));
    };
    request.headers_mut().insert(
        FORWARDED,
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("1"),
    );
    // What the holder sends: packets as large as a poll answer's.
    let config = WebSocketConfig::default()
        .max_message_size(Some(peers.max_answer))
        .max_frame_size(Some(peers.max_answer));
    let dial = async {
        let stream = dial(peers, addr).await.map_err(WsError::Io)?;
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await
    };
    let upstream = match tokio::time::timeout(UPGRADE_DIAL_TIMEOUT, dial).await {
        Ok(Ok((upstream, _))) => upstream,
        Ok(Err(WsError::Http(refused))) => {
            // The holder's own refusal, relayed (bounded: tungstenite reads at most
            // its head's buffer of body).
            let status =
                StatusCode::from_u16(refused.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = refused.into_body().unwrap_or_default();
            return Ok(HttpResponse::build(status)
                .content_type("application/json")
                .body(body));
        }
        Ok(Err(why)) => {
            tracing::debug!(error = %why, %addr, "could not relay a Socket.IO upgrade");
            return Ok(error(StatusCode::BAD_GATEWAY));
        }
        Err(_) => {
            tracing::debug!(%addr, "a relayed Socket.IO upgrade timed out");
            return Ok(error(StatusCode::BAD_GATEWAY));
        }
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(max_payload)
        .aggregate_continuations()
        .max_continuation_size(max_payload);
    actix_web::rt::spawn(relay(upstream, session, stream, silence));
    Ok(response)
}

/// How long the holder has to accept a relayed upgrade.
const UPGRADE_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages both ways until either side ends; then both are closed. Each direction
/// waits for its send before it reads on (at most one message in hand each way, plus
/// actix-ws's and tungstenite's own bounded buffers). Bounded in time too: the relay
/// ends when the holder has sent nothing for `silence` (it pings every ping
/// interval, so only a frozen or cut-off holder is that quiet), or when a send waits
/// that long.
async fn relay(
    upstream: tokio_tungstenite::WebSocketStream<Box<dyn PeerIo>>,
    session: actix_ws::Session,
    mut client: actix_ws::AggregatedMessageStream,
    silence: Duration,
) {
    let (mut to_holder, mut from_holder) = upstream.split();
    let mut to_client = session.clone();
    let up = async {
        while let Some(Ok(message)) = client.next().await {
            let message = match message {
                AggregatedMessage::Text(text) => Message::Text(text.to_string().into()),
                AggregatedMessage::Binary(bytes) => Message::Binary(bytes),
                AggregatedMessage::Ping(bytes) => {
                    if to_client.pong(&bytes).await.is_err() {
                        break;
                    }
                    continue;
                }
                AggregatedMessage::Pong(_) => continue,
                AggregatedMessage::Close(_) => break,
            };
            match tokio::time::timeout(silence, to_holder.send(message)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(silence, to_holder.close()).await;
    };
    let mut to_client = session.clone();
    let down = async {
        let mut reason = None;
        while let Ok(Some(Ok(message))) = tokio::time::timeout(silence, from_holder.next()).await {
            let sent = match message {
                Message::Text(text) => {
                    let text = text.as_str().to_owned();
                    tokio::time::timeout(silence, to_client.text(text)).await
                }
                Message::Binary(bytes) => {
                    tokio::time::timeout(silence, to_client.binary(bytes)).await
                }
                Message::Close(frame) => {
                    reason = frame.map(|frame| CloseReason {
                        code: CloseCode::from(u16::from(frame.code)),
                        description: (!frame.reason.is_empty())
                            .then(|| frame.reason.as_str().to_owned()),
                    });
                    break;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        reason
    };
    let reason = tokio::select! {
        () = up => None,
        reason = down => reason,
    };
    let _ = tokio::time::timeout(silence, session.close(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeEntry, Settings};
    use actix_web::test::TestRequest;

    fn entry(name: &str, http: &str) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            http_addr: http.parse().unwrap(),
            bind: "127.0.0.1:4370".parse().unwrap(),
            advertise: String::new(),
        }
    }

    fn settings() -> Settings {
        let mut settings = Settings::default();
        settings.node.name = "a".into();
        settings.nodes = vec![
            entry("a", "127.0.0.1:8081"),
            entry("b", "127.0.0.1:8082"),
            entry("c.dc1", "10.0.0.3:8083"),
            entry("d", "0.0.0.0:8084"),
        ];
        settings
    }

    #[test]
    fn sids_name_their_node_and_lead_to_its_listener() {
        let peers = Peers::new(&settings(), None, None);
        let sid = peers.new_sid();
        let (node, random) = sid.rsplit_once('.').unwrap();
        assert_eq!((node, random.len()), ("a", 32));
        let req = TestRequest::default().to_http_request();
        assert_eq!(peers.holder(&req, &sid), None, "this node's own sid");
        assert_eq!(peers.holder(&req, "b.0123"), Some("127.0.0.1:8082".into()));
        // A node name with a dot: the random part never has one.
        assert_eq!(
            peers.holder(&req, "c.dc1.0123"),
            Some("10.0.0.3:8083".into())
        );
        // 0.0.0.0 cannot be dialled; unknown nodes and sids of another form.
        for sid in ["d.0123", "zz.0123", "0123", "", "."] {
            assert_eq!(peers.holder(&req, sid), None, "{sid}");
        }
        // A request already forwarded once is never forwarded again.
        let forwarded = TestRequest::default()
            .insert_header((FORWARDED, "1"))
            .to_http_request();
        assert_eq!(peers.holder(&forwarded, "b.0123"), None);
    }

    #[test]
    fn peers_gossiped_by_the_cluster_are_reached_too() {
        let cluster = Arc::new(Cluster::new(
            "a",
            Duration::from_millis(100),
            Duration::from_millis(600),
            3,
            Arc::new(crate::telemetry::Metrics::new()),
        ));
        let peers = Peers::new(&settings(), Some(cluster.clone()), None);
        let req = TestRequest::default().to_http_request();
        assert_eq!(peers.holder(&req, "e.0123"), None);
        cluster.set_http_addr("e", "node-e:8080");
        cluster.set_http_addr("b", "10.9.9.9:1");
        assert_eq!(peers.holder(&req, "e.0123").as_deref(), Some("node-e:8080"));
        // `[[nodes]]` wins over what a peer says.
        assert_eq!(
            peers.holder(&req, "b.0123").as_deref(),
            Some("127.0.0.1:8082")
        );
        cluster.set_http_addr("e", "");
        assert_eq!(peers.holder(&req, "e.0123"), None);
    }

    #[test]
    fn no_forwarding_over_https_nor_without_nodes() {
        let mut single = Settings::default();
        single.node.name = "a".into();
        let req = TestRequest::default().to_http_request();
        assert_eq!(Peers::new(&single, None, None).holder(&req, "b.0123"), None);
        let mut tls = settings();
        tls.http.tls = Some(crate::config::HttpTls {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            peer_ca: None,
            peer_name: None,
        });
        assert_eq!(Peers::new(&tls, None, None).holder(&req, "b.0123"), None);
    }

    #[test]
    fn the_name_checked_is_the_host_dialled() {
        let name = |addr: &str| dialled_name(addr).map(|n| n.to_str().into_owned()).ok();
        assert_eq!(name("10.0.0.2:8080").as_deref(), Some("10.0.0.2"));
        assert_eq!(name("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(
            name("node-b.internal:8080").as_deref(),
            Some("node-b.internal")
        );
        assert_eq!(name("bad name:8080"), None);
    }

    /// A TLS listener on 127.0.0.1 with a certificate `ca` signed for `names`,
    /// answering each connection's first bytes with "ok" once the handshake is done.
    async fn tls_listener(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, names: &[&str]) -> String {
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, ca).expect("signed");
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut first = [0u8; 1];
                        if tls.read(&mut first).await.is_ok() {
                            let _ = tls.write_all(b"ok").await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn authority(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    fn relay_peers(ca_pem: &str, peer_name: Option<&str>) -> (Peers, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("peers.crt");
        std::fs::write(&ca, ca_pem).expect("ca written");
        let tls = crate::config::HttpTls {
            cert: dir.path().join("unused.crt"),
            key: dir.path().join("unused.key"),
            peer_ca: Some(ca),
            peer_name: peer_name.map(str::to_owned),
        };
        let relay = super::super::tls::relay_tls(&tls).expect("relay tls");
        let mut settings = settings();
        settings.http.tls = Some(tls);
        (Peers::new(&settings, None, relay), dir)
    }

    async fn dial_says(peers: &Peers, addr: &str) -> Result<Vec<u8>, String> {
        let mut stream = dial(peers, addr).await.map_err(|e| e.to_string())?;
        stream.write_all(b"?").await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer)
    }

    #[tokio::test]
    async fn over_https_the_holder_must_show_a_certificate_of_peer_ca_for_its_name() {
        let (ours, ours_pem) = authority("ours");
        let (_, theirs_pem) = authority("theirs");
        let holder = tls_listener(&ours, &["127.0.0.1"]).await;
        let shared_name = tls_listener(&ours, &["chat.example.com"]).await;

        // Trusted authority, the dialled host named: relayed.
        let (peers, _dir) = relay_peers(&ours_pem, None);
        assert!(!peers.off);
        let req = TestRequest::default().to_http_request();
        assert_eq!(peers.holder(&req, "b.0123"), Some("127.0.0.1:8082".into()));
        assert_eq!(dial_says(&peers, &holder).await.as_deref(), Ok(&b"ok"[..]));
        // A certificate for another name than the host dialled...
        let refused = dial_says(&peers, &shared_name).await;
        assert!(refused.is_err(), "{refused:?}");
        // ... is what http.tls.peer_name is for (one certificate on every node).
        let (named, _dir) = relay_peers(&ours_pem, Some("chat.example.com"));
        assert_eq!(
            dial_says(&named, &shared_name).await.as_deref(),
            Ok(&b"ok"[..])
        );
        // Another authority: refused, whatever the name.
        let (strangers, _dir) = relay_peers(&theirs_pem, None);
        let refused = dial_says(&strangers, &holder).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn the_answer_bound_covers_a_poll() {
        let mut settings = settings();
        assert_eq!(
            Peers::new(&settings, None, None).max_answer,
            MIN_ANSWER_BYTES
        );
        settings.limits.outbound_bytes = 8 * 1024 * 1024;
        assert_eq!(
            Peers::new(&settings, None, None).max_answer,
            16 * 1024 * 1024 + 512 * 1024
        );
    }

    #[test]
    fn answers_parse_plain_and_chunked() {
        let plain = parse_answer(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
        )
        .unwrap();
        assert_eq!(plain.status(), 200);
        let chunked = b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(dechunk(&chunked[56..]).as_deref(), Some(&b"abcde"[..]));
        assert_eq!(parse_answer(chunked).unwrap().status(), 400);
        assert!(parse_answer(b"garbage").is_none());
    }
}
