//! HTTPS and WSS for clients (`[http.tls]`): the rustls configuration the HTTP server
//! serves with, built from the node's certificate and key, and the one a node dials
//! the other nodes' listeners with to relay Socket.IO requests (`peer_ca`).
//!
//! TLS 1.2 and 1.3, on aws-lc-rs (the provider the rest of the crate already uses, so
//! no second crypto library is built in). No client certificates: clients prove who
//! they are with `[auth]`.
//!
//! ALPN: only `http/1.1`. actix-ws upgrades HTTP/1.1 requests and cannot do WebSocket
//! over HTTP/2 (RFC 8441), so hubbub builds actix-web without HTTP/2; actix-web then
//! puts `http/1.1` alone in front of the configuration's protocols (which this one
//! leaves empty). A client offering `h2` and `http/1.1` gets `http/1.1`; one offering
//! no ALPN is served HTTP/1.1 too. tests/single_node/tls.rs holds this in place.
//!
//! Must not know: routes and sessions. The files are read once, at start-up: a new
//! certificate takes a restart.

use crate::config::pem::{key_pair_error, read_certificates, read_private_key};
use crate::config::HttpTls;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Reads `[http.tls]` and builds the server configuration. Errors name the setting
/// at fault (`http.tls.cert` or `http.tls.key`).
pub fn server_config(tls: &HttpTls) -> Result<ServerConfig, String> {
    let chain = read_certificates("http.tls.cert", &tls.cert)?;
    let key = read_private_key("http.tls.key", &tls.key)?;
    ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| format!("http.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| key_pair_error("http.tls", &tls.cert, &tls.key, e))
}

/// How a node reaches the other nodes' HTTPS listeners to relay a Socket.IO request
/// (`http.tls.peer_ca`, `http.tls.peer_name`; transport/socketio_forward.rs): TLS 1.2 or
/// 1.3, the holder's certificate checked against `peer_ca` and for `peer_name` (or the
/// host dialled), no client certificate (a relayed request is a client's request).
#[derive(Clone)]
pub struct RelayTls {
    pub connector: tokio_rustls::TlsConnector,
    /// `http.tls.peer_name`, when set.
    pub name: Option<ServerName<'static>>,
}

/// `[http.tls]` as a whole: what the listener serves with, and how it relays.
pub struct Https {
    pub server: ServerConfig,
    /// None without `http.tls.peer_ca`: no relay to other nodes.
    pub relay: Option<RelayTls>,
}

/// Reads `[http.tls]`: the server configuration and, with `peer_ca`, the relay's.
/// Errors name the setting at fault.
pub fn https(tls: &HttpTls) -> Result<Https, String> {
    Ok(Https {
        server: server_config(tls)?,
        relay: relay_tls(tls)?,
    })
}

pub(crate) fn relay_tls(tls: &HttpTls) -> Result<Option<RelayTls>, String> {
    let Some(ca) = &tls.peer_ca else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates("http.tls.peer_ca", ca)? {
        roots.add(certificate).map_err(|e| {
            format!(
                "http.tls.peer_ca: {} holds a certificate that cannot be used as an \
                 authority: {e}",
                ca.display()
            )
        })?;
    }
    let name = match &tls.peer_name {
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            format!("http.tls.peer_name: {name:?} is not a DNS name or an IP address")
        })?),
        None => None,
    };
    let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| format!("http.tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(RelayTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    }))
}
