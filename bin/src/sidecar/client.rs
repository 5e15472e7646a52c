//! HTTP/1.1 to the runtime over its Unix socket, on kept-alive connections.
//!
//! The pool holds at most `concurrency` connections, one per call in flight, and reuses
//! them call after call. A connection goes back to the pool only after its answer was read
//! to the end; a call that is abandoned (timed out, cancelled) or fails drops its
//! connection, so a hung runtime never hands a half-read connection to the next call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (the runtime is down or restarting).
    #[error("cannot connect to the runtime at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke before or while the answer came.
    #[error("the runtime connection failed: {0}")]
    Http(#[from] hyper::Error),
}

/// A pool of connections to one runtime.
pub struct RuntimeClient {
    socket: PathBuf,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    slots: Arc<Semaphore>,
}

/// A connection lent to one call; [`Lent::release`] returns it to the pool.
pub struct Lent {
    sender: Option<SendRequest<Full<Bytes>>>,
    client: Arc<RuntimeClient>,
    _slot: OwnedSemaphorePermit,
}

impl Lent {
    /// The answer was read to the end: the connection may serve the next call.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            self.client.lock().push(sender);
        }
    }
}

impl RuntimeClient {
    /// A client of the runtime listening on `socket`, with at most `concurrency` calls (and
    /// connections) at once.
    pub fn new(socket: PathBuf, concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            socket,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// The runtime's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<Full<Bytes>>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops every idle connection (after a runtime restart, say).
    pub fn recycle(&self) {
        self.lock().clear();
    }

    /// Sends `request` and returns the answer's head and body; the body must be read
    /// before the connection is [released](Lent::release).
    pub async fn send(
        self: &Arc<Self>,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lent), ClientError> {
        // The semaphore is never closed.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Connect {
                path: self.socket.clone(),
                source: std::io::Error::other("client closed"),
            })?;
        let mut sender = self.connection().await?;
        let response = sender.send_request(request).await?;
        Ok((
            response,
            Lent {
                sender: Some(sender),
                client: self.clone(),
                _slot: slot,
            },
        ))
    }

    /// An idle connection that is still open, or a new one.
    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        loop {
            let Some(mut sender) = self.lock().pop() else {
                break;
            };
            if sender.is_closed() {
                continue;
            }
            // An idle connection is ready at once; one that is not is broken.
            if tokio::time::timeout(Duration::from_millis(50), sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(sender);
            }
        }
        let connect_error = |source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).await.map_err(connect_error)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "runtime connection closed");
            }
        });
        Ok(sender)
    }
}

/// Reads a whole body.
pub async fn read_body(body: Incoming) -> Result<Bytes, ClientError> {
    Ok(body.collect().await?.to_bytes())
}
