//! `devstack plan`: what a ScaledObject does under a load, before it is deployed, in a second.
//!
//! It runs the live preview's loops (`Autoscaler`, with KEDA's and the HPA's rules, the metric
//! KEDA's scaler reads, the ReplicaSet's choice of victims) in simulated time over simulated pods
//! and a simulated queue (`sim`), for arrivals (`arrivals`) and work (`distribution`) given on the
//! command line, and sums the run up with the traps it met (`summary`); `sweep` runs it for every
//! combination of some settings, `report` writes the outcome. What it models differently from the
//! live preview, and why, is in docs/scaling.md ("Plan before you deploy").

pub mod arrivals;
pub mod command;
pub mod distribution;
pub mod report;
pub mod sim;
pub mod summary;
pub mod sweep;

use std::time::Duration;

pub use arrivals::Arrival;
pub use distribution::Distribution;

use self::{
    sim::{Control, Pods, Run, Workload},
    summary::{Summary, Warning},
};
use super::{autoscaler::Autoscaler, spec::ScalingSpec};

/// Everything a plan runs beside the ScaledObject.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub arrivals: Vec<Arrival>,
    /// Each message's work.
    pub work: Distribution,
    /// Messages a pod works at once (MAX_CONCURRENCY).
    pub max_concurrency: usize,
    /// From a pod's creation until the sidecar delivers to it.
    pub pod_startup: Distribution,
    /// The consumer's DRAIN_TIMEOUT.
    pub drain_timeout: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_delivery_count: u32,
    /// The HPA's first sync, cluster time: its phase (random within 15 s in a cluster).
    pub hpa_first_sync: Duration,
    /// Seeds every draw: the same seed, the same plan.
    pub seed: u64,
}

impl Scenario {
    /// The messages: arrival times, and each one's work drawn with the seed. Drawn once for a
    /// sweep, so that every combination sees the same messages.
    pub fn workload(&self) -> anyhow::Result<Workload> {
        let arrivals = arrivals::times(&self.arrivals)?;
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let work = arrivals
            .iter()
            .map(|_| self.work.sample(&mut rng))
            .collect();
        Ok(Workload { arrivals, work })
    }

    fn pods(&self) -> Pods {
        Pods {
            max_concurrency: self.max_concurrency,
            startup: self.pod_startup,
            drain_timeout: self.drain_timeout,
            max_delivery_count: self.max_delivery_count,
            // Apart from the work's draws: a pod more or less leaves every message's work as it
            // was.
            seed: self.seed.wrapping_add(1),
        }
    }
}

/// A plan's outcome.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run: Run,
    pub summary: Summary,
    pub warnings: Vec<Warning>,
}

/// What `spec` does with `workload`, the rest of the `scenario` around it.
pub fn plan(spec: &ScalingSpec, scenario: &Scenario, workload: &Workload) -> Plan {
    let pods = scenario.pods();
    let autoscaler = Autoscaler::new(spec, scenario.hpa_first_sync);
    let run = sim::run(
        spec,
        &pods,
        workload,
        Control::Autoscaled(Box::new(autoscaler)),
    );
    let ideal = sim::run(
        spec,
        &pods,
        workload,
        Control::Fixed(spec.max_replica_count),
    );
    let summary = Summary::of(&run, &ideal);
    let warnings = summary::warnings(spec, scenario, workload, &run, &summary);
    Plan {
        run,
        summary,
        warnings,
    }
}
