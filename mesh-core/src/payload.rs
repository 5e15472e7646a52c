//! The envelope's payload, kept as the JSON text it arrived in until something reads it.
//!
//! Most hops never look at the payload: the sidecar hands it to the runtime as it came, a
//! router reads only the route, a store step writes it out. Building a `serde_json::Value`
//! tree for it on every decode and writing that tree back out on every encode was about a
//! quarter of a pipeline's CPU. A decoded [`Payload`] holds the raw text; the first read
//! parses it once, the first write replaces it, and encoding an untouched payload copies the
//! text.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// Any JSON value (`null` included): the handler's data.
///
/// Read it as a [`Value`] through `Deref` (`payload["text"]`, `payload.as_str()`), change it
/// through `DerefMut` (`payload["score"] = json!(0.9)`) or replace it with `Value::into`.
/// Equality is over the JSON values, whatever text they were decoded from.
///
/// ```
/// use troupe_core::Payload;
/// use serde_json::json;
/// let mut p: Payload = serde_json::from_str(r#"{"text": "hi"}"#).unwrap();
/// assert_eq!(p.raw_json(), Some(r#"{"text": "hi"}"#));   // untouched: the text as it came
/// assert_eq!(p["text"], "hi");                             // the first read parses it
/// p["score"] = json!(1);                                   // a write drops the text
/// assert_eq!(p.raw_json(), None);
/// assert_eq!(p, json!({"text": "hi", "score": 1}));
/// ```
#[derive(Clone)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    /// As received; `parsed` is filled by the first read and always equals `raw`.
    Text {
        raw: Box<RawValue>,
        parsed: OnceLock<Value>,
    },
    /// Built in code, or changed since it was received.
    Value(Value),
}

impl Payload {
    /// A payload holding `value`.
    pub fn new(value: Value) -> Self {
        Self(Repr::Value(value))
    }

    /// A payload from JSON text, kept as text until it is read.
    ///
    /// Fails where the text is not JSON, or is JSON that [`Value`] cannot hold (nesting
    /// deeper than 128, a number out of range), so that every later read succeeds.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let raw = RawValue::from_string(text.to_owned())?;
        Self::from_raw(raw)
    }

    /// Checks raw JSON text once for what [`RawValue`] accepts but [`Value`] refuses: the
    /// raw scan has no depth limit and does not evaluate numbers. [`Walked`] goes through
    /// it as a parse does, under the same limits, and builds nothing.
    fn from_raw(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Walked>(raw.get())?;
        Ok(Self(Repr::Text {
            raw,
            parsed: OnceLock::new(),
        }))
    }

    /// The JSON text this payload was decoded from, while it has not been changed.
    pub fn raw_json(&self) -> Option<&str> {
        match &self.0 {
            Repr::Text { raw, .. } => Some(raw.get()),
            Repr::Value(_) => None,
        }
    }

    /// The payload as a [`Value`], parsing it if it was never read.
    pub fn into_value(self) -> Value {
        match self.0 {
            Repr::Text { raw, parsed } => parsed.into_inner().unwrap_or_else(|| parse(&raw)),
            Repr::Value(value) => value,
        }
    }
}

/// A JSON value gone through as a parse into [`Value`] goes (every container entered, so
/// the depth limit applies; every number read, so its range is checked) and then dropped.
/// serde's `IgnoredAny` would not do: `serde_json` skips it with the raw scan.
struct Walked;

impl<'de> Deserialize<'de> for Walked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WalkVisitor)
    }
}

struct WalkVisitor;

impl<'de> Visitor<'de> for WalkVisitor {
    type Value = Walked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_unit<E>(self) -> Result<Walked, E> {
        Ok(Walked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Walked, A::Error> {
        while seq.next_element::<Walked>()?.is_some() {}
        Ok(Walked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Walked, A::Error> {
        while map.next_entry::<IgnoredAny, Walked>()?.is_some() {}
        Ok(Walked)
    }
}

/// Parses text that [`Payload::from_raw`] has already walked with the same limits.
fn parse(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get())
        .unwrap_or_else(|e| unreachable!("payload text was checked when it was decoded: {e}"))
}

impl Default for Payload {
    /// `null`.
    fn default() -> Self {
        Self::new(Value::Null)
    }
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        match &self.0 {
            Repr::Text { raw, parsed } => parsed.get_or_init(|| parse(raw)),
            Repr::Value(value) => value,
        }
    }
}

impl DerefMut for Payload {
    /// Parses the text if needed and drops it: the value may now differ from it.
    fn deref_mut(&mut self) -> &mut Value {
        if let Repr::Text { raw, parsed } = &mut self.0 {
            let value = parsed.take().unwrap_or_else(|| parse(raw));
            self.0 = Repr::Value(value);
        }
        match &mut self.0 {
            Repr::Value(value) => value,
            Repr::Text { .. } => unreachable!("a payload being changed holds a value"),
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::new(value)
    }
}

impl From<Payload> for Value {
    fn from(payload: Payload) -> Self {
        payload.into_value()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        // Equal text is an equal value; different text may still be (spacing, escapes).
        if let (Some(a), Some(b)) = (self.raw_json(), other.raw_json())
            && a == b
        {
            return true;
        }
        **self == **other
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        *self == **other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Payload {
    /// The payload as JSON text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Text { raw, .. } => f.write_str(raw.get()),
            Repr::Value(value) => fmt::Display::fmt(value, f),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Text { raw, .. } => raw.serialize(serializer),
            Repr::Value(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    /// Keeps the text (from `serde_json` deserializers, which are the ones that can hand it
    /// over) and checks it with the limits of a parse.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn untouched_text_is_written_back_as_it_came() {
        let text = r#"{"b": 1,  "a": [1.50, "\u00e9"]}"#;
        let p = Payload::from_json(text).unwrap();
        assert_eq!(p["a"][1], "é");
        assert_eq!(serde_json::to_string(&p).unwrap(), text);
        assert_eq!(p.to_string(), text);
    }

    #[test]
    fn text_converts_to_a_value_tree_too() {
        let p = Payload::from_json(r#"{"a": [1, "x"]}"#).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"a": [1, "x"]}));
    }

    #[test]
    fn a_change_is_encoded_from_the_value() {
        let mut p = Payload::from_json(r#"{"a": 1}"#).unwrap();
        p["a"] = json!(2);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"a":2}"#);
        assert_eq!(p.clone().into_value(), json!({"a": 2}));
    }

    #[test]
    fn equality_is_over_values() {
        let spaced = Payload::from_json(r#"{ "a" : 1 }"#).unwrap();
        let compact = Payload::from_json(r#"{"a":1}"#).unwrap();
        assert_eq!(spaced, compact);
        assert_eq!(spaced, Payload::new(json!({"a": 1})));
        assert_eq!(spaced, json!({"a": 1}));
        assert_ne!(spaced, Payload::from_json("[1]").unwrap());
    }

    #[test]
    fn text_a_value_cannot_hold_is_refused_up_front() {
        // The raw scan accepts both; a later read would have nothing to return.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Payload::from_json(&deep).is_err());
        assert!(Payload::from_json("1e999").is_err());
        assert!(Payload::from_json("{\"a\":").is_err());
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Payload::from_json(&ok).is_ok());
    }

    #[test]
    fn deserializing_keeps_the_text() {
        #[derive(serde::Deserialize)]
        struct Frame {
            payload: Payload,
        }
        let frame: Frame = serde_json::from_str(r#"{"payload": {"x": [1, 2]}}"#).unwrap();
        assert_eq!(frame.payload.raw_json(), Some(r#"{"x": [1, 2]}"#));
        assert_eq!(frame.payload["x"][1], 2);
        let deep = format!(r#"{{"payload": {}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Frame>(&deep).is_err());
    }
}
