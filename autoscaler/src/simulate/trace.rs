//! The arrival trace: segments of evenly spaced arrivals, one per line.
//!
//! ```text
//! # start_seconds duration_seconds rate_per_second
//! 45.3   30   4      # 120 envelopes, one every 0.25 s from t = 45.3 s
//! 452.1  10   150    # a spike
//! 2300   100  0      # nothing: only makes the trace last until t = 2400 s
//! ```
//!
//! A segment `start duration rate` has `round(duration × rate)` envelopes, arriving at
//! `start + i / rate` seconds for `i = 0, 1, …`. The three fields are decimal numbers
//! separated by white space; `start` and `rate` may be 0, `duration` must be positive.
//! Segments may overlap (a spike on top of a trickle) and come in any order. `#` starts a
//! comment; blank lines are ignored. The trace lasts until the latest `start + duration`.

use std::fmt;
use std::time::Duration;

/// Most envelopes a trace may hold (keeps a typo such as `rate 5e9` from exhausting memory).
pub const MAX_ENVELOPES: u64 = 10_000_000;

/// Latest time, in seconds, a segment may start or last (about 115 days).
pub const MAX_SECONDS: f64 = 1e7;

/// Arrivals, in order, and when the trace ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Arrival time of each envelope, sorted.
    pub arrivals: Vec<Duration>,
    /// The latest end of a segment; the simulation runs at least this long.
    pub end: Duration,
}

impl Trace {
    /// Parses a trace (see the module documentation for the format).
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut arrivals = Vec::new();
        let mut end = Duration::ZERO;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |problem| TraceError { line, problem };
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [start, duration, rate] = fields[..] else {
                return Err(fail(Problem::FieldCount(fields.len())));
            };
            let start = number(Field::Start, start).map_err(fail)?;
            let duration = number(Field::Duration, duration).map_err(fail)?;
            let rate = number(Field::Rate, rate).map_err(fail)?;
            if duration <= 0.0 {
                return Err(fail(Problem::ZeroDuration));
            }
            if start + duration > MAX_SECONDS {
                return Err(fail(Problem::TooLate));
            }
            let count = (duration * rate).round();
            if count + arrivals.len() as f64 > MAX_ENVELOPES as f64 {
                return Err(fail(Problem::TooMany));
            }
            // Exact: `count` is a whole number no greater than MAX_ENVELOPES.
            let count = count as u64;
            arrivals.extend((0..count).map(|i| seconds(start + i as f64 / rate)));
            end = end.max(seconds(start + duration));
        }
        arrivals.sort_unstable();
        Ok(Self { arrivals, end })
    }

    /// A trace of the given arrivals (sorted here) that ends at the last of them or `end`.
    pub fn from_arrivals(mut arrivals: Vec<Duration>, end: Duration) -> Self {
        arrivals.sort_unstable();
        let end = arrivals.last().map_or(end, |last| end.max(*last));
        Self { arrivals, end }
    }
}

/// Seconds (checked finite, non-negative and at most [`MAX_SECONDS`]) as a duration.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

/// A field parsed as a finite, non-negative number (no greater than [`MAX_SECONDS`] for
/// times).
fn number(field: Field, text: &str) -> Result<f64, Problem> {
    let value: f64 = text.parse().map_err(|_| Problem::NotANumber {
        field,
        text: text.to_owned(),
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(Problem::OutOfRange {
            field,
            text: text.to_owned(),
        });
    }
    if value > MAX_SECONDS && field != Field::Rate {
        return Err(Problem::TooLate);
    }
    Ok(value)
}

/// A line of the trace that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct TraceError {
    /// The line, counting from 1.
    pub line: usize,
    /// What is wrong with it.
    pub problem: Problem,
}

/// The three fields of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `start_seconds`.
    Start,
    /// `duration_seconds`.
    Duration,
    /// `rate_per_second`.
    Rate,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Start => "start_seconds",
            Field::Duration => "duration_seconds",
            Field::Rate => "rate_per_second",
        })
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// Not three fields.
    #[error("expected 3 fields `start_seconds duration_seconds rate_per_second`, found {0}")]
    FieldCount(usize),
    /// A field that is not a number.
    #[error("{field} `{text}` is not a number")]
    NotANumber {
        /// Which field.
        field: Field,
        /// Its text.
        text: String,
    },
    /// A negative or infinite field.
    #[error("{field} `{text}` must be a finite number, 0 or more")]
    OutOfRange {
        /// Which field.
        field: Field,
        /// Its text.
        text: String,
    },
    /// `duration_seconds` of 0.
    #[error("duration_seconds must be more than 0")]
    ZeroDuration,
    /// A segment ending after [`MAX_SECONDS`].
    #[error("the segment ends after {MAX_SECONDS} s")]
    TooLate,
    /// More than [`MAX_ENVELOPES`] in all.
    #[error("the trace would hold more than {MAX_ENVELOPES} envelopes")]
    TooMany,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn segments_become_evenly_spaced_sorted_arrivals() -> Result<(), TraceError> {
        let trace = Trace::parse(
            "# a comment\n\
             \n\
             10 1 4    # four, 250 ms apart\n\
             \t 10.1  1 2\n\
             30 5 0\n",
        )?;
        assert_eq!(
            trace.arrivals,
            vec![
                ms(10_000),
                ms(10_100),
                ms(10_250),
                ms(10_500),
                ms(10_600),
                ms(10_750)
            ]
        );
        assert_eq!(trace.end, ms(35_000));
        Ok(())
    }

    #[test]
    fn the_count_is_rounded() -> Result<(), TraceError> {
        assert_eq!(Trace::parse("0 1 2.6")?.arrivals.len(), 3);
        assert_eq!(Trace::parse("0 1 2.4")?.arrivals.len(), 2);
        assert!(Trace::parse("# nothing\n")?.arrivals.is_empty());
        Ok(())
    }

    #[test]
    fn bad_lines_are_named() {
        let error = |text: &str| Trace::parse(text).err();
        let at = |line, problem| Some(TraceError { line, problem });
        assert_eq!(error("0 1 1\n\n0 1"), at(3, Problem::FieldCount(2)));
        assert_eq!(error("0 1 1 1"), at(1, Problem::FieldCount(4)));
        assert_eq!(
            error("# x\nsoon 1 1"),
            at(
                2,
                Problem::NotANumber {
                    field: Field::Start,
                    text: "soon".into()
                }
            )
        );
        assert_eq!(
            error("0 1 -3"),
            at(
                1,
                Problem::OutOfRange {
                    field: Field::Rate,
                    text: "-3".into()
                }
            )
        );
        assert_eq!(
            error("0 inf 3"),
            at(
                1,
                Problem::OutOfRange {
                    field: Field::Duration,
                    text: "inf".into()
                }
            )
        );
        assert!(matches!(error("0 NaN 3"), Some(TraceError { line: 1, .. })));
        assert_eq!(error("5 0 3"), at(1, Problem::ZeroDuration));
        assert_eq!(error("9999999 2 0"), at(1, Problem::TooLate));
        assert_eq!(error("0 10 5e9"), at(1, Problem::TooMany));
        let message = error("0 1 1\nx 1 1").map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "line 2: start_seconds `x` is not a number");
    }

    #[test]
    fn a_trace_from_arrivals_is_sorted_and_lasts_to_the_last() {
        let trace = Trace::from_arrivals(vec![ms(5), ms(1)], ms(3));
        assert_eq!(trace.arrivals, vec![ms(1), ms(5)]);
        assert_eq!(trace.end, ms(5));
    }
}
