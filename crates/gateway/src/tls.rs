//! TLS for the gateway's web side (https and wss), with rustls: a certificate chain and its
//! private key, both PEM, as an operator has them (e.g. from an ACME client).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no PEM certificate, or an unreadable one.
    #[error("no certificate in the PEM")]
    Certificate(#[source] rustls::pki_types::pem::Error),
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1), or an unreadable one.
    #[error("no private key in the PEM")]
    Key(#[source] rustls::pki_types::pem::Error),
    /// rustls refused the pair (e.g. the key does not match, or an unsupported algorithm).
    #[error("the certificate and key")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor for the certificate chain `cert_pem` (leaf first) and its key `key_pem`:
/// TLS 1.2 and 1.3 (rustls's safe defaults), ALPN `http/1.1`.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Certificate)?;
    if certs.is_empty() {
        return Err(TlsError::Certificate(
            rustls::pki_types::pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::Key)?;
    // ring builds with a C compiler alone (aws-lc-rs wants more of the build machine); rustls
    // 0.23.48 marks its provider deprecated because it has no post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
