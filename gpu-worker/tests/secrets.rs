//! Credentials never reach the output of the shipped `troupe-gpu-worker`: a password
//! planted in its broker and store URLs, through failed connects (nobody listening,
//! credentials refused) and successful ones (the worker then stops at the missing model),
//! at debug log level. Every line of stdout and stderr is searched for it.
//!
//! Needs NATS (4222), RabbitMQ (5672), Redis (6379) and PostgreSQL (5432) on 127.0.0.1:
//! `bash .ci/run` starts them.
#![cfg(all(feature = "torch", feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../tests/support/output_scan.rs"]
mod output_scan;

use std::time::Duration;

use output_scan::{PASSWORD, assert_clean};

/// The worker for actor `a` with `args` and `env`, its model missing: it connects (or
/// fails to), then stops.
fn worker(args: &[&str], env: &[(&str, String)]) -> String {
    let mut all = vec![
        "--actor",
        "a",
        "--model",
        "/nonexistent/model.pt",
        "--device",
        "cpu",
        "--input-shape",
        "[4]",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    output_scan::run(
        env!("CARGO_BIN_EXE_troupe-gpu-worker"),
        &all,
        env,
        Duration::from_secs(60),
    )
}

#[test]
fn broker_passwords_stay_out_of_the_output() {
    let unreachable = format!("nats://troupe:{PASSWORD}@127.0.0.1:1");
    // A server without authentication takes any credentials: connected.
    let connected = format!("nats://troupe:{PASSWORD}@127.0.0.1:4222");
    let refused = format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f");
    for (case, args) in [
        (
            "NATS, nothing listening",
            ["--transport", "nats", "--nats-url", &unreachable],
        ),
        (
            "NATS, connected",
            ["--transport", "nats", "--nats-url", &connected],
        ),
        (
            "RabbitMQ, credentials refused",
            ["--transport", "amqp", "--amqp-url", &refused],
        ),
    ] {
        let out = worker(&args, &[]);
        assert!(!out.is_empty(), "{case}: the worker says why it stopped");
        assert_clean(case, &out, PASSWORD);
    }
}

#[test]
fn store_passwords_stay_out_of_the_output() {
    for url in [
        format!("redis://:{PASSWORD}@127.0.0.1:6379"),
        format!("redis://troupe:{PASSWORD}@127.0.0.1:1"),
        format!(
            "postgres://nobody{}:{PASSWORD}@127.0.0.1:5432/test",
            std::process::id()
        ),
        format!("postgresql://troupe:{PASSWORD}@127.0.0.1:1/troupe"),
    ] {
        let out = worker(&["--transport", "nats"], &[("TROUPE_STORE", url)]);
        assert!(out.contains("Redis") || out.contains("PostgreSQL"), "{out}");
        assert_clean("--store", &out, PASSWORD);
    }
}
