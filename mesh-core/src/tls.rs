//! TLS settings shared by every broker and store client.
//!
//! Whether a connection uses TLS is said by its URL (`tls://` for NATS, `amqps://`,
//! `rediss://`, `sslmode=require` for PostgreSQL); what it trusts and how it proves who it
//! is are said once, here, for all of them: a CA bundle trusted besides the system's roots
//! (a cluster's private CA) and, for mutual TLS, a client certificate and its key. Every
//! client verifies the server's certificate; there is no switch to turn that off.
//!
//! ```
//! use troupe_core::tls::TlsFiles;
//!
//! let none = TlsFiles::default();
//! assert!(none.ca_pem().unwrap().is_none());
//! let half = TlsFiles { cert_file: Some("client.pem".into()), ..TlsFiles::default() };
//! assert!(half.client_identity_pem().is_err());
//! ```

use std::path::{Path, PathBuf};

/// Files that configure TLS for broker and store clients; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of CA certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs [`key_file`](Self::key_file).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of [`cert_file`](Self::cert_file).
    pub key_file: Option<PathBuf>,
}

/// A client certificate (chain) and its private key, both PEM. Its `Debug` leaves the key
/// out.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &crate::redact::MASK)
            .finish()
    }
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A named file could not be read.
    #[error("cannot read the TLS {what} file {}: {source}", path.display())]
    Read {
        /// Which file: "CA", "client certificate", "client key".
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Only one of the client certificate and key was given.
    #[error(
        "mutual TLS needs both a client certificate and its key (--tls-cert-file and --tls-key-file); only the {given} was given"
    )]
    HalfIdentity {
        /// The one that was given.
        given: &'static str,
    },
}

impl TlsFiles {
    /// Whether nothing is configured (system roots only, no client certificate).
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// The CA bundle's contents, if one is configured.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, TlsError> {
        self.ca_file.as_deref().map(|path| read("CA", path)).transpose()
    }

    /// The client certificate and key, if both are configured; an error if only one is.
    pub fn client_identity_pem(&self) -> Result<Option<ClientIdentity>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(ClientIdentity {
                cert_pem: read("client certificate", cert)?,
                key_pem: read("client key", key)?,
            })),
            (Some(_), None) => Err(TlsError::HalfIdentity { given: "certificate" }),
            (None, Some(_)) => Err(TlsError::HalfIdentity { given: "key" }),
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let err = files.ca_pem().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("TLS CA file /nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_client_key_without_its_certificate_is_refused() {
        let files = TlsFiles {
            key_file: Some("key.pem".into()),
            ..TlsFiles::default()
        };
        assert!(matches!(
            files.client_identity_pem(),
            Err(TlsError::HalfIdentity { given: "key" })
        ));
        assert!(TlsFiles::default().client_identity_pem().ok().flatten().is_none());
        assert!(TlsFiles::default().is_empty());
    }
}
