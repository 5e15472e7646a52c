//! A [`FanInStore`] on Redis (feature `redis`), shared by every replica of an aggregator.
//!
//! Per origin, one hash `{prefix}o:{origin}`: `_state` (`open`, `expiring`, `merged`),
//! `_count`, and one field `s:{index}` per slice; once merged, only `_merged` (the merge)
//! is left, expiring after the retention. A sorted set `{prefix}open` ranks the unfinished
//! origins by when they opened, for the timeout. Every operation is one script, so it is
//! atomic per origin. Both keys of a script must live on one server (no Redis Cluster).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use troupe_core::tls::TlsFiles;

use super::store::{Expired, FanInStore, Gathered, StoreError, StoredSlice};
use crate::idempotency::redis::{connect, failed};

/// Adds a slice. ARGV: index, count, body, now (ms), origin. Answers a tag and its data.
const GATHER: &str = r"
local st = redis.call('HGET', KEYS[1], '_state')
if not st then
  redis.call('HSET', KEYS[1], '_state', 'open', '_count', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
  st = 'open'
end
if st == 'merged' then return {'merged', redis.call('HGET', KEYS[1], '_merged')} end
if st == 'expiring' then return {'expiring'} end
local count = redis.call('HGET', KEYS[1], '_count')
if count ~= ARGV[2] then return {'mismatch', count} end
redis.call('HSETNX', KEYS[1], 's:' .. ARGV[1], ARGV[3])
local have = redis.call('HLEN', KEYS[1]) - 2
if have < tonumber(count) then return {'open', tostring(have)} end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'complete')
return all
";

/// Replaces the slices by the merge. ARGV: merge, retention (ms), origin.
const FINISH: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_state', 'merged', '_merged', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
";

/// Closes an unfinished origin to new slices; answers its fields, or nothing. ARGV: origin.
const EXPIRE: &str = r"
local st = redis.call('HGET', KEYS[1], '_state')
if st ~= 'open' and st ~= 'expiring' then
  if not st then redis.call('ZREM', KEYS[2], ARGV[1]) end
  return {}
end
redis.call('HSET', KEYS[1], '_state', 'expiring')
return redis.call('HGETALL', KEYS[1])
";

/// Open aggregations on Redis. Cheap to share behind an `Arc`.
pub struct RedisFanInStore {
    connection: ConnectionManager,
    prefix: String,
    gather: redis::Script,
    finish: redis::Script,
    expire: redis::Script,
}

impl RedisFanInStore {
    /// Connects to `url` (`rediss://` with `tls`); keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str, tls: &TlsFiles) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self {
            connection: connect(url, tls).await?,
            prefix: prefix.to_owned(),
            gather: redis::Script::new(GATHER),
            finish: redis::Script::new(FINISH),
            expire: redis::Script::new(EXPIRE),
        }))
    }

    fn origin_key(&self, origin: &str) -> String {
        format!("{}o:{origin}", self.prefix)
    }

    fn open_key(&self) -> String {
        format!("{}open", self.prefix)
    }
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).unwrap_or_default()
}

fn number(operation: &'static str, value: Option<&Vec<u8>>) -> Result<u32, StoreError> {
    value
        .and_then(|v| text(v).parse().ok())
        .ok_or_else(|| StoreError::failed(operation, "the store answered a malformed count"))
}

/// The slices and count among a hash's fields and values, slices by index.
fn slices(fields: &[Vec<u8>]) -> (Option<u32>, Vec<StoredSlice>) {
    let mut count = None;
    let mut slices = Vec::new();
    for pair in fields.chunks_exact(2) {
        let (field, value) = (text(&pair[0]), &pair[1]);
        if field == "_count" {
            count = text(value).parse().ok();
        } else if let Some(index) = field.strip_prefix("s:").and_then(|i| i.parse().ok()) {
            slices.push(StoredSlice {
                index,
                body: value.clone(),
            });
        }
    }
    slices.sort_by_key(|s| s.index);
    (count, slices)
}

impl FanInStore for RedisFanInStore {
    async fn gather(
        &self,
        origin: &str,
        slice_count: u32,
        slice: StoredSlice,
    ) -> Result<Gathered, StoreError> {
        let answer: Vec<Vec<u8>> = self
            .gather
            .key(self.origin_key(origin))
            .key(self.open_key())
            .arg(slice.index)
            .arg(slice_count)
            .arg(slice.body)
            .arg(millis_since_epoch(SystemTime::now()))
            .arg(origin)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("gather"))?;
        let (tag, rest) = answer
            .split_first()
            .ok_or_else(|| StoreError::failed("gather", "the store answered nothing"))?;
        match text(tag) {
            "open" => Ok(Gathered::Open {
                have: number("gather", rest.first())?,
                of: slice_count,
            }),
            "complete" => Ok(Gathered::Complete(slices(rest).1)),
            "merged" => Ok(Gathered::Merged(rest.first().cloned().unwrap_or_default())),
            "expiring" => Ok(Gathered::Expiring),
            "mismatch" => Ok(Gathered::CountMismatch {
                stored: number("gather", rest.first())?,
            }),
            other => Err(StoreError::failed(
                "gather",
                format!("the store answered {other:?}"),
            )),
        }
    }

    async fn finish(&self, origin: &str, merged: Vec<u8>, retention: Duration) -> Result<(), StoreError> {
        self.finish
            .key(self.origin_key(origin))
            .key(self.open_key())
            .arg(merged)
            .arg(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(origin)
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(drop)
            .map_err(failed("finish"))
    }

    async fn overdue(&self, opened_before: SystemTime, limit: usize) -> Result<Vec<String>, StoreError> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.open_key())
            .arg("-inf")
            .arg(format!("({}", millis_since_epoch(opened_before)))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(failed("overdue"))
    }

    async fn expire(&self, origin: &str) -> Result<Option<Expired>, StoreError> {
        let fields: Vec<Vec<u8>> = self
            .expire
            .key(self.origin_key(origin))
            .key(self.open_key())
            .arg(origin)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("expire"))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let (count, slices) = slices(&fields);
        let slice_count =
            count.ok_or_else(|| StoreError::failed("expire", "the origin has no slice count"))?;
        Ok(Some(Expired { slice_count, slices }))
    }
}
