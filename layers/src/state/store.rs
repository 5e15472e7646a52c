//! The contract of a handler state store.

use std::future::Future;

pub use super::error::StateError;

/// A value and the version that wrote it. Versions only grow within a store (a key deleted
/// and written again gets a new one), so a compare-and-set never mistakes a new value for
/// an old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The version that wrote it (never 0).
    pub version: u64,
}

/// What a compare-and-set expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No value under the key.
    Absent,
    /// The value written by this version.
    Version(u64),
}

impl Expect {
    /// The version expected, 0 for none: versions start at 1, so stores that keep a number
    /// per key compare against this one.
    pub fn version(self) -> u64 {
        match self {
            Expect::Absent => 0,
            Expect::Version(v) => v,
        }
    }
}

/// How a compare-and-set ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swapped {
    /// The key held what was expected and now holds the new value (`Some(version)`), or
    /// nothing, for a delete (`None`).
    Done(Option<u64>),
    /// The key held something else: what it holds now, to retry against.
    Conflict(Option<Versioned>),
}

/// Keyed state shared by every replica of one actor (a store is opened for one actor's
/// scope). Keys are checked by [`super::check_key`] and values by the store's
/// [`super::StateLimits`] before anything is written.
pub trait StateStore: Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Versioned>, StateError>> + Send;

    /// Writes `value` under `key`, whatever was there; its new version.
    fn put(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<u64, StateError>> + Send;

    /// Deletes `key`; whether it held a value.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StateError>> + Send;

    /// The keys starting with `prefix`, sorted, at most `limit`.
    fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StateError>> + Send;

    /// Writes `value` (`None`: deletes) under `key` only if it holds what `expect` says.
    fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<Swapped, StateError>> + Send;
}

/// Checks a [`StateStore`] against the contract above; every backend's tests run it, on a
/// store opened for a scope of its own with a limit of [`conformance::MAX_KEYS`] keys and
/// [`conformance::MAX_VALUE`] bytes per value. Panics on the first broken promise.
#[allow(clippy::unwrap_used)] // checks: a failed unwrap is a failed check
pub mod conformance {
    use std::sync::Arc;

    use super::{Expect, StateError, StateStore, Swapped, Versioned};

    /// The key limit the store under test is opened with.
    pub const MAX_KEYS: usize = 8;
    /// The value limit the store under test is opened with.
    pub const MAX_VALUE: usize = 64;

    /// Runs every check on `store` (empty, for one scope).
    pub async fn run<St: StateStore>(store: &St) {
        reads_what_was_written(store).await;
        lists_by_prefix(store).await;
        compare_and_set_sees_every_write(store).await;
        refuses_what_exceeds_the_limits(store).await;
    }

    async fn reads_what_was_written<St: StateStore>(store: &St) {
        assert_eq!(store.get("a/missing").await.unwrap(), None);
        let v1 = store.put("a/x", b"one".to_vec()).await.unwrap();
        assert_eq!(
            store.get("a/x").await.unwrap(),
            Some(Versioned {
                value: b"one".to_vec(),
                version: v1
            })
        );
        let v2 = store.put("a/x", b"two".to_vec()).await.unwrap();
        assert!(v2 > v1, "versions grow: {v1} then {v2}");
        assert!(store.delete("a/x").await.unwrap());
        assert!(!store.delete("a/x").await.unwrap(), "deleted already");
        assert_eq!(store.get("a/x").await.unwrap(), None);
        let v3 = store.put("a/x", b"one".to_vec()).await.unwrap();
        assert!(
            v3 > v2,
            "written again after a delete, a new version: {v2} then {v3}"
        );
        // Any bytes, including none.
        store.put("a/empty", Vec::new()).await.unwrap();
        assert_eq!(store.get("a/empty").await.unwrap().unwrap().value, b"");
        store.delete("a/x").await.unwrap();
        store.delete("a/empty").await.unwrap();
    }

    async fn lists_by_prefix<St: StateStore>(store: &St) {
        // Characters a glob or a LIKE pattern would take for wildcards.
        for key in ["l/b", "l/a", "l/*", "l/%_", "m/a"] {
            store.put(key, b"v".to_vec()).await.unwrap();
        }
        assert_eq!(
            store.list("l/", 100).await.unwrap(),
            ["l/%_", "l/*", "l/a", "l/b"],
            "sorted, only the prefix's"
        );
        assert_eq!(
            store.list("l/*", 100).await.unwrap(),
            ["l/*"],
            "a prefix is literal"
        );
        assert_eq!(
            store.list("l/%", 100).await.unwrap(),
            ["l/%_"],
            "a prefix is literal"
        );
        assert_eq!(store.list("l/", 2).await.unwrap().len(), 2);
        assert_eq!(store.list("", 100).await.unwrap().len(), 5);
        for key in ["l/b", "l/a", "l/*", "l/%_", "m/a"] {
            store.delete(key).await.unwrap();
        }
    }

    async fn compare_and_set_sees_every_write<St: StateStore>(store: &St) {
        let created = store
            .compare_and_set("c", Expect::Absent, Some(b"1".to_vec()))
            .await
            .unwrap();
        let Swapped::Done(Some(v1)) = created else {
            panic!("an absent key is created: {created:?}");
        };
        let conflict = store
            .compare_and_set("c", Expect::Absent, Some(b"x".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            conflict,
            Swapped::Conflict(Some(Versioned {
                value: b"1".to_vec(),
                version: v1
            }))
        );
        let Swapped::Done(Some(v2)) = store
            .compare_and_set("c", Expect::Version(v1), Some(b"2".to_vec()))
            .await
            .unwrap()
        else {
            panic!("the expected version is replaced");
        };
        let stale = store
            .compare_and_set("c", Expect::Version(v1), Some(b"3".to_vec()))
            .await
            .unwrap();
        assert!(
            matches!(stale, Swapped::Conflict(Some(ref now)) if now.version == v2),
            "{stale:?}"
        );
        assert_eq!(
            store
                .compare_and_set("c", Expect::Version(v2), None)
                .await
                .unwrap(),
            Swapped::Done(None),
            "a delete by compare-and-set"
        );
        assert_eq!(
            store
                .compare_and_set("c", Expect::Version(v2), Some(b"4".to_vec()))
                .await
                .unwrap(),
            Swapped::Conflict(None),
            "gone: the old version does not match"
        );
    }

    async fn refuses_what_exceeds_the_limits<St: StateStore>(store: &St) {
        let big = vec![b'x'; MAX_VALUE + 1];
        let refused = store.put("big", big.clone()).await.unwrap_err();
        assert!(matches!(refused, StateError::ValueTooLarge { .. }), "{refused}");
        let refused = store
            .compare_and_set("big", Expect::Absent, Some(big))
            .await
            .unwrap_err();
        assert!(matches!(refused, StateError::ValueTooLarge { .. }), "{refused}");
        assert_eq!(store.get("big").await.unwrap(), None, "nothing of it was written");
        store.put("big", vec![b'x'; MAX_VALUE]).await.unwrap();
        for n in 1..MAX_KEYS {
            store.put(&format!("k{n}"), b"v".to_vec()).await.unwrap();
        }
        let refused = store.put("one-too-many", b"v".to_vec()).await.unwrap_err();
        assert!(matches!(refused, StateError::TooManyKeys { .. }), "{refused}");
        let refused = store
            .compare_and_set("one-too-many", Expect::Absent, Some(b"v".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(refused, StateError::TooManyKeys { .. }), "{refused}");
        store.put("k1", b"replaced".to_vec()).await.unwrap();
        store.delete("k1").await.unwrap();
        store.put("one-too-many", b"v".to_vec()).await.unwrap();
        let refused = store.put("", b"v".to_vec()).await.unwrap_err();
        assert!(matches!(refused, StateError::InvalidKey { .. }), "{refused}");
        for key in store.list("", 100).await.unwrap() {
            store.delete(&key).await.unwrap();
        }
    }

    /// Two replicas (`a`, `b`: two handles on one store and scope) each add `rounds` to a
    /// counter by compare-and-set side by side: the count is exact.
    pub async fn counts_exactly<St: StateStore>(a: Arc<St>, b: Arc<St>, rounds: u64) {
        async fn add<St: StateStore>(store: Arc<St>, rounds: u64) {
            for _ in 0..rounds {
                let mut seen = store.get("counter").await.unwrap();
                loop {
                    let (expect, n) = match &seen {
                        None => (Expect::Absent, 0),
                        Some(v) => (
                            Expect::Version(v.version),
                            String::from_utf8_lossy(&v.value).parse::<u64>().unwrap(),
                        ),
                    };
                    let next = (n + 1).to_string().into_bytes();
                    match store
                        .compare_and_set("counter", expect, Some(next))
                        .await
                        .unwrap()
                    {
                        Swapped::Done(_) => break,
                        Swapped::Conflict(now) => seen = now,
                    }
                }
            }
        }
        let (x, y) = tokio::join!(tokio::spawn(add(a.clone(), rounds)), tokio::spawn(add(b, rounds)));
        x.unwrap();
        y.unwrap();
        let total = a.get("counter").await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&total.value), (2 * rounds).to_string());
        a.delete("counter").await.unwrap();
    }
}
