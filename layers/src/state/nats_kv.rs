//! A [`StateStore`] on a NATS JetStream key-value bucket (feature `nats-kv`): the bucket the
//! actor host keeps its hop records in.
//!
//! A key is stored as `{prefix}{actor}.{hex of the key}`: KV keys allow only
//! `[-/_=.a-zA-Z0-9]`, and hex keeps a key's prefix a prefix of its name, so a listing by
//! prefix reads one actor's names and filters them. A value's version is its revision (the
//! stream sequence): it only grows, across keys too. A compare-and-set is the bucket's own
//! (`create`, `update` on a revision, a delete expecting a revision). A delete leaves a
//! tombstone, which is then purged by subject up to its own sequence: a value written after
//! it survives, and listings and key counts do not wade through tombstones. The key limit is
//! checked by listing the actor's keys when a key is added (a cost that grows with the
//! keys), so two replicas adding keys at the same moment can each pass it by one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use troupe_core::tls::TlsFiles;

use super::store::{Expect, StateError, StateStore, Swapped, Versioned};
use super::{StateLimits, check_write};
use crate::idempotency::StoreError;
use crate::idempotency::nats_kv::{Bucket, open_bucket};

/// The age limit of a bucket this store creates when it is missing: none, state is kept
/// until deleted. (A bucket the hop records made first keeps its own.)
const NO_AGE_LIMIT: Duration = Duration::ZERO;

fn down(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StateError {
    move |e| StoreError::unavailable(operation, e.to_string()).into()
}

/// One actor's state in a NATS KV bucket. Cheap to share behind an `Arc`.
pub struct NatsKvStateStore {
    js: jetstream::Context,
    kv: kv::Store,
    /// The bucket's stream: consumers for listings, purges by subject.
    stream: jetstream::stream::Stream<()>,
    /// `{prefix}{actor}.`, before every key's hex.
    head: String,
    limits: StateLimits,
}

impl NatsKvStateStore {
    /// Connects to the NATS server(s) at `url`, opens `bucket` (created when missing) and
    /// keeps `actor`'s state there under keys starting with `prefix` (`state.` if empty).
    pub async fn connect(
        url: &str,
        bucket: &str,
        prefix: &str,
        actor: &str,
        limits: StateLimits,
        tls: &TlsFiles,
    ) -> Result<Arc<Self>, StateError> {
        let safe = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        };
        let prefix = prefix.trim_end_matches('.');
        let prefix = if prefix.is_empty() { "state" } else { prefix };
        if !safe(&prefix.replace('.', "")) || actor.is_empty() || !safe(actor) {
            return Err(StoreError::failed(
                "connect",
                format!(
                    "NATS KV key prefix {prefix:?} and actor {actor:?} may hold only letters, digits, - and _"
                ),
            )
            .into());
        }
        let Bucket { js, kv, stream } = open_bucket(url, tls, bucket, NO_AGE_LIMIT).await?;
        Ok(Arc::new(Self {
            js,
            kv,
            stream,
            head: format!("{prefix}.{actor}."),
            limits,
        }))
    }

    fn name(&self, key: &str) -> String {
        let mut name = self.head.clone();
        for byte in key.as_bytes() {
            name.push_str(&format!("{byte:02x}"));
        }
        name
    }

    fn key_of(&self, subject: &str) -> Option<String> {
        let hex = subject.strip_prefix(&self.kv.prefix)?.strip_prefix(&self.head)?;
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect();
        String::from_utf8(bytes?).ok()
    }

    /// Every live key of the actor, unsorted.
    async fn keys(&self, operation: &'static str) -> Result<Vec<String>, StateError> {
        let consumer = self
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("{}{}*", self.kv.prefix, self.head),
                headers_only: true,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| down(operation)(&e))?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer.messages().await.map_err(|e| down(operation)(&e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| down(operation)(&e))?;
            let info = message.info().map_err(|e| down(operation)(&e))?;
            let pending = info.pending;
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if !deleted && let Some(key) = self.key_of(&message.subject) {
                keys.push(key);
            }
            if pending == 0 {
                break;
            }
        }
        Ok(keys)
    }

    /// Refuses a new key past the limit.
    async fn check_room(&self, key: &str) -> Result<(), StateError> {
        if self.keys("put").await?.len() >= self.limits.max_keys {
            return Err(self.limits.too_many(key));
        }
        Ok(())
    }

    /// Deletes `name` (only at `revision`, if given): a tombstone, then a purge of the
    /// subject up to it. Whether the tombstone was written (false: the revision differed).
    async fn remove(
        &self,
        operation: &'static str,
        name: &str,
        revision: Option<u64>,
    ) -> Result<bool, StateError> {
        let subject = format!("{}{name}", self.kv.prefix);
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        if let Some(revision) = revision {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                revision.to_string().as_str(),
            );
        }
        let ack = match self
            .js
            .publish_with_headers(subject.clone(), headers, Default::default())
            .await
        {
            Ok(pending) => pending.await,
            Err(e) => return Err(down(operation)(&e)),
        };
        let tombstone = match ack {
            Ok(ack) => ack.sequence,
            // The revision check failed: someone wrote in between.
            Err(e)
                if revision.is_some()
                    && e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                return Ok(false);
            }
            Err(e) => return Err(down(operation)(&e)),
        };
        // Up to and with the tombstone: a value written after it stays.
        self.stream
            .purge()
            .filter(subject)
            .sequence(tombstone + 1)
            .await
            .map_err(|e| down(operation)(&e))?;
        Ok(true)
    }
}

impl StateStore for NatsKvStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let entry = self.kv.entry(self.name(key)).await.map_err(|e| down("get")(&e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Versioned {
                value: e.value.to_vec(),
                version: e.revision,
            }))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StateError> {
        check_write(&self.limits, key, Some(&value))?;
        let name = self.name(key);
        if self.get(key).await?.is_none() {
            self.check_room(key).await?;
        }
        self.kv.put(name, value.into()).await.map_err(|e| down("put")(&e))
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        if self.get(key).await?.is_none() {
            return Ok(false);
        }
        self.remove("delete", &self.name(key), None).await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let mut keys: Vec<String> = self
            .keys("list")
            .await?
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys.truncate(limit);
        Ok(keys)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<Swapped, StateError> {
        check_write(&self.limits, key, value.as_deref())?;
        let name = self.name(key);
        let conflict = async || self.get(key).await.map(Swapped::Conflict);
        match (expect, value) {
            (Expect::Absent, None) => match self.get(key).await? {
                None => Ok(Swapped::Done(None)),
                found => Ok(Swapped::Conflict(found)),
            },
            (Expect::Version(revision), None) => {
                if self.remove("compare-and-set", &name, Some(revision)).await? {
                    Ok(Swapped::Done(None))
                } else {
                    conflict().await
                }
            }
            (Expect::Absent, Some(value)) => {
                self.check_room(key).await?;
                match self.kv.create(&name, value.into()).await {
                    Ok(version) => Ok(Swapped::Done(Some(version))),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => conflict().await,
                    Err(e) => Err(down("compare-and-set")(&e)),
                }
            }
            (Expect::Version(revision), Some(value)) => {
                match self.kv.update(&name, value.into(), revision).await {
                    Ok(version) => Ok(Swapped::Done(Some(version))),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => conflict().await,
                    Err(e) => Err(down("compare-and-set")(&e)),
                }
            }
        }
    }
}
