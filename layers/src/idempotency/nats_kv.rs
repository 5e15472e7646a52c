//! An [`IdempotencyStore`] on a NATS JetStream key-value bucket (feature `nats-kv`): shared
//! by every process of an actor with no server besides the NATS the mesh already uses.
//!
//! One key per hop: the hop key (with the store's prefix) hashed to a UUIDv5, because KV keys
//! allow only `[-/_=.a-zA-Z0-9]` and a hop key carries a client's envelope id. Values are the
//! shared record states (see the `record` module), except a claim, which also carries its
//! deadline: `p:{token}:{unix ms}`, since a bucket has one age limit for all its keys (the
//! record ttl), not one per key. Every change is a compare-and-set on the key's revision, so
//! two workers never both acquire a hop and a worker whose claim lapsed and was taken over
//! cannot record or release over its successor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use troupe_core::Publication;
use troupe_core::redact::Redacted;

use troupe_core::tls::TlsFiles;

use super::record;
use super::store::{Claim, IdempotencyStore, StoreError};

/// Settings of a [`NatsKvStore`]. Its `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsKvStoreConfig {
    /// NATS server(s), as for the NATS transport.
    pub url: String,
    /// The bucket (created if missing, with `ttl` as its age limit).
    pub bucket: String,
    /// Prefix of every key before hashing (namespace several meshes in one bucket).
    pub prefix: String,
    /// How long a finished hop is remembered.
    pub ttl: Duration,
    /// CA bundle and client certificate, as for the NATS transport.
    pub tls: TlsFiles,
}

impl std::fmt::Debug for NatsKvStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsKvStoreConfig")
            .field("url", &Redacted(&self.url))
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("tls", &self.tls)
            .finish()
    }
}

/// An idempotency store on a NATS KV bucket. Cheap to share behind an `Arc`.
pub struct NatsKvStore {
    kv: kv::Store,
    prefix: String,
    /// Claim tokens of hops this process holds, with the revision that wrote each.
    tokens: Mutex<HashMap<String, (String, u64)>>,
}

/// Namespace of the hashed keys (a fixed, arbitrary UUID).
const KEY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7a0b_9d1e_52c3_4f8a_9b6e_1d2c_3f4a_5b6c);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A claim's state: its token and when it lapses.
fn claim_state(token: &str, ttl: Duration) -> String {
    format!(
        "{}:{}",
        record::claimed(token),
        now_ms().saturating_add(record::millis(ttl))
    )
}

/// Whether `state` is a claim whose deadline has passed.
fn lapsed(state: &str) -> bool {
    state
        .strip_prefix("p:")
        .and_then(|claim| claim.rsplit_once(':'))
        .and_then(|(_, deadline)| deadline.parse::<u64>().ok())
        .is_some_and(|deadline| deadline <= now_ms())
}

fn owns(state: &str, token: &str) -> bool {
    state
        .strip_prefix("p:")
        .and_then(|claim| claim.split_once(':'))
        .is_some_and(|(t, _)| t == token)
}

/// Every failure of the KV client here is the server not answering as asked (a timeout, no
/// responders, a dropped connection): the decisions themselves come back as values.
fn down(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::unavailable(operation, e.to_string())
}

impl NatsKvStore {
    /// Connects, and creates the bucket if it is missing.
    pub async fn connect(config: NatsKvStoreConfig) -> Result<Arc<Self>, StoreError> {
        let Bucket { kv, .. } = open_bucket(&config.url, &config.tls, &config.bucket, config.ttl).await?;
        Ok(Arc::new(Self {
            kv,
            prefix: config.prefix,
            tokens: Mutex::default(),
        }))
    }
}

/// An open KV bucket: the client's JetStream context, the bucket, and its stream (for
/// purges and subject listings the KV API does not offer).
pub(crate) struct Bucket {
    pub(crate) js: jetstream::Context,
    pub(crate) kv: kv::Store,
    pub(crate) stream: jetstream::stream::Stream<()>,
}

/// Connects to NATS at `url` and opens KV bucket `bucket`, creating it (keys kept `ttl`
/// after their last write) if it is missing. Shared by the stores that keep state there.
pub(crate) async fn open_bucket(
    url: &str,
    tls: &TlsFiles,
    bucket: &str,
    ttl: Duration,
) -> Result<Bucket, StoreError> {
    let client = troupe_transports::nats::connect_client(url, tls)
        .await
        .map_err(|e| StoreError::unavailable("connect", e.to_string()))?;
    let js = jetstream::new(client);
    let open_failed = |e: &dyn std::fmt::Display| {
        StoreError::unavailable(
            "connect",
            format!("cannot open or create KV bucket {bucket:?}: {e}"),
        )
    };
    let kv = match js.get_key_value(bucket).await {
        Ok(kv) => kv,
        Err(_) => {
            // The bucket's stream, as the KV API makes it. Made directly: async-nats's
            // `create_key_value` first reads the account's limits in a form servers
            // before 2.10 do not answer in. Replicas racing to create it all succeed.
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("Troupe state (hop records, open aggregations)".to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| open_failed(&e))?;
            js.get_key_value(bucket).await.map_err(|e| open_failed(&e))?
        }
    };
    // A handle only: no request is made.
    let stream = js
        .get_stream_no_info(&kv.stream_name)
        .await
        .map_err(|e| open_failed(&e))?;
    Ok(Bucket { js, kv, stream })
}

/// A KV key for `text` (which may hold characters keys do not allow): its UUIDv5, hex.
pub(crate) fn hashed_key(text: &str) -> String {
    uuid::Uuid::new_v5(&KEY_NAMESPACE, text.as_bytes())
        .simple()
        .to_string()
}

impl NatsKvStore {
    fn key(&self, hop: &str) -> String {
        hashed_key(&format!("{}{hop}", self.prefix))
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        // Single inserts and removals: a poisoned map is still consistent.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `state` if the key is still at `revision` (`None`: absent); the new revision,
    /// or `None` when someone else wrote first.
    async fn swap(&self, key: &str, state: String, revision: Option<u64>) -> Result<Option<u64>, StoreError> {
        let written = match revision {
            None => self
                .kv
                .create(key, state.into())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(down("claim")(&e)),
                }),
            Some(revision) => self
                .kv
                .update(key, state.into(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(down("claim")(&e)),
                }),
        };
        match written {
            Ok(revision) => Ok(Some(revision)),
            Err(None) => Ok(None),
            Err(Some(error)) => Err(error),
        }
    }
}

impl IdempotencyStore for NatsKvStore {
    async fn claim(&self, hop: &str, ttl: Duration) -> Result<Claim, StoreError> {
        // As on Redis: a duplicate inside this process waits while this process works on
        // the hop, so one token per hop per process.
        if self.tokens().contains_key(hop) {
            return Ok(Claim::InProgress);
        }
        let key = self.key(hop);
        let entry = self.kv.entry(key.as_str()).await.map_err(|e| down("claim")(&e))?;
        let expected = match &entry {
            None => None,
            Some(e) if e.operation != kv::Operation::Put => Some(e.revision),
            Some(e) => {
                let state = String::from_utf8_lossy(&e.value);
                if !lapsed(&state) {
                    return record::found(&state);
                }
                Some(e.revision)
            }
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        match self.swap(&key, claim_state(&token, ttl), expected).await? {
            Some(revision) => {
                self.tokens().insert(hop.to_owned(), (token, revision));
                Ok(Claim::Acquired)
            }
            // Another worker claimed it between the look and the write.
            None => Ok(Claim::InProgress),
        }
    }

    async fn complete(&self, hop: &str, outputs: &Arc<[Publication]>) -> Result<(), StoreError> {
        let (_, revision) = self.tokens().remove(hop).ok_or_else(|| {
            StoreError::failed("record", format!("this process holds no claim on hop {hop}"))
        })?;
        let state = record::completed(outputs)?;
        match self.swap(&self.key(hop), state, Some(revision)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(StoreError::failed(
                "record",
                format!("the claim on hop {hop} lapsed and was taken over; its outputs are not recorded"),
            )),
            Err(error) => Err(StoreError::unavailable("record", error.detail)),
        }
    }

    async fn mark_published(&self, hop: &str) -> Result<(), StoreError> {
        self.kv
            .put(self.key(hop), record::PUBLISHED.into())
            .await
            .map(drop)
            .map_err(|e| down("mark published")(&e))
    }

    async fn release(&self, hop: &str) -> Result<(), StoreError> {
        let Some((token, revision)) = self.tokens().remove(hop) else {
            return Ok(());
        };
        let key = self.key(hop);
        match self.kv.delete_expect_revision(key.as_str(), Some(revision)).await {
            Ok(()) => Ok(()),
            // Someone took the lapsed claim over: theirs now, not ours to release.
            Err(_) if self.still_owned(&key, &token).await == Some(false) => Ok(()),
            Err(e) => Err(down("release")(&e)),
        }
    }
}

impl NatsKvStore {
    /// Whether `token` still holds `key`'s claim (`None`: the server did not say).
    async fn still_owned(&self, key: &str, token: &str) -> Option<bool> {
        let entry = self.kv.entry(key).await.ok()?;
        Some(entry.is_some_and(|e| {
            e.operation == kv::Operation::Put && owns(&String::from_utf8_lossy(&e.value), token)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_carry_their_deadline() {
        let live = claim_state("tok", Duration::from_secs(60));
        assert!(owns(&live, "tok") && !owns(&live, "other"));
        assert!(!lapsed(&live));
        assert!(lapsed(&format!("{}:1", record::claimed("tok"))));
        assert!(!lapsed(record::PUBLISHED) && !lapsed("c:[]"));
    }
}
