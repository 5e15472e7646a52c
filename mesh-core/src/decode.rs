//! Decoding message bodies into envelopes, defensively: any byte sequence yields either an
//! envelope or a [`DecodeError`] that names the offending field. Nothing here panics.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::route::{Route, RouteError};
use crate::status::Status;

/// Bounds applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted body in bytes (default 16 MiB).
    pub max_body_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why a message body is not a valid envelope. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body exceeds [`DecodeLimits::max_body_bytes`].
    #[error(
        "body is {size} bytes, over the {limit}-byte limit (raise the decode limit or send smaller payloads)"
    )]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not UTF-8 JSON.
    #[error("body is not valid JSON: {detail}")]
    NotJson {
        /// What the JSON parser reported, with line and column.
        detail: String,
    },
    /// The body is JSON but not an object.
    #[error("body must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("required field `{field}` is missing")]
    Missing {
        /// Dotted path of the field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// Path of the field, e.g. `route.next[2]`.
        field: String,
        /// The type the protocol requires.
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A string field that must not be empty is empty.
    #[error("field `{field}` must not be empty")]
    Empty {
        /// Path of the field.
        field: String,
    },
    /// The route object is inconsistent.
    #[error("field `route` is invalid: {0}")]
    Route(#[from] RouteError),
    /// The route mixes the `prev/curr/next` and `actors/current` forms.
    #[error("field `route` mixes the prev/curr/next form with the legacy actors/current form; use one")]
    AmbiguousRoute,
    /// A field of `status` is malformed.
    #[error("field `status.{path}` is invalid: {detail}")]
    Status {
        /// Path inside `status`.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl DecodeError {
    /// The dotted path of the field at fault, or `""` when the body as a whole is at fault.
    pub fn field(&self) -> String {
        match self {
            DecodeError::TooLarge { .. } | DecodeError::NotJson { .. } | DecodeError::NotAnObject { .. } => {
                String::new()
            }
            DecodeError::Missing { field } => (*field).to_owned(),
            DecodeError::WrongType { field, .. } | DecodeError::Empty { field } => field.clone(),
            DecodeError::Route(_) | DecodeError::AmbiguousRoute => "route".to_owned(),
            DecodeError::Status { path, .. } => format!("status.{path}"),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: impl Into<String>, expected: &'static str, found: &Value) -> DecodeError {
    DecodeError::WrongType {
        field: field.into(),
        expected,
        found: type_name(found),
    }
}

pub(crate) fn decode(body: &[u8], limits: &DecodeLimits) -> Result<Envelope, DecodeError> {
    if body.len() > limits.max_body_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    // Well-formed envelopes take the one-pass path; anything it refuses is decoded again by
    // the field-by-field path below, which alone decides what the error is.
    match serde_json::from_slice::<fast::FastEnvelope>(body) {
        Ok(fast::FastEnvelope(env)) => Ok(env),
        Err(_) => decode_checked(body),
    }
}

/// The reference decoder: builds the JSON tree, then checks every field in turn so the
/// first defect is reported with its path.
fn decode_checked(body: &[u8]) -> Result<Envelope, DecodeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| DecodeError::NotJson {
        detail: e.to_string(),
    })?;
    let obj = match value {
        Value::Object(obj) => obj,
        other => {
            return Err(DecodeError::NotAnObject {
                found: type_name(&other),
            });
        }
    };

    // One pass over the object keeps unknown fields in their original order.
    let (mut id, mut parent_id, mut route, mut headers, mut status, mut payload) =
        (None, None, None, None, None, None);
    let mut extra = Map::new();
    for (key, value) in obj {
        match key.as_str() {
            "id" => id = Some(value),
            "parent_id" => parent_id = Some(value),
            "route" => route = Some(value),
            "headers" => headers = Some(value),
            "status" => status = Some(value),
            "payload" => payload = Some(value),
            _ => {
                extra.insert(key, value);
            }
        }
    }

    let id = match id {
        None => return Err(DecodeError::Missing { field: "id" }),
        Some(Value::String(s)) if s.is_empty() => return Err(DecodeError::Empty { field: "id".into() }),
        Some(Value::String(s)) => s,
        Some(other) => return Err(wrong("id", "a string", &other)),
    };
    let parent_id = match parent_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            return Err(DecodeError::Empty {
                field: "parent_id".into(),
            });
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(wrong("parent_id", "a string or null", &other)),
    };
    let route = match route {
        None => return Err(DecodeError::Missing { field: "route" }),
        Some(Value::Object(r)) => decode_route(r)?,
        Some(other) => return Err(wrong("route", "an object", &other)),
    };
    let headers = match headers {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h,
        Some(other) => return Err(wrong("headers", "an object", &other)),
    };
    let status = match status {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(Box::new(decode_status(v)?)),
        Some(other) => return Err(wrong("status", "an object", &other)),
    };
    let payload = payload.ok_or(DecodeError::Missing { field: "payload" })?.into();

    Ok(Envelope {
        id,
        parent_id,
        route,
        headers,
        status,
        payload,
        extra,
        ..Envelope::default()
    })
}

pub(crate) fn decode_route(mut r: Map<String, Value>) -> Result<Route, DecodeError> {
    let modern = ["prev", "curr", "next"].iter().any(|k| r.contains_key(*k));
    let legacy = ["actors", "current"].iter().any(|k| r.contains_key(*k));
    match (modern, legacy) {
        (true, true) => Err(DecodeError::AmbiguousRoute),
        (false, true) => {
            let actors = names(r.remove("actors"), "route.actors", false)?;
            let current = match r.remove("current") {
                None => {
                    return Err(DecodeError::Missing {
                        field: "route.current",
                    });
                }
                Some(Value::Number(n)) => n
                    .as_u64()
                    .ok_or_else(|| wrong("route.current", "a non-negative integer", &Value::Number(n)))?,
                Some(other) => return Err(wrong("route.current", "a non-negative integer", &other)),
            };
            Ok(Route::from_actors(actors, current)?)
        }
        _ => {
            let curr = match r.remove("curr") {
                None => return Err(DecodeError::Missing { field: "route.curr" }),
                Some(Value::String(s)) => s,
                Some(other) => return Err(wrong("route.curr", "a string", &other)),
            };
            let prev = names(r.remove("prev"), "route.prev", true)?;
            let next = names(r.remove("next"), "route.next", true)?;
            Ok(Route::new(prev, curr, next))
        }
    }
}

/// An array of non-empty actor names. `optional` lets the field be absent or null.
fn names(v: Option<Value>, field: &'static str, optional: bool) -> Result<Vec<String>, DecodeError> {
    let items = match v {
        None | Some(Value::Null) if optional => return Ok(Vec::new()),
        None => return Err(DecodeError::Missing { field }),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong(field, "an array of strings", &other)),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) if s.is_empty() => Err(DecodeError::Empty {
                field: format!("{field}[{i}]"),
            }),
            Value::String(s) => Ok(s),
            other => Err(wrong(format!("{field}[{i}]"), "a string", &other)),
        })
        .collect()
}

fn decode_status(v: Value) -> Result<Status, DecodeError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        DecodeError::Status {
            path: if path == "." { String::new() } else { path },
            detail: e.into_inner().to_string(),
        }
    })
}

/// An object key, borrowed from the input when it has no escapes (serde's own `Cow<str>`
/// always allocates).
pub(crate) enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }

    pub(crate) fn into_owned(self) -> String {
        match self {
            Key::Borrowed(s) => s.to_owned(),
            Key::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// One pass from bytes to typed fields, with borrowed keys and no intermediate tree for the
/// envelope itself. It applies the same checks as the reference decoder (sharing the status
/// code) and refuses anything else, so it never accepts what that one rejects.
mod fast {
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::{Map, Value};

    use super::Key;
    use crate::envelope::Envelope;
    use crate::payload::Payload;
    use crate::route::Route;
    use crate::status::Status;

    pub(super) struct FastEnvelope(pub(super) Envelope);

    impl<'de> Deserialize<'de> for FastEnvelope {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(EnvelopeVisitor)
        }
    }

    struct EnvelopeVisitor;

    /// A route in the `prev/curr/next` form, typed straight from the input. Anything else
    /// (the legacy form, unknown keys, empty names) is refused, for the reference decoder
    /// to accept or explain.
    struct FastRoute(Route);

    impl<'de> Deserialize<'de> for FastRoute {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(RouteVisitor)
        }
    }

    struct RouteVisitor;

    impl<'de> Visitor<'de> for RouteVisitor {
        type Value = FastRoute;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a route object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastRoute, A::Error> {
            let (mut prev, mut curr, mut next) = (None, None, None);
            while let Some(key) = map.next_key::<Key<'de>>()? {
                match key.as_str() {
                    "prev" => prev = map.next_value::<Option<Vec<String>>>()?,
                    "curr" => curr = Some(map.next_value::<String>()?),
                    "next" => next = map.next_value::<Option<Vec<String>>>()?,
                    _ => return Err(refuse()),
                }
            }
            let (prev, next) = (prev.unwrap_or_default(), next.unwrap_or_default());
            if prev.iter().chain(&next).any(String::is_empty) {
                return Err(refuse());
            }
            Ok(FastRoute(Route::new(prev, curr.ok_or_else(refuse)?, next)))
        }
    }

    fn refuse<E: de::Error>() -> E {
        // The message is never shown: a refusal sends the body to the reference decoder.
        E::custom("not decodable on the fast path")
    }

    impl<'de> Visitor<'de> for EnvelopeVisitor {
        type Value = FastEnvelope;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an envelope object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FastEnvelope, A::Error> {
            let mut id: Option<String> = None;
            let mut parent_id: Option<Option<String>> = None;
            let mut route: Option<FastRoute> = None;
            let mut headers: Option<Option<Map<String, Value>>> = None;
            let mut status: Option<Option<Box<Status>>> = None;
            let mut payload: Option<Payload> = None;
            let mut extra = Map::new();
            while let Some(key) = map.next_key::<Key<'de>>()? {
                match key.as_str() {
                    "id" => id = Some(map.next_value()?),
                    "parent_id" => parent_id = Some(map.next_value()?),
                    "route" => route = Some(map.next_value()?),
                    "headers" => headers = Some(map.next_value()?),
                    "status" => status = Some(map.next_value()?),
                    "payload" => payload = Some(map.next_value()?),
                    _ => {
                        let value: Value = map.next_value()?;
                        extra.insert(key.into_owned(), value);
                    }
                }
            }
            let id = id.filter(|id| !id.is_empty()).ok_or_else(refuse)?;
            let parent_id = parent_id.flatten();
            if parent_id.as_deref() == Some("") {
                return Err(refuse());
            }
            let FastRoute(route) = route.ok_or_else(refuse)?;
            Ok(FastEnvelope(Envelope {
                id,
                parent_id,
                route,
                headers: headers.flatten().unwrap_or_default(),
                status: status.flatten(),
                payload: payload.ok_or_else(refuse)?,
                extra,
                ..Envelope::default()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Phase;

    fn dec(s: &str) -> Result<Envelope, DecodeError> {
        Envelope::from_slice(s.as_bytes(), &DecodeLimits::default())
    }

    #[test]
    fn minimal_envelope_decodes() {
        let e = dec(r#"{"id":"1","route":{"curr":"a"},"payload":null}"#).unwrap();
        assert_eq!(e.route, Route::new(vec![], "a", vec![]));
        assert_eq!(e.payload, Value::Null);
        assert!(e.status.is_none());
    }

    #[test]
    fn legacy_route_is_converted() {
        let e = dec(r#"{"id":"1","route":{"actors":["a","b","c"],"current":1},"payload":{}}"#).unwrap();
        assert_eq!(e.route, Route::new(vec!["a".into()], "b", vec!["c".into()]));
        let out: Value = serde_json::from_slice(&e.to_vec()).unwrap();
        assert_eq!(
            out["route"],
            serde_json::json!({"prev":["a"],"curr":"b","next":["c"]})
        );
    }

    #[test]
    fn routes_the_fast_path_refuses_still_decode() {
        // An unknown key in the route and names given as null go to the reference decoder.
        let e = dec(r#"{"id":"1","route":{"curr":"a","next":null,"hint":1},"payload":{}}"#).unwrap();
        assert_eq!(e.route, Route::new(vec![], "a", vec![]));
        assert_eq!(
            dec(r#"{"id":"1","route":{"curr":"a","next":[""]},"payload":1}"#)
                .unwrap_err()
                .field(),
            "route.next[0]"
        );
    }

    #[test]
    fn timestamps_are_read_strictly_or_relaxed() {
        let at = |t: &str| {
            dec(&format!(
                r#"{{"id":"1","route":{{"curr":"a"}},"payload":1,"status":{{"updated_at":"{t}"}}}}"#
            ))
            .map(|e| e.status.and_then(|s| s.updated_at).map(|t| t.to_rfc3339()))
        };
        let utc = Some("2030-01-01T00:00:00+00:00".to_owned());
        assert_eq!(at("2030-01-01T00:00:00Z"), Ok(utc.clone()));
        assert_eq!(at("2030-01-01T02:00:00+02:00"), Ok(utc.clone()));
        // Not RFC 3339 (a space for the T), but accepted before the strict parser came first.
        assert_eq!(at("2030-01-01 00:00:00Z"), Ok(utc));
        assert_eq!(at("yesterday").unwrap_err().field(), "status.updated_at");
    }

    #[test]
    fn status_fields_are_typed() {
        let e = dec(r#"{"id":"1","route":{"curr":"a"},"payload":1,
            "status":{"phase":"retrying","attempt":2,"deadline_at":"2030-01-01T00:00:00Z"}}"#)
        .unwrap();
        let s = e.status.unwrap();
        assert_eq!(s.phase, Some(Phase::Retrying));
        assert_eq!(s.attempt, Some(2));
        assert!(s.deadline_at.is_some());
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            (r#"{"route":{"curr":"a"},"payload":1}"#, "id"),
            (
                r#"{"id":"1","route":{"curr":"a","next":["b",3]},"payload":1}"#,
                "route.next[1]",
            ),
            (
                r#"{"id":"1","route":{"curr":"a"},"payload":1,"status":{"attempt":"x"}}"#,
                "status.attempt",
            ),
            (
                r#"{"id":"1","route":{"actors":["a"],"current":-1},"payload":1}"#,
                "route.current",
            ),
        ];
        for (body, field) in cases {
            let err = dec(body).unwrap_err();
            assert_eq!(err.field(), field, "{body}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    proptest::proptest! {
        /// The fast path never accepts what the reference decoder rejects, and agrees with it
        /// on what both accept: mutate valid envelopes and compare.
        #[test]
        fn fast_path_agrees_with_reference(
            body in proptest::sample::select(vec![
                r#"{"id":"1","route":{"curr":"a","next":["b"]},"payload":{"k":[1,2]},"x":1}"#,
                r#"{"id":"1","parent_id":null,"route":{"actors":["a","b"],"current":1},"headers":{"h":1},"payload":null}"#,
                r#"{"id":"1","route":{"prev":["z"],"curr":"a"},"status":{"phase":"retrying","attempt":2,"more":true},"payload":"p"}"#,
            ]),
            cut in 0usize..200,
            replace in proptest::sample::select(vec!["", "null", "1", "\"\"", "[]", "{}", "-1", "\"a\"", ",", "[\"\"]"]),
        ) {
            // Replace one token-ish span with something else.
            let cut = cut.min(body.len());
            let end = body[cut..].find([',', '}', ']']).map_or(body.len(), |i| cut + i);
            let mutated = format!("{}{}{}", &body[..cut], replace, &body[end..]);
            let fast = serde_json::from_slice::<fast::FastEnvelope>(mutated.as_bytes()).ok().map(|f| f.0);
            let reference = decode_checked(mutated.as_bytes()).ok();
            if let Some(f) = fast {
                proptest::prop_assert_eq!(Some(f), reference, "{}", mutated);
            }
        }
    }

    proptest::proptest! {
        /// No byte sequence panics the decoder; a rejection always names what is wrong.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Err(e) = Envelope::from_slice(&body, &DecodeLimits::default()) {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }

        /// Nor does any JSON value, object or not, whatever its fields hold.
        #[test]
        fn arbitrary_json_never_panics(
            keys in proptest::collection::vec(proptest::sample::select(vec![
                "id", "parent_id", "route", "headers", "status", "payload", "curr", "x"]), 0..7),
            values in proptest::collection::vec(proptest::sample::select(vec![
                "null", "1", "-3", "0.5", "\"\"", "\"a\"", "[]", "[\"a\", 1]", "{}",
                "{\"curr\": \"a\"}", "{\"actors\": [\"a\"], \"current\": 9}",
                "{\"phase\": \"nope\"}", "{\"attempt\": 4294967296}"]), 0..7),
        ) {
            let fields: Vec<String> = keys.iter().zip(&values).map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let body = format!("{{{}}}", fields.join(","));
            let _ = Envelope::from_slice(body.as_bytes(), &DecodeLimits::default());
        }
    }

    #[test]
    fn size_limit_is_enforced_before_parsing() {
        let limits = DecodeLimits { max_body_bytes: 8 };
        let err = Envelope::from_slice(b"{\"id\":\"123456\"}", &limits).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: 15, limit: 8 });
    }
}
