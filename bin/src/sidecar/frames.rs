//! Turning a runtime's answers (protocol §4) into envelopes and errors.
//!
//! A runtime sends each output as a frame whose route is already advanced
//! (`prev + [curr]`, `next[0]`, `next[1..]`). The route layer advances routes itself and
//! checks that a handler changed only `next`, so a frame is turned back into an output
//! of the input with `next` = the frame's `[curr] + next`, after checking that the frame's
//! `prev` is the input's `prev + [curr]`.

use serde::Deserialize;
use serde_json::{Map, Value};
use troupe::core::{Envelope, ErrorInfo, HandlerError, Payload, Route, Status};

/// Error type of an answer that does not follow the protocol.
pub const PROTOCOL_ERROR: &str = "RuntimeProtocolError";

/// One output as the runtime sends it: its payload (kept as text; the sidecar never reads
/// it), its route advanced past this actor, and optionally new headers and status.
#[derive(Debug, Deserialize)]
pub struct Frame {
    payload: Payload,
    route: FrameRoute,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Debug, Deserialize)]
struct FrameRoute {
    #[serde(default)]
    prev: Vec<String>,
    #[serde(default)]
    curr: String,
    #[serde(default)]
    next: Vec<String>,
}

/// The body of a `200 application/json` answer.
#[derive(Debug, Deserialize)]
struct Frames {
    frames: Vec<Frame>,
}

fn protocol_error(message: String) -> HandlerError {
    HandlerError::new(PROTOCOL_ERROR, message)
}

/// The outputs of a `200 {"frames": [...]}` answer.
pub fn outputs(input: &Envelope, body: &[u8]) -> Result<Vec<Envelope>, HandlerError> {
    let frames: Frames = serde_json::from_slice(body).map_err(|e| {
        protocol_error(format!(
            "the runtime's 200 answer is not {{\"frames\": [{{payload, route}}, ...]}}: {e}"
        ))
    })?;
    frames.frames.into_iter().map(|f| output(input, f)).collect()
}

/// The frame of a `downstream` event.
pub fn frame(data: &str) -> Result<Frame, HandlerError> {
    serde_json::from_str(data).map_err(|e| {
        protocol_error(format!(
            "the runtime sent a downstream event that is not a frame {{payload, route}}: {e}"
        ))
    })
}

/// One frame (of either answer kind) as an output of `input`, its route not yet advanced.
pub fn output(input: &Envelope, frame: Frame) -> Result<Envelope, HandlerError> {
    let mut done = input.route.prev().to_vec();
    done.push(input.route.curr().to_owned());
    if frame.route.prev != done {
        return Err(protocol_error(format!(
            "the runtime's frame has route.prev {:?}; after actor {:?} it must be {:?}",
            frame.route.prev,
            input.route.curr(),
            done
        )));
    }
    let mut next = frame.route.next;
    if !frame.route.curr.is_empty() {
        next.insert(0, frame.route.curr);
    } else if !next.is_empty() {
        return Err(protocol_error(format!(
            "the runtime's frame has an empty route.curr but route.next {next:?}"
        )));
    }
    let mut out = input.clone();
    out.payload = frame.payload;
    out.route = Route::new(input.route.prev().to_vec(), input.route.curr(), next);
    if let Some(headers) = frame.headers {
        out.headers = headers;
    }
    if let Some(status) = frame.status {
        out.status = Some(Box::new(status));
    }
    Ok(out)
}

/// The error of a `500` answer or an `error` event:
/// `{"error": "processing_error", "details": {message, type, mro, traceback}}`.
pub fn handler_error(body: &[u8]) -> HandlerError {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return HandlerError::new(
            "RuntimeError",
            format!("the runtime failed with an unreadable body: {}", preview(body)),
        );
    };
    let details = value.get("details").unwrap_or(&value);
    let text = |key: &str| details.get(key).and_then(Value::as_str).map(str::to_owned);
    let type_name = text("type").unwrap_or_else(|| "RuntimeError".to_owned());
    let mut mro: Vec<String> = details
        .get("mro")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if mro.is_empty() {
        mro.push(type_name.clone());
    }
    let message = text("message").unwrap_or_else(|| preview(body));
    let mut error = HandlerError::new(type_name, message).with_mro(mro);
    if let Some(traceback) = text("traceback") {
        error = error.with_traceback(traceback);
    }
    error
}

/// The error of a `400` answer: the runtime cannot parse the envelope.
pub fn parse_error(body: &[u8]) -> ErrorInfo {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = value
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("msg_parsing_error")
        .to_owned();
    let message = match value.get("details") {
        Some(Value::String(s)) => s.clone(),
        Some(details) => details
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| details.to_string(), str::to_owned),
        None => preview(body),
    };
    ErrorInfo {
        message,
        mro: vec![kind.clone()],
        type_name: kind,
        traceback: None,
    }
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn as_frame(value: Value) -> Frame {
        frame(&value.to_string()).unwrap()
    }

    fn input() -> Envelope {
        Envelope::new(
            Route::new(vec!["a".into()], "b", vec!["c".into()]),
            json!({"x": 1}),
        )
    }

    #[test]
    fn an_advanced_frame_becomes_an_unadvanced_output() {
        let frame = json!({"payload": {"y": 2}, "route": {"prev": ["a", "b"], "curr": "refine", "next": ["c"]},
                           "headers": {"k": "v"}});
        let input = input();
        let out = output(&input, as_frame(frame)).unwrap();
        assert_eq!(
            out.route,
            Route::new(vec!["a".into()], "b", vec!["refine".into(), "c".into()])
        );
        assert_eq!(out.payload, json!({"y": 2}));
        assert_eq!(out.headers["k"], "v");
        assert_eq!(out.id, input.id);

        let last = json!({"payload": null, "route": {"prev": ["a", "b"], "curr": "", "next": []}});
        assert!(output(&input, as_frame(last)).unwrap().route.next().is_empty());
    }

    #[test]
    fn a_frame_that_rewrites_history_is_refused() {
        let frame = json!({"payload": 1, "route": {"prev": ["z", "b"], "curr": "c", "next": []}});
        let err = output(&input(), as_frame(frame)).unwrap_err();
        assert_eq!(err.type_name(), PROTOCOL_ERROR);
        assert!(err.to_string().contains("[\"a\", \"b\"]"), "{err}");
        let bad = outputs(&input(), b"{\"frame\": []}").unwrap_err();
        assert_eq!(bad.type_name(), PROTOCOL_ERROR);
    }

    #[test]
    fn processing_errors_keep_type_mro_and_traceback() {
        let body = br#"{"error": "processing_error", "details": {"message": "boom", "type": "app.Transient",
                        "mro": ["app.Transient", "ConnectionError", "Exception"], "traceback": "Traceback ..."}}"#;
        let e = handler_error(body);
        assert_eq!(e.type_name(), "app.Transient");
        assert!(e.is_a("ConnectionError") && e.is_a("Transient"));
        assert_eq!(e.info().traceback.as_deref(), Some("Traceback ..."));
        assert_eq!(handler_error(b"<html>").type_name(), "RuntimeError");
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let info = parse_error(br#"{"error": "msg_parsing_error", "details": {"message": "missing id"}}"#);
        assert_eq!(
            (info.type_name.as_str(), info.message.as_str()),
            ("msg_parsing_error", "missing id")
        );
    }
}
