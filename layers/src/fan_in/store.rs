//! The store contract the aggregator relies on.

use std::future::Future;
use std::time::{Duration, SystemTime};

pub use crate::idempotency::StoreError;

/// One slice as received: its index and the envelope's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSlice {
    /// The slice's index in its fan-in.
    pub index: u32,
    /// The slice envelope, encoded.
    pub body: Vec<u8>,
}

/// What the store knows of an origin once a slice was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gathered {
    /// Still waiting: `have` of `of` slices are in.
    Open {
        /// Slices in, this one included.
        have: u32,
        /// Slices expected.
        of: u32,
    },
    /// Every slice is in (this one may be a redelivery): merge them. By index.
    Complete(Vec<StoredSlice>),
    /// The origin was merged already: its merge (encoded), to publish again.
    Merged(Vec<u8>),
    /// The origin timed out; its merge goes out without this late slice.
    Expiring,
    /// The origin was opened with another slice count: this slice belongs to no fan-out
    /// the store knows.
    CountMismatch {
        /// The count the origin was opened with.
        stored: u32,
    },
}

/// An origin the timeout took over: what it had gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// Slices expected.
    pub slice_count: u32,
    /// Slices in, by index.
    pub slices: Vec<StoredSlice>,
}

/// Where open aggregations are kept. Every operation is atomic per origin, so replicas of
/// one aggregator may share a store: of two slices that complete an origin side by side,
/// exactly one add sees it complete.
pub trait FanInStore: Send + Sync + 'static {
    /// Adds slice `slice` of `origin`'s `slice_count` (once: a repeated index changes
    /// nothing), and tells what the origin looks like now.
    fn gather(
        &self,
        origin: &str,
        slice_count: u32,
        slice: StoredSlice,
    ) -> impl Future<Output = Result<Gathered, StoreError>> + Send;

    /// Records `origin`'s merge and deletes its slices. The merge is kept for `retention`
    /// to answer slices redelivered after it, then forgotten.
    fn finish(
        &self,
        origin: &str,
        merged: Vec<u8>,
        retention: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Origins opened before `opened_before` and not finished yet, at most `limit`.
    fn overdue(
        &self,
        opened_before: SystemTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Closes `origin` to further slices (they are dropped) and returns what it gathered,
    /// for a timeout merge; `None` if it is finished or unknown. Asked again (a sweep that
    /// stopped before its merge was published), it answers the same.
    fn expire(&self, origin: &str) -> impl Future<Output = Result<Option<Expired>, StoreError>> + Send;
}

/// Checks a [`FanInStore`] against the contract above; every backend's tests run it.
/// Panics on the first broken promise. `scope` keeps runs apart in a shared store.
#[allow(clippy::unwrap_used)] // checks: a failed unwrap is a failed check
pub mod conformance {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::{FanInStore, Gathered, StoredSlice};

    fn slice(index: u32) -> StoredSlice {
        StoredSlice {
            index,
            body: format!("slice {index}").into_bytes(),
        }
    }

    fn indices(gathered: &Gathered) -> Vec<u32> {
        match gathered {
            Gathered::Complete(slices) => slices.iter().map(|s| s.index).collect(),
            other => panic!("expected a complete origin, got {other:?}"),
        }
    }

    /// Runs every check on `store`, with origins named after `scope`.
    pub async fn run<St: FanInStore>(store: &St, scope: &str) {
        let scope = format!("{scope}-{}", uuid::Uuid::new_v4().simple());
        completes_once_every_index_is_in(store, &scope).await;
        merged_origins_answer_their_merge(store, &scope).await;
        timeouts_take_over_open_origins(store, &scope).await;
    }

    async fn completes_once_every_index_is_in<St: FanInStore>(store: &St, scope: &str) {
        let origin = format!("{scope}-order");
        // Out of order, one repeated, indices past 9 to catch a sort by text.
        for (n, index) in [10u32, 2, 10, 0].into_iter().enumerate() {
            let have = [1, 2, 2, 3][n];
            let got = store.gather(&origin, 12, slice(index)).await.unwrap();
            assert_eq!(got, Gathered::Open { have, of: 12 }, "after slice {index}");
        }
        let mismatch = store.gather(&origin, 5, slice(1)).await.unwrap();
        assert_eq!(mismatch, Gathered::CountMismatch { stored: 12 });
        for index in [1, 3, 4, 5, 6, 7, 8, 11] {
            store.gather(&origin, 12, slice(index)).await.unwrap();
        }
        let complete = store.gather(&origin, 12, slice(9)).await.unwrap();
        assert_eq!(
            indices(&complete),
            (0..12).collect::<Vec<_>>(),
            "every index once, by number"
        );
        // A redelivered slice of a complete origin finds it complete again.
        let again = store.gather(&origin, 12, slice(4)).await.unwrap();
        assert_eq!(again, complete);
    }

    async fn merged_origins_answer_their_merge<St: FanInStore>(store: &St, scope: &str) {
        let origin = format!("{scope}-merged");
        store.gather(&origin, 1, slice(0)).await.unwrap();
        store
            .finish(&origin, b"merge".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        let late = store.gather(&origin, 1, slice(0)).await.unwrap();
        assert_eq!(late, Gathered::Merged(b"merge".to_vec()));
        assert_eq!(
            store.expire(&origin).await.unwrap(),
            None,
            "a merged origin does not expire"
        );
    }

    async fn timeouts_take_over_open_origins<St: FanInStore>(store: &St, scope: &str) {
        let origin = format!("{scope}-late");
        store.gather(&origin, 3, slice(1)).await.unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        let overdue = store.overdue(later, 10_000).await.unwrap();
        assert!(overdue.contains(&origin), "{overdue:?}");
        let earlier = SystemTime::now() - Duration::from_secs(3600);
        assert!(!store.overdue(earlier, 10_000).await.unwrap().contains(&origin));
        let expired = store
            .expire(&origin)
            .await
            .unwrap()
            .expect("an open origin expires");
        assert_eq!(expired.slice_count, 3);
        assert_eq!(expired.slices, vec![slice(1)]);
        let again = store.expire(&origin).await.unwrap();
        assert_eq!(again, Some(expired), "asked again, the same answer");
        assert_eq!(
            store.gather(&origin, 3, slice(2)).await.unwrap(),
            Gathered::Expiring
        );
        store
            .finish(&origin, b"timed out".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!store.overdue(later, 10_000).await.unwrap().contains(&origin));
    }

    /// Of the last two slices of an origin added side by side, exactly one completes it:
    /// run against one store shared by two handles (two replicas), `rounds` origins.
    pub async fn races_complete_once<St: FanInStore>(a: Arc<St>, b: Arc<St>, scope: &str, rounds: u32) {
        let scope = format!("{scope}-{}", uuid::Uuid::new_v4().simple());
        let mut completions = 0;
        for round in 0..rounds {
            let origin = format!("{scope}-race-{round}");
            store_first(&*a, &origin).await;
            let (x, y) = tokio::join!(a.gather(&origin, 3, slice(1)), b.gather(&origin, 3, slice(2)));
            let complete = [x.unwrap(), y.unwrap()]
                .iter()
                .filter(|g| matches!(g, Gathered::Complete(_)))
                .count();
            assert_eq!(
                complete, 1,
                "origin {origin}: one of the two last slices completes it"
            );
            completions += complete;
        }
        assert_eq!(completions, rounds as usize);
    }

    /// Two aggregators (`a`, `b`: one store, two scopes) that see the same origin id (a
    /// merge fanned out again and rejoined elsewhere) keep it apart: `b` neither finds `a`'s
    /// merge nor is handed `a`'s open origins by the timeout.
    pub async fn scopes_keep_apart<St: FanInStore>(a: &St, b: &St, scope: &str) {
        let origin = format!("{scope}-{}-shared", uuid::Uuid::new_v4().simple());
        a.gather(&origin, 1, slice(0)).await.unwrap();
        a.finish(&origin, b"merge of a".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        let at_b = b.gather(&origin, 2, slice(0)).await.unwrap();
        assert_eq!(at_b, Gathered::Open { have: 1, of: 2 }, "b's origin is its own");
        let later = SystemTime::now() + Duration::from_secs(5);
        assert!(b.overdue(later, 10_000).await.unwrap().contains(&origin));
        assert!(
            !a.overdue(later, 10_000).await.unwrap().contains(&origin),
            "a's timeout does not take b's open origin"
        );
        b.finish(&origin, b"merge of b".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
    }

    async fn store_first<St: FanInStore>(store: &St, origin: &str) {
        store.gather(origin, 3, slice(0)).await.unwrap();
    }
}
