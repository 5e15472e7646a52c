//! Fan-in metadata: which aggregator rejoins a fan-out, and where each slice belongs.
//!
//! A fan-out marked for rejoin gives each child the [`FAN_IN`] header: the aggregator
//! actor, the origin (the id of the envelope that was fanned out, which the merge carries
//! as its own id), the child's slice index and the number of slices. The form is Asya's
//! (`x-asya-fan-in`), so envelopes from Asya flows aggregate too: there, slice 0 carries the
//! parent's payload and the others' payloads are placed into it at `aggregation_key` (an
//! RFC 6901 pointer); without a key, the merge's payload is the list of every slice's
//! payload, by slice index.
//!
//! One header, one fan-in: a slice that is fanned out again for rejoin elsewhere has its
//! header replaced by the inner fan-out's, so fan-ins do not nest.
//!
//! ```
//! use troupe_core::fan_in::{FanIn, mark_for_rejoin};
//! use troupe_core::{Envelope, Route};
//!
//! let doc = Envelope::new(Route::through(["split", "embed", "join"]), serde_json::json!("a b"));
//! let mut chunks = vec![doc.clone(), doc.clone()];
//! mark_for_rejoin(&doc, "join", &mut chunks);
//! let second = FanIn::of(&chunks[1]).unwrap().unwrap();
//! assert_eq!((second.slice_index, second.slice_count), (1, 2));
//! assert_eq!(second.origin_id, doc.id);
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::Envelope;
use crate::headers::FAN_IN;
use crate::naming::validate_name;

/// Most slices one fan-out may have: bounds what an aggregator holds per origin.
pub const MAX_SLICES: u32 = 100_000;

/// Where a slice belongs: the value of the [`FAN_IN`] header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanIn {
    /// The aggregator actor that rejoins the slices.
    pub actor: String,
    /// The id of the envelope that was fanned out; the merge is published under it.
    pub origin_id: String,
    /// This slice's position in the merge, from 0.
    pub slice_index: u32,
    /// How many slices the merge waits for (Asya counts its parent slice 0 among them).
    pub slice_count: u32,
    /// Where in slice 0's payload the other slices' payloads go (an RFC 6901 pointer,
    /// Asya's form); absent, the merge's payload is the list of all slices' payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_key: Option<String>,
}

/// A [`FAN_IN`] header that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FanInError {
    /// The header is not an object with the fields a fan-in needs.
    #[error("header {FAN_IN} is malformed: {0}")]
    Malformed(String),
    /// The fields are there but contradict each other or the limits.
    #[error("header {FAN_IN} is invalid: {0}")]
    Invalid(String),
}

impl FanIn {
    /// The fan-in metadata `env` carries: `None` without the header, an error when it is
    /// there but unusable.
    pub fn of(env: &Envelope) -> Option<Result<FanIn, FanInError>> {
        env.headers.get(FAN_IN).map(Self::from_value)
    }

    /// Parses and checks a header value.
    pub fn from_value(value: &Value) -> Result<FanIn, FanInError> {
        let fan_in = FanIn::deserialize(value).map_err(|e| FanInError::Malformed(e.to_string()))?;
        fan_in.check()?;
        Ok(fan_in)
    }

    fn check(&self) -> Result<(), FanInError> {
        validate_name("aggregator actor", &self.actor).map_err(|e| FanInError::Invalid(e.to_string()))?;
        if self.origin_id.is_empty() {
            return Err(FanInError::Invalid("origin_id is empty".into()));
        }
        if self.slice_count == 0 || self.slice_count > MAX_SLICES {
            return Err(FanInError::Invalid(format!(
                "slice_count {} is not between 1 and {MAX_SLICES}",
                self.slice_count
            )));
        }
        if self.slice_index >= self.slice_count {
            return Err(FanInError::Invalid(format!(
                "slice_index {} is not below slice_count {}",
                self.slice_index, self.slice_count
            )));
        }
        if let Some(key) = &self.aggregation_key
            && !key.is_empty()
            && !key.starts_with('/')
        {
            return Err(FanInError::Invalid(format!(
                "aggregation_key {key:?} is not a JSON pointer (it starts with '/')"
            )));
        }
        Ok(())
    }

    /// Writes this metadata into `env`'s [`FAN_IN`] header.
    pub fn stamp(&self, env: &mut Envelope) {
        // A struct of strings and integers always serializes.
        if let Ok(value) = serde_json::to_value(self) {
            env.headers.insert(FAN_IN.to_owned(), value);
        }
    }
}

/// Marks the children of a fan-out of `input` for rejoin at `aggregator`: child `i` becomes
/// slice `i` of `children.len()`, with `input`'s id as the origin. Return them from the
/// handler as the fan-out (`Outcome::Forward`); each child's route must reach `aggregator`.
pub fn mark_for_rejoin(input: &Envelope, aggregator: &str, children: &mut [Envelope]) {
    let count = u32::try_from(children.len()).unwrap_or(u32::MAX);
    for (index, child) in (0..count).zip(children.iter_mut()) {
        FanIn {
            actor: aggregator.to_owned(),
            origin_id: input.id.clone(),
            slice_index: index,
            slice_count: count,
            aggregation_key: None,
        }
        .stamp(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<FanIn, FanInError> {
        FanIn::from_value(&value)
    }

    #[test]
    fn reads_asya_headers() {
        let fan_in = parse(json!({
            "actor": "aggregator", "origin_id": "msg-1", "slice_index": 2,
            "slice_count": 6, "aggregation_key": "/results"
        }))
        .unwrap();
        assert_eq!(fan_in.aggregation_key.as_deref(), Some("/results"));
        assert_eq!(fan_in.slice_index, 2);
    }

    #[test]
    fn refuses_what_cannot_be_merged() {
        let base = json!({"actor": "agg", "origin_id": "o", "slice_index": 0, "slice_count": 2});
        assert!(parse(base.clone()).is_ok());
        for (field, value) in [
            ("slice_index", json!(2)),
            ("slice_count", json!(0)),
            ("slice_count", json!(MAX_SLICES + 1)),
            ("origin_id", json!("")),
            ("actor", json!("no/slash")),
            ("aggregation_key", json!("results")),
        ] {
            let mut bad = base.clone();
            bad[field] = value;
            assert!(matches!(parse(bad), Err(FanInError::Invalid(_))), "{field}");
        }
        assert!(matches!(parse(json!("agg")), Err(FanInError::Malformed(_))));
        assert!(matches!(
            parse(json!({"actor": "agg", "slice_index": -1})),
            Err(FanInError::Malformed(_))
        ));
    }
}
