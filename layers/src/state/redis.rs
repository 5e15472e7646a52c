//! A [`StateStore`] on Redis (feature `redis`), shared by every replica of an actor.
//!
//! Per actor, two hashes: `{prefix}{actor}:v` (key -> value) and `{prefix}{actor}:n` (key ->
//! version), and a counter `{prefix}{actor}:seq` that hands out versions, so a key deleted
//! and written again never reuses one. Every write is one script: the key limit is checked
//! atomically with the write. Listing scans the versions hash (small values), not the
//! values. The three keys of a script must live on one server (no Redis Cluster).

use std::sync::Arc;

use redis::aio::ConnectionManager;
use troupe_core::tls::TlsFiles;

use super::store::{Expect, StateError, StateStore, Swapped, Versioned};
use super::{StateLimits, check_write};
use crate::idempotency::StoreError;
use crate::idempotency::redis::{connect, failed};

/// ARGV: key. Answers nothing, or the value and its version.
const GET: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return nil end
return {v, redis.call('HGET', KEYS[2], ARGV[1])}
";

/// ARGV: key, value, max keys. Answers the new version, or -1 when the key limit is reached.
const PUT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local n = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], n)
return n
";

/// ARGV: key. Answers whether it was there.
const DELETE: &str = r"
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
";

/// ARGV: key, expected version ('0': absent), 'set' or 'del', value, max keys.
const CAS: &str = r"
local now = redis.call('HGET', KEYS[2], ARGV[1])
if (now or '0') ~= ARGV[2] then
  if not now then return {'conflict'} end
  return {'conflict', redis.call('HGET', KEYS[1], ARGV[1]), now}
end
if ARGV[3] == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return {'done'}
end
if not now and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return {'full'} end
local n = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], n)
return {'done', tostring(n)}
";

/// One actor's state on Redis. Cheap to share behind an `Arc`.
pub struct RedisStateStore {
    connection: ConnectionManager,
    limits: StateLimits,
    /// The values hash, the versions hash and the version counter.
    keys: [String; 3],
    get: redis::Script,
    put: redis::Script,
    delete: redis::Script,
    cas: redis::Script,
}

impl RedisStateStore {
    /// Connects to `url` (`rediss://` with `tls`); the state of `actor` lives under keys
    /// starting with `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        actor: &str,
        limits: StateLimits,
        tls: &TlsFiles,
    ) -> Result<Arc<Self>, StateError> {
        Ok(Arc::new(Self {
            connection: connect(url, tls).await?,
            limits,
            keys: [
                format!("{prefix}{actor}:v"),
                format!("{prefix}{actor}:n"),
                format!("{prefix}{actor}:seq"),
            ],
            get: redis::Script::new(GET),
            put: redis::Script::new(PUT),
            delete: redis::Script::new(DELETE),
            cas: redis::Script::new(CAS),
        }))
    }

    fn invocation<'a>(&'a self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation
    }
}

fn version(operation: &'static str, text: &[u8]) -> Result<u64, StateError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| StoreError::failed(operation, "the store answered a malformed version").into())
}

/// A key as a glob that matches it literally, then anything.
fn glob_prefix(prefix: &str) -> String {
    let mut glob = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            glob.push('\\');
        }
        glob.push(c);
    }
    glob.push('*');
    glob
}

impl StateStore for RedisStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let answer: Option<(Vec<u8>, Vec<u8>)> = self
            .invocation(&self.get)
            .arg(key)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("get"))?;
        answer
            .map(|(value, n)| {
                Ok(Versioned {
                    value,
                    version: version("get", &n)?,
                })
            })
            .transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StateError> {
        check_write(&self.limits, key, Some(&value))?;
        let n: i64 = self
            .invocation(&self.put)
            .arg(key)
            .arg(value)
            .arg(self.limits.max_keys)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("put"))?;
        u64::try_from(n).map_err(|_| self.limits.too_many(key))
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let gone: i64 = self
            .invocation(&self.delete)
            .arg(key)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("delete"))?;
        Ok(gone > 0)
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let glob = glob_prefix(prefix);
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&self.keys[1])
                .arg(cursor)
                .arg("MATCH")
                .arg(&glob)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.connection.clone())
                .await
                .map_err(failed("list"))?;
            keys.extend(fields.into_iter().map(|(key, _)| key));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
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
        let expected = expect.version();
        let (op, value) = match value {
            Some(value) => ("set", value),
            None => ("del", Vec::new()),
        };
        let answer: Vec<Vec<u8>> = self
            .invocation(&self.cas)
            .arg(key)
            .arg(expected)
            .arg(op)
            .arg(value)
            .arg(self.limits.max_keys)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed("compare-and-set"))?;
        match answer.as_slice() {
            [tag] if tag == b"done" => Ok(Swapped::Done(None)),
            [tag, n] if tag == b"done" => Ok(Swapped::Done(Some(version("compare-and-set", n)?))),
            [tag] if tag == b"conflict" => Ok(Swapped::Conflict(None)),
            [tag, value, n] if tag == b"conflict" => Ok(Swapped::Conflict(Some(Versioned {
                value: value.clone(),
                version: version("compare-and-set", n)?,
            }))),
            [tag] if tag == b"full" => Err(self.limits.too_many(key)),
            _ => Err(StoreError::failed("compare-and-set", "the store answered something unexpected").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_literally() {
        assert_eq!(glob_prefix("a/*[x]?\\"), "a/\\*\\[x\\]\\?\\\\*");
        assert_eq!(glob_prefix(""), "*");
    }
}
