//! Every malformed message ends in `x-sump` with its reason and its original bytes; none
//! panics the runner.

#![allow(clippy::unwrap_used)] // test helpers unwrap: a failure is a test failure

mod common;

use common::Mesh;
use serde_json::json;
use troupe::layers::{RetryPolicies, RetryPolicy};
use troupe::{Envelope, Outcome, Phase, Reason, SINK, SUMP, handler_fn};

fn catalogue() -> Vec<(&'static str, Vec<u8>, Reason)> {
    let ok_route = r#""route":{"prev":[],"curr":"a","next":[]}"#;
    let p = Reason::ParseError;
    let mut c: Vec<(&'static str, Vec<u8>, Reason)> = vec![
        ("not json", b"hello world".to_vec(), p.clone()),
        ("invalid utf-8", vec![0xff, 0xfe, 0x7b, 0x00, 0x9f], p.clone()),
        ("empty body", Vec::new(), p.clone()),
        ("truncated json", br#"{"id":"t1","route":"#.to_vec(), p.clone()),
        ("json array", b"[1,2,3]".to_vec(), p.clone()),
        ("json string", br#""an envelope""#.to_vec(), p.clone()),
        ("json number", b"42".to_vec(), p.clone()),
        ("json null", b"null".to_vec(), p.clone()),
        (
            "missing id",
            format!(r#"{{{ok_route},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "empty id",
            format!(r#"{{"id":"",{ok_route},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "numeric id",
            format!(r#"{{"id":7,{ok_route},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "numeric parent_id",
            format!(r#"{{"id":"x","parent_id":3,{ok_route},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        ("missing route", br#"{"id":"x","payload":1}"#.to_vec(), p.clone()),
        (
            "route is a string",
            br#"{"id":"x","route":"a,b","payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "route.curr missing",
            br#"{"id":"x","route":{"next":["b"]},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "route.curr number",
            br#"{"id":"x","route":{"curr":1},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "route.prev not array",
            br#"{"id":"x","route":{"prev":"z","curr":"a"},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "route.next holds a number",
            br#"{"id":"x","route":{"curr":"a","next":["b",2]},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "route.next holds empty name",
            br#"{"id":"x","route":{"curr":"a","next":[""]},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "legacy current out of range",
            br#"{"id":"x","route":{"actors":["a"],"current":5},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "legacy current negative",
            br#"{"id":"x","route":{"actors":["a"],"current":-1},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "legacy current fractional",
            br#"{"id":"x","route":{"actors":["a"],"current":0.5},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "mixed route forms",
            br#"{"id":"x","route":{"curr":"a","actors":["a"],"current":0},"payload":1}"#.to_vec(),
            p.clone(),
        ),
        (
            "missing payload",
            format!(r#"{{"id":"x",{ok_route}}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "headers is an array",
            format!(r#"{{"id":"x",{ok_route},"headers":[1],"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "status is a string",
            format!(r#"{{"id":"x",{ok_route},"status":"ok","payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "unknown status.phase",
            format!(r#"{{"id":"x",{ok_route},"status":{{"phase":"exploded"}},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "status.attempt a string",
            format!(r#"{{"id":"x",{ok_route},"status":{{"attempt":"2"}},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "status.attempt negative",
            format!(r#"{{"id":"x",{ok_route},"status":{{"attempt":-2}},"payload":1}}"#).into_bytes(),
            p.clone(),
        ),
        (
            "bad status.deadline_at",
            format!(r#"{{"id":"x",{ok_route},"status":{{"deadline_at":"tomorrow"}},"payload":1}}"#)
                .into_bytes(),
            p.clone(),
        ),
        (
            "nesting beyond the parser's limit",
            format!(
                r#"{{"id":"x",{ok_route},"payload":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            p.clone(),
        ),
        (
            "over the size limit",
            format!(r#"{{"id":"big",{ok_route},"payload":"{}"}}"#, "x".repeat(70_000)).into_bytes(),
            p.clone(),
        ),
        (
            "route for another actor",
            br#"{"id":"x","route":{"curr":"b"},"payload":1}"#.to_vec(),
            Reason::RouteMismatch,
        ),
        (
            "route already finished",
            br#"{"id":"x","route":{"prev":["a"],"curr":""},"payload":1}"#.to_vec(),
            Reason::RouteMismatch,
        ),
    ];
    c.sort_by(|a, b| a.1.cmp(&b.1));
    c.dedup_by(|a, b| a.1 == b.1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_message_ends_in_sump_with_reason_and_bytes() {
    let cases = catalogue();
    assert!(cases.len() >= 30, "bodies must be distinct to be matched back");
    let mut mesh = Mesh::new();
    let mut cfg = mesh.runner_config("a");
    cfg.limits.max_body_bytes = 64 * 1024;
    mesh.spawn_with(
        cfg,
        RetryPolicies::new(RetryPolicy::constant(1, std::time::Duration::ZERO)),
        handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) }),
    );
    for (_, body, _) in &cases {
        mesh.send_raw("a", body.clone()).await;
    }
    // A valid envelope after all of them still goes through: the runner survived.
    let good = Envelope::new(troupe::Route::through(["a"]), json!("fine"));
    mesh.send(&good).await;
    let done = mesh.collect(SINK, 1).await;
    assert_eq!(done[0].id, good.id);

    let sumped = mesh.collect(SUMP, cases.len()).await;
    mesh.assert_quiet(SUMP, std::time::Duration::from_millis(200))
        .await;
    for (name, body, reason) in &cases {
        let found = sumped.iter().find(|s| holds(s, body, reason));
        let Some(s) = found else {
            panic!("case {name:?}: no x-sump envelope holds its content")
        };
        let status = s.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(Phase::Failed), "{name}");
        assert_eq!(status.reason.as_ref(), Some(reason), "{name}");
        let error = status.error.as_ref().unwrap();
        assert!(!error.message.is_empty(), "{name}: the error says why");
    }
    mesh.shutdown().await;
}

/// Whether `sump` carries `body`. An undecodable body is wrapped byte for byte; a decodable
/// envelope that could not be routed is passed on whole, with only its status and
/// `traceparent` set by the mesh.
fn holds(sump: &Envelope, body: &[u8], reason: &Reason) -> bool {
    if *reason == Reason::ParseError {
        return troupe::core::sump::original_bytes(sump).as_deref() == Some(body);
    }
    let Ok(original) = Envelope::from_slice(body, &Default::default()) else {
        return false;
    };
    let mut passed_on = sump.clone();
    // The mesh sets the status and continues the trace; everything else is the original.
    passed_on.status = original.status.clone();
    passed_on.headers.shift_remove("traceparent");
    passed_on == original
}
