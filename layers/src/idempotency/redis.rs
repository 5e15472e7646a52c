//! An [`IdempotencyStore`] on Redis (feature `redis`), shared by every process of an actor,
//! so a redelivery to another replica is still recognised.
//!
//! One key per hop (`{prefix}{hop key}`), holding:
//! - `p:{token}` while a worker holds the claim (expires with the claim ttl);
//! - `c:{json}` once the outputs are recorded (the record ttl);
//! - `done` once they are published (the record ttl).
//!
//! Claiming is one atomic script (look, and set if absent). Recording and releasing compare
//! the claim token first, so a worker whose claim lapsed and was taken over cannot overwrite
//! or delete the new owner's claim. Tokens live in this process, the one that claimed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use troupe_core::Publication;
use troupe_core::tls::TlsFiles;

use super::record::{self, millis};
use super::store::{Claim, IdempotencyStore, StoreError};

/// Settings of a [`RedisStore`]. Its `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// Server, e.g. `redis://127.0.0.1:6379`, or `rediss://…` for TLS.
    pub url: String,
    /// For `rediss://`: the CA bundle to trust (instead of the system roots, when given) and
    /// the client certificate for servers that verify clients.
    pub tls: TlsFiles,
    /// Prefix of every key (namespace several meshes in one Redis).
    pub prefix: String,
    /// How long a finished hop is remembered.
    pub ttl: Duration,
}

impl std::fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &troupe_core::redact::Redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for RedisStoreConfig {
    /// `redis://127.0.0.1:6379`, prefix `troupe:hop:`, one day.
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "troupe:hop:".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
            tls: TlsFiles::default(),
        }
    }
}

/// Look at the hop; claim it if nobody has. Returns "" when claimed, else the value found.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'PX', ARGV[2])
return ''
";

/// Replace the value only if this token still holds the claim, or nobody does: a server
/// that restarted without persistence has lost every claim, and no other worker can hold
/// this one. Returns 1 if replaced.
const REPLACE_OWN: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == 'p:' .. ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Delete only if this token still holds the claim.
const RELEASE_OWN: &str = r"
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// An idempotency store on Redis. Cheap to share behind an `Arc`.
pub struct RedisStore {
    connection: ConnectionManager,
    config: RedisStoreConfig,
    claim: redis::Script,
    replace_own: redis::Script,
    release_own: redis::Script,
    /// Claim tokens of hops this process holds.
    tokens: Mutex<HashMap<String, String>>,
}

/// A Redis error as a store error: unavailable when the server did not answer.
pub(crate) fn failed(operation: &'static str) -> impl Fn(redis::RedisError) -> StoreError {
    move |e| {
        if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
            StoreError::unavailable(operation, e.to_string())
        } else {
            StoreError::failed(operation, e.to_string())
        }
    }
}

/// Connects to the Redis at `url` (`rediss://` with `tls`); the connection reconnects by
/// itself after a loss. Errors name the server, never its password.
pub(crate) async fn connect(url: &str, tls: &TlsFiles) -> Result<ConnectionManager, StoreError> {
    let connect_failed = |e: redis::RedisError| {
        StoreError::unavailable(
            "connect",
            format!(
                "cannot connect to Redis at {}: {}",
                troupe_core::redact::Redacted(url),
                troupe_core::redact::scrub(&e.to_string(), url)
            ),
        )
    };
    let tls_failed = |e: troupe_core::tls::TlsError| StoreError::failed("connect", e.to_string());
    let client = if tls.is_empty() {
        redis::Client::open(url)
    } else {
        let certificates = redis::TlsCertificates {
            client_tls: tls
                .client_identity_pem()
                .map_err(tls_failed)?
                .map(|id| redis::ClientTlsConfig {
                    client_cert: id.cert_pem,
                    client_key: id.key_pem,
                }),
            root_cert: tls.ca_pem().map_err(tls_failed)?,
        };
        redis::Client::build_with_tls(url, certificates)
    }
    .map_err(connect_failed)?;
    ConnectionManager::new(client).await.map_err(connect_failed)
}

impl RedisStore {
    /// Connects (and reconnects by itself later, after a connection loss).
    pub async fn connect(config: RedisStoreConfig) -> Result<Arc<Self>, StoreError> {
        let connection = connect(&config.url, &config.tls).await?;
        Ok(Arc::new(Self {
            connection,
            config,
            claim: redis::Script::new(CLAIM),
            replace_own: redis::Script::new(REPLACE_OWN),
            release_own: redis::Script::new(RELEASE_OWN),
            tokens: Mutex::default(),
        }))
    }

    fn key(&self, hop: &str) -> String {
        format!("{}{hop}", self.config.prefix)
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Single inserts and removals: a poisoned map is still consistent.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl IdempotencyStore for RedisStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        // A duplicate inside this process while it still works on the hop waits, even if the
        // Redis claim lapsed: taking a second token here would let the first worker record
        // or release under the second one's claim.
        if self.tokens().contains_key(key) {
            return Ok(Claim::InProgress);
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let found: String = self
            .claim
            .key(self.key(key))
            .arg(&token)
            .arg(millis(ttl))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("claim"))?;
        if found.is_empty() {
            self.tokens().insert(key.to_owned(), token);
            return Ok(Claim::Acquired);
        }
        record::found(&found)
    }

    async fn complete(&self, key: &str, outputs: &Arc<[Publication]>) -> Result<(), StoreError> {
        let token = self.tokens().remove(key).ok_or_else(|| {
            StoreError::failed("record", format!("this process holds no claim on hop {key}"))
        })?;
        let state = record::completed(outputs)?;
        let replaced: i64 = self
            .replace_own
            .key(self.key(key))
            .arg(&token)
            .arg(state)
            .arg(millis(self.config.ttl))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("record"))?;
        if replaced == 1 {
            Ok(())
        } else {
            Err(StoreError::failed(
                "record",
                format!("the claim on hop {key} lapsed and was taken over; its outputs are not recorded"),
            ))
        }
    }

    async fn mark_published(&self, key: &str) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(record::PUBLISHED)
            .arg("PX")
            .arg(millis(self.config.ttl))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(failed("mark published"))
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let Some(token) = self.tokens().remove(key) else {
            return Ok(());
        };
        self.release_own
            .key(self.key(key))
            .arg(&token)
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(drop)
            .map_err(failed("release"))
    }
}
