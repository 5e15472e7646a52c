//! The retry layer: turns handler failures into delayed redeliveries (protocol §2.6).
//!
//! A failure never sleeps in a worker. The layer answers with a [`Dispatch`] that republishes
//! the input to this actor's own queue with a delay, `status.phase = retrying`,
//! `status.attempt + 1` and the error in `status.error`; the runner publishes it and acks the
//! original. When attempts (or `maxDuration`, counted from the `x-asya-first-attempt` header)
//! are used up, the envelope goes to the policy's `onExhausted` actors (`PolicyRouted`) or,
//! without any, to `x-sink` as failed (`PolicyExhausted`). The payload is never changed.
//!
//! Policies are picked by rules matched against the error's type and ancestry (`mro`), so a
//! Python `ConnectionError` can be retried ten times while a `ValueError` fails at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::{BoxFuture, FutureExt};
use rand::Rng;
use serde::Deserialize;
use tower::{Layer, Service};
use troupe_core::headers::FIRST_ATTEMPT;
use troupe_core::{Dispatch, Envelope, HandlerError, Phase, Publication, Reason, SINK};

use crate::route::to_destination;

/// How the delay grows between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Backoff {
    /// The same delay every time.
    Constant {
        /// The delay.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// `initial + step * (attempt - 1)`.
    Linear {
        /// Delay after the first failure.
        #[serde(with = "humantime_serde")]
        initial: Duration,
        /// Added per further failure.
        #[serde(with = "humantime_serde")]
        step: Duration,
    },
    /// `initial * multiplier ^ (attempt - 1)`.
    Exponential {
        /// Delay after the first failure.
        #[serde(with = "humantime_serde")]
        initial: Duration,
        /// Growth factor (≥ 1).
        multiplier: f64,
    },
}

/// One retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay growth.
    #[serde(default = "default_backoff")]
    pub backoff: Backoff,
    /// Upper bound of any single delay.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// Fraction (0..=1) of each delay that is randomised away, to spread retries out.
    #[serde(default)]
    pub jitter: f64,
    /// Give up once this long has passed since the first attempt at this actor.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Actors to route an exhausted envelope to, instead of failing it into `x-sink`.
    #[serde(default)]
    pub on_exhausted: Vec<String>,
}

fn default_backoff() -> Backoff {
    Backoff::Exponential {
        initial: Duration::from_secs(1),
        multiplier: 2.0,
    }
}

fn default_max_delay() -> Duration {
    Duration::from_secs(300)
}

impl Default for RetryPolicy {
    /// 3 attempts, exponential backoff from 1 s doubling, capped at 5 min, 10 % jitter.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: default_backoff(),
            max_delay: default_max_delay(),
            jitter: 0.1,
            max_duration: None,
            on_exhausted: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` with constant `delay` and no jitter.
    pub fn constant(max_attempts: u32, delay: Duration) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Constant { delay },
            jitter: 0.0,
            ..Self::default()
        }
    }

    /// Sends exhausted envelopes on to `actors`.
    pub fn on_exhausted<I: IntoIterator<Item = S>, S: Into<String>>(mut self, actors: I) -> Self {
        self.on_exhausted = actors.into_iter().map(Into::into).collect();
        self
    }

    /// The delay before the attempt after `failed_attempt` (1-based), jitter applied.
    pub fn delay_after(&self, failed_attempt: u32) -> Duration {
        let n = failed_attempt.saturating_sub(1);
        let base = match self.backoff {
            Backoff::Constant { delay } => delay,
            Backoff::Linear { initial, step } => initial.saturating_add(step.saturating_mul(n)),
            Backoff::Exponential { initial, multiplier } => {
                let factor = multiplier.max(1.0).powi(n.min(64) as i32);
                Duration::try_from_secs_f64(initial.as_secs_f64() * factor).unwrap_or(self.max_delay)
            }
        };
        let capped = base.min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return capped;
        }
        let cut = rand::rng().random_range(0.0..=jitter);
        capped.mul_f64(1.0 - cut)
    }
}

/// A rule: errors of any of these types (or subtypes, via `mro`) use policy `policy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryRule {
    /// Error type names to match.
    pub errors: Vec<String>,
    /// Name of the policy to apply.
    pub policy: String,
}

/// Why a retry configuration is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryConfigError {
    /// A rule names a policy that does not exist.
    #[error("retry rule for {errors:?} names policy {policy:?}, which is not defined (defined: {defined:?})")]
    UnknownPolicy {
        /// The rule's errors.
        errors: Vec<String>,
        /// The missing policy.
        policy: String,
        /// Policies that exist.
        defined: Vec<String>,
    },
    /// A policy allows no attempt at all.
    #[error("retry policy {policy:?} has maxAttempts = 0; it must be at least 1")]
    ZeroAttempts {
        /// The policy.
        policy: String,
    },
    /// A policy's jitter is outside 0..=1.
    #[error("retry policy {policy:?} has jitter {jitter}; it must be between 0 and 1")]
    BadJitter {
        /// The policy.
        policy: String,
        /// The value given.
        jitter: f64,
    },
}

/// Named policies, the rules that pick them, and the default for unmatched errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicies {
    default: RetryPolicy,
    named: HashMap<String, RetryPolicy>,
    rules: Vec<RetryRule>,
}

impl RetryPolicies {
    /// Every failure uses `default`.
    pub fn new(default: RetryPolicy) -> Self {
        Self {
            default,
            ..Self::default()
        }
    }

    /// Builds and checks a full configuration.
    pub fn from_parts(
        default: RetryPolicy,
        named: HashMap<String, RetryPolicy>,
        rules: Vec<RetryRule>,
    ) -> Result<Self, RetryConfigError> {
        for (name, p) in
            std::iter::once(("default", &default)).chain(named.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if p.max_attempts == 0 {
                return Err(RetryConfigError::ZeroAttempts { policy: name.into() });
            }
            if !(0.0..=1.0).contains(&p.jitter) {
                return Err(RetryConfigError::BadJitter {
                    policy: name.into(),
                    jitter: p.jitter,
                });
            }
        }
        for rule in &rules {
            if rule.policy != "default" && !named.contains_key(&rule.policy) {
                let mut defined: Vec<String> = named.keys().cloned().collect();
                defined.sort();
                return Err(RetryConfigError::UnknownPolicy {
                    errors: rule.errors.clone(),
                    policy: rule.policy.clone(),
                    defined,
                });
            }
        }
        Ok(Self {
            default,
            named,
            rules,
        })
    }

    /// Adds a named policy and a rule sending `errors` to it.
    pub fn with_rule<I, S>(mut self, errors: I, name: &str, policy: RetryPolicy) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.named.insert(name.to_owned(), policy);
        self.rules.push(RetryRule {
            errors: errors.into_iter().map(Into::into).collect(),
            policy: name.to_owned(),
        });
        self
    }

    /// The policy for `error`: the first matching rule's, else the default.
    pub fn policy_for(&self, error: &HandlerError) -> &RetryPolicy {
        self.rules
            .iter()
            .find(|r| r.errors.iter().any(|e| error.is_a(e)))
            .and_then(|r| self.named.get(&r.policy))
            .unwrap_or(&self.default)
    }
}

/// Applies [`RetryPolicies`] for actor `actor`. See the module docs.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    actor: Arc<str>,
    policies: Arc<RetryPolicies>,
}

impl RetryLayer {
    /// Retries for the actor named `actor`.
    pub fn new(actor: impl Into<Arc<str>>, policies: RetryPolicies) -> Self {
        Self {
            actor: actor.into(),
            policies: Arc::new(policies),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            actor: self.actor.clone(),
            policies: self.policies.clone(),
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    actor: Arc<str>,
    policies: Arc<RetryPolicies>,
}

impl<S> Service<Envelope> for Retry<S>
where
    S: Service<Envelope, Response = Dispatch>,
    S::Error: Into<HandlerError>,
    S::Future: Send + 'static,
{
    type Response = Dispatch;
    /// A failed call becomes a retry, reroute or failure dispatch, except an
    /// [unavailable](HandlerError::unavailable) handler: that error is returned as is, so
    /// the runner holds the delivery until the handler answers, spending none of its
    /// attempts.
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Dispatch, HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let started = Utc::now();
        // The input is needed again if the handler fails; the handler owns its copy.
        let input = env.clone();
        let call = self.inner.call(env);
        let actor = self.actor.clone();
        let policies = self.policies.clone();
        async move {
            match call.await {
                Ok(dispatch) => Ok(dispatch),
                Err(error) => {
                    let error: HandlerError = error.into();
                    if error.is_unavailable() {
                        tracing::warn!(envelope.id = %input.id, actor = %actor, %error, "handler unavailable; the runner holds the delivery until it answers");
                        return Err(error);
                    }
                    Ok(on_failure(&actor, &policies, input, error, started))
                }
            }
        }
        .boxed()
    }
}

fn on_failure(
    actor: &str,
    policies: &RetryPolicies,
    mut env: Envelope,
    error: HandlerError,
    started: DateTime<Utc>,
) -> Dispatch {
    let policy = policies.policy_for(&error);
    let attempt = env.attempt_at(actor);
    let recorded = env
        .header_str(FIRST_ATTEMPT)
        .and_then(|h| DateTime::parse_from_rfc3339(h).ok())
        .map(|t| t.with_timezone(&Utc));
    let first_attempt = recorded.unwrap_or(started);
    let out_of_time = policy
        .max_duration
        .is_some_and(|max| (Utc::now() - first_attempt).to_std().unwrap_or_default() >= max);
    let exhausted = attempt >= policy.max_attempts || out_of_time;
    let reason = if error.is_a(HandlerError::TIMEOUT) {
        Reason::Timeout
    } else {
        Reason::RuntimeError
    };
    tracing::info!(
        envelope.id = %env.id, actor, attempt, max_attempts = policy.max_attempts, exhausted,
        error = %error, "handler failed"
    );

    let status = env.status_mut();
    status.error = Some(error.into_info());
    status.max_attempts = Some(policy.max_attempts);
    if !exhausted {
        status.attempt = Some(attempt + 1);
        status.mark(Phase::Retrying, Some(reason), actor);
        // Written when missing or unreadable, so `maxDuration` counts from a real time.
        if recorded.is_none() {
            env.headers
                .insert(FIRST_ATTEMPT.to_owned(), first_attempt.to_rfc3339().into());
        }
        return Dispatch::one(Publication {
            actor: actor.to_owned(),
            envelope: env,
            delay: Some(policy.delay_after(attempt)),
        });
    }

    status.attempt = Some(attempt);
    env.headers.shift_remove(FIRST_ATTEMPT);
    if !policy.on_exhausted.is_empty() && env.route.divert(&policy.on_exhausted).is_ok() {
        env.status_mut()
            .mark(Phase::Pending, Some(Reason::PolicyRouted), actor);
        return Dispatch::one(to_destination(actor, env));
    }
    env.status_mut()
        .mark(Phase::Failed, Some(Reason::PolicyExhausted), actor);
    Dispatch::one(Publication::to(SINK, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(initial_ms: u64, mult: f64, cap_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(initial_ms),
                multiplier: mult,
            },
            max_delay: Duration::from_millis(cap_ms),
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_shapes() {
        let c = RetryPolicy::constant(3, Duration::from_millis(50));
        assert_eq!(c.delay_after(1), Duration::from_millis(50));
        assert_eq!(c.delay_after(5), Duration::from_millis(50));
        let l = RetryPolicy {
            backoff: Backoff::Linear {
                initial: Duration::from_millis(100),
                step: Duration::from_millis(50),
            },
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(l.delay_after(3), Duration::from_millis(200));
        let e = exp(100, 2.0, 1000);
        assert_eq!(e.delay_after(1), Duration::from_millis(100));
        assert_eq!(e.delay_after(3), Duration::from_millis(400));
        assert_eq!(e.delay_after(10), Duration::from_millis(1000), "capped");
        assert_eq!(
            e.delay_after(u32::MAX),
            Duration::from_millis(1000),
            "no overflow"
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::constant(3, Duration::from_millis(1000))
        };
        for _ in 0..200 {
            let d = p.delay_after(1);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
    }

    #[test]
    fn rules_match_on_ancestry() {
        let policies = RetryPolicies::new(RetryPolicy::constant(1, Duration::ZERO)).with_rule(
            ["OSError"],
            "io",
            RetryPolicy::constant(7, Duration::ZERO),
        );
        let conn = HandlerError::new("ConnectionError", "x").with_mro(["ConnectionError", "OSError"]);
        assert_eq!(policies.policy_for(&conn).max_attempts, 7);
        assert_eq!(
            policies
                .policy_for(&HandlerError::new("ValueError", "x"))
                .max_attempts,
            1
        );
    }

    #[test]
    fn an_unreadable_first_attempt_header_is_replaced() {
        let mut env = Envelope::new(troupe_core::Route::through(["a"]), serde_json::Value::Null);
        env.headers.insert(FIRST_ATTEMPT.into(), "yesterday-ish".into());
        let policies = RetryPolicies::new(RetryPolicy::constant(5, Duration::ZERO));
        let d = on_failure("a", &policies, env, HandlerError::new("E", "x"), Utc::now());
        let header = d.publications()[0]
            .envelope
            .header_str(FIRST_ATTEMPT)
            .unwrap()
            .to_owned();
        assert!(DateTime::parse_from_rfc3339(&header).is_ok(), "{header}");
    }

    #[test]
    fn config_from_json_is_checked() {
        let named: HashMap<String, RetryPolicy> = serde_json::from_str(
            r#"{"flaky": {"maxAttempts": 5, "backoff": {"type": "linear", "initial": "1s", "step": "500ms"},
                "maxDuration": "2m", "onExhausted": ["dlq"]}}"#,
        )
        .unwrap();
        assert_eq!(named["flaky"].max_duration, Some(Duration::from_secs(120)));
        let rules = vec![RetryRule {
            errors: vec!["TimeoutError".into()],
            policy: "missing".into(),
        }];
        let err = RetryPolicies::from_parts(RetryPolicy::default(), named, rules).unwrap_err();
        assert!(err.to_string().contains("\"missing\""), "{err}");
        let zero =
            RetryPolicies::from_parts(RetryPolicy::constant(0, Duration::ZERO), HashMap::new(), vec![]);
        assert!(matches!(zero, Err(RetryConfigError::ZeroAttempts { .. })));
    }

    #[tokio::test]
    async fn an_unavailable_handler_is_redelivered_not_retried() {
        use tower::ServiceExt as _;
        let down = tower::service_fn(|_: Envelope| async {
            Err::<Dispatch, _>(HandlerError::unavailable("RuntimeUnavailable", "socket refused"))
        });
        let policies = RetryPolicies::new(RetryPolicy::constant(5, Duration::ZERO));
        let env = Envelope::new(troupe_core::Route::through(["a"]), serde_json::Value::Null);
        let answer = RetryLayer::new("a", policies.clone())
            .layer(down)
            .oneshot(env.clone())
            .await;
        let error = answer.expect_err("handed to the runner, not turned into a retry");
        assert!(error.is_unavailable());

        let broken = tower::service_fn(|_: Envelope| async {
            Err::<Dispatch, _>(HandlerError::new("ValueError", "bad input"))
        });
        let answer = RetryLayer::new("a", policies).layer(broken).oneshot(env).await;
        let dispatch = answer.expect("an ordinary failure becomes a retry dispatch");
        assert_eq!(dispatch.publications()[0].actor, "a");
    }
}
