//! TLS for `wss://` listeners (rustls with the ring provider): the certificate chain and key
//! are read from PEM files when the gateway binds, so a bad file fails the start and names
//! the file, instead of failing each client's handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// A certificate or key that cannot serve TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no PEM certificate.
    #[error("tls_cert {}: {source}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: pem::Error,
    },
    /// The key file is missing, unreadable or holds no PEM private key.
    #[error("tls_key {}: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: pem::Error,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("tls_cert {} with tls_key {}: {source}", cert.display(), key.display())]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

/// A TLS acceptor serving the chain in `cert` with the private key in `key` (both PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |source| TlsError::Cert {
        path: cert.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(cert_error(pem::Error::NoItemsFound));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let config_error = |source| TlsError::Config {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    // An explicit provider: whichever one another crate enables in the same build, this one
    // is used, and no process-wide default has to be installed.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(config_error)?;
    // WebSocket upgrades are HTTP/1.1; say so to clients that negotiate ALPN.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_with_their_key() {
        let dir = std::env::temp_dir().join(format!("wasmgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = acceptor(&missing, &missing).err().expect("no certificate");
        assert!(matches!(err, TlsError::Cert { .. }), "{err}");
        assert!(err.to_string().starts_with("tls_cert "), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let err = acceptor(&empty, &missing).err().expect("no certificate");
        assert!(
            matches!(
                err,
                TlsError::Cert {
                    source: pem::Error::NoItemsFound,
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
