//! The `status` block: where an envelope is in its lifecycle and why.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::decode::Key;

/// Lifecycle phase of an envelope (protocol §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Queued for its current actor.
    Pending,
    /// Being processed.
    Processing,
    /// Failed and queued again for another attempt at the same actor.
    Retrying,
    /// The route finished (or a handler ended it early).
    Succeeded,
    /// The pipeline gave up on this envelope.
    Failed,
    /// Held on purpose.
    Paused,
    /// Canceled on purpose.
    Canceled,
}

impl Phase {
    /// The wire spelling, e.g. `"succeeded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Processing => "processing",
            Phase::Retrying => "retrying",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Paused => "paused",
            Phase::Canceled => "canceled",
        }
    }
}

/// Why an envelope is in its phase. The set is open: reasons this build does not know are
/// kept verbatim in [`Reason::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Reason {
    /// The route finished normally.
    Completed,
    /// The handler raised.
    RuntimeError,
    /// A deadline or timeout passed.
    Timeout,
    /// The message could not be decoded as an envelope.
    ParseError,
    /// The envelope reached an actor that is not its `route.curr`.
    RouteMismatch,
    /// Retries were used up and no `onExhausted` actors were set.
    PolicyExhausted,
    /// Retries were used up and the envelope was sent to the `onExhausted` actors.
    PolicyRouted,
    /// The route names an actor whose queue cannot exist (empty or illegal name).
    InvalidRoute,
    /// The route names an actor that has no queue on the broker (never deployed, or
    /// deleted); an actor scaled to zero keeps its queue and is not unknown.
    UnknownActor,
    /// The message was delivered more times than the runner allows (a crash or panic loop).
    RedeliveryLimit,
    /// A reason this build does not know.
    Other(String),
}

impl Reason {
    /// The wire spelling, e.g. `"PolicyExhausted"`.
    pub fn as_str(&self) -> &str {
        match self {
            Reason::Completed => "Completed",
            Reason::RuntimeError => "RuntimeError",
            Reason::Timeout => "Timeout",
            Reason::ParseError => "ParseError",
            Reason::RouteMismatch => "RouteMismatch",
            Reason::PolicyExhausted => "PolicyExhausted",
            Reason::PolicyRouted => "PolicyRouted",
            Reason::InvalidRoute => "InvalidRoute",
            Reason::UnknownActor => "UnknownActor",
            Reason::RedeliveryLimit => "RedeliveryLimit",
            Reason::Other(s) => s,
        }
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Completed" => Reason::Completed,
            "RuntimeError" => Reason::RuntimeError,
            "Timeout" => Reason::Timeout,
            "ParseError" => Reason::ParseError,
            "RouteMismatch" => Reason::RouteMismatch,
            "PolicyExhausted" => Reason::PolicyExhausted,
            "PolicyRouted" => Reason::PolicyRouted,
            "InvalidRoute" => Reason::InvalidRoute,
            "UnknownActor" => Reason::UnknownActor,
            "RedeliveryLimit" => Reason::RedeliveryLimit,
            _ => Reason::Other(s),
        }
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Other(s) => s,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as the protocol records it: `{message, type, mro, traceback}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// The error's type name (for Python: the exception's qualified name).
    #[serde(rename = "type", default)]
    pub type_name: String,
    /// The type and its ancestors, most specific first; retry rules match against these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mro: Vec<String>,
    /// Where it happened, if the runtime reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// The lifecycle block of an envelope. Every field is optional on the wire; unknown fields
/// are kept in [`Status::extra`] and written back unchanged.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Status {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why it is in that phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The actor that last set this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// 1-based attempt number at `actor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Attempts allowed at `actor` by its retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// When the envelope entered the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When this status was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// After this instant the envelope is no longer processed (it ends as `Timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Fields this build does not know, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Read by hand rather than derived: a derived `#[serde(flatten)]` buffers every field
/// through serde's generic content tree first, on every hop of every envelope.
impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StatusVisitor)
    }
}

struct StatusVisitor;

impl<'de> serde::de::Visitor<'de> for StatusVisitor {
    type Value = Status;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a status object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Status, A::Error> {
        let mut s = Status::default();
        let time = |t: Option<Timestamp>| t.map(|t| t.0);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.as_str() {
                "phase" => s.phase = map.next_value()?,
                "reason" => s.reason = map.next_value()?,
                "actor" => s.actor = map.next_value()?,
                "attempt" => s.attempt = map.next_value()?,
                "max_attempts" => s.max_attempts = map.next_value()?,
                "created_at" => s.created_at = time(map.next_value()?),
                "updated_at" => s.updated_at = time(map.next_value()?),
                "deadline_at" => s.deadline_at = time(map.next_value()?),
                "error" => s.error = map.next_value()?,
                _ => {
                    let value: Value = map.next_value()?;
                    s.extra.insert(key.into_owned(), value);
                }
            }
        }
        Ok(s)
    }
}

/// A timestamp read with chrono's strict RFC 3339 parser, which is several times faster
/// than the relaxed one `DateTime`'s own `Deserialize` uses; what it refuses (a space for
/// the `T`, say) is read by the relaxed one, so nothing accepted before is refused now.
struct Timestamp(DateTime<Utc>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl serde::de::Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                DateTime::parse_from_rfc3339(v)
                    .or_else(|_| v.parse::<DateTime<FixedOffset>>())
                    .map(|t| Timestamp(t.with_timezone(&Utc)))
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(TimestampVisitor)
    }
}

impl Status {
    /// Sets `phase`, `reason` (if given), `actor` and `updated_at = now`.
    pub fn mark(&mut self, phase: Phase, reason: Option<Reason>, actor: &str) {
        self.phase = Some(phase);
        self.reason = reason;
        if self.actor.as_deref() != Some(actor) {
            self.actor = Some(actor.to_owned());
        }
        self.updated_at = Some(Utc::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_including_unknown_ones() {
        for s in ["Completed", "PolicyRouted", "SomethingNew"] {
            let r: Reason = serde_json::from_value(Value::String(s.into())).unwrap();
            assert_eq!(serde_json::to_value(&r).unwrap(), Value::String(s.into()));
        }
        assert_eq!(Reason::from("Nope".to_string()), Reason::Other("Nope".into()));
    }

    #[test]
    fn status_keeps_unknown_fields() {
        let v = serde_json::json!({"phase": "retrying", "attempt": 2, "vendor_field": {"a": 1}});
        let s: Status = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.phase, Some(Phase::Retrying));
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }
}
