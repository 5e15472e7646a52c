//! Open aggregations in this process: for single-process meshes and tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::store::{Expired, FanInStore, Gathered, StoreError, StoredSlice};

enum Origin {
    Open {
        slice_count: u32,
        opened: SystemTime,
        expiring: bool,
        slices: BTreeMap<u32, Vec<u8>>,
    },
    Merged {
        merged: Vec<u8>,
        until: Instant,
    },
}

/// A [`FanInStore`] in memory. Aggregations do not survive the process; use a shared store
/// (Redis, PostgreSQL) for replicas or restarts.
#[derive(Default)]
pub struct MemoryFanInStore {
    origins: Mutex<HashMap<String, Origin>>,
}

impl MemoryFanInStore {
    fn origins(&self) -> std::sync::MutexGuard<'_, HashMap<String, Origin>> {
        // Every change is a single insert or replace: a poisoned map is still consistent.
        self.origins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many origins are open.
    pub fn open_origins(&self) -> usize {
        self.origins()
            .values()
            .filter(|o| matches!(o, Origin::Open { .. }))
            .count()
    }
}

fn listed(slices: &BTreeMap<u32, Vec<u8>>) -> Vec<StoredSlice> {
    slices
        .iter()
        .map(|(&index, body)| StoredSlice {
            index,
            body: body.clone(),
        })
        .collect()
}

impl FanInStore for MemoryFanInStore {
    async fn gather(
        &self,
        origin: &str,
        slice_count: u32,
        slice: StoredSlice,
    ) -> Result<Gathered, StoreError> {
        let mut origins = self.origins();
        if let Some(Origin::Merged { until, .. }) = origins.get(origin)
            && *until <= Instant::now()
        {
            origins.remove(origin);
        }
        let entry = origins.entry(origin.to_owned()).or_insert_with(|| Origin::Open {
            slice_count,
            opened: SystemTime::now(),
            expiring: false,
            slices: BTreeMap::new(),
        });
        match entry {
            Origin::Merged { merged, .. } => Ok(Gathered::Merged(merged.clone())),
            Origin::Open { expiring: true, .. } => Ok(Gathered::Expiring),
            Origin::Open {
                slice_count: stored, ..
            } if *stored != slice_count => Ok(Gathered::CountMismatch { stored: *stored }),
            Origin::Open { slices, .. } => {
                slices.entry(slice.index).or_insert(slice.body);
                let have = u32::try_from(slices.len()).unwrap_or(u32::MAX);
                if have < slice_count {
                    Ok(Gathered::Open {
                        have,
                        of: slice_count,
                    })
                } else {
                    Ok(Gathered::Complete(listed(slices)))
                }
            }
        }
    }

    async fn finish(&self, origin: &str, merged: Vec<u8>, retention: Duration) -> Result<(), StoreError> {
        let mut origins = self.origins();
        let now = Instant::now();
        origins.retain(|_, o| !matches!(o, Origin::Merged { until, .. } if *until <= now));
        origins.insert(
            origin.to_owned(),
            Origin::Merged {
                merged,
                until: now + retention,
            },
        );
        Ok(())
    }

    async fn overdue(&self, opened_before: SystemTime, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .origins()
            .iter()
            .filter(|(_, o)| matches!(o, Origin::Open { opened, .. } if *opened < opened_before))
            .map(|(origin, _)| origin.clone())
            .take(limit)
            .collect())
    }

    async fn expire(&self, origin: &str) -> Result<Option<Expired>, StoreError> {
        Ok(match self.origins().get_mut(origin) {
            Some(Origin::Open {
                slice_count,
                expiring,
                slices,
                ..
            }) => {
                *expiring = true;
                Some(Expired {
                    slice_count: *slice_count,
                    slices: listed(slices),
                })
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fan_in::store::conformance;

    #[tokio::test]
    async fn keeps_the_store_contract() {
        conformance::run(&MemoryFanInStore::default(), "m").await;
    }
}
