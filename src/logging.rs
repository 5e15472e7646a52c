//! Logs for troupe's programs (feature `cli`): one set-up for `troupe`, `troupe-autoscaler`
//! and `troupe-gpu-worker`, so they read the same variables.
//!
//! - `RUST_LOG` picks what is logged (`tracing_subscriber::EnvFilter` syntax, e.g.
//!   `info,troupe_core=debug`); each program passes its own default.
//! - `TROUPE_LOG_FORMAT` picks the form: `text` (the default, for people) or `json` (one
//!   object per line, for a cluster's log collector).
//!
//! Logs go to stderr, so a program's stdout stays its own (the demo's report, a CRD).
//! A bad value of either variable does not stop the program: the default is used and a
//! warning says which value was ignored.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::str::FromStr;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The variable that picks the log format.
pub const LOG_FORMAT_ENV: &str = "TROUPE_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (the message and the
    /// structured fields: envelope id, actor, queue), `target` and the span.
    Json,
}

/// A `TROUPE_LOG_FORMAT` value other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format {0:?}: expected `text` or `json`")]
pub struct UnknownLogFormat(String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(UnknownLogFormat(value.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Installs the global subscriber from `RUST_LOG` and `TROUPE_LOG_FORMAT`, writing to
/// stderr; `default_filter` applies when `RUST_LOG` is unset or invalid. Does nothing if a
/// subscriber is already installed (a test harness's, say).
///
/// ```
/// troupe::logging::init("info");
/// tracing::info!(actor = "embed", "started");
/// ```
pub fn init(default_filter: &str) {
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(value) => match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(default_filter), Some((value, error))),
        },
        Err(_) => (EnvFilter::new(default_filter), None),
    };
    let (format, bad_format) = match std::env::var(LOG_FORMAT_ENV) {
        Ok(value) => match value.parse::<LogFormat>() {
            Ok(format) => (format, None),
            Err(error) => (LogFormat::Text, Some(error)),
        },
        Err(_) => (LogFormat::Text, None),
    };
    // Colours only for a person at a terminal: a log collector would keep the escape codes.
    let ansi = std::io::stderr().is_terminal();
    if tracing::subscriber::set_global_default(subscriber(format, filter, ansi, std::io::stderr)).is_err() {
        return;
    }
    if let Some((value, error)) = bad_filter {
        tracing::warn!(rust_log = %value, %error, default = default_filter, "ignoring RUST_LOG");
    }
    if let Some(error) = bad_format {
        tracing::warn!(%error, "ignoring {LOG_FORMAT_ENV}; logging as text");
    }
}

/// The subscriber [`init`] installs, writing to `writer`, with ANSI colours in text if
/// `ansi`; for tests and for programs that install it themselves (with
/// `tracing::subscriber::with_default`, say).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w, Writer: Write> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Self;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn log_one_line(format: LogFormat) -> String {
        let captured = Captured::default();
        let subscriber = subscriber(format, EnvFilter::new("info"), false, captured.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("filtered out");
            tracing::info!(envelope_id = "e-1", actor = "infer", "processed");
        });
        let bytes = captured.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn formats_parse_and_unknown_ones_are_named() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(" JSON ".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("".parse(), Ok(LogFormat::Text));
        let error = "logfmt".parse::<LogFormat>().err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("unknown log format \"logfmt\": expected `text` or `json`")
        );
    }

    #[test]
    fn json_writes_one_object_per_line_with_the_structured_fields() {
        let output = log_one_line(LogFormat::Json);
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 1, "{output}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "processed");
        assert_eq!(line["fields"]["envelope_id"], "e-1");
        assert_eq!(line["fields"]["actor"], "infer");
    }

    #[test]
    fn text_keeps_the_fields_readable() {
        let output = log_one_line(LogFormat::Text);
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(
            output.contains("processed envelope_id=\"e-1\" actor=\"infer\""),
            "{output}"
        );
    }
}
