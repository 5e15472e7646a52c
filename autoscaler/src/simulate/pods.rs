//! The pod model and the event loop.
//!
//! - A scaler (ours or the KEDA model) wakes at times of its choosing, sees the queue and
//!   sets the replicas; the change takes effect at once (the Deployment's `spec.replicas`).
//! - A pod requested at time `t` becomes ready at `t + startup`. A ready pod processes one
//!   envelope at a time, each for `1 / rate` seconds, taking them first in, first out.
//! - Depth is what the broker reports: envelopes queued plus envelopes in flight (held by a
//!   busy pod).
//! - A scale-down removes pods that are not ready yet first (the most recently requested
//!   first), then idle ready pods, then busy ones (the most recently started first); a
//!   busy pod's envelope goes back to the front of the queue and is processed again.
//!
//! The loop is discrete-event and exact: it jumps from one event (an arrival, a pod ready,
//! an envelope done, a scaler waking) to the next, in nanoseconds. At one instant it
//! handles completions, then pods becoming ready, then arrivals, then hands queued
//! envelopes to idle pods, then lets the scaler decide. There is no randomness.

use std::collections::VecDeque;
use std::time::Duration;

use super::trace::Trace;

/// How pods behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodModel {
    /// From the request of a pod to the pod processing envelopes.
    pub startup: Duration,
    /// Processing time of one envelope (`1 / rate`).
    pub service: Duration,
}

/// What a scaler sees when it wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Envelopes queued plus in flight.
    pub depth: u64,
    /// Envelopes held by busy pods.
    pub in_flight: u64,
    /// Pods requested (starting and ready): the Deployment's replicas.
    pub current: u32,
}

/// Something that sets the replicas from the queue depth.
pub trait Scaler {
    /// When it next wants to look at the queue; after a wake, later than that wake.
    fn next_wake(&self) -> Duration;
    /// Looks at the queue at `now` (its `next_wake`) and returns the replicas to have.
    fn wake(&mut self, now: Duration, view: View) -> u32;
}

/// The state at one moment, recorded whenever it changes (a step function).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When.
    pub at: Duration,
    /// Envelopes queued plus in flight.
    pub depth: u64,
    /// Pods requested (the replicas the scaler set).
    pub desired: u32,
    /// Pods ready.
    pub ready: u32,
}

/// One scale-up from zero replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    /// The first envelope that arrived while there were no replicas.
    pub arrived: Duration,
    /// The scaler asked for replicas.
    pub decided: Duration,
    /// The first pod became ready (`None` if the pods were taken away before).
    pub ready: Option<Duration>,
}

/// What happened over a whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The state over time.
    pub samples: Vec<Sample>,
    /// For each envelope that was processed, from its arrival to the start of the
    /// processing that completed it.
    pub waits: Vec<Duration>,
    /// Every scale-up from zero replicas.
    pub activations: Vec<Activation>,
    /// The integral of requested pods (starting and ready) over time.
    pub replica_seconds: Duration,
    /// Most pods requested at once.
    pub peak: u32,
    /// Envelopes taken back from a busy pod by a scale-down.
    pub requeued: u64,
    /// When the run settled: the trace over, every envelope processed, no replicas.
    pub end: Duration,
}

/// A run that never settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{pending} envelopes still pending and {replicas} replicas at {at:?}, long after the trace's end")]
pub struct NotSettled {
    /// Envelopes not processed.
    pub pending: usize,
    /// Replicas still requested.
    pub replicas: u32,
    /// When the run gave up.
    pub at: Duration,
}

/// How long after the trace's end a run may take to process everything and reach zero.
const SETTLE_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
struct Pod {
    ready_at: Duration,
    /// The envelope being processed and when it completes.
    busy: Option<(usize, Duration)>,
}

/// Replays `trace` against `scaler` with pods behaving as `model`.
pub fn run(trace: &Trace, model: PodModel, scaler: &mut dyn Scaler) -> Result<Outcome, NotSettled> {
    let mut sim = Sim {
        model,
        arrivals: &trace.arrivals,
        next_arrival: 0,
        queue: VecDeque::new(),
        pods: Vec::new(),
        starts: vec![None; trace.arrivals.len()],
        done: 0,
        pending_activation: None,
        outcome: Outcome {
            samples: Vec::new(),
            waits: Vec::new(),
            activations: Vec::new(),
            replica_seconds: Duration::ZERO,
            peak: 0,
            requeued: 0,
            end: Duration::ZERO,
        },
    };
    let mut now = Duration::ZERO;
    loop {
        sim.complete(now);
        sim.ready(now);
        sim.arrive(now);
        sim.dispatch(now);
        if scaler.next_wake() <= now {
            let desired = scaler.wake(now, sim.view());
            sim.scale(now, desired);
            sim.dispatch(now);
        }
        sim.sample(now);
        let settled = sim.done == trace.arrivals.len() && sim.pods.is_empty();
        if settled && now >= trace.end {
            sim.outcome.end = now;
            sim.outcome.waits = sim
                .starts
                .iter()
                .zip(&trace.arrivals)
                .filter_map(|(start, arrived)| start.map(|start| start.saturating_sub(*arrived)))
                .collect();
            return Ok(sim.outcome);
        }
        let give_up = trace.end.saturating_add(SETTLE_LIMIT);
        if now >= give_up {
            return Err(NotSettled {
                pending: trace.arrivals.len() - sim.done,
                replicas: sim.requested(),
                at: now,
            });
        }
        let next = [
            Some(scaler.next_wake()),
            sim.arrivals.get(sim.next_arrival).copied(),
            sim.pods.iter().map(|p| p.ready_at).filter(|at| *at > now).min(),
            sim.pods.iter().filter_map(|p| p.busy.map(|(_, at)| at)).min(),
            (now < trace.end).then_some(trace.end),
            Some(give_up),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now)
        .max(now);
        let step = (next - now).saturating_mul(sim.requested());
        sim.outcome.replica_seconds = sim.outcome.replica_seconds.saturating_add(step);
        now = next;
    }
}

struct Sim<'a> {
    model: PodModel,
    arrivals: &'a [Duration],
    next_arrival: usize,
    /// Envelopes waiting, by index into `arrivals`.
    queue: VecDeque<usize>,
    pods: Vec<Pod>,
    /// When each envelope's last processing started.
    starts: Vec<Option<Duration>>,
    done: usize,
    /// The first envelope that arrived at zero replicas, until the scale-up.
    pending_activation: Option<Duration>,
    outcome: Outcome,
}

impl Sim<'_> {
    fn requested(&self) -> u32 {
        u32::try_from(self.pods.len()).unwrap_or(u32::MAX)
    }

    fn in_flight(&self) -> usize {
        self.pods.iter().filter(|p| p.busy.is_some()).count()
    }

    fn view(&self) -> View {
        let in_flight = self.in_flight() as u64;
        View {
            depth: self.queue.len() as u64 + in_flight,
            in_flight,
            current: self.requested(),
        }
    }

    fn complete(&mut self, now: Duration) {
        for pod in &mut self.pods {
            if pod.busy.is_some_and(|(_, at)| at <= now) {
                pod.busy = None;
                self.done += 1;
            }
        }
    }

    fn ready(&mut self, now: Duration) {
        if self.pods.iter().any(|p| p.ready_at == now)
            && let Some(activation) = self.outcome.activations.last_mut()
            && activation.ready.is_none()
        {
            activation.ready = Some(now);
        }
    }

    fn arrive(&mut self, now: Duration) {
        while let Some(&at) = self.arrivals.get(self.next_arrival)
            && at <= now
        {
            if self.pods.is_empty() && self.pending_activation.is_none() {
                self.pending_activation = Some(at);
            }
            self.queue.push_back(self.next_arrival);
            self.next_arrival += 1;
        }
    }

    fn dispatch(&mut self, now: Duration) {
        for pod in &mut self.pods {
            if pod.busy.is_none()
                && pod.ready_at <= now
                && let Some(envelope) = self.queue.pop_front()
            {
                self.starts[envelope] = Some(now);
                pod.busy = Some((envelope, now + self.model.service));
            }
        }
    }

    fn scale(&mut self, now: Duration, desired: u32) {
        let current = self.requested();
        if desired > current {
            if current == 0
                && let Some(arrived) = self.pending_activation.take()
            {
                self.outcome.activations.push(Activation {
                    arrived,
                    decided: now,
                    ready: None,
                });
            }
            let ready_at = now + self.model.startup;
            self.pods
                .extend((current..desired).map(|_| Pod { ready_at, busy: None }));
            self.outcome.peak = self.outcome.peak.max(desired);
            // A pod with no start-up delay is ready at once.
            self.ready(now);
        }
        for _ in desired..current {
            // Not ready (latest first), then idle, then busy (latest started first).
            let victim = self
                .pods
                .iter()
                .enumerate()
                .max_by_key(|(_, pod)| {
                    let starting = pod.ready_at > now;
                    let idle = pod.busy.is_none();
                    let finishes = pod.busy.map(|(_, done)| done).unwrap_or_default();
                    (starting, pod.ready_at.max(now), idle, finishes)
                })
                .map(|(index, _)| index);
            if let Some(index) = victim {
                let pod = self.pods.swap_remove(index);
                if let Some((envelope, _)) = pod.busy {
                    self.starts[envelope] = None;
                    self.queue.push_front(envelope);
                    self.outcome.requeued += 1;
                }
            }
        }
        if self.pods.is_empty() && !self.queue.is_empty() && self.pending_activation.is_none() {
            // Scaled to zero with work left: the wait for a pod starts now.
            self.pending_activation = Some(now);
        }
    }

    fn sample(&mut self, now: Duration) {
        let view = self.view();
        let ready = self.pods.iter().filter(|p| p.ready_at <= now).count();
        let sample = Sample {
            at: now,
            depth: view.depth,
            desired: view.current,
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
        };
        let samples = &mut self.outcome.samples;
        match samples.last_mut() {
            Some(last) if last.at == now => *last = sample,
            Some(last)
                if (last.depth, last.desired, last.ready) == (sample.depth, sample.desired, sample.ready) => {
            }
            _ => samples.push(sample),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Polls every `period`; asks for `replicas` while there is work, else 0.
    struct WhileWork {
        period: Duration,
        replicas: u32,
        next: Duration,
    }

    impl Scaler for WhileWork {
        fn next_wake(&self) -> Duration {
            self.next
        }
        fn wake(&mut self, now: Duration, view: View) -> u32 {
            self.next = now + self.period;
            if view.depth > 0 { self.replicas } else { 0 }
        }
    }

    /// Asks for scripted replicas at scripted times.
    struct Script(VecDeque<(Duration, u32)>, u32);

    impl Scaler for Script {
        fn next_wake(&self) -> Duration {
            self.0.front().map_or(Duration::MAX, |(at, _)| *at)
        }
        fn wake(&mut self, _now: Duration, _view: View) -> u32 {
            if let Some((_, replicas)) = self.0.pop_front() {
                self.1 = replicas;
            }
            self.1
        }
    }

    fn model(startup: f64, rate: f64) -> PodModel {
        PodModel {
            startup: secs(startup),
            service: secs(1.0 / rate),
        }
    }

    #[test]
    fn one_pod_drains_n_envelopes_in_n_over_rate_after_startup() -> Result<(), NotSettled> {
        // 10 envelopes at t=0; a 10 s start-up; 5 envelopes/s.
        let trace = Trace::from_arrivals(vec![Duration::ZERO; 10], Duration::ZERO);
        let mut scaler = WhileWork {
            period: secs(1.0),
            replicas: 1,
            next: Duration::ZERO,
        };
        let outcome = run(&trace, model(10.0, 5.0), &mut scaler)?;
        // Processing ends at 10 + 10/5 = 12 s; the poll at 12 s sees no work.
        assert_eq!(outcome.end, secs(12.0));
        assert_eq!(outcome.replica_seconds, secs(12.0));
        let expected: Vec<Duration> = (0..10).map(|i| secs(10.0 + f64::from(i) * 0.2)).collect();
        assert_eq!(outcome.waits, expected);
        assert_eq!(
            outcome.activations,
            vec![Activation {
                arrived: Duration::ZERO,
                decided: Duration::ZERO,
                ready: Some(secs(10.0)),
            }]
        );
        assert_eq!((outcome.peak, outcome.requeued), (1, 0));
        let last = outcome.samples.last().copied();
        assert_eq!(last.map(|s| (s.depth, s.desired, s.ready)), Some((0, 0, 0)));
        Ok(())
    }

    #[test]
    fn pods_share_the_queue() -> Result<(), NotSettled> {
        // 40 envelopes at 0; 4 pods at 5/s drain them in 2 s once ready.
        let trace = Trace::from_arrivals(vec![Duration::ZERO; 40], Duration::ZERO);
        let mut scaler = WhileWork {
            period: secs(0.5),
            replicas: 4,
            next: secs(1.0),
        };
        let outcome = run(&trace, model(3.0, 5.0), &mut scaler)?;
        assert_eq!(outcome.end, secs(6.0));
        assert_eq!(outcome.replica_seconds, secs(4.0 * 5.0));
        assert_eq!(
            outcome.activations[0].decided - outcome.activations[0].arrived,
            secs(1.0)
        );
        assert_eq!(outcome.waits.iter().max().copied(), Some(secs(5.8)));
        Ok(())
    }

    #[test]
    fn a_scale_down_takes_starting_then_idle_then_busy_pods() -> Result<(), NotSettled> {
        // Two envelopes at 0, processing 10 s each; 3 pods at 0 (ready at 1 s).
        let trace = Trace::from_arrivals(vec![Duration::ZERO; 2], Duration::ZERO);
        let script = [(0.0, 3), (1.5, 5), (1.6, 2), (1.7, 1), (100.0, 0)];
        let mut scaler = Script(script.iter().map(|&(at, n)| (secs(at), n)).collect(), 0);
        let outcome = run(&trace, model(1.0, 0.1), &mut scaler)?;
        let at = |t: f64| {
            let samples = outcome.samples.iter().take_while(|s| s.at <= secs(t));
            samples.last().map(|s| (s.depth, s.desired, s.ready))
        };
        assert_eq!(at(1.0), Some((2, 3, 3)));
        assert_eq!(at(1.5), Some((2, 5, 3)));
        // 5 -> 2: the two starting pods and the idle one go; both busy pods stay.
        assert_eq!(at(1.6), Some((2, 2, 2)));
        // 2 -> 1: a busy pod goes and its envelope waits for the other pod.
        assert_eq!(at(1.7), Some((2, 1, 1)));
        assert_eq!(outcome.requeued, 1);
        // The first envelope is done at 11 s, the requeued one then starts.
        assert_eq!(outcome.waits, vec![secs(1.0), secs(11.0)]);
        Ok(())
    }

    #[test]
    fn arrivals_at_zero_replicas_start_an_activation_each_time() -> Result<(), NotSettled> {
        let trace = Trace::from_arrivals(vec![secs(0.1), secs(0.2), secs(50.3)], secs(60.0));
        let mut scaler = WhileWork {
            period: secs(1.0),
            replicas: 1,
            next: Duration::ZERO,
        };
        let outcome = run(&trace, model(2.0, 10.0), &mut scaler)?;
        let latencies: Vec<_> = outcome
            .activations
            .iter()
            .map(|a| (a.decided - a.arrived, a.ready.map(|r| r - a.arrived)))
            .collect();
        assert_eq!(
            latencies,
            vec![(secs(0.9), Some(secs(2.9))), (secs(0.7), Some(secs(2.7)))]
        );
        assert_eq!(outcome.end, secs(60.0));
        Ok(())
    }
}
