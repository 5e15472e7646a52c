//! Troupe's policy as a [`Scaler`]: [`Policy::decide`] at each `next_poll`, exactly as the
//! controller calls it, with the decision applied at once.

use std::time::Duration;

use super::pods::{Scaler, View};
use crate::policy::{History, Observation, Policy};

/// Troupe's policy, polled at the interval each decision asks for.
#[derive(Debug, Clone)]
pub struct Troupe {
    policy: Policy,
    history: History,
    next_poll: Duration,
}

impl Troupe {
    /// The policy, first polled at time 0.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            history: History::default(),
            next_poll: Duration::ZERO,
        }
    }
}

impl Scaler for Troupe {
    fn next_wake(&self) -> Duration {
        self.next_poll
    }

    fn wake(&mut self, now: Duration, view: View) -> u32 {
        let decision = self.policy.decide(
            &mut self.history,
            Observation {
                depth: view.depth,
                in_flight: view.in_flight,
                current: view.current,
                now,
            },
        );
        self.next_poll = now + decision.next_poll;
        decision.desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Scaling;
    use crate::simulate::pods::{self, PodModel};
    use crate::simulate::trace::Trace;

    #[test]
    fn an_envelope_at_zero_replicas_is_seen_at_the_next_idle_poll() -> Result<(), Box<dyn std::error::Error>>
    {
        let policy = Policy::new(&Scaling::default(), Duration::from_millis(250))?;
        let trace = Trace::from_arrivals(vec![Duration::from_millis(1100)], Duration::ZERO);
        let model = PodModel {
            startup: Duration::from_secs(10),
            service: Duration::from_millis(200),
        };
        let outcome = pods::run(&trace, model, &mut Troupe::new(policy))?;
        let activation = outcome.activations.first().copied();
        assert_eq!(activation.map(|a| a.decided), Some(Duration::from_millis(1250)));
        assert_eq!(outcome.waits, vec![Duration::from_millis(10_150)]);
        Ok(())
    }
}
