//! Retry configuration in the shape Asya's sidecar reads from `ASYA_RESILIENCY_POLICIES`
//! (a JSON object of named policies) and `ASYA_RESILIENCY_RULES` (a JSON array of rules),
//! turned into [`RetryPolicies`], so an actor's existing settings work unchanged.
//!
//! A policy is `{maxAttempts, backoff, initialDelay, maxInterval, maxDuration, jitter,
//! onExhausted}`, durations written the Go way (`"500ms"`, `"30s"`, `"1h30m"`):
//!
//! | `backoff` | delay before attempt n+1 |
//! |---|---|
//! | `constant` | `initialDelay` |
//! | `linear` | `n * initialDelay` |
//! | `exponential` (default) | `initialDelay * 2^(n-1)` |
//!
//! each capped at `maxInterval` (default 5 min). Defaults: `maxAttempts` 1 (no retry),
//! `initialDelay` 1 s, `jitter` false; `jitter: true` randomises away up to 20 % of each
//! delay. The policy named `default` applies to errors no rule matches; without one, such
//! errors are not retried. Rules are tried in order; an error matches a rule naming its
//! type or any type in its ancestry (see [`HandlerError::is_a`](troupe_core::HandlerError::is_a)).
//!
//! ```
//! use troupe_core::HandlerError;
//! use troupe_layers::asya_resiliency::retry_policies;
//! let policies = retry_policies(
//!     Some(r#"{"default": {"maxAttempts": 3, "initialDelay": "1s"}, "hard-fail": {"maxAttempts": 1}}"#),
//!     Some(r#"[{"errors": ["ValueError"], "policy": "hard-fail"}]"#),
//! )
//! .unwrap();
//! assert_eq!(policies.policy_for(&HandlerError::new("builtins.ValueError", "x")).max_attempts, 1);
//! assert_eq!(policies.policy_for(&HandlerError::new("KeyError", "x")).max_attempts, 3);
//! ```

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::retry::{Backoff, RetryConfigError, RetryPolicies, RetryPolicy, RetryRule};

/// Why Asya-style retry settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AsyaResiliencyError {
    /// The policies are not a JSON object of policies.
    #[error(
        "retry policies are not valid (expected a JSON object of named policies such as {{\"default\": {{\"maxAttempts\": 3}}}}): {0}"
    )]
    Policies(#[source] serde_json::Error),
    /// The rules are not a JSON array of rules.
    #[error(
        "retry rules are not valid (expected a JSON array such as [{{\"errors\": [\"ValueError\"], \"policy\": \"hard-fail\"}}]): {0}"
    )]
    Rules(#[source] serde_json::Error),
    /// A duration cannot be read.
    #[error("policy {policy:?}: {field} {value:?} is not a duration (write it like 500ms, 30s, 5m or 1h30m)")]
    Duration {
        /// The policy.
        policy: String,
        /// The field.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// The policies and rules do not fit together.
    #[error(transparent)]
    Config(#[from] RetryConfigError),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AsyaPolicy {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<AsyaBackoff>,
    #[serde(default)]
    initial_delay: Option<String>,
    #[serde(default)]
    max_interval: Option<String>,
    #[serde(default)]
    max_duration: Option<String>,
    #[serde(default)]
    jitter: bool,
    #[serde(default)]
    on_exhausted: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AsyaBackoff {
    Constant,
    Linear,
    Exponential,
}

/// Share of a delay that `jitter: true` may randomise away.
const JITTER: f64 = 0.2;

/// Builds retry policies from Asya-style JSON; either part may be absent (or blank).
pub fn retry_policies(
    policies: Option<&str>,
    rules: Option<&str>,
) -> Result<RetryPolicies, AsyaResiliencyError> {
    let mut named: HashMap<String, RetryPolicy> = HashMap::new();
    if let Some(json) = given(policies) {
        let parsed: HashMap<String, AsyaPolicy> =
            serde_json::from_str(json).map_err(AsyaResiliencyError::Policies)?;
        for (name, policy) in parsed {
            let converted = convert(&name, policy)?;
            named.insert(name, converted);
        }
    }
    let rules: Vec<RetryRule> = match given(rules) {
        Some(json) => serde_json::from_str(json).map_err(AsyaResiliencyError::Rules)?,
        None => Vec::new(),
    };
    let default = named
        .remove("default")
        .unwrap_or_else(|| RetryPolicy::constant(1, Duration::ZERO));
    Ok(RetryPolicies::from_parts(default, named, rules)?)
}

/// A setting that is present and not blank.
fn given(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

fn convert(name: &str, p: AsyaPolicy) -> Result<RetryPolicy, AsyaResiliencyError> {
    let duration =
        |field: &'static str, value: Option<String>| -> Result<Option<Duration>, AsyaResiliencyError> {
            value
                .map(|v| {
                    humantime::parse_duration(v.trim()).map_err(|_| AsyaResiliencyError::Duration {
                        policy: name.to_owned(),
                        field,
                        value: v,
                    })
                })
                .transpose()
        };
    let initial = duration("initialDelay", p.initial_delay)?.unwrap_or(Duration::from_secs(1));
    let backoff = match p.backoff.unwrap_or(AsyaBackoff::Exponential) {
        AsyaBackoff::Constant => Backoff::Constant { delay: initial },
        // n * initial = initial + initial * (n - 1)
        AsyaBackoff::Linear => Backoff::Linear {
            initial,
            step: initial,
        },
        AsyaBackoff::Exponential => Backoff::Exponential {
            initial,
            multiplier: 2.0,
        },
    };
    let defaults = RetryPolicy::default();
    Ok(RetryPolicy {
        max_attempts: p.max_attempts.unwrap_or(1),
        backoff,
        max_delay: duration("maxInterval", p.max_interval)?.unwrap_or(defaults.max_delay),
        jitter: if p.jitter { JITTER } else { 0.0 },
        max_duration: duration("maxDuration", p.max_duration)?,
        on_exhausted: p.on_exhausted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_core::HandlerError;

    #[test]
    fn backoff_shapes_follow_asya() {
        let p = retry_policies(
            Some(
                r#"{"default": {"maxAttempts": 5, "backoff": "linear", "initialDelay": "2s", "maxInterval": "5s"},
                    "fast": {"maxAttempts": 4, "backoff": "exponential", "initialDelay": "500ms", "maxDuration": "1h30m", "onExhausted": ["recover"]},
                    "flat": {"maxAttempts": 2, "backoff": "constant", "initialDelay": "3s", "jitter": true}}"#,
            ),
            Some(r#"[{"errors": ["ConnectionError"], "policy": "fast"}, {"errors": ["app.Flat"], "policy": "flat"}]"#),
        )
        .unwrap();
        let default = p.policy_for(&HandlerError::new("KeyError", "x"));
        assert_eq!(default.delay_after(1), Duration::from_secs(2));
        assert_eq!(default.delay_after(2), Duration::from_secs(4));
        assert_eq!(
            default.delay_after(3),
            Duration::from_secs(5),
            "capped by maxInterval"
        );
        let fast = p.policy_for(&HandlerError::new("ConnectionRefusedError", "x").with_mro([
            "ConnectionRefusedError",
            "ConnectionError",
            "OSError",
        ]));
        assert_eq!(fast.max_attempts, 4);
        assert_eq!(fast.delay_after(3), Duration::from_secs(2));
        assert_eq!(fast.max_duration, Some(Duration::from_secs(5400)));
        assert_eq!(fast.on_exhausted, ["recover"]);
        let flat = p.policy_for(&HandlerError::new("app.Flat", "x"));
        assert_eq!((flat.max_attempts, flat.jitter), (2, JITTER));
        assert_eq!(
            p.policy_for(&HandlerError::new("other.Flat", "x")).max_attempts,
            5,
            "a dotted rule matches only that exact type"
        );
    }

    #[test]
    fn nothing_configured_means_one_attempt() {
        let p = retry_policies(None, Some("  ")).unwrap();
        assert_eq!(p.policy_for(&HandlerError::new("E", "x")).max_attempts, 1);
    }

    #[test]
    fn mistakes_are_named() {
        let err = retry_policies(
            Some(r#"{"default": {"maxAttempts": 2, "initialDelay": "soon"}}"#),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("initialDelay \"soon\""), "{err}");
        let err = retry_policies(Some(r#"{"default": {"maxAtempts": 2}}"#), None).unwrap_err();
        assert!(err.to_string().contains("maxAtempts"), "{err}");
        let err = retry_policies(None, Some(r#"[{"errors": ["E"], "policy": "nope"}]"#)).unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }
}
