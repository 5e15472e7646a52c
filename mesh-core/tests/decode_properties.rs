//! Property tests of envelope decoding, the mesh's only parser of untrusted input: a body
//! from the broker is either decoded or refused with a reason, never a panic, and whatever
//! decodes survives a round trip through the wire form unchanged.
//!
//! Inputs are grown three ways: arbitrary bytes; arbitrary JSON trees whose keys are the
//! envelope's own field names (so the decoder's typed paths are reached, not just its JSON
//! parser); and valid envelopes with one field replaced by arbitrary JSON. The run is
//! bounded (`PROPTEST_CASES`, 512 per property by default) so it fits in CI.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use troupe_core::{DecodeLimits, Envelope};

/// Field names the decoder knows, at any depth, and a few it does not.
const KEYS: &[&str] = &[
    "id",
    "parent_id",
    "route",
    "headers",
    "status",
    "payload",
    "prev",
    "curr",
    "next",
    "actors",
    "current",
    "phase",
    "reason",
    "actor",
    "attempt",
    "max_attempts",
    "created_at",
    "updated_at",
    "deadline_at",
    "error",
    "message",
    "type",
    "mro",
    "traceback",
    "x",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z]{0,8}".prop_map(Value::String),
        proptest::sample::select(KEYS).prop_map(|k| Value::String(k.to_owned())),
        proptest::sample::select(
            &[
                "succeeded",
                "failed",
                "retrying",
                "pending",
                "2026-12-06T10:00:00Z",
                "not-a-date",
                "\u{0}",
                "é",
            ][..]
        )
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn json_tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn valid_envelope() -> Value {
    json!({
        "id": "e-1",
        "parent_id": "p-1",
        "route": {"prev": ["a"], "curr": "b", "next": ["c", "d"]},
        "headers": {"traceparent": "00-1-2-01"},
        "status": {"phase": "succeeded", "actor": "a", "attempt": 1, "max_attempts": 3},
        "payload": {"x": [1, 2, 3]},
    })
}

/// Decoded, or refused with a message that says what is wrong.
fn decoded_or_refused(body: &[u8]) -> Result<Option<Envelope>, TestCaseError> {
    match Envelope::from_slice(body, &DecodeLimits::default()) {
        Ok(env) => Ok(Some(env)),
        Err(error) => {
            prop_assert!(!error.to_string().trim().is_empty(), "a refusal without a reason");
            Ok(None)
        }
    }
}

/// What decodes, encodes and decodes again to the same envelope.
fn round_trips(env: &Envelope) -> Result<(), TestCaseError> {
    let again = Envelope::from_slice(&env.to_vec(), &DecodeLimits::default());
    prop_assert!(again.is_ok(), "re-encoded envelope refused: {:?}", again.err());
    prop_assert_eq!(&again.unwrap(), env);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(env) = decoded_or_refused(&body)? {
            round_trips(&env)?;
        }
    }

    #[test]
    fn arbitrary_json_with_envelope_keys(tree in json_tree()) {
        let body = serde_json::to_vec(&tree).unwrap();
        if let Some(env) = decoded_or_refused(&body)? {
            round_trips(&env)?;
        }
    }

    #[test]
    fn a_valid_envelope_with_one_field_replaced(
        path in proptest::collection::vec(proptest::sample::select(KEYS), 1..4),
        value in json_tree(),
    ) {
        let mut env = valid_envelope();
        let mut slot = &mut env;
        for key in &path[..path.len() - 1] {
            if !slot.get(*key).is_some_and(Value::is_object) {
                slot[*key] = Value::Object(Map::new());
            }
            slot = &mut slot[*key];
        }
        slot[*path.last().unwrap()] = value;
        let body = serde_json::to_vec(&env).unwrap();
        if let Some(env) = decoded_or_refused(&body)? {
            round_trips(&env)?;
        }
    }
}

/// `PROPTEST_CASES` when set, 512 otherwise.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

#[test]
fn the_valid_envelope_decodes() {
    let body = serde_json::to_vec(&valid_envelope()).unwrap();
    let env = Envelope::from_slice(&body, &DecodeLimits::default()).unwrap();
    assert_eq!(env.id, "e-1");
}
