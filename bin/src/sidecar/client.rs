//! HTTP/1.1 to the runtime over its Unix socket, on kept-alive connections.
//!
//! The pool holds at most `concurrency` connections, one per call in flight, and reuses
//! them call after call. A connection goes back to the pool only after its answer was read
//! to the end; a call that is abandoned (timed out, cancelled) or fails drops its
//! connection, so a hung runtime never hands a half-read connection to the next call.
//!
//! Why not hyper's client here: its connection runs as a task of its own, so every call
//! crossed two channels and usually a thread (request to the connection task, answer
//! back), which cost more than the Python runtime's side of the hop. The runtime speaks a
//! fixed subset of HTTP/1.1 (protocol §4: `Content-Length` answers, chunked event
//! streams), so the call owns its connection and does its own I/O, in the calling task;
//! the parsing is `httparse`'s, the parser hyper itself uses.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most an answer's status line and headers may take.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 32;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;
/// The most a kept connection's request buffer holds on to between calls.
const KEPT_BUFFER: usize = 1024 * 1024;

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
    Io(#[from] std::io::Error),
    /// The runtime closed the connection before its answer was complete.
    #[error("the runtime closed the connection before its answer was complete")]
    Closed,
    /// The answer is not the HTTP/1.1 the runtime protocol speaks.
    #[error("the runtime's answer is not valid HTTP/1.1: {0}")]
    Protocol(String),
}

/// One connection, with what was read from it and not yet used.
struct Connection {
    stream: UnixStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Connection {
    /// Reads more of the answer; [`ClientError::Closed`] at the end of the stream.
    async fn fill(&mut self) -> Result<(), ClientError> {
        self.read.reserve(READ_SIZE);
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Writes a request.
    async fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(), ClientError> {
        write_request(&mut self.write, method, path, body);
        self.stream.write_all(&self.write).await?;
        if self.write.capacity() > KEPT_BUFFER {
            // One large envelope must not pin its size on an idle connection.
            self.write = Vec::with_capacity(1024);
        }
        Ok(())
    }

    /// [`Connection::send`], handing the connection on.
    async fn sent(mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Self, ClientError> {
        self.send(method, path, body).await?;
        Ok(self)
    }

    /// Whether the runtime closed (or wrote to) this idle connection. Asks the reactor's
    /// last word on the socket, so a live connection costs no system call.
    fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// How the rest of an answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `Content-Length`: this many bytes are still to come.
    Length(usize),
    /// `Transfer-Encoding: chunked`, at the given point of a chunk.
    Chunked(Chunk),
    /// Neither: the body ends when the runtime closes the connection.
    UntilClose,
    /// Read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of a chunk's data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data comes next.
    DataEnd,
    /// Trailer lines up to a blank line come next.
    Trailers,
}

/// A pool of connections to one runtime.
pub struct RuntimeClient {
    socket: PathBuf,
    idle: Mutex<Vec<Connection>>,
    slots: Arc<Semaphore>,
}

/// An answer whose head has been read: its status, and its body still on the connection.
///
/// Reading the body to its end ([`Answer::read_to_end`], or [`Answer::next_chunk`] until
/// `None` and then [`Answer::release`]) returns the connection to the pool; dropping an
/// answer before that closes the connection.
pub struct Answer {
    status: StatusCode,
    event_stream: bool,
    keep_alive: bool,
    body: Body,
    connection: Option<Connection>,
    client: Arc<RuntimeClient>,
    _slot: OwnedSemaphorePermit,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops every idle connection (after a runtime restart, say).
    pub fn recycle(&self) {
        self.lock().clear();
    }

    /// `POST /invoke` with `envelope` (JSON) as the body.
    pub async fn invoke(self: &Arc<Self>, envelope: &[u8]) -> Result<Answer, ClientError> {
        self.call("POST", "/invoke", Some(envelope)).await
    }

    /// `GET path`.
    pub async fn get(self: &Arc<Self>, path: &str) -> Result<Answer, ClientError> {
        self.call("GET", path, None).await
    }

    async fn call(
        self: &Arc<Self>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, ClientError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Connect {
                path: self.socket.clone(),
                source: std::io::Error::other("client closed"),
            })?;
        let kept = loop {
            let Some(idle) = self.lock().pop() else {
                break None;
            };
            if !idle.is_stale() {
                break Some(idle);
            }
        };
        let mut connection = match kept {
            Some(mut kept) => match kept.send(method, path, body).await {
                Ok(()) => kept,
                // The runtime closed the kept connection as the call began (it restarted,
                // say): the request never reached it, so a new connection may carry it.
                Err(_) => self.connect().await?.sent(method, path, body).await?,
            },
            None => self.connect().await?.sent(method, path, body).await?,
        };
        let (status, event_stream, keep_alive, body) = read_head(&mut connection, method).await?;
        Ok(Answer {
            status,
            event_stream,
            keep_alive,
            body,
            connection: Some(connection),
            client: self.clone(),
            _slot: slot,
        })
    }

    async fn connect(&self) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        Ok(Connection {
            stream,
            read: BytesMut::with_capacity(READ_SIZE),
            write: Vec::with_capacity(1024),
        })
    }
}

fn write_request(out: &mut Vec<u8>, method: &str, path: &str, body: Option<&[u8]>) {
    use std::io::Write as _;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{method} {path} HTTP/1.1\r\nHost: runtime\r\n");
    if let Some(body) = body {
        let _ = write!(
            out,
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads the status line and headers (skipping `1xx` answers): the status, whether the
/// body is an event stream, whether the connection may be kept, and the body's framing.
async fn read_head(
    connection: &mut Connection,
    method: &str,
) -> Result<(StatusCode, bool, bool, Body), ClientError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let parsed = head
            .parse(&connection.read)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let httparse::Status::Complete(length) = parsed else {
            if connection.read.len() > MAX_HEAD {
                return Err(ClientError::Protocol(format!(
                    "the status line and headers exceed {MAX_HEAD} bytes"
                )));
            }
            connection.fill().await?;
            continue;
        };
        let code = head.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| ClientError::Protocol(format!("status {code}")))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut event_stream = false;
        let mut keep_alive = head.version == Some(1);
        for header in head.headers.iter() {
            let value = header.value;
            if header.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| ClientError::Protocol("a malformed Content-Length".into()))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(ClientError::Protocol("conflicting Content-Length headers".into()));
                }
                content_length = Some(n);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
                if !chunked {
                    return Err(ClientError::Protocol(format!(
                        "transfer encoding {}",
                        String::from_utf8_lossy(value)
                    )));
                }
            } else if header.name.eq_ignore_ascii_case("content-type") {
                event_stream = value.trim_ascii().starts_with(b"text/event-stream");
            } else if header.name.eq_ignore_ascii_case("connection") {
                keep_alive &= !value.trim_ascii().eq_ignore_ascii_case(b"close");
            }
        }
        connection.read.advance(length);
        if status.is_informational() {
            continue; // 100 Continue: the answer itself follows
        }
        let bodiless =
            method == "HEAD" || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let body = match (bodiless, chunked, content_length) {
            (true, _, _) | (false, false, Some(0)) => Body::Done,
            (false, true, _) => Body::Chunked(Chunk::Size),
            (false, false, Some(n)) => Body::Length(n),
            (false, false, None) => {
                keep_alive = false;
                Body::UntilClose
            }
        };
        return Ok((status, event_stream, keep_alive, body));
    }
}

impl Answer {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Whether the body is a `text/event-stream`.
    pub fn is_event_stream(&self) -> bool {
        self.event_stream
    }

    /// Reads the whole body and returns the connection to the pool.
    pub async fn read_to_end(mut self) -> Result<Bytes, ClientError> {
        if let Body::Length(n) = self.body {
            // The common case, in one piece: no chunks to gather.
            let connection = self.connection.as_mut().ok_or(ClientError::Closed)?;
            // Room for what is announced, up to a bound: a length is a claim, not bytes.
            connection
                .read
                .reserve(n.saturating_sub(connection.read.len()).min(1 << 20));
            while connection.read.len() < n {
                connection.fill().await?;
            }
            let body = connection.read.split_to(n).freeze();
            self.body = Body::Done;
            self.release();
            return Ok(body);
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        self.release();
        Ok(body.freeze())
    }

    /// The next piece of the body as it arrives; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(None);
        };
        loop {
            match self.body {
                Body::Done => return Ok(None),
                Body::Length(left) => {
                    if connection.read.is_empty() {
                        connection.fill().await?;
                    }
                    let take = left.min(connection.read.len());
                    self.body = if take == left {
                        Body::Done
                    } else {
                        Body::Length(left - take)
                    };
                    return Ok(Some(connection.read.split_to(take).freeze()));
                }
                Body::UntilClose => {
                    if connection.read.is_empty() {
                        match connection.fill().await {
                            Ok(()) => {}
                            Err(ClientError::Closed) => {
                                self.body = Body::Done;
                                return Ok(None);
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    return Ok(Some(connection.read.split().freeze()));
                }
                Body::Chunked(chunk) => {
                    if let Some(data) = next_chunk_step(connection, chunk, &mut self.body).await? {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Returns the connection to the pool if the body was read to its end and the runtime
    /// keeps connections alive; otherwise closes it.
    pub fn release(mut self) {
        if self.body == Body::Done
            && self.keep_alive
            && let Some(connection) = self.connection.take()
            && connection.read.is_empty()
        {
            self.client.lock().push(connection);
        }
    }
}

/// One step of the chunked decoder: data when the step yields some, else `None` with
/// `body` moved to its next state.
async fn next_chunk_step(
    connection: &mut Connection,
    chunk: Chunk,
    body: &mut Body,
) -> Result<Option<Bytes>, ClientError> {
    let read = &mut connection.read;
    match chunk {
        Chunk::Size => match httparse::parse_chunk_size(read) {
            Ok(httparse::Status::Complete((used, size))) => {
                read.advance(used);
                *body = Body::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD => connection.fill().await?,
            Ok(httparse::Status::Partial) | Err(_) => {
                return Err(ClientError::Protocol("a malformed chunk size".into()));
            }
        },
        Chunk::Data(left) => {
            if read.is_empty() {
                connection.fill().await?;
            }
            let read = &mut connection.read;
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
            let rest = left - take as u64;
            *body = Body::Chunked(if rest == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(rest)
            });
            return Ok(Some(read.split_to(take).freeze()));
        }
        Chunk::DataEnd => {
            if read.len() < 2 {
                connection.fill().await?;
            } else if read.starts_with(b"\r\n") {
                read.advance(2);
                *body = Body::Chunked(Chunk::Size);
            } else {
                return Err(ClientError::Protocol("a chunk not ended by CRLF".into()));
            }
        }
        Chunk::Trailers => match read.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                read.advance(2);
                *body = Body::Done;
            }
            Some(end) => read.advance(end + 2), // a trailer: nothing here uses them
            None if read.len() <= MAX_HEAD => connection.fill().await?,
            None => return Err(ClientError::Protocol("trailers too long".into())),
        },
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    use tokio::net::UnixListener;

    /// A folder of its own, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let path = std::env::temp_dir().join(format!("troupe-client-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A runtime stand-in answering each request on a connection with the next of
    /// `answers`, written in pieces of `piece` bytes; returns how many connections it took.
    fn serve(answers: Vec<Vec<u8>>, piece: usize) -> (Dir, tokio::task::JoinHandle<usize>) {
        serve_closing(answers, piece, false)
    }

    /// [`serve`], closing each connection after one answer when `close` says so (without
    /// saying so in the answer, as a runtime that restarts does).
    fn serve_closing(
        answers: Vec<Vec<u8>>,
        piece: usize,
        close: bool,
    ) -> (Dir, tokio::task::JoinHandle<usize>) {
        let dir = Dir::new();
        let listener = UnixListener::bind(dir.path().join("s.sock")).expect("bind");
        let task = tokio::spawn(async move {
            let mut answers = answers.into_iter().peekable();
            let mut connections = 0;
            'accept: loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                connections += 1;
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            continue 'accept;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().expect("length");
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    read.read_exact(&mut body).await.expect("body");
                    let Some(answer) = answers.next() else {
                        break 'accept;
                    };
                    for piece in answer.chunks(piece) {
                        write.write_all(piece).await.expect("write");
                        write.flush().await.expect("flush");
                        tokio::task::yield_now().await;
                    }
                    if answers.peek().is_none() {
                        break 'accept; // closes the connection: a short body ends there
                    }
                    if close {
                        continue 'accept;
                    }
                }
            }
            connections
        });
        (dir, task)
    }

    const PLAIN: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"frames\":[]}";
    const STREAM: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
        16\r\nevent: done\ndata: {}\n\n\r\n\
        5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n";

    #[tokio::test]
    async fn answers_are_read_whole_in_any_pieces_and_connections_are_kept() {
        for piece in [1, 7, 4096] {
            let answers = vec![
                PLAIN.to_vec(),
                STREAM.to_vec(),
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                PLAIN.to_vec(),
            ];
            let (dir, server) = serve(answers, piece);
            let client = RuntimeClient::new(dir.path().join("s.sock"), 1);

            let answer = client.invoke(b"{}").await.expect("answer");
            assert_eq!(answer.status(), StatusCode::OK);
            assert!(!answer.is_event_stream());
            assert_eq!(&answer.read_to_end().await.expect("body")[..], b"{\"frames\":[]}");

            let mut answer = client.invoke(b"{}").await.expect("answer");
            assert!(answer.is_event_stream());
            let mut body = Vec::new();
            while let Some(chunk) = answer.next_chunk().await.expect("chunk") {
                body.extend_from_slice(&chunk);
            }
            assert_eq!(body, b"event: done\ndata: {}\n\nhello", "piece {piece}");
            answer.release();

            let answer = client.get("/healthz").await.expect("answer");
            assert_eq!(answer.status(), StatusCode::NO_CONTENT);
            assert!(answer.read_to_end().await.expect("body").is_empty());

            let answer = client.invoke(b"{}").await.expect("answer");
            assert_eq!(answer.read_to_end().await.expect("body").len(), 13);
            drop(client);
            assert_eq!(server.await.expect("server"), 1, "one connection for every call");
        }
    }

    #[tokio::test]
    async fn an_abandoned_answer_closes_its_connection() {
        let (dir, server) = serve(vec![STREAM.to_vec(), PLAIN.to_vec()], 4096);
        let client = RuntimeClient::new(dir.path().join("s.sock"), 1);
        let answer = client.invoke(b"{}").await.expect("answer");
        drop(answer); // body not read: the connection cannot serve another call
        let answer = client.invoke(b"{}").await.expect("answer");
        assert_eq!(answer.read_to_end().await.expect("body").len(), 13);
        drop(client);
        assert_eq!(server.await.expect("server"), 2);
    }

    #[tokio::test]
    async fn a_connection_the_runtime_closed_is_not_reused() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        let (dir, server) = serve(vec![close, PLAIN.to_vec()], 4096);
        let client = RuntimeClient::new(dir.path().join("s.sock"), 1);
        let answer = client.invoke(b"{}").await.expect("answer");
        assert_eq!(&answer.read_to_end().await.expect("body")[..], b"{}");
        let answer = client.invoke(b"{}").await.expect("answer");
        assert_eq!(answer.read_to_end().await.expect("body").len(), 13);
        drop(client);
        assert_eq!(server.await.expect("server"), 2);
    }

    #[tokio::test]
    async fn a_kept_connection_the_runtime_dropped_is_replaced() {
        let (dir, server) = serve_closing(vec![PLAIN.to_vec(), PLAIN.to_vec(), PLAIN.to_vec()], 4096, true);
        let client = RuntimeClient::new(dir.path().join("s.sock"), 1);
        for _ in 0..3 {
            // Each call after the first finds its kept connection closed under it.
            let answer = client.invoke(b"{}").await.expect("answer");
            assert_eq!(answer.read_to_end().await.expect("body").len(), 13);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(client);
        assert_eq!(server.await.expect("server"), 3);
    }

    #[tokio::test]
    async fn broken_answers_are_errors_not_panics() {
        let cases: [&[u8]; 5] = [
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
        ];
        for case in cases {
            let (dir, server) = serve(vec![case.to_vec()], 4096);
            let client = RuntimeClient::new(dir.path().join("s.sock"), 1);
            let outcome = match client.invoke(b"{}").await {
                Ok(answer) => answer.read_to_end().await.map(|_| ()),
                Err(error) => Err(error),
            };
            assert!(outcome.is_err(), "{}", String::from_utf8_lossy(case));
            drop(client);
            server.abort();
        }
    }

    #[tokio::test]
    async fn no_runtime_is_a_connect_error() {
        let dir = Dir::new();
        let client = RuntimeClient::new(dir.path().join("none.sock"), 1);
        let error = client.invoke(b"{}").await.err().expect("no runtime");
        assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    }
}
