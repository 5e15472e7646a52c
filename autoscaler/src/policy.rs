//! The scaling decision: a pure function of the settings, the remembered history and one
//! observation (queue depth and current replicas). No I/O and no clock: time comes in as an
//! argument, so the same code runs in the controller, in tests and in the simulation.
//!
//! The rules, in order:
//!
//! 1. **Activation.** The actor is *active* while depth exceeds `activationQueueLength`.
//!    From zero, an active actor goes straight to `ceil(depth / queueLength)` (at least 1);
//!    an inactive one stays at zero, or goes to its warm pool.
//! 2. **Metric target.** While replicas run, the target is `ceil(depth / queueLength)`,
//!    unless depth per replica is within the tolerance (10 %) of `queueLength`.
//! 3. **Idle level.** Replicas stay at no fewer than `max(min, 1, idleReplicaCount)` until
//!    the actor has been inactive for `cooldownPeriod`; then they go to `idleReplicaCount`
//!    (the warm pool, else `minReplicaCount`). The step to zero also waits for
//!    `scaleToZeroDelay`.
//! 4. **In-flight floor.** Never below the number of pods that may hold work in flight
//!    (`min(current, in_flight)`), so a scale-down does not interrupt work.
//! 5. **Limits.** Clamped to `[minReplicaCount, maxReplicaCount]`; the maximum wins.
//! 6. **Stabilisation.** Scale-up is immediate. A metric-driven scale-down goes only as low
//!    as the highest target of the last `scaleDownStabilizationWindow`, which stops
//!    flapping; the step to the idle level after the cooldown does not wait for it.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::crd::Scaling;

/// Settings checked and converted from [`Scaling`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// See [`Scaling::enabled`].
    pub enabled: bool,
    /// See [`Scaling::min_replica_count`].
    pub min: u32,
    /// See [`Scaling::max_replica_count`].
    pub max: u32,
    /// See [`Scaling::queue_length`].
    pub queue_length: u32,
    /// See [`Scaling::activation_queue_length`].
    pub activation: u32,
    /// See [`Scaling::polling_interval`].
    pub polling_interval: Duration,
    /// How often to poll at zero replicas (the controller's `--idle-poll-interval`).
    pub idle_polling_interval: Duration,
    /// See [`Scaling::cooldown_period`].
    pub cooldown: Duration,
    /// See [`Scaling::idle_replica_count`].
    pub idle_replicas: Option<u32>,
    /// See [`Scaling::scale_to_zero_delay`]; never shorter than `cooldown`.
    pub zero_delay: Duration,
    /// See [`Scaling::scale_down_stabilization_window`].
    pub stabilization: Duration,
    /// See [`Scaling::tolerance_percent`], as a fraction.
    pub tolerance: f64,
}

/// Settings that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `minReplicaCount > maxReplicaCount`.
    #[error("scaling.minReplicaCount ({min}) is above scaling.maxReplicaCount ({max})")]
    MinAboveMax {
        /// The minimum.
        min: u32,
        /// The maximum.
        max: u32,
    },
    /// `maxReplicaCount` is 0.
    #[error("scaling.maxReplicaCount must be at least 1")]
    ZeroMax,
    /// `queueLength` is 0.
    #[error("scaling.queueLength must be at least 1 (it divides the queue depth)")]
    ZeroQueueLength,
    /// `pollingInterval` is 0.
    #[error("scaling.pollingInterval must be at least 1 second")]
    ZeroPollingInterval,
    /// `idleReplicaCount > maxReplicaCount`.
    #[error("scaling.idleReplicaCount ({idle}) is above scaling.maxReplicaCount ({max})")]
    IdleAboveMax {
        /// The warm pool.
        idle: u32,
        /// The maximum.
        max: u32,
    },
    /// `tolerancePercent` over 100.
    #[error("scaling.tolerancePercent ({0}) must be at most 100")]
    Tolerance(u32),
}

impl Policy {
    /// Checks `scaling` and converts it; `idle_polling_interval` comes from the controller.
    pub fn new(scaling: &Scaling, idle_polling_interval: Duration) -> Result<Self, PolicyError> {
        let (min, max) = (scaling.min_replica_count, scaling.max_replica_count);
        if max == 0 {
            return Err(PolicyError::ZeroMax);
        }
        if min > max {
            return Err(PolicyError::MinAboveMax { min, max });
        }
        if scaling.queue_length == 0 {
            return Err(PolicyError::ZeroQueueLength);
        }
        if scaling.polling_interval == 0 {
            return Err(PolicyError::ZeroPollingInterval);
        }
        if let Some(idle) = scaling.idle_replica_count.filter(|idle| *idle > max) {
            return Err(PolicyError::IdleAboveMax { idle, max });
        }
        if scaling.tolerance_percent > 100 {
            return Err(PolicyError::Tolerance(scaling.tolerance_percent));
        }
        let seconds = |s: u32| Duration::from_secs(u64::from(s));
        let cooldown = seconds(scaling.cooldown_period);
        let polling_interval = seconds(scaling.polling_interval);
        Ok(Self {
            enabled: scaling.enabled,
            min,
            max,
            queue_length: scaling.queue_length,
            activation: scaling.activation_queue_length,
            polling_interval,
            idle_polling_interval: idle_polling_interval.min(polling_interval),
            cooldown,
            idle_replicas: scaling.idle_replica_count,
            zero_delay: scaling
                .scale_to_zero_delay
                .map_or(cooldown, seconds)
                .max(cooldown),
            stabilization: seconds(scaling.scale_down_stabilization_window),
            tolerance: f64::from(scaling.tolerance_percent) / 100.0,
        })
    }

    /// Decides the replicas for `observation`, updating `history`.
    pub fn decide(&self, history: &mut History, observation: Observation) -> Decision {
        let Observation {
            depth,
            in_flight,
            current,
            now,
        } = observation;
        let active = depth > u64::from(self.activation);
        if active {
            history.last_active = Some(now);
        } else if history.last_active.is_none() && current > 0 {
            // Unknown history (e.g. the autoscaler restarted): running replicas get a full
            // cooldown before they are taken away.
            history.last_active = Some(now);
        }
        let decision = |desired: u32, reason: Reason| Decision {
            desired,
            reason,
            active,
            next_poll: if desired == 0 {
                self.idle_polling_interval
            } else {
                self.polling_interval
            },
        };

        if !self.enabled {
            return decision(current, Reason::Disabled);
        }

        let idle_for = history
            .last_active
            .map_or(Duration::MAX, |last| now.saturating_sub(last));
        let idle_level = self.idle_level(idle_for);

        // Rules 1-3: what the queue asks for.
        let (mut target, mut reason) = if current == 0 {
            if active {
                (self.replicas_for(depth).max(1), Reason::Activation)
            } else {
                // The resting level, without the zero delay: an actor already at zero
                // stays there.
                match self.idle_replicas.unwrap_or(0) {
                    pool if pool > self.min => (pool, Reason::WarmPool),
                    _ if self.min > 0 => (self.min, Reason::Minimum),
                    _ => (0, Reason::Idle),
                }
            }
        } else if !active && idle_for >= self.cooldown {
            match idle_level {
                0 => (0, Reason::ScaleToZero),
                level => (level, Reason::CooledDown),
            }
        } else {
            let wanted = self.replicas_for(depth);
            let ratio = depth as f64 / (f64::from(current) * f64::from(self.queue_length));
            if (ratio - 1.0).abs() <= self.tolerance {
                (current, Reason::WithinTolerance)
            } else if wanted > current {
                (wanted, Reason::ScaleUp)
            } else {
                let floor = self.min.max(1).max(self.idle_replicas.unwrap_or(0));
                if wanted < floor && !active {
                    (floor, Reason::CoolingDown)
                } else {
                    (wanted.max(floor), Reason::ScaleDown)
                }
            }
        };

        // Rule 4: pods that may hold work keep running.
        let busy = current.min(u32::try_from(in_flight).unwrap_or(u32::MAX));
        if target < busy {
            (target, reason) = (busy, Reason::InFlight);
        }

        // Rule 5: limits; the maximum wins over everything else.
        if target < self.min {
            (target, reason) = (self.min, Reason::Minimum);
        }
        if target > self.max {
            (target, reason) = (self.max, Reason::Maximum);
        }

        // Rule 6: stabilise metric-driven scale-downs over the window. The step to the idle
        // level already waited a whole cooldown without work (as KEDA's step to zero
        // bypasses the HPA's window).
        history.targets.push_back((now, target));
        while history
            .targets
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > self.stabilization)
        {
            history.targets.pop_front();
        }
        if target < current && !matches!(reason, Reason::CooledDown | Reason::ScaleToZero) {
            let highest = history.targets.iter().map(|(_, t)| *t).max().unwrap_or(target);
            if highest > target {
                return decision(highest.min(current), Reason::Stabilizing);
            }
        }
        if target == current && matches!(reason, Reason::ScaleUp | Reason::ScaleDown) {
            reason = Reason::Steady;
        }
        decision(target, reason)
    }

    /// `ceil(depth / queueLength)`, saturating.
    fn replicas_for(&self, depth: u64) -> u32 {
        u32::try_from(depth.div_ceil(u64::from(self.queue_length))).unwrap_or(u32::MAX)
    }

    /// Where replicas settle after `idle_for` without activity.
    fn idle_level(&self, idle_for: Duration) -> u32 {
        let level = self.idle_replicas.unwrap_or(self.min).max(self.min);
        if level == 0 && idle_for < self.zero_delay {
            1
        } else {
            level
        }
    }
}

/// What the policy remembers between decisions for one actor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// When the actor was last active.
    pub last_active: Option<Duration>,
    /// Recent targets (time, replicas), for scale-down stabilisation.
    targets: VecDeque<(Duration, u32)>,
}

impl History {
    /// A history that only knows when the actor was last active (restored from status).
    pub fn since(last_active: Option<Duration>) -> Self {
        Self {
            last_active,
            targets: VecDeque::new(),
        }
    }
}

/// One poll's view of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Queue depth counting in-flight and delayed work.
    pub depth: u64,
    /// Of `depth`, delivered and not yet settled.
    pub in_flight: u64,
    /// The Deployment's replicas now.
    pub current: u32,
    /// Time since an arbitrary fixed origin.
    pub now: Duration,
}

/// The outcome of one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to have.
    pub desired: u32,
    /// Why.
    pub reason: Reason,
    /// Whether the queue had work above the activation threshold.
    pub active: bool,
    /// When to poll again.
    pub next_poll: Duration,
}

/// Why a decision is what it is; reported in status, Events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Scaling is disabled; replicas left as they are.
    Disabled,
    /// From zero, because the queue has work.
    Activation,
    /// At zero, with no work.
    Idle,
    /// From zero to the warm pool.
    WarmPool,
    /// More replicas for the depth.
    ScaleUp,
    /// Fewer replicas for the depth.
    ScaleDown,
    /// Depth per replica is within the tolerance of the target.
    WithinTolerance,
    /// No work, but the cooldown has not passed: replicas stay at the working minimum.
    CoolingDown,
    /// The cooldown passed: down to the warm pool or minimum.
    CooledDown,
    /// The cooldown and the scale-to-zero delay passed.
    ScaleToZero,
    /// Held up by pods with work in flight.
    InFlight,
    /// Raised to `minReplicaCount`.
    Minimum,
    /// Capped at `maxReplicaCount`.
    Maximum,
    /// A scale-down held to the highest target of the stabilisation window.
    Stabilizing,
    /// The depth asks for the replicas there are.
    Steady,
}

impl Reason {
    /// Its name, as in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Disabled => "Disabled",
            Reason::Activation => "Activation",
            Reason::Idle => "Idle",
            Reason::WarmPool => "WarmPool",
            Reason::ScaleUp => "ScaleUp",
            Reason::ScaleDown => "ScaleDown",
            Reason::WithinTolerance => "WithinTolerance",
            Reason::CoolingDown => "CoolingDown",
            Reason::CooledDown => "CooledDown",
            Reason::ScaleToZero => "ScaleToZero",
            Reason::InFlight => "InFlight",
            Reason::Minimum => "Minimum",
            Reason::Maximum => "Maximum",
            Reason::Stabilizing => "Stabilizing",
            Reason::Steady => "Steady",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE_POLL: Duration = Duration::from_millis(250);

    fn policy(edit: impl FnOnce(&mut Scaling)) -> Policy {
        let mut scaling = Scaling {
            max_replica_count: 10,
            queue_length: 10,
            polling_interval: 5,
            cooldown_period: 60,
            scale_down_stabilization_window: 30,
            ..Scaling::default()
        };
        edit(&mut scaling);
        match Policy::new(&scaling, IDLE_POLL) {
            Ok(policy) => policy,
            Err(e) => panic!("test policy is invalid: {e}"),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Feeds `(second, depth, in_flight)` observations, applying each decision as the new
    /// current replicas; returns the replicas after each.
    fn replay(policy: &Policy, start: u32, timeline: &[(u64, u64, u64)]) -> Vec<(u32, Reason)> {
        let mut history = History::default();
        let mut current = start;
        timeline
            .iter()
            .map(|&(at, depth, in_flight)| {
                let d = policy.decide(
                    &mut history,
                    Observation {
                        depth,
                        in_flight,
                        current,
                        now: secs(at),
                    },
                );
                current = d.desired;
                (d.desired, d.reason)
            })
            .collect()
    }

    fn once(policy: &Policy, history: &mut History, depth: u64, current: u32, at: u64) -> Decision {
        policy.decide(
            history,
            Observation {
                depth,
                in_flight: 0,
                current,
                now: secs(at),
            },
        )
    }

    #[test]
    fn activation_goes_from_zero_straight_to_the_depth_target() {
        let p = policy(|_| {});
        let d = once(&p, &mut History::default(), 45, 0, 0);
        assert_eq!((d.desired, d.reason, d.active), (5, Reason::Activation, true));
    }

    #[test]
    fn one_envelope_activates_one_replica() {
        let d = once(&policy(|_| {}), &mut History::default(), 1, 0, 0);
        assert_eq!((d.desired, d.reason), (1, Reason::Activation));
    }

    #[test]
    fn depth_at_or_below_the_activation_threshold_stays_at_zero() {
        let p = policy(|s| s.activation_queue_length = 20);
        let mut history = History::default();
        let d = once(&p, &mut history, 20, 0, 0);
        assert_eq!((d.desired, d.reason, d.active), (0, Reason::Idle, false));
        let d = once(&p, &mut history, 21, 0, 1);
        assert_eq!((d.desired, d.reason), (3, Reason::Activation));
    }

    #[test]
    fn at_zero_the_next_poll_is_the_fast_idle_one() {
        let p = policy(|_| {});
        let d = once(&p, &mut History::default(), 0, 0, 0);
        assert_eq!(d.next_poll, IDLE_POLL);
        let d = once(&p, &mut History::default(), 5, 0, 0);
        assert_eq!(d.next_poll, secs(5));
    }

    #[test]
    fn the_idle_poll_is_never_slower_than_the_polling_interval() {
        let p = match Policy::new(
            &Scaling {
                polling_interval: 1,
                ..Scaling::default()
            },
            secs(3),
        ) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.idle_polling_interval, secs(1));
    }

    #[test]
    fn desired_is_the_ceiling_of_depth_over_queue_length_clamped_to_the_maximum() {
        let p = policy(|s| s.max_replica_count = 4);
        let mut history = History::default();
        assert_eq!(once(&p, &mut history, 11, 1, 0).desired, 2);
        let d = once(&p, &mut history, 1000, 2, 1);
        assert_eq!((d.desired, d.reason), (4, Reason::Maximum));
    }

    #[test]
    fn minimum_replicas_hold_even_without_work() {
        let p = policy(|s| s.min_replica_count = 2);
        let d = once(&p, &mut History::default(), 0, 0, 0);
        assert_eq!((d.desired, d.reason), (2, Reason::Minimum));
        let got = replay(&p, 2, &[(0, 0, 0), (100, 0, 0), (1000, 0, 0)]);
        assert!(got.iter().all(|(r, _)| *r == 2), "{got:?}");
    }

    #[test]
    fn scale_up_is_immediate() {
        let p = policy(|_| {});
        let got = replay(&p, 1, &[(0, 10, 0), (5, 80, 0)]);
        assert_eq!(got[1], (8, Reason::ScaleUp));
    }

    #[test]
    fn within_ten_percent_of_the_target_nothing_changes() {
        let p = policy(|_| {});
        let mut history = History::default();
        // 4 replicas x 10 = 40; 43 is 7.5 % over, 37 is 7.5 % under.
        assert_eq!(once(&p, &mut history, 43, 4, 0).reason, Reason::WithinTolerance);
        assert_eq!(once(&p, &mut history, 37, 4, 1).desired, 4);
        // 45 is 12.5 % over: scale up to ceil(45 / 10) = 5.
        assert_eq!(once(&p, &mut history, 45, 4, 2).desired, 5);
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window() {
        let p = policy(|_| {});
        // Burst to 8, then depth falls to 20 (target 2) and stays there.
        let got = replay(
            &p,
            0,
            &[(0, 80, 0), (5, 20, 0), (20, 20, 0), (31, 20, 0), (36, 20, 0)],
        );
        assert_eq!(got[0].0, 8);
        assert_eq!(got[1], (8, Reason::Stabilizing));
        assert_eq!(got[2], (8, Reason::Stabilizing));
        // The 80 left the 30 s window at t=31: down to 2.
        assert_eq!(got[3], (2, Reason::ScaleDown));
        assert_eq!(got[4], (2, Reason::WithinTolerance));
    }

    #[test]
    fn a_stabilised_scale_down_takes_the_highest_recent_target_not_the_current() {
        let p = policy(|_| {});
        let got = replay(&p, 8, &[(0, 50, 0), (10, 10, 0), (36, 10, 0), (41, 10, 0)]);
        // t=0: 5 wanted, held at 8 only if 8 was recommended in the window: it was not.
        assert_eq!(got[0], (5, Reason::ScaleDown));
        assert_eq!(got[1], (5, Reason::Stabilizing));
        assert_eq!(got[2], (1, Reason::ScaleDown));
        assert_eq!(got[3].0, 1);
    }

    #[test]
    fn no_work_keeps_one_replica_until_the_cooldown_then_goes_to_zero() {
        let p = policy(|s| {
            s.cooldown_period = 60;
            s.scale_down_stabilization_window = 0;
        });
        let got = replay(&p, 0, &[(0, 30, 0), (10, 0, 0), (59, 0, 0), (70, 0, 0)]);
        assert_eq!(got[0], (3, Reason::Activation));
        assert_eq!(got[1], (1, Reason::CoolingDown));
        assert_eq!(got[2], (1, Reason::CoolingDown));
        // Last active at t=0: 70 s idle > 60 s cooldown.
        assert_eq!(got[3], (0, Reason::ScaleToZero));
    }

    #[test]
    fn activity_restarts_the_cooldown() {
        let p = policy(|s| s.scale_down_stabilization_window = 0);
        let got = replay(&p, 1, &[(0, 5, 0), (50, 3, 0), (100, 0, 0), (111, 0, 0)]);
        assert_eq!(got[2], (1, Reason::CoolingDown), "50 s after the last activity");
        assert_eq!(got[3], (0, Reason::ScaleToZero));
    }

    #[test]
    fn a_separate_delay_holds_the_last_replica_after_the_cooldown() {
        let p = policy(|s| {
            s.cooldown_period = 60;
            s.scale_to_zero_delay = Some(300);
            s.scale_down_stabilization_window = 0;
        });
        let got = replay(&p, 0, &[(0, 50, 0), (61, 0, 0), (299, 0, 0), (301, 0, 0)]);
        assert_eq!(got[1], (1, Reason::CooledDown), "5 -> 1 after the cooldown");
        assert_eq!(got[2], (1, Reason::CooledDown));
        assert_eq!(got[3], (0, Reason::ScaleToZero));
    }

    #[test]
    fn the_step_to_zero_does_not_wait_for_the_stabilisation_window() {
        let p = policy(|s| {
            s.cooldown_period = 60;
            s.scale_down_stabilization_window = 300;
        });
        let got = replay(&p, 0, &[(0, 30, 0), (30, 0, 0), (61, 0, 0)]);
        assert_eq!(got[1], (3, Reason::Stabilizing));
        assert_eq!(
            got[2],
            (0, Reason::ScaleToZero),
            "at the cooldown, not cooldown + window"
        );
    }

    #[test]
    fn a_zero_delay_shorter_than_the_cooldown_is_the_cooldown() {
        let p = policy(|s| {
            s.cooldown_period = 60;
            s.scale_to_zero_delay = Some(10);
        });
        assert_eq!(p.zero_delay, secs(60));
    }

    #[test]
    fn the_warm_pool_fills_from_zero_and_is_kept_without_work() {
        let p = policy(|s| {
            s.idle_replica_count = Some(2);
            s.scale_down_stabilization_window = 0;
        });
        let d = once(&p, &mut History::default(), 0, 0, 0);
        assert_eq!((d.desired, d.reason), (2, Reason::WarmPool));
        let got = replay(&p, 2, &[(0, 60, 0), (10, 0, 0), (100, 0, 0), (10_000, 0, 0)]);
        assert_eq!(got[0].0, 6);
        assert_eq!(got[1], (2, Reason::CoolingDown));
        assert_eq!(got[2], (2, Reason::CooledDown));
        assert_eq!(got[3], (2, Reason::CooledDown), "never below the pool");
    }

    #[test]
    fn a_warm_pool_of_one_does_not_flap_on_a_trickle() {
        let p = policy(|s| s.idle_replica_count = Some(1));
        // Envelopes arrive one or two at a time with idle gaps longer than the cooldown.
        let mut timeline = Vec::new();
        for minute in 0..30u64 {
            timeline.push((minute * 120, (minute % 2) + 1, 1));
            timeline.push((minute * 120 + 5, 0, 0));
            timeline.push((minute * 120 + 90, 0, 0));
        }
        let got = replay(&p, 1, &timeline);
        assert!(got.iter().all(|(r, _)| *r == 1), "{got:?}");
    }

    #[test]
    fn a_noisy_depth_around_a_boundary_does_not_flap() {
        let p = policy(|_| {});
        // Depth wobbles between 38 and 52 around 4-5 replicas every 5 s.
        let timeline: Vec<_> = (0..40u64)
            .map(|i| (i * 5, if i % 2 == 0 { 38 } else { 52 }, 10))
            .collect();
        let got = replay(&p, 0, &timeline);
        let changes = got.windows(2).filter(|w| w[0].0 != w[1].0).count();
        // Up to 6 once, then held: the window keeps the 6 while 52s keep coming.
        assert!(changes <= 1, "{changes} changes: {got:?}");
    }

    #[test]
    fn pods_with_work_in_flight_are_not_taken_away() {
        let p = policy(|s| {
            s.activation_queue_length = 50;
            s.scale_down_stabilization_window = 0;
            s.cooldown_period = 0;
        });
        let mut history = History::default();
        // 4 running, 3 envelopes in flight, below the activation threshold: the idle level
        // would be 0, the 3 busy pods stay.
        let d = p.decide(
            &mut history,
            Observation {
                depth: 3,
                in_flight: 3,
                current: 4,
                now: secs(100),
            },
        );
        assert_eq!((d.desired, d.reason), (3, Reason::InFlight));
    }

    #[test]
    fn the_maximum_wins_over_work_in_flight() {
        let p = policy(|s| s.max_replica_count = 2);
        let d = p.decide(
            &mut History::default(),
            Observation {
                depth: 10,
                in_flight: 10,
                current: 6,
                now: secs(0),
            },
        );
        assert_eq!((d.desired, d.reason), (2, Reason::Maximum));
    }

    #[test]
    fn an_unknown_history_gives_running_replicas_a_full_cooldown() {
        let p = policy(|s| s.scale_down_stabilization_window = 0);
        let mut history = History::default();
        // The autoscaler starts at t=1000 and finds 3 replicas and no work.
        assert_eq!(once(&p, &mut history, 0, 3, 1000).desired, 1);
        assert_eq!(once(&p, &mut history, 0, 1, 1059).desired, 1);
        assert_eq!(once(&p, &mut history, 0, 1, 1061).desired, 0);
    }

    #[test]
    fn a_restored_last_activity_counts() {
        let p = policy(|s| s.scale_down_stabilization_window = 0);
        let mut history = History::since(Some(secs(950)));
        assert_eq!(once(&p, &mut history, 0, 1, 1000).desired, 1);
        assert_eq!(once(&p, &mut history, 0, 1, 1011).desired, 0);
    }

    #[test]
    fn disabled_scaling_leaves_replicas_alone() {
        let p = policy(|s| s.enabled = false);
        let d = once(&p, &mut History::default(), 500, 3, 0);
        assert_eq!((d.desired, d.reason), (3, Reason::Disabled));
    }

    #[test]
    fn contradictory_settings_are_refused_with_their_names() {
        let bad = |edit: fn(&mut Scaling)| {
            let mut scaling = Scaling::default();
            edit(&mut scaling);
            Policy::new(&scaling, IDLE_POLL).err().map(|e| e.to_string())
        };
        let message = bad(|s| s.min_replica_count = 20).unwrap_or_default();
        assert!(message.contains("minReplicaCount (20)"), "{message}");
        assert!(bad(|s| s.queue_length = 0).is_some());
        assert!(bad(|s| s.max_replica_count = 0).is_some());
        assert!(bad(|s| s.polling_interval = 0).is_some());
        assert!(bad(|s| s.idle_replica_count = Some(11)).is_some());
        assert!(bad(|s| s.tolerance_percent = 101).is_some());
        assert!(bad(|_| {}).is_none());
    }

    #[test]
    fn a_huge_depth_saturates_instead_of_overflowing() {
        let p = policy(|s| s.max_replica_count = u32::MAX);
        let d = once(&p, &mut History::default(), u64::MAX, 0, 0);
        assert_eq!(d.desired, u32::MAX);
    }
}
