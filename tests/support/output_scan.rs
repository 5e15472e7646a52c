//! Runs a shipped binary and searches every line of its output for a planted secret: shared
//! by the secrets tests of every binary (`bin/tests/secrets.rs`,
//! `gpu-worker/tests/secrets.rs`).
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The password every secrets test plants.
pub const PASSWORD: &str = "Pl4nted-S3cret";

/// Runs `program args` with `env` at debug log level, stopping it (by its id) after `limit`
/// if it has not ended by itself; returns stdout and stderr together.
pub fn run(program: &str, args: &[&str], env: &[(&str, String)], limit: Duration) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the binary starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait for the binary").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("the binary's output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test on the first line of `output` that shows `secret`.
pub fn assert_clean(case: &str, output: &str, secret: &str) {
    for line in output.lines() {
        assert!(!line.contains(secret), "{case}: the secret shows in: {line}");
    }
}
