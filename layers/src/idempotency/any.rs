//! Choosing the idempotency store at run time:
//! `--store memory|redis://…|postgres://…|nats-kv://BUCKET`, one type for whichever was
//! chosen.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use troupe_core::Publication;
use troupe_core::redact::Redacted;
use troupe_core::tls::TlsFiles;

use super::memory::MemoryStore;
#[cfg(feature = "nats-kv")]
use super::nats_kv::{NatsKvStore, NatsKvStoreConfig};
use super::pass_through::PassThroughStore;
#[cfg(feature = "postgres")]
use super::postgres::{PostgresStore, PostgresStoreConfig};
#[cfg(feature = "redis")]
use super::redis::{RedisStore, RedisStoreConfig};
use super::store::{Claim, IdempotencyStore, StoreError};

/// Where hop records are kept, as a binary's `--store` names it:
///
/// - `memory`: in the process. Effectively-once holds only while the process lives and only
///   within it: a restarted or second replica processes a redelivered hop again.
/// - `redis://[user:password@]host[:port][/db]`: shared by every replica and kept across
///   restarts (feature `redis`); `rediss://` for TLS.
/// - `postgres://[user:password@]host[:port]/database` (or `postgresql://`): shared and
///   durable, one row per hop in table `troupe_hops` (feature `postgres`); add
///   `?sslmode=require` for TLS (verified; `prefer` connects in plain text).
/// - `nats-kv://BUCKET` or `nats-kv://[user:password@]host[:port]/BUCKET`: a NATS JetStream
///   key-value bucket (feature `nats-kv`), created if missing; without a server, the one
///   [`StoreUrl::with_nats_default`] names (the actor's NATS broker), else
///   `127.0.0.1:4222`.
///
/// Its `Display` and `Debug` show URLs redacted.
///
/// ```
/// use troupe_layers::StoreUrl;
/// let store: StoreUrl = "memory".parse().unwrap();
/// assert!(store.is_memory());
/// assert!("redis://:pw@cache:6379".parse::<StoreUrl>().unwrap().to_string().contains("***"));
/// assert!("mongodb://db".parse::<StoreUrl>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreUrl {
    /// In this process only.
    #[default]
    Memory,
    /// A Redis server (or cluster endpoint), by URL.
    Redis(String),
    /// A PostgreSQL database, by URL.
    Postgres(String),
    /// A NATS JetStream key-value bucket.
    NatsKv {
        /// The NATS server(s) (`nats://…`), if the URL named them.
        servers: Option<String>,
        /// The bucket.
        bucket: String,
    },
}

/// A `--store` value that names no store this build knows.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown store {shown:?}: expected `memory`, `redis://[user:password@]host[:port][/db]`, `postgres://[user:password@]host[:port]/database` or `nats-kv://[[user:password@]host[:port]/]BUCKET`{why}"
)]
pub struct UnknownStore {
    /// The value, redacted.
    shown: String,
    /// What else to say about it.
    why: &'static str,
}

impl FromStr for StoreUrl {
    type Err = UnknownStore;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("memory") {
            return Ok(StoreUrl::Memory);
        }
        let scheme = s.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis" | "rediss" | "redis+unix" | "unix") => Ok(StoreUrl::Redis(s.to_owned())),
            Some("postgres" | "postgresql") => Ok(StoreUrl::Postgres(s.to_owned())),
            Some("nats-kv") => {
                let rest = &s["nats-kv://".len()..];
                let (servers, bucket) = match rest.rsplit_once('/') {
                    Some((servers, bucket)) => (Some(format!("nats://{servers}")), bucket),
                    None => (None, rest),
                };
                let valid = !bucket.is_empty()
                    && bucket
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if valid {
                    Ok(StoreUrl::NatsKv {
                        servers,
                        bucket: bucket.to_owned(),
                    })
                } else {
                    Err(UnknownStore {
                        shown: Redacted(s).to_string(),
                        why: "; a NATS KV bucket name is letters, digits, - and _",
                    })
                }
            }
            _ => Err(UnknownStore {
                shown: Redacted(s).to_string(),
                why: "",
            }),
        }
    }
}

impl StoreUrl {
    /// The NATS server(s) of a `nats-kv://` store: those it names, else the local server
    /// (apply [`StoreUrl::with_nats_default`] first to use the broker's).
    pub fn nats_servers(servers: Option<&str>) -> &str {
        servers.unwrap_or("nats://127.0.0.1:4222")
    }

    /// Whether records live only in this process.
    pub fn is_memory(&self) -> bool {
        matches!(self, StoreUrl::Memory)
    }

    /// A NATS KV store without a server of its own uses `servers` (the actor's NATS broker).
    #[must_use]
    pub fn with_nats_default(self, servers: &str) -> Self {
        match self {
            StoreUrl::NatsKv {
                servers: None,
                bucket,
            } => StoreUrl::NatsKv {
                servers: Some(servers.to_owned()),
                bucket,
            },
            other => other,
        }
    }

    /// Connects to the store (the memory store needs nothing). Hop records expire after
    /// `ttl`; Redis keys and PostgreSQL rows' keys start with `prefix`; `tls` is what a TLS
    /// connection (`rediss://`, `sslmode=require`, a `tls://` NATS server) trusts and
    /// presents.
    pub async fn connect(&self, prefix: &str, ttl: Duration, tls: &TlsFiles) -> Result<AnyStore, StoreError> {
        // Only the shared stores key their records and speak TLS.
        let _ = (prefix, tls);
        match self {
            StoreUrl::Memory => Ok(AnyStore::Memory(Arc::new(MemoryStore::new(
                super::MemoryStoreConfig {
                    ttl,
                    ..super::MemoryStoreConfig::default()
                },
            )))),
            #[cfg(feature = "redis")]
            StoreUrl::Redis(url) => RedisStore::connect(RedisStoreConfig {
                url: url.clone(),
                prefix: prefix.to_owned(),
                ttl,
                tls: tls.clone(),
            })
            .await
            .map(AnyStore::Redis),
            #[cfg(not(feature = "redis"))]
            StoreUrl::Redis(url) => not_built("Redis", "redis", url),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(url) => PostgresStore::connect(PostgresStoreConfig {
                url: url.clone(),
                prefix: prefix.to_owned(),
                ttl,
                tls: tls.clone(),
                ..PostgresStoreConfig::default()
            })
            .await
            .map(AnyStore::Postgres),
            #[cfg(not(feature = "postgres"))]
            StoreUrl::Postgres(url) => not_built("PostgreSQL", "postgres", url),
            #[cfg(feature = "nats-kv")]
            StoreUrl::NatsKv { servers, bucket } => NatsKvStore::connect(NatsKvStoreConfig {
                url: StoreUrl::nats_servers(servers.as_deref()).to_owned(),
                bucket: bucket.clone(),
                prefix: prefix.to_owned(),
                ttl,
                tls: tls.clone(),
            })
            .await
            .map(AnyStore::NatsKv),
            #[cfg(not(feature = "nats-kv"))]
            StoreUrl::NatsKv { bucket, .. } => not_built("NATS KV", "nats-kv", bucket),
        }
    }
}

#[allow(dead_code)] // Unused when every store is built in.
fn not_built(name: &str, feature: &str, url: &str) -> Result<AnyStore, StoreError> {
    Err(StoreError::failed(
        "connect",
        format!(
            "this build has no {name} store ({}); rebuild with the `{feature}` feature",
            Redacted(url)
        ),
    ))
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Redis(url) | StoreUrl::Postgres(url) => fmt::Display::fmt(&Redacted(url), f),
            StoreUrl::NatsKv {
                servers: None,
                bucket,
            } => write!(f, "nats-kv://{bucket}"),
            StoreUrl::NatsKv {
                servers: Some(servers),
                bucket,
            } => write!(f, "NATS KV bucket {bucket} at {}", Redacted(servers)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("Memory"),
            StoreUrl::Redis(url) => f.debug_tuple("Redis").field(&Redacted(url)).finish(),
            StoreUrl::Postgres(url) => f.debug_tuple("Postgres").field(&Redacted(url)).finish(),
            StoreUrl::NatsKv { servers, bucket } => f
                .debug_struct("NatsKv")
                .field("servers", &servers.as_deref().map(Redacted))
                .field("bucket", bucket)
                .finish(),
        }
    }
}

/// The store a [`StoreUrl`] connected to: one type for the stack whatever was chosen.
#[derive(Clone)]
pub enum AnyStore {
    /// See [`MemoryStore`].
    Memory(Arc<MemoryStore>),
    /// See [`PassThroughStore`]: no records, for handlers idempotent by themselves.
    PassThrough(PassThroughStore),
    /// See [`RedisStore`].
    #[cfg(feature = "redis")]
    Redis(Arc<RedisStore>),
    /// See [`PostgresStore`].
    #[cfg(feature = "postgres")]
    Postgres(Arc<PostgresStore>),
    /// See [`NatsKvStore`].
    #[cfg(feature = "nats-kv")]
    NatsKv(Arc<NatsKvStore>),
}

impl fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyStore::Memory(_) => f.write_str("AnyStore::Memory"),
            AnyStore::PassThrough(_) => f.write_str("AnyStore::PassThrough"),
            #[cfg(feature = "redis")]
            AnyStore::Redis(_) => f.write_str("AnyStore::Redis"),
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(_) => f.write_str("AnyStore::Postgres"),
            #[cfg(feature = "nats-kv")]
            AnyStore::NatsKv(_) => f.write_str("AnyStore::NatsKv"),
        }
    }
}

/// Forwards a call to whichever store this is.
macro_rules! each_store {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($store) => $call,
            AnyStore::PassThrough($store) => $call,
            #[cfg(feature = "redis")]
            AnyStore::Redis($store) => $call,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call,
            #[cfg(feature = "nats-kv")]
            AnyStore::NatsKv($store) => $call,
        }
    };
}

impl IdempotencyStore for AnyStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        each_store!(self, store => store.claim(key, ttl).await)
    }

    async fn complete(&self, key: &str, outputs: &Arc<[Publication]>) -> Result<(), StoreError> {
        each_store!(self, store => store.complete(key, outputs).await)
    }

    async fn mark_published(&self, key: &str) -> Result<(), StoreError> {
        each_store!(self, store => store.mark_published(key).await)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        each_store!(self, store => store.release(key).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_flag_takes() {
        assert_eq!("memory".parse::<StoreUrl>().ok(), Some(StoreUrl::Memory));
        assert_eq!("MEMORY".parse::<StoreUrl>().ok(), Some(StoreUrl::Memory));
        for url in [
            "redis://127.0.0.1:6379",
            "redis://u:p@h:6380/2",
            "rediss://u:p@h:6380",
        ] {
            assert_eq!(
                url.parse::<StoreUrl>().ok(),
                Some(StoreUrl::Redis(url.to_owned()))
            );
        }
        assert_eq!(
            "postgresql://db/troupe".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Postgres("postgresql://db/troupe".to_owned()))
        );
        assert_eq!(
            "nats-kv://HOPS".parse::<StoreUrl>().ok(),
            Some(StoreUrl::NatsKv {
                servers: None,
                bucket: "HOPS".to_owned()
            })
        );
        let kv: StoreUrl = "nats-kv://app:hunter2@nats:4222/HOPS".parse().unwrap();
        assert_eq!(
            kv,
            StoreUrl::NatsKv {
                servers: Some("nats://app:hunter2@nats:4222".to_owned()),
                bucket: "HOPS".to_owned()
            }
        );
        assert!(!format!("{kv} {kv:?}").contains("hunter2"));
        assert!("nats-kv://a.b".parse::<StoreUrl>().is_err());
        let refused = "mongodb://app:hunter2@db/troupe".parse::<StoreUrl>().unwrap_err();
        let shown = refused.to_string();
        assert!(
            shown.contains("unknown store") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn shows_no_password() {
        let store: StoreUrl = "redis://:hunter2@cache:6379".parse().unwrap();
        for shown in [store.to_string(), format!("{store:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[tokio::test]
    async fn memory_store_records_hops() {
        let store = StoreUrl::Memory
            .connect("test:", Duration::from_secs(60), &TlsFiles::default())
            .await
            .unwrap();
        assert_eq!(
            store.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        assert_eq!(
            store.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::InProgress
        );
        store.mark_published("k").await.unwrap();
        assert_eq!(
            store.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Published
        );
    }
}
