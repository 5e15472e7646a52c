//! The connection to RabbitMQ and the publisher-confirm channel, re-opened with backoff
//! after a connection loss.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::time::Instant;
use troupe_core::TransportError;
use troupe_core::tls::TlsFiles;

/// Shortest and longest wait between two connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One live connection and its confirm-mode publish channel.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    pub(crate) publish: Channel,
}

impl Session {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }
}

/// Hands out the current session, reconnecting when it is gone.
///
/// Reconnection happens on demand (the next publish or consume after a loss), at most once
/// per backoff period; callers in between get [`TransportError::Disconnected`] at once
/// rather than piling up on a broker that is down. The runner already retries those with
/// its own backoff.
pub(crate) struct Link {
    url: String,
    /// Used by `amqps://` URLs only.
    tls: OwnedTLSConfig,
    current: RwLock<Option<Arc<Session>>>,
    /// Serialises reconnection and holds its backoff state.
    reconnect: tokio::sync::Mutex<Backoff>,
}

struct Backoff {
    next_attempt: Option<Instant>,
    wait: Duration,
}

impl Link {
    /// A link to `url`, trusting and presenting what `tls` names; its files are read here,
    /// so a missing one fails the transport's `connect`, not a later reconnect.
    pub(crate) fn new(url: String, tls: &TlsFiles) -> Result<Self, TransportError> {
        let identity = tls.client_identity_pem()?.map(|id| OwnedIdentity::PKCS8 {
            pem: id.cert_pem,
            key: id.key_pem,
        });
        let cert_chain = tls
            .ca_pem()?
            .map(|pem| String::from_utf8_lossy(&pem).into_owned());
        Ok(Self {
            url,
            tls: OwnedTLSConfig { identity, cert_chain },
            current: RwLock::new(None),
            reconnect: tokio::sync::Mutex::new(Backoff {
                next_attempt: None,
                wait: BACKOFF_MIN,
            }),
        })
    }

    fn live(&self) -> Option<Arc<Session>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.as_ref().filter(|s| s.usable()).cloned()
    }

    /// The current session, connecting first if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, TransportError> {
        if let Some(session) = self.live() {
            return Ok(session);
        }
        let mut backoff = self.reconnect.lock().await;
        // Another caller may have reconnected while this one waited for the lock.
        if let Some(session) = self.live() {
            return Ok(session);
        }
        if let Some(at) = backoff.next_attempt
            && Instant::now() < at
        {
            return Err(TransportError::Disconnected {
                detail: format!(
                    "RabbitMQ at {} is unreachable; next connection attempt in {:?}",
                    self.redacted_url(),
                    at - Instant::now()
                ),
            });
        }
        match self.open().await {
            Ok(session) => {
                backoff.next_attempt = None;
                backoff.wait = BACKOFF_MIN;
                let session = Arc::new(session);
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&session));
                tracing::info!(url = %self.redacted_url(), "connected to RabbitMQ");
                Ok(session)
            }
            Err(error) => {
                backoff.next_attempt = Some(Instant::now() + backoff.wait);
                tracing::warn!(url = %self.redacted_url(), %error, retry_in = ?backoff.wait, "cannot connect to RabbitMQ");
                backoff.wait = (backoff.wait * 2).min(BACKOFF_MAX);
                Err(error)
            }
        }
    }

    async fn open(&self) -> Result<Session, TransportError> {
        let runtime = lapin::runtime::default_runtime().map_err(super::lost)?;
        let connection = Connection::connect_with_config(
            &self.url,
            ConnectionProperties::default(),
            self.tls.clone(),
            runtime,
        )
        .await
        .map_err(|e| TransportError::Disconnected {
            detail: format!(
                "cannot connect to RabbitMQ at {}: {}",
                self.redacted_url(),
                troupe_core::redact::scrub(&e.to_string(), &self.url)
            ),
        })?;
        let publish = connection.create_channel().await.map_err(super::lost)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(super::lost)?;
        Ok(Session { connection, publish })
    }

    /// A fresh channel on the current connection.
    pub(crate) async fn channel(&self) -> Result<Channel, TransportError> {
        let session = self.session().await?;
        session.connection.create_channel().await.map_err(super::lost)
    }

    /// The URL without its credentials, for logs and errors.
    pub(crate) fn redacted_url(&self) -> String {
        troupe_core::redact::redact_url(&self.url)
    }
}
