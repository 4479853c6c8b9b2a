//! TLS between nodes (`[cluster.tls]`): mutual authentication against one CA, with
//! every handshake run by us, under a deadline, outside any accept loop.
//!
//! Why this file exists: ractor_cluster 0.16 can do TLS itself
//! (`IncomingEncryptionMode::Tls`, `client_connect_enc`), but its listener runs each
//! server handshake inside its accept loop with no timeout, so one client that opens
//! TCP and never finishes the handshake (a frozen peer, a port scanner, a plain-TCP
//! node waiting for an answer) stops every later connection from being accepted. So:
//!
//! - **Incoming.** The cluster port (peer_port.rs) accepts TCP itself and runs each
//!   server handshake with [`PeerTls::acceptor`] in a task of its own, within the
//!   connection's deadline and holding one of its `cluster.max_unauthenticated`
//!   slots. Only finished TLS streams reach the NodeServer, which then runs its own
//!   cookie challenge over them. [`describe`] says what a failed handshake means.
//! - **Outgoing.** [`PeerTls::connect`] opens TCP and runs the client handshake; the
//!   caller bounds both with the dial timeout and hands the stream in with
//!   `client_connect_external`.
//! - **Mutual.** A server presents `cert` and requires a client certificate that
//!   chains to `ca`; a client presents `cert` and verifies the server's against `ca`
//!   and the host it dialled (a DNS name or an IP address, so certificates need a
//!   subjectAltName for every address peers dial). TLS 1.3 only; aws-lc-rs, the
//!   provider ractor_cluster already builds.
//!
//! Must not know: membership. A failed handshake is logged by the cluster port
//! (incoming) or returned as a `DialError::Handshake` (outgoing); either way the peer
//! is simply not connected, and the dialler's backoff applies.

use super::node_server::DialError;
use crate::config::pem::{key_pair_error, read_certificates, read_private_key};
use crate::config::ClusterTls;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::version::TLS13;
use tokio_rustls::rustls::{
    self, AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig,
};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// The same handshake failure from the same place is logged as a warning at most
/// this often (at debug level in between): a misconfigured peer retries for ever.
const REPEATED_WARNING_EVERY: Duration = Duration::from_secs(60);

/// This node's TLS identity and trust, for both ends of a peer connection.
#[derive(Clone)]
pub(crate) struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl PeerTls {
    /// Reads `[cluster.tls]` and builds both ends. Errors name the key at fault.
    ///
    /// Also returns warnings: `advertise` is where peers dial this node, and when
    /// `cert` would not be accepted there, or not as a client certificate, peers will
    /// refuse this node. That is worth saying but not refusing to start over (the
    /// certificate may be about to be replaced, or peers trust more than `ca`).
    pub(crate) fn load(tls: &ClusterTls, advertise: &str) -> Result<(Self, Vec<String>), String> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let chain = read_certificates("cluster.tls.cert", &tls.cert)?;
        let key = read_private_key("cluster.tls.key", &tls.key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_certificates("cluster.tls.ca", &tls.ca)? {
            roots.add(ca).map_err(|e| {
                format!(
                    "cluster.tls.ca: {} holds a certificate that cannot be used as an \
                     authority: {e}",
                    tls.ca.display()
                )
            })?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("cluster.tls.ca: {}: {e}", tls.ca.display()))?;
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cluster.tls.ca: {}: {e}", tls.ca.display()))?;
        let key_error = |e| key_pair_error("cluster.tls", &tls.cert, &tls.key, e);
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&TLS13])
            .map_err(|e| format!("cluster.tls: {e}"))?
            .with_client_cert_verifier(client_verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_error)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&TLS13])
            .map_err(|e| format!("cluster.tls: {e}"))?
            .with_webpki_verifier(server_verifier.clone())
            .with_client_auth_cert(chain.clone(), key)
            .map_err(key_error)?;
        let warnings = why_peers_would_refuse(
            tls,
            &chain,
            advertise,
            client_verifier.as_ref(),
            server_verifier.as_ref(),
        );
        let ends = Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        };
        Ok((ends, warnings))
    }

    /// The server end, for a listener.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Opens TCP to `addr` and runs the client handshake, verifying the server's
    /// certificate for the host of `target` (the `host:port` dialled). The caller
    /// bounds it with a timeout.
    pub(crate) async fn connect(
        &self,
        target: &str,
        addr: SocketAddr,
    ) -> Result<Box<dyn ClusterBidiStream>, DialError> {
        let name = server_name(target).map_err(DialError::Handshake)?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| DialError::Unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| DialError::Handshake(describe(&e)))?;
        Ok(Box::new(PeerStream {
            stream: tls.into(),
            peer: addr,
            local,
        }))
    }
}

/// An acceptor with which every handshake fails: it has no certificate to present.
/// For the listener ractor_cluster always starts and nobody should reach
/// (node_server.rs): whoever finds its loopback port gets no session.
pub(super) fn refusing_acceptor() -> Result<TlsAcceptor, String> {
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&TLS13])
        .map_err(|e| format!("cannot set up the node server's listener: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Resolves no certificate for any client, which ends every handshake.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// Checks this node's certificate as its peers will: what would fail, if anything.
fn why_peers_would_refuse(
    tls: &ClusterTls,
    chain: &[CertificateDer<'static>],
    advertise: &str,
    as_client: &dyn ClientCertVerifier,
    as_server: &dyn ServerCertVerifier,
) -> Vec<String> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Vec::new();
    };
    let now = UnixTime::now();
    if let Err(e) = as_client.verify_client_cert(end_entity, intermediates, now) {
        return vec![format!(
            "cluster.tls.cert is not accepted by cluster.tls.ca as a client certificate \
             ({e}; {} and {}): peers trusting that authority will refuse this node's \
             connections",
            tls.cert.display(),
            tls.ca.display()
        )];
    }
    let Ok(name) = server_name(advertise) else {
        return Vec::new();
    };
    match as_server.verify_server_cert(end_entity, intermediates, &name, &[], now) {
        Ok(_) => Vec::new(),
        Err(e) => vec![format!(
            "cluster.tls.cert is not valid for this node's advertised address {advertise} \
             ({e}; {}): peers dialling it will refuse the connection",
            tls.cert.display()
        )],
    }
}

/// The name a server's certificate must carry: the host part of `host:port`, an IP
/// address (IPv6 in brackets) or a DNS name.
fn server_name(target: &str) -> Result<ServerName<'static>, String> {
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is neither a DNS name nor an IP address to verify"))
}

/// A handshake error with what it most likely means for an operator.
pub(super) fn describe(error: &std::io::Error) -> String {
    let hint = match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the peer's certificate is not signed by cluster.tls.ca"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the peer's certificate does not name the address it was dialled at: give \
                 it a subjectAltName for every address peers dial"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "the peer's certificate is expired or not valid yet"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the peer's certificate is not for this use: node certificates need \
                 extendedKeyUsage serverAuth and clientAuth"
            }
            _ => "the peer's certificate was refused",
        },
        Some(rustls::Error::NoCertificatesPresented) => "the peer presented no certificate",
        Some(rustls::Error::AlertReceived(alert)) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRequired => {
                "the peer refused this node's certificate: is cluster.tls.cert signed by \
                 the authority the peer trusts?"
            }
            _ => "the peer aborted the handshake",
        },
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => "the peer does not speak TLS: is [cluster.tls] missing from its configuration?",
        Some(rustls::Error::PeerIncompatible(_)) => {
            "the peer cannot do TLS 1.3 with this node's settings"
        }
        _ if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake: does it use TLS, and \
             does it accept this node's certificate?"
        }
        _ => "",
    };
    if hint.is_empty() {
        error.to_string()
    } else {
        format!("{error} ({hint})")
    }
}

/// A TLS connection with a peer, handed to the NodeServer as an external stream.
struct PeerStream {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

impl ClusterBidiStream for PeerStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        (Box::new(read), Box::new(write))
    }

    /// The session's `peer_addr`: the socket address, as for a plain connection (the
    /// dialler matches its sessions by it).
    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }

    fn local_label(&self) -> Option<String> {
        self.local.map(|a| a.to_string())
    }
}

/// Which repeated failures deserve a warning again: the first of each kind, then one
/// every [`REPEATED_WARNING_EVERY`].
#[derive(Default)]
pub(crate) struct Warnings {
    last: HashMap<String, Instant>,
}

impl Warnings {
    /// The most kinds remembered; beyond, the oldest are forgotten.
    const KEPT: usize = 256;

    /// Whether a failure of kind `key` at `now` should be a warning (and records it).
    pub(crate) fn first_in_a_while(&mut self, key: &str, now: Instant) -> bool {
        if let Some(at) = self.last.get(key) {
            if now.duration_since(*at) < REPEATED_WARNING_EVERY {
                return false;
            }
        }
        if self.last.len() >= Self::KEPT {
            self.last
                .retain(|_, at| now.duration_since(*at) < REPEATED_WARNING_EVERY);
        }
        self.last.insert(key.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn the_server_name_is_the_dialled_host() {
        assert_eq!(
            server_name("10.0.0.5:4370"),
            Ok(ServerName::IpAddress(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)).into()
            ))
        );
        assert_eq!(
            server_name("[::1]:4370"),
            Ok(ServerName::IpAddress(
                IpAddr::V6(Ipv6Addr::LOCALHOST).into()
            ))
        );
        assert_eq!(
            server_name("node-a.internal:4370"),
            Ok(ServerName::try_from("node-a.internal").expect("a DNS name"))
        );
        assert!(server_name("bad host:4370").is_err());
    }

    #[test]
    fn repeated_failures_warn_once_a_minute() {
        let mut warnings = Warnings::default();
        let start = Instant::now();
        assert!(warnings.first_in_a_while("a", start));
        assert!(!warnings.first_in_a_while("a", start + Duration::from_secs(59)));
        assert!(warnings.first_in_a_while("b", start + Duration::from_secs(59)));
        assert!(warnings.first_in_a_while("a", start + Duration::from_secs(61)));
    }

    #[test]
    fn handshake_errors_say_what_is_likely_wrong() {
        let unknown_ca = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(describe(&unknown_ca).contains("not signed by cluster.tls.ca"));
        let plain = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(describe(&plain).contains("does not speak TLS"));
        let other = std::io::Error::other("boom");
        assert_eq!(describe(&other), "boom");
    }
}
