//! HTTPS and WSS for clients (`[http.tls]`): the rustls configuration the HTTP server
//! serves with, built from the node's certificate and key.
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
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::ServerConfig;

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
