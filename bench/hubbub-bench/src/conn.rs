//! One client connection: where it goes, how it opens, and the two tasks that run it.
//!
//! A [`Target`] is a loopback `ws://` URL and the protocol spoken there; anything but
//! a loopback address is refused, so a mistyped URL cannot send load off the machine.
//! [`open`] dials from a chosen source address (127.0.0.x, so that runs with more
//! connections than one address has ports can spread out), upgrades, and completes the
//! protocol's handshake: hubbub's `welcome`, or Engine.IO open then Socket.IO CONNECT.
//! [`request`] sends one request and waits for its answer, for set-up steps that
//! happen one at a time (join, leave). [`Conn::split`] then hands the socket to a
//! writer task fed by a bounded queue and returns the read half to the scenario.

use crate::wire::{Incoming, Protocol};
use futures_util::stream::{SplitStream, StreamExt};
use futures_util::SinkExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// An open WebSocket to a system under test.
pub type Ws = WebSocketStream<TcpStream>;

/// Frames queued for one connection's writer before a sender waits.
const WRITE_QUEUE: usize = 4096;
/// Bytes of each connection's read buffer (tungstenite allocates it up front; its
/// default of 128 KiB would cost 1.3 GB at 10,000 connections).
const READ_BUFFER: usize = 32 * 1024;

/// A server endpoint: a loopback address, the WebSocket path and its protocol.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Host as written in the URL, for the `Host` header.
    pub host: String,
    /// Path and query, e.g. `/ws` or `/socket.io/?EIO=4&transport=websocket`.
    pub path: String,
    pub protocol: Protocol,
}

impl Target {
    /// Parses `ws://HOST:PORT[/PATH]`; without a path the protocol's default is used.
    /// HOST must be a loopback address or `localhost`.
    pub fn parse(url: &str, protocol: Protocol) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            protocol.default_path().to_owned()
        } else {
            path.to_owned()
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: the URL needs a port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url}: bad port {port:?}"))?;
        let host_ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            other => other
                .parse()
                .map_err(|_| format!("{url}: the host must be an IP address or localhost"))?,
        };
        if !host_ip.is_loopback() {
            return Err(format!(
                "{url}: the load generator only targets loopback addresses"
            ));
        }
        Ok(Self {
            addr: SocketAddr::new(host_ip, port),
            host: authority.to_owned(),
            path,
            protocol,
        })
    }

    /// The HTTP origin (`http://host:port`) of this target, for `/metrics` and
    /// `/cluster`.
    pub fn http_origin(&self) -> String {
        format!("http://{}", self.host)
    }

    fn request_url(&self, user: &str) -> String {
        let mut url = format!("ws://{}{}", self.host, self.path);
        if let Some(query) = self.protocol.user_query(user) {
            url.push(if self.path.contains('?') { '&' } else { '?' });
            url.push_str(&query);
        }
        url
    }
}

/// Chooses the source address of connection `i`: none (the kernel's choice) while
/// one address has ports enough, else 127.0.0.1 up to 127.0.0.`ips`, round robin.
#[derive(Debug, Clone, Copy)]
pub struct SourcePlan {
    ips: u8,
}

impl SourcePlan {
    /// Connections one source address is given at most when spreading is automatic:
    /// well inside Linux's default ephemeral range (32768–60999), leaving room for
    /// sockets still in TIME_WAIT from earlier runs.
    pub const PER_IP: usize = 16_000;

    /// `ips` = 0 spreads automatically for `connections`; otherwise uses that many.
    pub fn new(ips: u8, connections: usize) -> Self {
        let ips = if ips == 0 {
            connections.div_ceil(Self::PER_IP).clamp(1, 254) as u8
        } else {
            ips
        };
        Self { ips }
    }

    /// How many source addresses are in use.
    pub fn ips(&self) -> u8 {
        self.ips
    }

    /// The address connection `i` binds to, if any.
    pub fn source(&self, i: usize) -> Option<Ipv4Addr> {
        (self.ips > 1).then(|| Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(self.ips)) as u8))
    }
}

/// Why a connection or a request failed; [`ConnError::kind`] names the count it
/// goes to.
#[derive(Debug)]
pub enum ConnError {
    /// TCP connect (or the bind before it) failed.
    Connect(std::io::Error),
    /// The WebSocket upgrade was refused, e.g. HTTP 503 at a connection limit.
    Upgrade(String),
    /// The protocol's handshake or a request's answer went wrong.
    Protocol(String),
    /// The server closed the connection.
    Closed,
    /// No answer within the deadline; the text says what was awaited.
    Timeout(&'static str),
}

impl ConnError {
    /// A short label to count errors by.
    pub fn kind(&self) -> String {
        match self {
            Self::Connect(e) => format!("connect: {}", e.kind()),
            Self::Upgrade(status) => format!("upgrade: {status}"),
            Self::Protocol(what) => format!("protocol: {what}"),
            Self::Closed => "closed by server".to_owned(),
            Self::Timeout(what) => format!("timeout: {what}"),
        }
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            other => f.write_str(&other.kind()),
        }
    }
}

/// An open, handshaken connection.
pub struct Conn {
    pub ws: Ws,
    pub protocol: Protocol,
    /// The next reference number for a request.
    next_ref: u64,
}

/// Dials `target` as `user` (from `source`, if given) and completes the handshake,
/// all within `deadline`.
pub async fn open(
    target: &Target,
    user: &str,
    source: Option<Ipv4Addr>,
    deadline: Duration,
) -> Result<Conn, ConnError> {
    match timeout(deadline, open_inner(target, user, source)).await {
        Ok(result) => result,
        Err(_) => Err(ConnError::Timeout("connect and handshake")),
    }
}

async fn open_inner(
    target: &Target,
    user: &str,
    source: Option<Ipv4Addr>,
) -> Result<Conn, ConnError> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnError::Connect)?;
    if let (Some(source), SocketAddr::V4(_)) = (source, target.addr) {
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .map_err(ConnError::Connect)?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(ConnError::Connect)?;
    stream.set_nodelay(true).map_err(ConnError::Connect)?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(target.request_url(user), stream, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    ConnError::Upgrade(response.status().as_u16().to_string())
                }
                other => ConnError::Upgrade(other.to_string()),
            })?;
    let mut conn = Conn {
        ws,
        protocol: target.protocol,
        next_ref: 1,
    };
    conn.await_frame(|incoming| matches!(incoming, Incoming::Welcome))
        .await?;
    if let Some(connect) = target.protocol.connect_frame() {
        conn.send(connect).await?;
        conn.await_frame(|incoming| matches!(incoming, Incoming::Connected))
            .await?;
    }
    Ok(conn)
}

impl Conn {
    async fn send(&mut self, text: &str) -> Result<(), ConnError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|_| ConnError::Closed)
    }

    /// Reads until a frame `wanted` accepts, answering pings and skipping frames of
    /// no interest; an error frame or a close ends the wait.
    async fn await_frame(
        &mut self,
        wanted: impl Fn(&Incoming<'_>) -> bool,
    ) -> Result<Incoming<'static>, ConnError> {
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None => return Err(ConnError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnError::Protocol(e.to_string())),
            };
            let incoming = self.protocol.decode(&text);
            if wanted(&incoming) {
                return Ok(match incoming {
                    Incoming::Reply { reference } => Incoming::Reply { reference },
                    Incoming::Refused { reference, code } => Incoming::Refused { reference, code },
                    Incoming::Welcome => Incoming::Welcome,
                    Incoming::Connected => Incoming::Connected,
                    _ => Incoming::Other,
                });
            }
            match incoming {
                Incoming::Ping => self.send(self.protocol.pong()).await?,
                Incoming::Error(what) => return Err(ConnError::Protocol(what)),
                _ => {}
            }
        }
    }

    /// Sends one request built by `build` (given a fresh reference) and waits for its
    /// answer; a refusal is an error. Other frames arriving meanwhile are skipped.
    pub async fn request(
        &mut self,
        build: impl FnOnce(Protocol, u64) -> String,
        deadline: Duration,
        what: &'static str,
    ) -> Result<(), ConnError> {
        let reference = self.next_ref;
        self.next_ref += 1;
        let frame = build(self.protocol, reference);
        let answer = async {
            self.send(&frame).await?;
            self.await_frame(|incoming| match incoming {
                Incoming::Reply { reference: Some(r) }
                | Incoming::Refused {
                    reference: Some(r), ..
                } => *r == reference,
                _ => false,
            })
            .await
        };
        match timeout(deadline, answer).await {
            Ok(Ok(Incoming::Reply { .. })) => Ok(()),
            Ok(Ok(Incoming::Refused { code, .. })) => {
                Err(ConnError::Protocol(format!("{what} refused: {code}")))
            }
            Ok(Ok(_)) => Err(ConnError::Protocol(format!("{what}: no answer"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnError::Timeout(what)),
        }
    }

    /// Says goodbye as the protocol wants and closes: sends a close frame and waits
    /// (at most `deadline`) for the server's close frame, then drops the TCP
    /// connection. It does not wait for the server to end TCP itself: how long a
    /// server lingers after the close handshake is not what `churn` measures.
    pub async fn close(mut self, deadline: Duration) -> Result<(), ConnError> {
        let closing = async {
            if let Some(goodbye) = self.protocol.disconnect_frame() {
                self.send(goodbye).await?;
            }
            self.ws
                .send(Message::Close(None))
                .await
                .map_err(|_| ConnError::Closed)?;
            while let Some(frame) = self.ws.next().await {
                match frame {
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            Ok(())
        };
        match timeout(deadline, closing).await {
            Ok(result) => result,
            Err(_) => Err(ConnError::Timeout("close")),
        }
    }

    /// Hands the write half to a writer task and returns the read half and the queue
    /// that feeds the writer. The writer sends frames in batches (feed, then one
    /// flush), and closes the socket once every sender is gone.
    pub fn split(self) -> (SplitStream<Ws>, mpsc::Sender<Message>) {
        let (mut sink, stream) = self.ws.split();
        let (tx, mut rx) = mpsc::channel::<Message>(WRITE_QUEUE);
        let goodbye = self.protocol.disconnect_frame();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            if let Some(goodbye) = goodbye {
                let _ = sink.feed(Message::text(goodbye)).await;
            }
            let _ = sink.close().await;
        });
        (stream, tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_loopback_urls_with_a_default_path() {
        let t = Target::parse("ws://127.0.0.1:8080", Protocol::Hubbub).unwrap();
        assert_eq!(t.path, "/ws");
        assert_eq!(t.request_url("u1"), "ws://127.0.0.1:8080/ws?user=u1");
        let s = Target::parse("ws://localhost:3000/", Protocol::Socketio).unwrap();
        assert_eq!(
            s.request_url("u1"),
            "ws://localhost:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(s.http_origin(), "http://localhost:3000");
        assert!(Target::parse("ws://10.0.0.1:80", Protocol::Hubbub).is_err());
        assert!(Target::parse("ws://example.com:80", Protocol::Hubbub).is_err());
        assert!(Target::parse("wss://127.0.0.1:80", Protocol::Hubbub).is_err());
        assert!(Target::parse("ws://127.0.0.1", Protocol::Hubbub).is_err());
    }

    #[test]
    fn sources_spread_only_when_needed() {
        let small = SourcePlan::new(0, 100);
        assert_eq!(small.ips(), 1);
        assert_eq!(small.source(5), None);
        let big = SourcePlan::new(0, 40_000);
        assert_eq!(big.ips(), 3);
        assert_eq!(big.source(0), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(big.source(4), Some(Ipv4Addr::new(127, 0, 0, 2)));
        let forced = SourcePlan::new(4, 10);
        assert_eq!(forced.source(3), Some(Ipv4Addr::new(127, 0, 0, 4)));
    }
}
