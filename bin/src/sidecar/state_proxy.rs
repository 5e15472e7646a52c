//! Handler state served to the runtime over Unix sockets: the state connector protocol of
//! Asya's runtime (`ASYA_STATE_PROXY_MOUNTS`), which Troupe's runtime speaks too
//! (`troupe_runtime.state`). See docs/state.md.
//!
//! One socket per mount, `{state socket dir}/{name}.sock`, each over its own part of the
//! actor's state (keys `{name}/...`), plus `troupe.sock` for Troupe's API. Per socket:
//!
//! - `GET /keys/{key}`: the value (`ETag: "{version}"`); `HEAD` the same without it
//!   (`X-Is-File: true`, or `false` for a prefix that holds keys: a directory).
//! - `PUT /keys/{key}`: writes the body; `If-None-Match: *` only if absent, `If-Match:
//!   "{version}"` only over that version (else `412`, with the current version in `ETag`).
//! - `DELETE /keys/{key}`: deletes, `If-Match` as for `PUT`.
//! - `GET /keys/?prefix=P&delimiter=/`: `{"keys": [...], "prefixes": [...]}`.
//! - `GET`/`PUT /meta/{key}?attr=NAME`: a named attribute beside a key (extended
//!   attributes, for `os.getxattr`/`setxattr`).
//!
//! Errors are `{"message": ...}` with the status Asya's runtime maps to Python errors: 404
//! (`FileNotFoundError`), 400 (a bad key: `ValueError`), 412, 413 (over the value limit:
//! `EFBIG`), 507 (over the key limit), 503 (the store does not answer: `ConnectionError`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as KeyPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use troupe::layers::state::{AnyStateStore, Expect, StateError, StateLimits, StateStore, Swapped};

/// The socket of Troupe's own state API, beside the mounts' sockets.
pub const API_SOCKET: &str = "troupe";

/// How many keys one listing returns at most.
const LIST_LIMIT: usize = 10_000;

/// One mount of `ASYA_STATE_PROXY_MOUNTS` (`name:/path:write=buffered|passthrough`): the
/// sidecar needs only its name; the path and write mode are the runtime's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount's name: its socket and its part of the state.
    pub name: String,
}

/// Parses `ASYA_STATE_PROXY_MOUNTS`: `name:/path:options` entries separated by `;`.
pub fn parse_mounts(spec: &str) -> Result<Vec<Mount>, String> {
    let mut mounts: Vec<Mount> = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(path), Some(_options)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("mount {entry:?} is not name:/path:options"));
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !valid {
            return Err(format!(
                "mount name {name:?} may hold only letters, digits, - and _"
            ));
        }
        if name == API_SOCKET {
            return Err(format!(
                "mount name {name:?} is taken by Troupe's state API socket"
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("mount {name}: path {path:?} is not absolute"));
        }
        if mounts.iter().any(|m| m.name == name) {
            return Err(format!("mount {name} is named twice"));
        }
        mounts.push(Mount {
            name: name.to_owned(),
        });
    }
    Ok(mounts)
}

/// What one socket serves: the actor's state, under `{space}/`.
#[derive(Clone)]
struct Space {
    store: AnyStateStore,
    space: Arc<str>,
    limits: StateLimits,
}

impl Space {
    fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.space)
    }

    fn meta(&self, key: &str, attr: &str) -> String {
        format!("{}#meta/{attr}/{key}", self.space)
    }
}

/// Serves `spaces` (socket names) over `store` in `dir` until `shutdown`; a socket left
/// by an earlier process is replaced.
pub async fn serve(
    dir: &Path,
    spaces: &[String],
    store: AnyStateStore,
    limits: StateLimits,
    shutdown: CancellationToken,
) -> std::io::Result<Vec<PathBuf>> {
    tokio::fs::create_dir_all(dir).await?;
    let mut sockets = Vec::new();
    for space in spaces {
        let path = dir.join(format!("{space}.sock"));
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        let app = router(Space {
            store: store.clone(),
            space: space.as_str().into(),
            limits,
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the state socket stopped");
            }
        });
        sockets.push(path);
    }
    Ok(sockets)
}

fn router(space: Space) -> Router {
    Router::new()
        .route("/keys", any(root))
        .route("/keys/", any(root))
        .route("/keys/{*key}", any(key))
        .route("/meta/{*key}", any(meta))
        .with_state(space)
}

fn message(status: StatusCode, text: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "message": text.to_string() }))).into_response()
}

fn failed(error: &StateError) -> Response {
    let status = match error {
        StateError::InvalidKey { .. } => StatusCode::BAD_REQUEST,
        StateError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StateError::TooManyKeys { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StateError::Store(e) if e.unavailable => StatusCode::SERVICE_UNAVAILABLE,
        StateError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, error)
}

fn etag(version: u64) -> HeaderValue {
    // Digits and quotes: always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// What a write's conditional headers expect: `None` for an unconditional write.
fn expected(headers: &HeaderMap) -> Result<Option<Expect>, &'static str> {
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == "*") {
        return Ok(Some(Expect::Absent));
    }
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(|v| Some(Expect::Version(v)))
        .ok_or("If-Match is not a version (\"123\")")
}

#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    delimiter: String,
}

/// `/keys/` itself: a listing, or a key that is empty.
async fn root(State(space): State<Space>, method: Method, query: Query<Listing>) -> Response {
    if method == Method::GET {
        return list(State(space), query).await;
    }
    failed(&StateError::InvalidKey {
        key: String::new(),
        why: "it is empty",
    })
}

async fn list(State(space): State<Space>, Query(query): Query<Listing>) -> Response {
    let base = space.key("");
    let keys = match space.store.list(&space.key(&query.prefix), LIST_LIMIT).await {
        Ok(keys) => keys,
        Err(error) => return failed(&error),
    };
    let mut files = Vec::new();
    let mut prefixes = BTreeSet::new();
    for full in keys {
        let Some(key) = full.strip_prefix(&base) else {
            continue;
        };
        let rest = &key[query.prefix.len().min(key.len())..];
        match rest
            .find(query.delimiter.as_str())
            .filter(|_| !query.delimiter.is_empty())
        {
            Some(at) => {
                prefixes.insert(format!("{}{}", query.prefix, &rest[..at + query.delimiter.len()]));
            }
            None => files.push(key.to_owned()),
        }
    }
    axum::Json(json!({ "keys": files, "prefixes": prefixes })).into_response()
}

async fn key(
    State(space): State<Space>,
    KeyPath(key): KeyPath<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let full = space.key(&key);
    match method {
        Method::GET | Method::HEAD => match space.store.get(&full).await {
            Ok(Some(found)) => {
                let mut response = if method == Method::HEAD {
                    let mut r = StatusCode::OK.into_response();
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, found.value.len().into());
                    r.headers_mut()
                        .insert("x-is-file", HeaderValue::from_static("true"));
                    r
                } else {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/octet-stream"),
                        )],
                        found.value,
                    )
                        .into_response()
                };
                response.headers_mut().insert(header::ETAG, etag(found.version));
                response
            }
            Ok(None) if method == Method::HEAD => match space.store.list(&format!("{full}/"), 1).await {
                // A prefix that holds keys is a directory.
                Ok(keys) if !keys.is_empty() => {
                    let mut r = StatusCode::OK.into_response();
                    r.headers_mut()
                        .insert("x-is-file", HeaderValue::from_static("false"));
                    r
                }
                Ok(_) => StatusCode::NOT_FOUND.into_response(),
                Err(error) => failed(&error),
            },
            Ok(None) => message(StatusCode::NOT_FOUND, format!("key not found: {key}")),
            Err(error) => failed(&error),
        },
        Method::PUT => {
            let expect = match expected(&headers) {
                Ok(expect) => expect,
                Err(why) => return message(StatusCode::BAD_REQUEST, why),
            };
            let value = match read_value(body, space.limits.max_value_bytes).await {
                Ok(value) => value,
                Err(Some(size)) => {
                    let error = StateError::ValueTooLarge {
                        key: key.chars().take(80).collect(),
                        size,
                        max: space.limits.max_value_bytes,
                    };
                    return failed(&error);
                }
                Err(None) => return message(StatusCode::BAD_REQUEST, "the body could not be read"),
            };
            write(&space, &full, &key, expect, Some(value)).await
        }
        Method::DELETE => {
            let expect = match expected(&headers) {
                Ok(expect) => expect,
                Err(why) => return message(StatusCode::BAD_REQUEST, why),
            };
            match expect {
                None => match space.store.delete(&full).await {
                    Ok(true) => axum::Json(json!({ "ok": true })).into_response(),
                    Ok(false) => message(StatusCode::NOT_FOUND, format!("key not found: {key}")),
                    Err(error) => failed(&error),
                },
                expect => write(&space, &full, &key, expect, None).await,
            }
        }
        _ => message(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD, PUT or DELETE"),
    }
}

/// How far past the limit a body is still read (and dropped) before answering 413: a client
/// that is still sending when the answer comes sees a broken pipe, not the answer.
const DRAIN_FACTOR: usize = 16;

/// The body, if it is at most `max` bytes; else `Err(Some(size read))`, having read (and
/// dropped) up to [`DRAIN_FACTOR`] times `max`; `Err(None)` if it broke off.
async fn read_value(body: Body, max: usize) -> Result<Vec<u8>, Option<usize>> {
    let mut stream = body.into_data_stream();
    let mut value = Vec::new();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| None)?;
        size = size.saturating_add(chunk.len());
        if size <= max {
            value.extend_from_slice(&chunk);
        } else if size > max.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if size > max { Err(Some(size)) } else { Ok(value) }
}

/// A put (`value`) or delete (`None`), conditional when `expect` says so.
async fn write(
    space: &Space,
    full: &str,
    key: &str,
    expect: Option<Expect>,
    value: Option<Vec<u8>>,
) -> Response {
    let outcome = match (expect, value) {
        (None, Some(value)) => space.store.put(full, value).await.map(|v| Swapped::Done(Some(v))),
        (Some(expect), value) => space.store.compare_and_set(full, expect, value).await,
        (None, None) => return message(StatusCode::BAD_REQUEST, "nothing to write"),
    };
    match outcome {
        Ok(Swapped::Done(version)) => {
            let mut response = axum::Json(json!({ "ok": true, "version": version })).into_response();
            if let Some(version) = version {
                response.headers_mut().insert(header::ETAG, etag(version));
            }
            response
        }
        Ok(Swapped::Conflict(now)) => {
            let mut response = message(StatusCode::PRECONDITION_FAILED, format!("{key} changed"));
            if let Some(now) = now {
                response.headers_mut().insert(header::ETAG, etag(now.version));
            }
            response
        }
        Err(error) => failed(&error),
    }
}

#[derive(Deserialize)]
struct Attribute {
    attr: String,
}

async fn meta(
    State(space): State<Space>,
    KeyPath(key): KeyPath<String>,
    Query(attribute): Query<Attribute>,
    method: Method,
    body: Body,
) -> Response {
    let valid = !attribute.attr.is_empty() && !attribute.attr.contains('/');
    if !valid {
        return message(StatusCode::BAD_REQUEST, "attr must be a name without /");
    }
    let full = space.meta(&key, &attribute.attr);
    match method {
        Method::GET => match space.store.get(&full).await {
            Ok(Some(found)) => found.value.into_response(),
            Ok(None) => message(
                StatusCode::NOT_FOUND,
                format!("{key} has no attribute {}", attribute.attr),
            ),
            Err(error) => failed(&error),
        },
        Method::PUT => match read_value(body, space.limits.max_value_bytes).await {
            Ok(value) => write(&space, &full, &key, None, Some(value)).await,
            Err(_) => message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "attribute value over the value limit",
            ),
        },
        _ => message(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_asya_mounts() {
        let mounts =
            parse_mounts("meta:/state/meta:write=buffered; media:/state/media:write=passthrough;").unwrap();
        assert_eq!(
            mounts.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["meta", "media"]
        );
        assert!(parse_mounts("").unwrap().is_empty());
        assert!(parse_mounts("meta:/state/meta").is_err(), "options are required");
        assert!(parse_mounts("a b:/x:write=buffered").is_err());
        assert!(parse_mounts("troupe:/x:write=buffered").is_err());
        assert!(parse_mounts("m:/x:write=buffered;m:/y:write=buffered").is_err());
    }
}
