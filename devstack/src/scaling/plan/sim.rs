//! The simulation: messages arriving and waiting in a peek-lock queue, pods taking them as
//! devstack's sidecar hands them out, the live controller's [`Autoscaler`] scaling the pods on
//! what KEDA's scaler would read, pods starting, and pods scaled in as the ReplicaSet controller
//! picks them ([`victims`]), all in simulated cluster time: no process, no sleep.
//!
//! At one instant, in this order: deliveries that finish, scaled-in pods whose grace is over
//! (what they still hold is abandoned and goes back to the head of the queue, as Service Bus
//! makes it available again), pods that become ready, arrivals, deliveries to free slots, then the
//! loops due, each reading the queue as it is then.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    time::Duration,
};

use crate::{
    queue::Counts,
    scaling::{
        autoscaler::Autoscaler,
        chart::Point,
        controller::metric,
        decision::Decision,
        replicas::{Rank, victims},
        spec::ScalingSpec,
    },
};

use super::Distribution;

/// What the pods run and how they start and stop, beside the ScaledObject.
#[derive(Debug, Clone)]
pub struct Pods {
    /// Messages a pod works at once (MAX_CONCURRENCY).
    pub max_concurrency: usize,
    /// From a pod's creation until the sidecar delivers to it.
    pub startup: Distribution,
    /// The consumer's DRAIN_TIMEOUT: after SIGTERM, how long what it holds may run.
    pub drain_timeout: Duration,
    /// Deliveries before a message is dead-lettered (Service Bus: 10).
    pub max_delivery_count: u32,
    /// Seeds the pods' start-up draws.
    pub seed: u64,
}

/// The messages: when each arrives and how long its work takes (drawn once, so a message killed
/// mid-work takes as long again when redelivered).
#[derive(Debug, Clone)]
pub struct Workload {
    pub arrivals: Vec<Duration>,
    pub work: Vec<Duration>,
}

/// Who scales the pods.
#[derive(Debug)]
pub enum Control {
    /// KEDA and the HPA, as `--autoscale` runs them.
    Autoscaled(Box<Autoscaler>),
    /// This many pods, ready from the start: the ideal the drain is measured against.
    Fixed(u32),
}

/// A decision and the cluster time it was taken at.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    pub at: Duration,
    pub decision: Decision,
}

/// A pod scaled in, and what it held then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleIn {
    pub at: Duration,
    /// Messages in flight on it when it got SIGTERM.
    pub in_flight: u64,
    /// Of those, the ones still unfinished when its time ran out: abandoned and redelivered.
    pub abandoned: u64,
}

/// The longest the queue grew while the Deployment stood at maxReplicaCount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowthAtMax {
    pub from_at: Duration,
    pub from: u64,
    pub to_at: Duration,
    pub to: u64,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Run {
    pub decisions: Vec<Timed>,
    /// The queue (messages not completed) and the replicas, at each change.
    pub timeline: Vec<Point>,
    pub messages: u64,
    pub completed: u64,
    pub dead_lettered: u64,
    /// Still in the queue when the simulation ended: nothing was going to take them.
    pub left: u64,
    pub first_arrival: Option<Duration>,
    pub last_completion: Option<Duration>,
    /// From a message's arrival to the start of the delivery that completed it.
    pub longest_wait: Duration,
    pub peak_replicas: u32,
    /// Time each pod existed, from its creation to its exit, summed.
    pub pod_seconds: f64,
    /// Pods started.
    pub cold_starts: u32,
    pub scale_ins: Vec<ScaleIn>,
    pub growth_at_max: Option<GrowthAtMax>,
    /// When the simulation ended: at rest, or when nothing had changed for long.
    pub end: Duration,
    /// It ended at rest: the queue empty, minReplicaCount pods, none starting or stopping.
    pub settled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Terminating,
    Gone,
}

#[derive(Debug)]
struct Pod {
    n: u32,
    created: Duration,
    ready_at: Duration,
    state: State,
    /// Deliveries in flight, by index.
    busy: Vec<usize>,
    ended: Option<Duration>,
    /// Its entry in `Run::scale_ins`, once scaled in.
    scale_in: Option<usize>,
}

#[derive(Debug)]
struct Delivery {
    message: usize,
    pod: usize,
    started: Duration,
    live: bool,
}

/// What happens at a time; the order at one instant is the variants' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Done(usize),
    GraceOver(usize),
    Ready(usize),
}

struct Sim<'a> {
    spec: &'a ScalingSpec,
    pods_settings: &'a Pods,
    workload: &'a Workload,
    control: Control,
    rng: fastrand::Rng,
    now: Duration,
    next_arrival: usize,
    deliveries_of: Vec<u32>,
    queue: VecDeque<usize>,
    pods: Vec<Pod>,
    deliveries: Vec<Delivery>,
    events: BinaryHeap<Reverse<(Duration, Event)>>,
    locked: u64,
    /// The last time anything changed, for ending a simulation that is stuck.
    last_change: Duration,
    stint_at_max: Option<GrowthAtMax>,
    run: Run,
}

/// Runs `workload` on pods scaled by `control` until the stack is at rest again, or nothing has
/// changed for longer than any of the ScaledObject's windows (messages nobody will take).
pub fn run(spec: &ScalingSpec, pods: &Pods, workload: &Workload, control: Control) -> Run {
    let mut sim = Sim {
        spec,
        pods_settings: pods,
        workload,
        control,
        rng: fastrand::Rng::with_seed(pods.seed),
        now: Duration::ZERO,
        next_arrival: 0,
        deliveries_of: vec![0; workload.arrivals.len()],
        queue: VecDeque::new(),
        pods: Vec::new(),
        deliveries: Vec::new(),
        events: BinaryHeap::new(),
        locked: 0,
        last_change: Duration::ZERO,
        stint_at_max: None,
        run: Run {
            decisions: Vec::new(),
            timeline: Vec::new(),
            messages: workload.arrivals.len() as u64,
            completed: 0,
            dead_lettered: 0,
            left: 0,
            first_arrival: workload.arrivals.first().copied(),
            last_completion: None,
            longest_wait: Duration::ZERO,
            peak_replicas: 0,
            pod_seconds: 0.0,
            cold_starts: 0,
            scale_ins: Vec::new(),
            growth_at_max: None,
            end: Duration::ZERO,
            settled: false,
        },
    };
    sim.start();
    sim.simulate();
    sim.finish()
}

/// How long nothing may change before a simulation that is not at rest ends: past the longest
/// window that can still bring a change (KEDA's cooldowns, the HPA's stabilisation window, at most
/// an hour, and a policy's period, at most 30 minutes), and a poll and a sync more.
fn quiet_limit(spec: &ScalingSpec) -> Duration {
    spec.cooldown_period
        + spec.initial_cooldown_period
        + Duration::from_secs(3600 + 1800 + 15)
        + spec.polling_interval
}

impl Sim<'_> {
    fn start(&mut self) {
        let initial = match &self.control {
            Control::Autoscaled(autoscaler) => autoscaler.desired(),
            Control::Fixed(n) => *n,
        };
        for _ in 0..initial {
            let ready_now = matches!(self.control, Control::Fixed(_));
            self.start_pod(ready_now);
        }
        self.run.peak_replicas = initial;
        self.record();
    }

    fn simulate(&mut self) {
        let quiet = quiet_limit(self.spec);
        while let Some(next) = self.next_time() {
            self.now = next;
            self.step();
            self.record();
            let idle = self.next_arrival == self.workload.arrivals.len() && self.events.is_empty();
            if idle && self.queue.is_empty() && self.at_rest() {
                self.run.settled = true;
                break;
            }
            if idle && self.now.saturating_sub(self.last_change) > quiet {
                break;
            }
        }
    }

    /// At rest: the Deployment where nothing but a new message would move it.
    fn at_rest(&self) -> bool {
        match &self.control {
            Control::Autoscaled(autoscaler) => autoscaler.desired() == self.spec.min_replica_count,
            Control::Fixed(_) => true,
        }
    }

    fn next_time(&self) -> Option<Duration> {
        let arrival = self.workload.arrivals.get(self.next_arrival).copied();
        let event = self.events.peek().map(|Reverse((at, _))| *at);
        let tick = match &self.control {
            Control::Autoscaled(autoscaler) => Some(autoscaler.next().0),
            Control::Fixed(_) => None,
        };
        [arrival, event, tick].into_iter().flatten().min()
    }

    fn step(&mut self) {
        while let Some(&Reverse((at, event))) = self.events.peek()
            && at <= self.now
        {
            self.events.pop();
            match event {
                Event::Done(delivery) => self.done(delivery),
                Event::GraceOver(pod) => self.grace_over(pod),
                Event::Ready(pod) => {
                    if self.pods[pod].state == State::Starting {
                        self.pods[pod].state = State::Ready;
                        self.changed();
                    }
                }
            }
        }
        while let Some(&at) = self.workload.arrivals.get(self.next_arrival)
            && at <= self.now
        {
            self.queue.push_back(self.next_arrival);
            self.next_arrival += 1;
            self.changed();
        }
        self.dispatch();
        self.control();
    }

    /// The loops due now, each reading the queue as it stands.
    fn control(&mut self) {
        loop {
            let Control::Autoscaled(autoscaler) = &mut self.control else {
                return;
            };
            if autoscaler.next().0 > self.now {
                return;
            }
            let counts = Counts {
                produced: self.next_arrival as u64,
                active: self.queue.len() as u64,
                locked: self.locked,
                completed: self.run.completed,
                dead_lettered: self.run.dead_lettered,
                ..Counts::default()
            };
            let metric = metric(self.spec.trigger.kind, counts);
            let desired = autoscaler.desired();
            let (at, decision) = autoscaler.run_due(metric, self.now);
            self.watch_growth_at_max(at, metric, desired);
            if let Some(decision) = decision {
                let to = decision.to;
                self.run.decisions.push(Timed { at, decision });
                self.scale_to(to);
                self.changed();
            }
        }
    }

    /// Keeps the longest growth of the metric while the Deployment stands at maxReplicaCount.
    fn watch_growth_at_max(&mut self, at: Duration, metric: u64, desired: u32) {
        if desired < self.spec.max_replica_count {
            self.stint_at_max = None;
            return;
        }
        let stint = self.stint_at_max.get_or_insert(GrowthAtMax {
            from_at: at,
            from: metric,
            to_at: at,
            to: metric,
        });
        if metric > stint.to {
            stint.to = metric;
            stint.to_at = at;
        }
        let growth = |g: &GrowthAtMax| g.to.saturating_sub(g.from);
        if self
            .run
            .growth_at_max
            .is_none_or(|g| growth(stint) > growth(&g))
        {
            self.run.growth_at_max = Some(*stint);
        }
    }

    fn scale_to(&mut self, desired: u32) {
        self.run.peak_replicas = self.run.peak_replicas.max(desired);
        let active: Vec<usize> = (0..self.pods.len())
            .filter(|&i| matches!(self.pods[i].state, State::Starting | State::Ready))
            .collect();
        let count = active.len() as u32;
        for _ in count..desired {
            self.start_pod(false);
        }
        if desired < count {
            let ranks: Vec<Rank<Duration>> = active
                .iter()
                .map(|&i| {
                    let pod = &self.pods[i];
                    let ready = pod.state == State::Ready;
                    Rank {
                        running: ready,
                        ready_since: ready.then_some(pod.ready_at),
                        // The plan's pods never crash.
                        restarts: 0,
                        n: pod.n,
                    }
                })
                .collect();
            for victim in victims(&ranks, (count - desired) as usize) {
                self.terminate(active[victim]);
            }
        }
    }

    fn start_pod(&mut self, ready_now: bool) {
        let i = self.pods.len();
        let startup = match ready_now {
            true => Duration::ZERO,
            false => self.pods_settings.startup.sample(&mut self.rng),
        };
        self.pods.push(Pod {
            n: i as u32 + 1,
            created: self.now,
            ready_at: self.now + startup,
            state: if ready_now {
                State::Ready
            } else {
                State::Starting
            },
            busy: Vec::new(),
            ended: None,
            scale_in: None,
        });
        if !ready_now {
            self.run.cold_starts += 1;
            self.events
                .push(Reverse((self.now + startup, Event::Ready(i))));
        }
    }

    /// SIGTERM: no new message; what it holds may finish until the drain timeout or the grace
    /// period, whichever is shorter, runs out.
    fn terminate(&mut self, i: usize) {
        let pod = &mut self.pods[i];
        match pod.state {
            State::Starting => {
                pod.state = State::Gone;
                pod.ended = Some(self.now);
            }
            State::Ready => {
                self.run.scale_ins.push(ScaleIn {
                    at: self.now,
                    in_flight: pod.busy.len() as u64,
                    abandoned: 0,
                });
                pod.scale_in = Some(self.run.scale_ins.len() - 1);
                if pod.busy.is_empty() {
                    pod.state = State::Gone;
                    pod.ended = Some(self.now);
                } else {
                    pod.state = State::Terminating;
                    let limit = self
                        .pods_settings
                        .drain_timeout
                        .min(self.spec.termination_grace_period);
                    self.events
                        .push(Reverse((self.now + limit, Event::GraceOver(i))));
                }
            }
            State::Terminating | State::Gone => {}
        }
    }

    fn done(&mut self, delivery: usize) {
        let d = &mut self.deliveries[delivery];
        if !d.live {
            return;
        }
        d.live = false;
        let (message, pod, started) = (d.message, d.pod, d.started);
        self.locked -= 1;
        self.run.completed += 1;
        self.run.last_completion = Some(self.now);
        let wait = started.saturating_sub(self.workload.arrivals[message]);
        self.run.longest_wait = self.run.longest_wait.max(wait);
        let pod = &mut self.pods[pod];
        pod.busy.retain(|&b| b != delivery);
        if pod.state == State::Terminating && pod.busy.is_empty() {
            pod.state = State::Gone;
            pod.ended = Some(self.now);
        }
        self.changed();
    }

    /// A scaled-in pod's time ran out: what it still holds is abandoned, redelivered from the
    /// head of the queue (or dead-lettered past the delivery count), and the pod is gone.
    fn grace_over(&mut self, i: usize) {
        if self.pods[i].state != State::Terminating {
            return;
        }
        let held = std::mem::take(&mut self.pods[i].busy);
        if let Some(entry) = self.pods[i].scale_in {
            self.run.scale_ins[entry].abandoned = held.len() as u64;
        }
        for &delivery in held.iter().rev() {
            let d = &mut self.deliveries[delivery];
            d.live = false;
            self.locked -= 1;
            let message = d.message;
            if self.deliveries_of[message] >= self.pods_settings.max_delivery_count {
                self.run.dead_lettered += 1;
            } else {
                self.queue.push_front(message);
            }
        }
        self.pods[i].state = State::Gone;
        self.pods[i].ended = Some(self.now);
        self.changed();
    }

    /// Hands waiting messages to free slots: the ready pod holding fewest first, the oldest among
    /// equals, as competing workers spread the messages.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let free = self
                .pods
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.state == State::Ready && p.busy.len() < self.pods_settings.max_concurrency
                })
                .min_by_key(|(_, p)| (p.busy.len(), p.n))
                .map(|(i, _)| i);
            let Some(pod) = free else {
                return;
            };
            let Some(message) = self.queue.pop_front() else {
                return;
            };
            self.deliveries_of[message] += 1;
            let delivery = self.deliveries.len();
            self.deliveries.push(Delivery {
                message,
                pod,
                started: self.now,
                live: true,
            });
            self.pods[pod].busy.push(delivery);
            self.locked += 1;
            let done_at = self.now + self.workload.work[message];
            self.events.push(Reverse((done_at, Event::Done(delivery))));
            self.changed();
        }
    }

    fn changed(&mut self) {
        self.last_change = self.now;
    }

    /// A point of the timeline, when anything it shows changed.
    fn record(&mut self) {
        let desired = match &self.control {
            Control::Autoscaled(autoscaler) => autoscaler.desired(),
            Control::Fixed(n) => *n,
        };
        let point = Point {
            at: self.now.as_secs_f64(),
            queue: self.queue.len() as u64 + self.locked,
            replicas: u64::from(desired),
            ready: self.pods.iter().filter(|p| p.state == State::Ready).count() as u64,
        };
        let same = |last: &Point| {
            (last.queue, last.replicas, last.ready) == (point.queue, point.replicas, point.ready)
        };
        if !self.run.timeline.last().is_some_and(same) {
            self.run.timeline.push(point);
        }
    }

    fn finish(mut self) -> Run {
        let end = self.now;
        // A fold from +0: an empty f64 sum is -0.
        self.run.pod_seconds = self.pods.iter().fold(0.0, |sum, p| {
            sum + p
                .ended
                .unwrap_or(end)
                .saturating_sub(p.created)
                .as_secs_f64()
        });
        self.run.left = self.queue.len() as u64 + self.locked;
        self.run.end = end;
        self.run
    }
}
