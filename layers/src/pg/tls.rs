//! The TLS connector of the PostgreSQL store (`sslmode=require`): rustls with ring,
//! trusting the system roots and the configured CA bundle, presenting the client
//! certificate when one is configured.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres_rustls::MakeRustlsConnect;
use troupe_core::tls::TlsFiles;

/// Builds the connector, or says in words which file or certificate is unusable.
pub(crate) fn connector(files: &TlsFiles) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    // A system without a CA bundle still works with the configured CA alone.
    let (_, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = files.ca_pem().map_err(|e| e.to_string())? {
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("the TLS CA file holds no usable PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate of the TLS CA file is not a usable CA: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match files.client_identity_pem().map_err(|e| e.to_string())? {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the TLS client certificate file is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
                .map_err(|e| format!("the TLS client key file holds no PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the TLS client certificate and key do not match: {e}"))?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}
