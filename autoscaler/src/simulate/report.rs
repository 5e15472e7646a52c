//! The figures of a run and the markdown table that compares them.

use std::time::Duration;

use super::pods::Outcome;

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Scale-ups from zero replicas.
    pub activations: usize,
    /// From the first envelope at zero replicas to the scale-up decision: worst and mean.
    pub to_first_pod: Option<(Duration, Duration)>,
    /// From the first envelope at zero replicas to the first ready pod: worst and mean.
    pub to_first_ready: Option<(Duration, Duration)>,
    /// Median wait (arrival to the start of processing).
    pub wait_p50: Option<Duration>,
    /// 99th percentile wait.
    pub wait_p99: Option<Duration>,
    /// Longest wait.
    pub wait_max: Option<Duration>,
    /// The integral of requested pods (starting and ready) over time, in seconds.
    pub replica_seconds: f64,
    /// Most pods requested at once.
    pub peak: u32,
    /// Envelopes processed.
    pub envelopes: usize,
    /// Envelopes taken back from a busy pod by a scale-down.
    pub requeued: u64,
}

impl Summary {
    /// The figures of `outcome`.
    pub fn of(outcome: &Outcome) -> Self {
        let mut waits = outcome.waits.clone();
        waits.sort_unstable();
        let decided: Vec<Duration> = outcome
            .activations
            .iter()
            .map(|a| a.decided.saturating_sub(a.arrived))
            .collect();
        let ready: Vec<Duration> = outcome
            .activations
            .iter()
            .filter_map(|a| a.ready.map(|ready| ready.saturating_sub(a.arrived)))
            .collect();
        Self {
            activations: outcome.activations.len(),
            to_first_pod: worst_and_mean(&decided),
            to_first_ready: worst_and_mean(&ready),
            wait_p50: percentile(&waits, 50.0),
            wait_p99: percentile(&waits, 99.0),
            wait_max: waits.last().copied(),
            replica_seconds: outcome.replica_seconds.as_secs_f64(),
            peak: outcome.peak,
            envelopes: waits.len(),
            requeued: outcome.requeued,
        }
    }
}

/// The largest and the mean of `values`.
fn worst_and_mean(values: &[Duration]) -> Option<(Duration, Duration)> {
    let worst = values.iter().max().copied()?;
    let count = u32::try_from(values.len()).ok()?;
    let total: Duration = values.iter().sum();
    Some((worst, total / count))
}

/// The `p`-th percentile of sorted `values`, by nearest rank: the smallest value with at
/// least `p` % of the values at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// A policy's name, what it is, and its figures: one row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The policy.
    pub policy: String,
    /// Its figures.
    pub summary: Summary,
}

/// The columns of the table, in order.
const HEADER: [&str; 9] = [
    "policy",
    "time to first pod (worst / mean)",
    "time to first ready pod (worst / mean)",
    "wait p50",
    "wait p99",
    "wait max",
    "replica-seconds",
    "peak replicas",
    "envelopes (re-queued)",
];

/// The markdown table comparing `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    out.push_str(&line(&HEADER.map(str::to_owned)));
    out.push_str(&line(&HEADER.map(|_| "---".to_owned())));
    for row in rows {
        let s = &row.summary;
        let pair = |pair: Option<(Duration, Duration)>| match pair {
            Some((worst, mean)) => format!("{} / {}", seconds(worst), seconds(mean)),
            None => "no activation".to_owned(),
        };
        let cells = [
            row.policy.clone(),
            format!("{} ({}×)", pair(s.to_first_pod), s.activations),
            pair(s.to_first_ready),
            s.wait_p50.map_or_else(|| "-".to_owned(), seconds),
            s.wait_p99.map_or_else(|| "-".to_owned(), seconds),
            s.wait_max.map_or_else(|| "-".to_owned(), seconds),
            format!("{:.0}", s.replica_seconds),
            s.peak.to_string(),
            format!("{} ({})", s.envelopes, s.requeued),
        ];
        out.push_str(&line(&cells));
    }
    out
}

/// `d` in seconds, with two decimals below 10 s and one above.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::pods::Activation;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 50.0), Some(ms(50)));
        assert_eq!(percentile(&values, 99.0), Some(ms(99)));
        assert_eq!(percentile(&values, 100.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[ms(1), ms(2), ms(3)], 50.0), Some(ms(2)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_summary_has_worst_and_mean_activation_delays() {
        let outcome = Outcome {
            samples: Vec::new(),
            waits: vec![ms(300), ms(100), ms(200)],
            activations: vec![
                Activation {
                    arrived: ms(1000),
                    decided: ms(1100),
                    ready: Some(ms(2100)),
                },
                Activation {
                    arrived: ms(5000),
                    decided: ms(5300),
                    ready: None,
                },
            ],
            replica_seconds: ms(12_400),
            peak: 3,
            requeued: 1,
            end: ms(9000),
        };
        let summary = Summary::of(&outcome);
        assert_eq!(summary.to_first_pod, Some((ms(300), ms(200))));
        assert_eq!(summary.to_first_ready, Some((ms(1100), ms(1100))));
        assert_eq!(summary.wait_p50, Some(ms(200)));
        assert_eq!(summary.wait_max, Some(ms(300)));
        let table = table(&[Row {
            policy: "ours".into(),
            summary,
        }]);
        assert!(
            table.contains("| ours | 0.30 s / 0.20 s (2×) | 1.10 s / 1.10 s | 0.20 s | 0.30 s | 0.30 s | 12 | 3 | 3 (1) |"),
            "{table}"
        );
    }
}
