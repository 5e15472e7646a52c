//! Wrapping bodies that cannot be processed for `x-sump`, without losing a byte of them.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::route::Route;
use crate::status::{ErrorInfo, Phase, Reason, Status};

/// Builds the `x-sump` envelope for a message body that cannot be processed.
///
/// The payload holds the original bytes exactly: as `body` (a JSON string) when they are
/// UTF-8, otherwise as `body_base64`. The id is the body's own `id` when one can be read,
/// so operators can correlate; otherwise a fresh UUIDv4.
///
/// ```
/// use troupe_core::{sump, Reason};
/// let env = sump::wrap_body(b"\xff not json", Reason::ParseError, "DecodeError", "bad", "score");
/// assert_eq!(env.payload["body_base64"], "/yBub3QganNvbg==");
/// ```
pub fn wrap_body(body: &[u8], reason: Reason, error_type: &str, message: &str, actor: &str) -> Envelope {
    let mut payload = Map::new();
    match std::str::from_utf8(body) {
        Ok(text) => payload.insert("body".into(), Value::String(text.to_owned())),
        Err(_) => payload.insert(
            "body_base64".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    };
    let mut status = Status {
        error: Some(ErrorInfo {
            message: message.to_owned(),
            type_name: error_type.to_owned(),
            mro: vec![error_type.to_owned()],
            traceback: None,
        }),
        ..Status::default()
    };
    status.mark(Phase::Failed, Some(reason), actor);
    let mut env = Envelope::new(Route::default(), Value::Object(payload));
    if let Some(id) = readable_id(body) {
        env.id = id;
    }
    // A slice of a fan-in keeps its metadata, so its aggregator still learns it failed.
    if let Some(fan_in) = readable_fan_in(body) {
        env.headers.insert(crate::headers::FAN_IN.to_owned(), fan_in);
    }
    env.status = Some(Box::new(status));
    env
}

/// The body's `id` if it is a JSON object with a non-empty string `id`.
pub(crate) fn readable_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_slice::<IdOnly>(body)
        .ok()
        .map(|x| x.id)
        .filter(|id| !id.is_empty())
}

/// The body's fan-in header if it is a JSON object with one.
fn readable_fan_in(body: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct HeadersOnly {
        headers: Map<String, Value>,
    }
    serde_json::from_slice::<HeadersOnly>(body)
        .ok()
        .and_then(|mut x| x.headers.remove(crate::headers::FAN_IN))
}

/// Recovers the original bytes from an `x-sump` envelope built by [`wrap_body`].
pub fn original_bytes(sump: &Envelope) -> Option<Vec<u8>> {
    if let Some(text) = sump.payload.get("body").and_then(Value::as_str) {
        return Some(text.as_bytes().to_vec());
    }
    let b64 = sump.payload.get("body_base64").and_then(Value::as_str)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bytes_and_id() {
        for body in [&b"{\"id\":\"abc\",\"route\":1}"[..], b"\x00\x9f\x92\x96", b""] {
            let env = wrap_body(body, Reason::ParseError, "DecodeError", "x", "a");
            assert_eq!(original_bytes(&env).as_deref(), Some(body));
        }
        let env = wrap_body(b"{\"id\":\"abc\"}", Reason::ParseError, "DecodeError", "x", "a");
        assert_eq!(env.id, "abc");
        let status = env.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.reason, Some(Reason::ParseError));
    }

    #[test]
    fn keeps_a_slices_fan_in_header() {
        let body = br#"{"id":"s","headers":{"x-asya-fan-in":{"actor":"join"}},"route":7}"#;
        let env = wrap_body(body, Reason::RedeliveryLimit, "RedeliveryLimit", "x", "a");
        assert_eq!(env.headers[crate::headers::FAN_IN]["actor"], "join");
    }
}
