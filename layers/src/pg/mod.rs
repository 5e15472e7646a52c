//! Connecting to PostgreSQL (feature `postgres`), one way for every part of Troupe that
//! keeps state there (the idempotency store, the gateway's task store).
//!
//! TLS: a URL with `sslmode=require` connects only over TLS and, unlike libpq's `require`,
//! always verifies the server's certificate and host name (system roots plus the
//! configured CA bundle). `sslmode=prefer` (the default) and `disable` connect in plain
//! text: a connection that may silently fall back to plain text is not offered.
//!
//! Every message this module returns has the URL's password scrubbed from it.

mod shared;
mod tls;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::TlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;
use troupe_core::redact::{Redacted, scrub};
use troupe_core::tls::TlsFiles;

pub use shared::{STATEMENT_TIMEOUT, SharedClient};

/// Whether `name` is a plain SQL identifier of at most `max` bytes (lower-case letters,
/// digits and `_`, not starting with a digit): the only table names and prefixes the stores
/// put into their statements, so nothing a user sets reaches SQL unquoted.
pub fn plain_identifier(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= max
}

/// How long a connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed PostgreSQL URL and its TLS settings, ready to open connections. Its `Debug`
/// shows the URL redacted.
#[derive(Clone)]
pub struct PgConnector {
    url: String,
    pg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("url", &Redacted(&self.url))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl PgConnector {
    /// Parses `url` (`postgres://user:password@host:port/db?sslmode=...`); `tls` holds the
    /// CA bundle and client certificate for `sslmode=require`.
    pub fn new(url: &str, tls: &TlsFiles) -> Result<Self, String> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            format!(
                "{} is not a PostgreSQL URL: {}",
                Redacted(url),
                scrub(&e.to_string(), url)
            )
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = if pg.get_ssl_mode() == SslMode::Require {
            Some(
                tls::connector(tls)
                    .map_err(|detail| format!("TLS for PostgreSQL at {}: {detail}", Redacted(url)))?,
            )
        } else {
            // `prefer` would try TLS with a verifying connector and fail on a certificate
            // it cannot verify instead of falling back; plain text it is, as documented.
            pg.ssl_mode(SslMode::Disable);
            None
        };
        Ok(Self {
            url: url.to_owned(),
            pg,
            tls,
        })
    }

    /// The URL, for scrubbing it from messages (never show it: it may hold a password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `error` as a user may read it: with its causes, the password scrubbed.
    pub fn describe(&self, error: &tokio_postgres::Error) -> String {
        scrub(&with_causes(error), &self.url)
    }

    /// Opens a connection, driven by a task of its own until it closes. With
    /// `notifications`, each `NOTIFY` on a channel the connection listens to is sent
    /// there.
    pub async fn connect(
        &self,
        notifications: Option<mpsc::UnboundedSender<Notification>>,
    ) -> Result<Client, String> {
        let failed = |e: tokio_postgres::Error| {
            format!(
                "cannot connect to PostgreSQL at {}: {}",
                Redacted(&self.url),
                self.describe(&e)
            )
        };
        Ok(match &self.tls {
            Some(tls) => {
                let (client, connection) = self.pg.connect(tls.clone()).await.map_err(failed)?;
                tokio::spawn(drive(connection, notifications));
                client
            }
            None => {
                let (client, connection) = self.pg.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(drive(connection, notifications));
                client
            }
        })
    }
}

/// Whether `e` means the database did not answer, rather than answered with an error.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQL state: an I/O or protocol failure on the way.
        None => true,
        Some(code) => {
            code.code().starts_with("08") // connection exception
                || [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW]
                    .contains(code)
        }
    }
}

/// The error and its causes: tokio-postgres's own message ("error performing TLS
/// handshake") leaves out the one a user can act on ("certificate not valid for name").
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Runs a connection until it closes, passing on its notifications; the client's next
/// call then fails as closed and its owner reconnects.
async fn drive<S, T>(
    mut connection: Connection<S, T>,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + TlsStream + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(note)) => {
                if let Some(to) = &notifications {
                    // The listener went away: the connection is no longer wanted.
                    if to.send(note).is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "PostgreSQL connection closed; reconnecting on the next call");
                return;
            }
        }
    }
}
