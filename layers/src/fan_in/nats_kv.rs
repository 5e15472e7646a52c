//! A [`FanInStore`] on a NATS JetStream key-value bucket (feature `nats-kv`): the bucket the
//! actor host keeps its hop records in, so an aggregator needs no server besides NATS.
//!
//! KV keys allow only `[-/_=.a-zA-Z0-9]`, so an origin is named by `h`, the UUIDv5 of the
//! prefix and its id. Per origin:
//!
//! - `{p}{h}.m`: the origin's record (JSON: id, slice count, state, when it opened and a
//!   bitmap of the slices counted), changed only by compare-and-set on its revision: it is
//!   the one place that decides, so of two slices completing an origin side by side exactly
//!   one write sees it complete.
//! - `{p}{h}.s.{index}`: a slice, written before its bit is set (a crash in between leaves
//!   the bit unset, and the redelivery writes the same slice again and sets it).
//! - `{p}{h}.r`: the merge, once finished.
//! - `{p}open.{h}.{opened ms}`: marks an unfinished origin, so the timeout sweep lists the
//!   open origins from the subjects alone.
//! - `{p}done.{h}.{forget at ms}`: marks a finished origin until its retention ends.
//!
//! Finishing purges the slices and the open marker with one stream purge each (a purge by
//! subject leaves no tombstones behind); the sweep's [`FanInStore::overdue`] purges the
//! origins whose retention ended. A bucket has one age limit for all its keys: an origin left
//! untouched longer than it is dropped by the server, so keep it above the aggregation
//! timeout (the bucket is created with [`BUCKET_MAX_AGE`] when missing).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use troupe_core::tls::TlsFiles;

use super::store::{Expired, FanInStore, Gathered, StoreError, StoredSlice};
use crate::idempotency::nats_kv::{Bucket, hashed_key, open_bucket};

/// The age limit of a bucket this store creates: as long as the actor host keeps hop
/// records, so one bucket serves both.
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Slices read at once when an origin completes.
const READS_IN_FLIGHT: usize = 32;

/// Where an origin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Open,
    Expiring,
    Merged,
}

/// An origin's record, `{p}{h}.m`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    origin: String,
    count: u32,
    state: State,
    /// When the first slice came, ms since the epoch.
    opened: u64,
    /// One bit per slice counted, hex.
    have: String,
}

impl Record {
    fn open(origin: &str, count: u32) -> Self {
        let bytes = usize::try_from(count).unwrap_or(usize::MAX).div_ceil(8);
        Record {
            origin: origin.to_owned(),
            count,
            state: State::Open,
            opened: now_ms(),
            have: "00".repeat(bytes),
        }
    }

    fn bits(&self) -> Result<Vec<u8>, StoreError> {
        let malformed = || StoreError::failed("gather", "an origin's record holds a malformed bitmap");
        if !self.have.len().is_multiple_of(2) {
            return Err(malformed());
        }
        (0..self.have.len())
            .step_by(2)
            .map(|i| {
                self.have
                    .get(i..i + 2)
                    .and_then(|byte| u8::from_str_radix(byte, 16).ok())
                    .ok_or_else(malformed)
            })
            .collect()
    }

    /// Sets `index`'s bit; whether it was unset.
    fn count_in(&mut self, index: u32) -> Result<bool, StoreError> {
        let mut bits = self.bits()?;
        let (byte, mask) = position(index);
        let slot = if index < self.count {
            bits.get_mut(byte)
        } else {
            None
        };
        let Some(slot) = slot else {
            return Err(StoreError::failed(
                "gather",
                format!("slice {index} is past the origin's {} slices", self.count),
            ));
        };
        let new = *slot & mask == 0;
        *slot |= mask;
        self.have = bits.iter().map(|b| format!("{b:02x}")).collect();
        Ok(new)
    }

    /// The indices counted, ascending.
    fn counted(&self) -> Result<Vec<u32>, StoreError> {
        let bits = self.bits()?;
        Ok((0..self.count)
            .filter(|&i| {
                let (byte, mask) = position(i);
                bits.get(byte).is_some_and(|b| b & mask != 0)
            })
            .collect())
    }
}

fn position(index: u32) -> (usize, u8) {
    (usize::try_from(index / 8).unwrap_or(usize::MAX), 1 << (index % 8))
}

fn now_ms() -> u64 {
    millis_since_epoch(SystemTime::now())
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A failure of the KV client: the server not answering as asked (the decisions themselves
/// come back as values).
fn down(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::unavailable(operation, e.to_string())
}

/// Open aggregations in a NATS KV bucket. Cheap to share behind an `Arc`.
pub struct NatsKvFanInStore {
    kv: kv::Store,
    /// The bucket's stream: purges by subject, listings of subjects.
    stream: jetstream::stream::Stream<()>,
    /// Key prefix: letters, digits, `-`, `_`, ending in `.`.
    prefix: String,
}

impl NatsKvFanInStore {
    /// Connects to the NATS server(s) at `url` and opens `bucket` (created when missing,
    /// with [`BUCKET_MAX_AGE`]); keys start with `prefix` (`fanin.` if empty).
    pub async fn connect(
        url: &str,
        bucket: &str,
        prefix: &str,
        tls: &TlsFiles,
    ) -> Result<Arc<Self>, StoreError> {
        let valid = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(StoreError::failed(
                "connect",
                format!("NATS KV key prefix {prefix:?} may hold only letters, digits, -, _ and ."),
            ));
        }
        let prefix = match prefix.trim_end_matches('.') {
            "" => "fanin.".to_owned(),
            p => format!("{p}."),
        };
        let Bucket { kv, stream, .. } = open_bucket(url, tls, bucket, BUCKET_MAX_AGE).await?;
        Ok(Arc::new(Self { kv, stream, prefix }))
    }

    fn name(&self, origin: &str) -> String {
        hashed_key(&format!("{}{origin}", self.prefix))
    }

    fn record_key(&self, h: &str) -> String {
        format!("{}{h}.m", self.prefix)
    }

    fn slice_key(&self, h: &str, index: u32) -> String {
        format!("{}{h}.s.{index}", self.prefix)
    }

    fn merge_key(&self, h: &str) -> String {
        format!("{}{h}.r", self.prefix)
    }

    /// The subject a key is stored under, for stream-level purges and listings.
    fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.kv.prefix)
    }

    async fn record(&self, operation: &'static str, h: &str) -> Result<Option<(Record, u64)>, StoreError> {
        let entry = self
            .kv
            .entry(self.record_key(h))
            .await
            .map_err(|e| down(operation)(&e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&e.value).map_err(|e| {
                    StoreError::failed(operation, format!("an origin's record is malformed: {e}"))
                })?;
                Ok(Some((record, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `record` if its key is still at `revision` (`None`: absent); false when another
    /// writer came first.
    async fn swap(
        &self,
        operation: &'static str,
        h: &str,
        record: &Record,
        revision: Option<u64>,
    ) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record)
            .map_err(|e| StoreError::failed(operation, format!("cannot encode an origin's record: {e}")))?;
        let key = self.record_key(h);
        match revision {
            None => match self.kv.create(&key, value.into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(down(operation)(&e)),
            },
            Some(revision) => match self.kv.update(&key, value.into(), revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(down(operation)(&e)),
            },
        }
    }

    /// The slices `record` counted, by index.
    async fn slices(
        &self,
        operation: &'static str,
        h: &str,
        record: &Record,
    ) -> Result<Vec<StoredSlice>, StoreError> {
        futures_util::stream::iter(record.counted()?)
            .map(|index| async move {
                let body = self
                    .kv
                    .get(self.slice_key(h, index))
                    .await
                    .map_err(|e| down(operation)(&e))?
                    .ok_or_else(|| {
                        StoreError::failed(operation, format!("slice {index} is counted but not stored"))
                    })?;
                Ok(StoredSlice {
                    index,
                    body: body.to_vec(),
                })
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Removes every message on `subject` (a wildcard allowed), tombstones included.
    async fn purge(&self, operation: &'static str, subject: String) -> Result<(), StoreError> {
        self.stream
            .purge()
            .filter(subject)
            .await
            .map(drop)
            .map_err(|e| down(operation)(&e))
    }

    /// The subjects under `filter` (relative to the key prefix), as `(h, ms)` pairs: the
    /// markers `{p}{kind}.{h}.{ms}`.
    async fn markers(&self, operation: &'static str, kind: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let head = self.subject(&format!("{}{kind}.", self.prefix));
        let subjects: Vec<(String, usize)> = self
            .stream
            .info_with_subjects(format!("{head}>"))
            .await
            .map_err(|e| down(operation)(&e))?
            .try_collect()
            .await
            .map_err(|e| down(operation)(&e))?;
        Ok(subjects
            .into_iter()
            .filter_map(|(subject, _)| {
                let (h, ms) = subject.strip_prefix(&head)?.split_once('.')?;
                Some((h.to_owned(), ms.parse().ok()?))
            })
            .collect())
    }
}

impl FanInStore for NatsKvFanInStore {
    async fn gather(
        &self,
        origin: &str,
        slice_count: u32,
        slice: StoredSlice,
    ) -> Result<Gathered, StoreError> {
        let h = self.name(origin);
        let mut written = false;
        loop {
            let (mut record, revision) = match self.record("gather", &h).await? {
                Some((record, revision)) => (record, Some(revision)),
                None => (Record::open(origin, slice_count), None),
            };
            match record.state {
                State::Merged => {
                    let merge = self
                        .kv
                        .get(self.merge_key(&h))
                        .await
                        .map_err(|e| down("gather")(&e))?;
                    return Ok(Gathered::Merged(merge.map(|m| m.to_vec()).unwrap_or_default()));
                }
                State::Expiring => return Ok(Gathered::Expiring),
                State::Open if record.count != slice_count => {
                    return Ok(Gathered::CountMismatch { stored: record.count });
                }
                State::Open => {}
            }
            if revision.is_none() {
                // The open marker first: an origin whose record exists is always listed
                // for the timeout, even if this process stops right after creating it.
                self.kv
                    .put(
                        format!("{}open.{h}.{}", self.prefix, record.opened),
                        origin.to_owned().into(),
                    )
                    .await
                    .map_err(|e| down("gather")(&e))?;
            }
            let new = record.count_in(slice.index)?;
            if new && !written {
                self.kv
                    .put(self.slice_key(&h, slice.index), slice.body.clone().into())
                    .await
                    .map_err(|e| down("gather")(&e))?;
                written = true;
            }
            let counted = record.counted()?;
            let have = u32::try_from(counted.len()).unwrap_or(u32::MAX);
            if new && !self.swap("gather", &h, &record, revision).await? {
                // Another slice of this origin was counted in between: look again.
                continue;
            }
            if have < slice_count {
                return Ok(Gathered::Open {
                    have,
                    of: slice_count,
                });
            }
            return self.slices("gather", &h, &record).await.map(Gathered::Complete);
        }
    }

    async fn finish(&self, origin: &str, merged: Vec<u8>, retention: Duration) -> Result<(), StoreError> {
        let h = self.name(origin);
        let forget_at = now_ms().saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        // The done marker first: whatever step a crash stops at, the retention purge
        // removes every key of the origin.
        self.kv
            .put(
                format!("{}done.{h}.{forget_at}", self.prefix),
                origin.to_owned().into(),
            )
            .await
            .map_err(|e| down("finish")(&e))?;
        self.kv
            .put(self.merge_key(&h), merged.into())
            .await
            .map_err(|e| down("finish")(&e))?;
        while let Some((mut record, revision)) = self.record("finish", &h).await? {
            record.state = State::Merged;
            record.have.clear();
            if self.swap("finish", &h, &record, Some(revision)).await? {
                break;
            }
        }
        self.purge("finish", self.subject(&format!("{}{h}.s.>", self.prefix)))
            .await?;
        // Every open marker of the origin: replicas that raced to open it each wrote one.
        self.purge("finish", self.subject(&format!("{}open.{h}.*", self.prefix)))
            .await
    }

    async fn overdue(&self, opened_before: SystemTime, limit: usize) -> Result<Vec<String>, StoreError> {
        // Housekeeping rides on the sweep: origins whose retention ended are forgotten.
        let now = now_ms();
        for (h, forget_at) in self.markers("overdue", "done").await? {
            if forget_at <= now {
                self.purge("overdue", self.subject(&format!("{}{h}.>", self.prefix)))
                    .await?;
                self.purge(
                    "overdue",
                    self.subject(&format!("{}done.{h}.{forget_at}", self.prefix)),
                )
                .await?;
            }
        }
        let before = millis_since_epoch(opened_before);
        let mut open: Vec<(String, u64)> = self
            .markers("overdue", "open")
            .await?
            .into_iter()
            .filter(|&(_, opened)| opened < before)
            .collect();
        open.sort_by_key(|&(_, opened)| opened);
        let mut seen = std::collections::HashSet::new();
        open.retain(|(h, _)| seen.insert(h.clone()));
        let mut origins = Vec::new();
        for (h, opened) in open.into_iter().take(limit) {
            let key = format!("{}open.{h}.{opened}", self.prefix);
            if let Some(origin) = self.kv.get(key).await.map_err(|e| down("overdue")(&e))? {
                origins.push(String::from_utf8_lossy(&origin).into_owned());
            }
        }
        Ok(origins)
    }

    async fn expire(&self, origin: &str) -> Result<Option<Expired>, StoreError> {
        let h = self.name(origin);
        loop {
            let Some((mut record, revision)) = self.record("expire", &h).await? else {
                return Ok(None);
            };
            match record.state {
                State::Merged => return Ok(None),
                State::Expiring => {}
                State::Open => {
                    record.state = State::Expiring;
                    if !self.swap("expire", &h, &record, Some(revision)).await? {
                        continue;
                    }
                }
            }
            let slices = self.slices("expire", &h, &record).await?;
            return Ok(Some(Expired {
                slice_count: record.count,
                slices,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bitmap_counts_each_index_once() {
        let mut record = Record::open("o", 12);
        assert_eq!(record.have, "0000");
        assert!(record.count_in(10).unwrap());
        assert!(record.count_in(0).unwrap());
        assert!(!record.count_in(10).unwrap(), "a repeated index is not new");
        assert_eq!(record.counted().unwrap(), vec![0, 10]);
        assert!(record.count_in(12).is_err(), "past the slice count");
        record.have = "zz".to_owned();
        assert!(
            record.counted().is_err(),
            "a malformed bitmap is an error, not a guess"
        );
    }
}
