//! The envelope: one queue message, carrying its own route (protocol §1).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::decode::{self, DecodeError, DecodeLimits};
use crate::headers;
use crate::payload::Payload;
use crate::route::Route;
use crate::status::Phase;
use crate::status::Status;

/// One message travelling through the mesh.
///
/// Decode with [`Envelope::from_slice`] (never panics; every defect is a typed
/// [`DecodeError`] naming the field) and encode with [`Envelope::to_vec`]. Unknown top-level
/// fields are kept in [`Envelope::extra`] and written back unchanged.
///
/// ```
/// use troupe_core::{DecodeLimits, Envelope};
/// let body = br#"{"id":"e1","route":{"prev":[],"curr":"score","next":["judge"]},"payload":{"x":1},"trace_tag":"keep-me"}"#;
/// let env = Envelope::from_slice(body, &DecodeLimits::default()).unwrap();
/// assert_eq!(env.route.curr(), "score");
/// let again = Envelope::from_slice(&env.to_vec(), &DecodeLimits::default()).unwrap();
/// assert_eq!(again.extra["trace_tag"], "keep-me");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Unique id; fan-out children other than the first get a fresh one.
    pub id: String,
    /// The id of the envelope this one was fanned out from.
    pub parent_id: Option<String>,
    /// Where the envelope has been and is going.
    pub route: Route,
    /// Free-form headers; `x-asya-*`, `traceparent` and `tracestate` are reserved for the mesh.
    pub headers: Map<String, Value>,
    /// Lifecycle block (boxed: it is large, and absent on fresh envelopes).
    pub status: Option<Box<Status>>,
    /// The handler's data (any JSON, `null` included), parsed only when first read.
    pub payload: Payload,
    /// Top-level fields this build does not know, passed on unchanged.
    pub extra: Map<String, Value>,
    /// Size of the encoded body this envelope was decoded from (0 if built in code).
    pub(crate) wire_len: usize,
}

/// Equality is over the protocol fields; the decoded size is bookkeeping, not content.
impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.parent_id == other.parent_id
            && self.route == other.route
            && self.headers == other.headers
            && self.status == other.status
            && self.payload == other.payload
            && self.extra == other.extra
    }
}

impl Envelope {
    /// A new envelope with a fresh UUIDv4 id, at the start of `route`.
    pub fn new(route: Route, payload: impl Into<Payload>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            route,
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Decodes one message body. Accepts the older `route: {actors, current}` form.
    pub fn from_slice(body: &[u8], limits: &DecodeLimits) -> Result<Self, DecodeError> {
        let mut env = decode::decode(body, limits)?;
        env.wire_len = body.len();
        Ok(env)
    }

    /// Encodes the envelope as JSON (always the `prev/curr/next` route form).
    pub fn to_vec(&self) -> Vec<u8> {
        // Serializing to a Vec cannot fail: keys are strings, a payload's text was checked
        // when it was decoded, and there is no I/O; an error here would be a serde_json bug.
        // Re-encoding is about the size it was decoded from, plus the status block a hop
        // adds (a phase, an actor, a timestamp): start there so the buffer never regrows.
        let mut out = Vec::with_capacity(self.wire_len.max(256) + 256);
        serde_json::to_writer(&mut out, self)
            .unwrap_or_else(|e| unreachable!("envelope encoding failed: {e}"));
        out
    }

    /// Size in bytes of the body this envelope was decoded from, or 0 if built in code.
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// The status block, created empty if absent.
    pub fn status_mut(&mut self) -> &mut Status {
        self.status.get_or_insert_with(Box::default)
    }

    /// A header value as a string, if present and a string.
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.headers.get(key).and_then(Value::as_str)
    }

    /// The concrete actor for `actor`: its entry in the `x-asya-route-override` header, if
    /// any, otherwise `actor` itself.
    pub fn resolve_actor<'a>(&'a self, actor: &'a str) -> &'a str {
        self.headers
            .get(headers::ROUTE_OVERRIDE)
            .and_then(|o| o.get(actor))
            .and_then(Value::as_str)
            .unwrap_or(actor)
    }

    /// The actor that must process the envelope now, overrides applied (`""` if finished).
    pub fn destination(&self) -> &str {
        let curr = self.route.curr();
        if curr.is_empty() {
            curr
        } else {
            self.resolve_actor(curr)
        }
    }

    /// The identity of this envelope's hop at `actor`:
    /// `id/actor/position/attempt/payload digest`. The idempotency layer keys on it; the
    /// runner passes it to brokers for deduplication (JetStream's `Nats-Msg-Id`).
    ///
    /// The attempt is part of it because a retry is a new message to the same actor. The
    /// digest of the payload ([`Envelope::payload_digest`]) is part of it because an id is
    /// chosen by whoever submits the envelope: two different envelopes that happen to carry
    /// the same id (a client that reuses ids, a hostile input) are two hops, not a duplicate
    /// to be dropped. A true duplicate (a redelivery, recorded outputs re-emitted after a
    /// crash) carries the very same payload, so it still finds its hop.
    pub fn hop_key(&self, actor: &str) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.id,
            actor,
            self.route.position(),
            self.attempt_at(actor),
            self.payload_digest()
        )
    }

    /// A digest of the payload: BLAKE3 over its JSON text, the first 128 bits in hex. The
    /// text is the one the payload was decoded from while it is unchanged, and its encoding
    /// otherwise, so the envelope that is published is the one that is hashed: a redelivery
    /// or a re-published output hashes the same text in every process and release (the
    /// encoding keeps object keys in their order). A different payload with the same digest
    /// would take a second-preimage attack on BLAKE3.
    ///
    /// ```
    /// use troupe_core::{Envelope, Route};
    /// let a = Envelope::new(Route::through(["score"]), serde_json::json!({"text": "a"}));
    /// let mut b = a.clone();
    /// assert_eq!(a.payload_digest(), b.payload_digest());
    /// b.payload = serde_json::json!({"text": "b"}).into();
    /// assert_ne!(a.payload_digest(), b.payload_digest());
    /// assert_ne!(a.hop_key("score"), b.hop_key("score"));
    /// ```
    pub fn payload_digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        // Writing into a hasher cannot fail, and a payload always encodes.
        serde_json::to_writer(&mut hasher, &self.payload)
            .unwrap_or_else(|e| unreachable!("payload encoding failed: {e}"));
        let digest = hasher.finalize();
        // By table: formatting each byte through `fmt` was a visible share of a hop.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for byte in &digest.as_bytes()[..16] {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        hex
    }

    /// The 1-based attempt number of this envelope at `actor`: the recorded attempt when it
    /// comes back to `actor` for a retry, 1 otherwise.
    pub fn attempt_at(&self, actor: &str) -> u32 {
        match &self.status {
            Some(s) if s.phase == Some(Phase::Retrying) && s.actor.as_deref() == Some(actor) => {
                s.attempt.unwrap_or(1).max(1)
            }
            _ => 1,
        }
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        if let Some(parent) = &self.parent_id {
            map.serialize_entry("parent_id", parent)?;
        }
        map.serialize_entry("route", &self.route)?;
        if !self.headers.is_empty() {
            map.serialize_entry("headers", &self.headers)?;
        }
        if let Some(status) = &self.status {
            map.serialize_entry("status", status)?;
        }
        map.serialize_entry("payload", &self.payload)?;
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Gives fan-out children their ids (protocol §2.5): the first keeps the input's `id` and
/// `parent_id`; every other gets [`fan_out_id`] and `parent_id` = the input's `id`.
/// `actor` is the actor that fanned out and `position` the input's route position there.
pub fn assign_fan_out_ids(
    input_id: &str,
    input_parent: Option<&str>,
    actor: &str,
    position: usize,
    children: &mut [Envelope],
) {
    let mut it = children.iter_mut();
    if let Some(first) = it.next() {
        if first.id != input_id {
            first.id = input_id.to_owned();
        }
        first.parent_id = input_parent.map(str::to_owned);
    }
    for (index, child) in it.enumerate() {
        child.id = fan_out_id(input_id, actor, position, index + 1);
        child.parent_id = Some(input_id.to_owned());
    }
}

/// Namespace of fan-out ids (a fixed random UUID; changing it changes every derived id).
const FAN_OUT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d0c_2a6e_9b1f_4e57_a3c8_71f0_6d42_b9e3);

/// The id of fan-out child `index` (1-based; child 0 keeps the input's id) of envelope
/// `input_id` at `actor`, route position `position`: a UUIDv5 of those four, so a replay of
/// the hop after a crash produces children with the same ids, which the next hop's
/// idempotency then recognises. The actor and position are part of it because the first
/// child keeps its parent's id: without them, that child fanning out again at the next
/// actor would give its own children its siblings' ids.
///
/// ```
/// use troupe_core::fan_out_id;
/// assert_eq!(fan_out_id("doc-1", "split", 0, 1), fan_out_id("doc-1", "split", 0, 1));
/// assert_ne!(fan_out_id("doc-1", "split", 0, 1), fan_out_id("doc-1", "split", 0, 2));
/// assert_ne!(fan_out_id("doc-1", "split", 0, 1), fan_out_id("doc-1", "chunk", 1, 1));
/// ```
pub fn fan_out_id(input_id: &str, actor: &str, position: usize, index: usize) -> String {
    // '/' cannot be confused across fields: an actor name has no '/', and the id comes first
    // with the numbers after it.
    let name = format!("{input_id}/{actor}/{position}/{index}");
    uuid::Uuid::new_v5(&FAN_OUT_NAMESPACE, name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn actor() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,8}"
    }

    prop_compose! {
        fn envelope()(
            id in "[a-zA-Z0-9-]{1,36}",
            parent in proptest::option::of("[a-z0-9-]{1,36}"),
            prev in proptest::collection::vec(actor(), 0..4),
            curr in prop_oneof![Just(String::new()), actor()],
            next in proptest::collection::vec(actor(), 0..4),
            headers in proptest::collection::btree_map("[a-z-]{1,10}", json_leaf(), 0..3),
            payload in json_value(),
            extra in proptest::collection::btree_map("x_[a-z]{1,6}", json_value(), 0..3),
        ) -> Envelope {
            Envelope {
                id,
                parent_id: parent,
                route: Route::new(prev, curr, next),
                headers: headers.into_iter().collect(),
                status: None,
                payload: payload.into(),
                extra: extra.into_iter().collect(),
                wire_len: 0,
            }
        }
    }

    proptest! {
        /// encode -> decode is the identity, unknown fields included.
        #[test]
        fn round_trip(env in envelope()) {
            let bytes = env.to_vec();
            let back = Envelope::from_slice(&bytes, &DecodeLimits::default()).unwrap();
            prop_assert_eq!(&back, &env);
            prop_assert_eq!(back.wire_len(), bytes.len());
            // and the encoding is stable
            prop_assert_eq!(back.to_vec(), bytes);
        }

        /// Fan-out ids follow §2.5 for any number of children.
        #[test]
        fn fan_out_ids(n in 1usize..8, parent in proptest::option::of("[a-z]{3}")) {
            let mut kids = vec![Envelope::default(); n];
            assign_fan_out_ids("in-1", parent.as_deref(), "split", 0, &mut kids);
            prop_assert_eq!(&kids[0].id, "in-1");
            prop_assert_eq!(kids[0].parent_id.as_deref(), parent.as_deref());
            let mut seen = std::collections::HashSet::new();
            for k in &kids[1..] {
                prop_assert!(uuid::Uuid::parse_str(&k.id).is_ok());
                prop_assert_eq!(k.parent_id.as_deref(), Some("in-1"));
                prop_assert!(seen.insert(k.id.clone()));
            }
            // A replay of the hop gives the same children.
            let mut again = vec![Envelope::default(); n];
            assign_fan_out_ids("in-1", parent.as_deref(), "split", 0, &mut again);
            let ids = |v: &[Envelope]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
            prop_assert_eq!(ids(&again), ids(&kids));
        }
    }

    #[test]
    fn destination_applies_overrides_and_attempts_follow_status() {
        let mut env = Envelope::new(Route::through(["model", "store"]), Value::Null);
        assert_eq!(env.destination(), "model");
        env.headers
            .insert(headers::ROUTE_OVERRIDE.into(), json!({"model": "model-v2"}));
        assert_eq!(env.destination(), "model-v2");
        assert_eq!(env.attempt_at("model-v2"), 1);
        let status = env.status_mut();
        status.phase = Some(Phase::Retrying);
        status.actor = Some("model-v2".into());
        status.attempt = Some(3);
        assert_eq!(env.attempt_at("model-v2"), 3);
        assert_eq!(env.attempt_at("store"), 1);
        env.route.advance().unwrap();
        env.route.advance().unwrap();
        assert_eq!(env.destination(), "");
    }

    #[test]
    fn unknown_fields_round_trip_in_place() {
        let body = json!({
            "id": "a", "route": {"prev": [], "curr": "x", "next": []},
            "payload": 1, "future_field": {"nested": [1, 2]}, "status": {"phase": "pending", "custom": true}
        });
        let env = Envelope::from_slice(body.to_string().as_bytes(), &DecodeLimits::default()).unwrap();
        let out: Value = serde_json::from_slice(&env.to_vec()).unwrap();
        assert_eq!(out, body);
    }
}
