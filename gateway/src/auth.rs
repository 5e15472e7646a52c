//! API keys: `Authorization: Bearer <key>` on every API route.
//!
//! Keys are kept as BLAKE3 digests and a presented key is compared digest to digest;
//! `blake3::Hash` equality is constant-time, so the answer's timing says nothing about how
//! much of a key was right. Keys never appear in a log line, an error or a `Debug` output.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The keys a gateway accepts; empty means none is asked for.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Arc<Vec<blake3::Hash>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

impl ApiKeys {
    /// Accepts each of `keys` (blank ones are ignored).
    ///
    /// ```
    /// use troupe_gateway::auth::ApiKeys;
    /// let keys = ApiKeys::new(["s3cret", " "]);
    /// assert_eq!(keys.len(), 1);
    /// assert!(keys.accepts("s3cret") && !keys.accepts("s3cre"));
    /// assert!(!format!("{keys:?}").contains("s3cret"));
    /// ```
    pub fn new<I, K>(keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let digests = keys
            .into_iter()
            .filter(|k| !k.as_ref().trim().is_empty())
            .map(|k| blake3::hash(k.as_ref().trim().as_bytes()))
            .collect();
        Self {
            digests: Arc::new(digests),
        }
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether no key is configured (the API is open).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of them.
    pub fn accepts(&self, key: &str) -> bool {
        let presented = blake3::hash(key.as_bytes());
        // Every digest is compared, so the time does not say which one matched.
        self.digests
            .iter()
            .fold(false, |found, digest| (*digest == presented) | found)
    }
}

/// Middleware: lets a request through only with an accepted bearer key (or when no key is
/// configured).
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if keys.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match presented {
        Some(key) if keys.accepts(key.trim()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "missing or unknown API key: send Authorization: Bearer <key>"})),
        )
            .into_response(),
    }
}
