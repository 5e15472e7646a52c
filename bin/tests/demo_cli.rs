//! The `troupe demo` command as a user runs it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
fn worker_threads_run_the_command_on_that_many_threads() {
    let out = troupe()
        .args(["demo", "--count", "20", "--worker-threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 failed"));
    let none = troupe().args(["--worker-threads", "0", "demo"]).output().unwrap();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("--worker-threads"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

#[test]
fn demo_rejects_bad_flags_with_a_clear_message() {
    let out = troupe().args(["demo", "--fail-rate", "1.5"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-rate must be in [0, 1)"));
}

/// A plain HTTP/1.0 GET, enough to read a small local endpoint.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn demo_serves_metrics_while_it_runs() {
    let mut child = troupe()
        .args(["demo", "--count", "3000", "--latency", "20ms", "--quiet"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("metrics at http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address announced: {line:?}"))
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let metrics = http_get(&addr, "/metrics");
    let health = http_get(&addr, "/healthz");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
        "{metrics}"
    );
    for family in [
        "asya_actor_messages_received_total{actor=\"tokenize\"}",
        "asya_actor_processing_duration_seconds_bucket",
        "asya_actor_active_messages",
    ] {
        assert!(metrics.contains(family), "missing {family} in:\n{metrics}");
    }
    assert!(health.contains("200") && health.ends_with("ok"), "{health}");
}

#[test]
fn demo_logs_one_json_object_per_line_when_asked() {
    let out = troupe()
        .args(["demo", "--count", "10", "--latency", "1ms"])
        .env("RUST_LOG", "info")
        .env("TROUPE_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let started: Vec<&str> = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "runner started")
        .filter_map(|line| line["fields"]["actor"].as_str())
        .collect();
    assert!(
        started.contains(&"tokenize"),
        "no runner started for tokenize in:\n{stderr}"
    );
}
