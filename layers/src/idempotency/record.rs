//! How a shared store (Redis, PostgreSQL) writes one hop's state as a string, so every
//! store reads what the others would write:
//!
//! - `p:{token}` while a worker holds the claim;
//! - `c:{json}` once the outputs are recorded (each output's destination, delay and
//!   envelope in its wire form);
//! - `done` once they are all published.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe_core::{DecodeLimits, Envelope, Publication};

use super::store::{Claim, StoreError};

/// The state of a finished hop whose outputs were all published.
pub(super) const PUBLISHED: &str = "done";

/// A recorded output: the envelope is kept in its wire form.
#[derive(Serialize, Deserialize)]
struct Stored {
    actor: String,
    delay_ms: Option<u64>,
    envelope: String,
}

/// A whole number of milliseconds, at least 1 (stores read 0 as "no expiry" or refuse it).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The state of a hop claimed with `token`.
pub(super) fn claimed(token: &str) -> String {
    format!("p:{token}")
}

/// The state of a hop whose outputs are recorded.
pub(super) fn completed(outputs: &Arc<[Publication]>) -> Result<String, StoreError> {
    let stored: Vec<Stored> = outputs
        .iter()
        .map(|p| Stored {
            actor: p.actor.clone(),
            delay_ms: p.delay.map(millis),
            envelope: String::from_utf8_lossy(&p.envelope.to_vec()).into_owned(),
        })
        .collect();
    let json = serde_json::to_string(&stored).map_err(|e| StoreError::failed("record", e.to_string()))?;
    Ok(format!("c:{json}"))
}

/// What a state found by a claim means to the claimer (who did not write it).
pub(super) fn found(state: &str) -> Result<Claim, StoreError> {
    if state == PUBLISHED {
        return Ok(Claim::Published);
    }
    match state.strip_prefix("c:") {
        Some(json) => Ok(Claim::Completed(decode(json)?.into())),
        None => Ok(Claim::InProgress),
    }
}

fn decode(json: &str) -> Result<Vec<Publication>, StoreError> {
    let corrupt = |detail: String| StoreError::failed("read record", detail);
    let items: Vec<Stored> = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    items
        .into_iter()
        .map(|s| {
            let envelope = Envelope::from_slice(s.envelope.as_bytes(), &DecodeLimits::default())
                .map_err(|e| corrupt(e.to_string()))?;
            Ok(Publication {
                actor: s.actor,
                envelope,
                delay: s.delay_ms.map(Duration::from_millis),
            })
        })
        .collect()
}
