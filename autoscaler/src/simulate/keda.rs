//! A model of KEDA's default `ScaledObject` on a queue trigger, the baseline we compare with.
//!
//! Two loops scale the Deployment, as in a cluster:
//!
//! - **The KEDA operator** polls the scaler every `pollingInterval` (default 30 s), at 0 s,
//!   30 s, 60 s, … of the simulation. The trigger is *active* while depth exceeds its
//!   activation threshold (default 0); an active poll records `lastActiveTime`. At zero
//!   replicas an active poll scales to 1 (`max(minReplicaCount, 1)`); KEDA leaves the rest
//!   to the HPA. With replicas and no activity it scales straight to 0 once
//!   `lastActiveTime + cooldownPeriod` (default 300 s) is *before* the poll's time, so the
//!   last replicas go at the first poll strictly after the cooldown.
//! - **The HPA** that KEDA creates (`minReplicas` 1, the same `maxReplicas`, an external
//!   metric with `AverageValue` = queue length) syncs every 15 s (the controller manager's
//!   `--horizontal-pod-autoscaler-sync-period`) on the live depth. Its syncs are offset by
//!   half a period from KEDA's polls (7.5 s, 22.5 s, …): the two loops are not
//!   synchronised, and half a period is the mean offset. It does nothing at zero replicas.
//!   Otherwise, with the `autoscaling/v2` default behaviour:
//!   - proposal = `ceil(depth / queueLength)`, or the current replicas while
//!     `depth / (queueLength × current)` is within the 10 % tolerance of 1;
//!   - scale-up is not stabilised (window 0 s) and is limited per 15 s period to the larger
//!     of +4 pods and +100 % (syncs are exactly one period apart, so the period starts at
//!     the current replicas);
//!   - scale-down goes only to the highest proposal of the last 300 s (stabilisation
//!     window) and may then drop 100 % per 15 s, i.e. at once;
//!   - the result is clamped to `[1, maxReplicas]`.
//!
//! When both loops are due at the same instant (never, with these phases) the HPA goes
//! first. Depth is the same as for our policy: queued plus in flight.

use std::collections::VecDeque;
use std::time::Duration;

use super::pods::{Scaler, View};

/// KEDA's default `pollingInterval`.
pub const POLLING_INTERVAL: Duration = Duration::from_secs(30);
/// KEDA's default `cooldownPeriod`.
pub const COOLDOWN: Duration = Duration::from_secs(300);
/// KEDA's default activation threshold: active while depth exceeds it.
pub const ACTIVATION: u64 = 0;
/// The HPA controller's default sync period.
pub const HPA_SYNC: Duration = Duration::from_secs(15);
/// When the HPA first syncs: half a period after KEDA's first poll.
pub const HPA_PHASE: Duration = Duration::from_millis(7500);
/// The HPA's default tolerance.
pub const TOLERANCE: f64 = 0.1;
/// The HPA's default scale-down stabilisation window.
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// The HPA's default scale-up policy: at least this many pods per period…
pub const SCALE_UP_PODS: u32 = 4;
/// …or this factor of the replicas at the start of the period, whichever is more.
pub const SCALE_UP_FACTOR: u32 = 2;

/// KEDA's default `ScaledObject` and its HPA.
#[derive(Debug, Clone)]
pub struct Keda {
    max: u32,
    queue_length: u32,
    next_poll: Duration,
    next_sync: Duration,
    last_active: Option<Duration>,
    /// The HPA's recent proposals, for scale-down stabilisation.
    proposals: VecDeque<(Duration, u32)>,
}

impl Keda {
    /// KEDA's defaults with `maxReplicaCount = max` and the trigger's `queueLength`.
    pub fn new(max: u32, queue_length: u32) -> Self {
        Self {
            max: max.max(1),
            queue_length: queue_length.max(1),
            next_poll: Duration::ZERO,
            next_sync: HPA_PHASE,
            last_active: None,
            proposals: VecDeque::new(),
        }
    }

    /// The KEDA operator's poll: activation from zero and scale to zero.
    fn poll(&mut self, now: Duration, depth: u64, current: u32) -> u32 {
        let active = depth > ACTIVATION;
        if active {
            self.last_active = Some(now);
        }
        let cooled = self.last_active.is_none_or(|last| last + COOLDOWN < now);
        match current {
            0 if active => 1,
            1.. if !active && cooled => 0,
            _ => current,
        }
    }

    /// The HPA's sync.
    fn sync(&mut self, now: Duration, depth: u64, current: u32) -> u32 {
        if current == 0 {
            // "scaling is disabled since the replica count of the target is zero"
            return 0;
        }
        let ratio = depth as f64 / (f64::from(self.queue_length) * f64::from(current));
        let proposal = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            u32::try_from(depth.div_ceil(u64::from(self.queue_length))).unwrap_or(u32::MAX)
        };
        // Stabilisation: proposals strictly younger than the window count.
        while self
            .proposals
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= SCALE_DOWN_WINDOW)
        {
            self.proposals.pop_front();
        }
        let highest = self.proposals.iter().map(|(_, p)| *p).fold(proposal, u32::max);
        self.proposals.push_back((now, proposal));
        let mut desired = current.max(proposal).min(highest);
        if desired > current {
            let limit = current
                .saturating_add(SCALE_UP_PODS)
                .max(current.saturating_mul(SCALE_UP_FACTOR));
            desired = desired.min(limit);
        }
        desired.clamp(1, self.max)
    }
}

impl Scaler for Keda {
    fn next_wake(&self) -> Duration {
        self.next_poll.min(self.next_sync)
    }

    fn wake(&mut self, now: Duration, view: View) -> u32 {
        let mut replicas = view.current;
        if self.next_sync <= now {
            replicas = self.sync(now, view.depth, replicas);
            while self.next_sync <= now {
                self.next_sync += HPA_SYNC;
            }
        }
        if self.next_poll <= now {
            replicas = self.poll(now, view.depth, replicas);
            while self.next_poll <= now {
                self.next_poll += POLLING_INTERVAL;
            }
        }
        replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::pods::{self, PodModel};
    use crate::simulate::trace::Trace;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Wakes KEDA until `until` with the depth `depth(t)` and the replicas it sets; returns
    /// each change as (seconds, replicas).
    fn changes(until: f64, depth: impl Fn(f64) -> u64) -> Vec<(f64, u32)> {
        let mut keda = Keda::new(10, 5);
        let mut current = 0;
        let mut changes = Vec::new();
        while keda.next_wake() <= secs(until) {
            let now = keda.next_wake();
            let t = now.as_secs_f64();
            let view = View {
                depth: depth(t),
                in_flight: 0,
                current,
            };
            let next = keda.wake(now, view);
            if next != current {
                changes.push((t, next));
                current = next;
            }
        }
        changes
    }

    #[test]
    fn activation_waits_for_the_30_s_poll() -> Result<(), pods::NotSettled> {
        let trace = Trace::from_arrivals(vec![secs(31.0)], Duration::ZERO);
        let model = PodModel {
            startup: secs(10.0),
            service: secs(0.2),
        };
        let outcome = pods::run(&trace, model, &mut Keda::new(10, 5))?;
        let activation = outcome.activations.first().copied();
        assert_eq!(activation.map(|a| a.decided), Some(secs(60.0)));
        assert_eq!(activation.and_then(|a| a.ready), Some(secs(70.0)));
        // Active at the poll at 60 s only; 60 + 300 is not before 360, so zero at 390 s.
        assert_eq!(outcome.end, secs(390.0));
        assert_eq!(outcome.replica_seconds, secs(330.0));
        Ok(())
    }

    #[test]
    fn the_hpa_scales_up_by_4_or_100_percent_per_sync() {
        let changes = changes(60.0, |_| 100);
        assert_eq!(changes, vec![(0.0, 1), (7.5, 5), (22.5, 10)]);
    }

    #[test]
    fn the_hpa_holds_the_peak_for_300_s_then_keda_cools_down_for_300_s() {
        let changes = changes(1000.0, |t| if t < 100.0 { 100 } else { 0 });
        // Last proposal of 20 at 97.5 s; the 300 s window has passed at 397.5 s. KEDA saw
        // work last at its 90 s poll: 390 s is not after 90 + 300, 420 s is.
        assert_eq!(
            changes,
            vec![(0.0, 1), (7.5, 5), (22.5, 10), (397.5, 1), (420.0, 0)]
        );
    }

    #[test]
    fn the_tolerance_keeps_the_replicas() {
        // 4 replicas for 21 envelopes: 21 / 20 is within 10 %; 23 / 20 is not.
        let mut keda = Keda::new(10, 5);
        assert_eq!(keda.sync(secs(0.0), 21, 4), 4);
        assert_eq!(keda.sync(secs(15.0), 23, 4), 5);
    }
}
