//! The `troupe demo` command as a user runs it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn troupe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_troupe"))
}

#[test]
fn demo_prints_envelopes_and_a_summary_with_real_latencies() {
    let out = troupe()
        .args(["demo", "--count", "30", "--latency", "1ms"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let finished = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(finished >= 30, "every finished envelope is printed:\n{stdout}");
    assert!(stdout.contains("tokenize -> score -> judge"), "{stdout}");
    assert!(stdout.contains("envelopes out (x-sink)"), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    // Regression: latencies were all 0.00 ms when the histogram clamped instead of growing.
    let p50: f64 = stdout
        .split("p50 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(p50 > 0.0, "p50 latency must be measured: {stdout}");
}

#[test]
fn demo_survives_a_closed_stdout() {
    // Regression: `troupe demo | head -1` panicked with "failed printing to stdout".
    let mut child = troupe()
        .args(["demo", "--count", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("ok "), "{first}");
    // The reader is gone now; the demo must finish on its own without panicking.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn demo_rejects_bad_flags_with_a_clear_message() {
    let out = troupe().args(["demo", "--fail-rate", "1.5"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-rate must be in [0, 1)"));
}
