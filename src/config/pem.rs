//! The PEM files that settings name (`[cluster.tls]`, `[http.tls]`), in one place:
//! what validation checks of them (each exists and holds PEM of the right kind) and how
//! a node reads them when it starts (certificates, a private key, and whether the two
//! go together), so that the check and the read never disagree about what a file must
//! hold.
//!
//! Must not know: what the certificates are for. Building rustls configurations is
//! left to their owners (`cluster::membership::tls` between nodes, `transport::tls`
//! for clients). Every error starts with, or is reported under, the setting at fault.

use std::path::Path;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{PemObject, SectionKind};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a PEM file a setting names must hold.
#[derive(Debug, Clone, Copy)]
pub(super) enum PemHolds {
    /// At least one `CERTIFICATE` block.
    Certificates,
    /// A `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block.
    PrivateKey,
}

/// Why `path` cannot serve as a PEM file holding what `holds` asks for, if it cannot:
/// it must be a file, readable, and well-formed PEM with such a block. Only the PEM is
/// checked; whether the certificates and the key are valid and go together is checked
/// when the node starts.
pub(super) fn check_pem_file(path: &Path, holds: PemHolds) -> Result<(), String> {
    check_readable_file(path).and_then(|()| check_pem(path, holds))
}

/// Why `path` does not hold well-formed PEM with what `holds` asks for, if it does
/// not.
fn check_pem(path: &Path, holds: PemHolds) -> Result<(), String> {
    let sections = <(SectionKind, Vec<u8>)>::pem_file_iter(path)
        .and_then(|sections| sections.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{} is not well-formed PEM: {e}", path.display()))?;
    let found = sections.iter().any(|(kind, _)| match holds {
        PemHolds::Certificates => *kind == SectionKind::Certificate,
        PemHolds::PrivateKey => matches!(
            kind,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        ),
    });
    match (found, holds) {
        (true, _) => Ok(()),
        (false, PemHolds::Certificates) => Err(format!(
            "{} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
            path.display()
        )),
        (false, PemHolds::PrivateKey) => Err(format!(
            "{} holds no PEM private key (a \"-----BEGIN PRIVATE KEY-----\" block)",
            path.display()
        )),
    }
}

/// Why `path` cannot be a PEM file to read at start-up, if it cannot.
fn check_readable_file(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("must name a file".to_owned());
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("file {} not found", path.display()))
        }
        Err(error) => Err(format!("file {} cannot be read: {error}", path.display())),
    }
}

/// Every certificate in the PEM file `path` that the setting `key` names, in order;
/// at least one.
pub(crate) fn read_certificates(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: {} cannot be read as PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{key}: {} holds no certificate (a \"BEGIN CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The first private key in the PEM file `path` that the setting `key` names.
pub(crate) fn read_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "{key}: no private key can be read from {}: {e}",
            path.display()
        )
    })
}

/// What rustls's refusal of a certificate and key pair (`with_single_cert` and the
/// like) means, under the setting at fault: `{table}.cert` for a certificate that does
/// not parse, else `{table}.key` (a key that cannot be loaded, or is not the
/// certificate's). `table` is `cluster.tls` or `http.tls`, both of which name the
/// files `cert` and `key`.
pub(crate) fn key_pair_error(
    table: &str,
    cert_path: &Path,
    key_path: &Path,
    error: rustls::Error,
) -> String {
    match error {
        rustls::Error::InvalidCertificate(e) => format!(
            "{table}.cert: the first certificate in {} cannot be parsed: {e}",
            cert_path.display()
        ),
        rustls::Error::InconsistentKeys(_) => format!(
            "{table}.key: {} is not the private key of the certificate in {}",
            key_path.display(),
            cert_path.display()
        ),
        e => format!(
            "{table}.key: {} cannot be used with the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        ),
    }
}
