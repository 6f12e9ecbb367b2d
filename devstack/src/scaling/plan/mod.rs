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

/// The walk-through, what `devstack plan` runs without options: a burst of 50 at the start, 5 s
/// of work a message, one at a time, pods that take messages 10 s after their creation, the
/// consumer's DRAIN_TIMEOUT of 25 s, Service Bus's 10 deliveries, the HPA's first sync at 7.5 s
/// (the mean of its random phase), seed 1.
impl Default for Scenario {
    fn default() -> Self {
        Self {
            arrivals: vec![Arrival::Burst {
                count: 50,
                at: Duration::ZERO,
            }],
            work: Distribution::Fixed(Duration::from_secs(5)),
            max_concurrency: 1,
            pod_startup: Distribution::Fixed(Duration::from_secs(10)),
            drain_timeout: Duration::from_secs(25),
            max_delivery_count: 10,
            hpa_first_sync: Duration::from_millis(7500),
            seed: 1,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::{decision::By, spec::Manifest};

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// The committed walk-through: a burst of 50 at 0, 5 s of work, pods ready 10 s after they
    /// are created, the HPA's first sync at 7.5 s.
    fn scenario(arrivals: &[&str]) -> Scenario {
        Scenario {
            arrivals: arrivals.iter().map(|a| a.parse().unwrap()).collect(),
            ..Scenario::default()
        }
    }

    fn committed() -> ScalingSpec {
        ScalingSpec::committed().expect("the committed ScaledObject")
    }

    fn run(spec: &ScalingSpec, scenario: &Scenario) -> Plan {
        let workload = scenario.workload().expect("a workload");
        plan(spec, scenario, &workload)
    }

    fn steps(plan: &Plan) -> Vec<(f64, By, u32, u32)> {
        plan.run
            .decisions
            .iter()
            .map(|t| {
                (
                    t.at.as_secs_f64(),
                    t.decision.by,
                    t.decision.from,
                    t.decision.to,
                )
            })
            .collect()
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.warnings.iter().map(|w| w.kind).collect()
    }

    #[test]
    fn the_committed_scaled_object_takes_a_burst_of_50_from_0_to_10_and_back() {
        let plan = run(&committed(), &scenario(&["50"]));
        assert_eq!(
            steps(&plan),
            [
                (0.0, By::Keda, 0, 1),
                (7.5, By::Hpa, 1, 10),
                // The last message completes at 42.5 s: the poll at 42 is the last active one,
                // and the first poll strictly after 42 + 60 is at 104.
                (104.0, By::Keda, 10, 0),
            ]
        );
        assert_eq!(
            plan.run.decisions[2].decision.to_string(),
            "keda: metric 0 <= activation 0, last active at 42s, cooldownPeriod 60s over, scaling consumer 10 -> 0"
        );
        let summary = &plan.summary;
        // consumer-1 works from 10 s, the nine others from 17.5 s: 2 + 5 rounds of 5 s each.
        assert_eq!(summary.drain, Some(42.5));
        assert_eq!(summary.ideal, Some(25.0), "ceil(50 / 10) x 5 s");
        assert_eq!(summary.multiple_of_ideal, Some(1.7));
        assert_eq!(summary.longest_wait, 37.5);
        assert_eq!((summary.peak_replicas, summary.cold_starts), (10, 10));
        // consumer-1 from 0 to 104 s, nine from 7.5 to 104 s.
        assert_eq!(summary.pod_seconds, 104.0 + 9.0 * 96.5);
        assert_eq!(
            (summary.completed, summary.dead_lettered, summary.left),
            (50, 0, 0)
        );
        assert!(summary.settled);
        assert_eq!(kinds(&plan), Vec::<&str>::new());
        // The timeline starts empty, peaks at 50 and 10 replicas, and ends back at 0.
        let timeline = &plan.run.timeline;
        assert_eq!(timeline.iter().map(|p| p.queue).max(), Some(50));
        assert_eq!(timeline.iter().map(|p| p.replicas).max(), Some(10));
        let last = timeline.last().unwrap();
        assert_eq!(
            (last.at, last.queue, last.replicas, last.ready),
            (104.0, 0, 0, 0)
        );
    }

    #[test]
    fn without_its_behavior_it_climbs_the_legacy_way_and_warns_that_the_hpa_is_slow() {
        let mut spec = committed();
        spec.behavior = None;
        let plan = run(&spec, &scenario(&["50"]));
        let steps = steps(&plan);
        assert_eq!(
            steps[..4],
            [
                (0.0, By::Keda, 0, 1),
                (7.5, By::Hpa, 1, 4),
                (22.5, By::Hpa, 4, 8),
                (37.5, By::Hpa, 8, 10),
            ]
        );
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert_eq!((steps[4].1, steps[4].3), (By::Keda, 0));
        assert!(
            plan.summary.multiple_of_ideal.unwrap() > 1.7,
            "{:?}",
            plan.summary
        );
        assert_eq!(kinds(&plan), ["hpa-too-slow"]);
        assert!(
            plan.warnings[0].message.starts_with(
                "the HPA's scale-up rate held the replicas back: 1 -> 4 -> 8 -> 10 over 30s while it asked for 10 (the legacy path"
            ),
            "{}",
            plan.warnings[0].message
        );
    }

    /// BUSY_SCALED_OBJECT of tests/autoscale.rs: 1 -> 4 at once and back down as soon as the
    /// metric falls; pods busy for 60 s, given 10 s to finish.
    fn busy() -> ScalingSpec {
        let mut manifest = Manifest::committed().unwrap();
        for (path, value) in [
            ("spec.maxReplicaCount", "4"),
            ("spec.pollingInterval", "5"),
            ("spec.cooldownPeriod", "0"),
            (
                "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown",
                "{stabilizationWindowSeconds: 0, policies: [{type: Percent, value: 100, periodSeconds: 15}]}",
            ),
        ] {
            manifest
                .set(path, Some(serde_yaml_ng::from_str(value).unwrap()))
                .unwrap();
        }
        manifest
            .set(
                "spec.triggers[0].metadata.messageCount",
                Some(serde_yaml_ng::Value::from("2")),
            )
            .unwrap();
        manifest.set_grace_period(s(10));
        manifest.spec().unwrap()
    }

    #[test]
    fn pods_scaled_in_while_busy_past_their_grace_abandon_what_they_hold_and_nothing_is_lost() {
        let mut scenario = scenario(&["8"]);
        scenario.work = Distribution::Fixed(s(60));
        scenario.pod_startup = Distribution::Fixed(s(1));
        let plan = run(&busy(), &scenario);
        let summary = &plan.summary;
        assert!(summary.busy_scale_ins > 0, "{summary:?}");
        assert!(summary.abandoned_at_scale_in > 0, "{summary:?}");
        assert_eq!(summary.completed + summary.dead_lettered, 8, "{summary:?}");
        assert_eq!(summary.left, 0);
        assert!(
            kinds(&plan).contains(&"busy-scale-in-past-grace"),
            "{:?}",
            plan.warnings
        );
        // With 10 s to finish 60 s of work, the message a victim held goes back to the queue;
        // with 90 s, it finishes there.
        let mut patient = scenario.clone();
        patient.drain_timeout = s(90);
        let mut spec = busy();
        spec.termination_grace_period = s(90);
        let plan = run(&spec, &patient);
        assert!(plan.summary.busy_scale_ins > 0);
        assert_eq!(plan.summary.abandoned_at_scale_in, 0, "{:?}", plan.summary);
        assert!(!kinds(&plan).contains(&"busy-scale-in-past-grace"));
    }

    #[test]
    fn messages_at_or_below_the_activation_are_never_taken_and_the_plan_says_so() {
        let mut spec = committed();
        spec.trigger.activation = 10.0;
        let plan = run(&spec, &scenario(&["5"]));
        assert_eq!(steps(&plan), []);
        assert_eq!((plan.summary.left, plan.summary.drain), (5, None));
        assert!(!plan.summary.settled);
        assert_eq!(kinds(&plan), ["not-drained"]);
    }

    #[test]
    fn a_rate_beyond_max_replicas_grows_the_queue_and_the_plan_says_so() {
        // 10 replicas of 5 s work take 2 messages a second; 3 arrive.
        let plan = run(&committed(), &scenario(&["3/s:10m"]));
        assert_eq!(plan.summary.peak_replicas, 10);
        assert_eq!(plan.summary.completed, 1800);
        assert!(
            kinds(&plan).contains(&"max-replicas-queue-growing"),
            "{:?}",
            plan.warnings
        );
        let message = &plan
            .warnings
            .iter()
            .find(|w| w.kind == "max-replicas-queue-growing")
            .unwrap()
            .message;
        assert!(
            message.contains("about 2.00 messages a second"),
            "{message}"
        );
    }

    #[test]
    fn a_cooldown_shorter_than_the_work_is_a_warning() {
        let mut spec = committed();
        spec.cooldown_period = s(3);
        let plan = run(&spec, &scenario(&["1/m:10m"]));
        assert!(
            kinds(&plan).contains(&"cooldown-shorter-than-work"),
            "{:?}",
            plan.warnings
        );
        assert_eq!(plan.summary.cold_starts, 10, "a cold start a message");
    }

    #[test]
    fn no_message_is_a_plan_too() {
        let plan = run(&committed(), &scenario(&["0"]));
        assert_eq!(steps(&plan), []);
        let summary = &plan.summary;
        assert_eq!(
            (summary.messages, summary.drain, summary.pod_seconds),
            (0, None, 0.0)
        );
        assert!(summary.pod_seconds.is_sign_positive());
        assert!(summary.settled);
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_other_draws() {
        let mut scenario = scenario(&["100", "1/s:5m@1m"]);
        scenario.work = Distribution::Exponential(s(5));
        scenario.pod_startup = "uniform:5s..15s".parse().unwrap();
        let a = run(&committed(), &scenario);
        let b = run(&committed(), &scenario);
        assert_eq!(a.summary, b.summary);
        assert_eq!(a.run.decisions, b.run.decisions);
        scenario.seed = 2;
        let c = run(&committed(), &scenario);
        assert_ne!(a.summary, c.summary);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the settings and the load: every message is completed, dead-lettered or left;
        /// the Deployment stays within its bounds; every change is a change; the run ends.
        #[test]
        fn no_message_is_lost_and_the_replicas_stay_in_bounds(
            burst in 0u64..200,
            rate in 0u32..4,
            work_ms in 100u64..20_000,
            max in 1u32..12,
            polling in 1u64..40,
            cooldown in 0u64..120,
            legacy in proptest::bool::ANY,
            concurrency in 1usize..4,
            grace in 0u64..30,
        ) {
            let mut spec = committed();
            spec.max_replica_count = max;
            spec.polling_interval = s(polling);
            spec.cooldown_period = s(cooldown);
            spec.termination_grace_period = s(grace);
            if legacy {
                spec.behavior = None;
            }
            let mut scenario = scenario(&[]);
            scenario.arrivals = vec![Arrival::Burst { count: burst, at: s(3) }];
            if rate > 0 {
                scenario.arrivals.push(format!("{rate}/s:2m@30s").parse().unwrap());
            }
            scenario.work = Distribution::Uniform(Duration::from_millis(work_ms / 2), Duration::from_millis(work_ms));
            scenario.max_concurrency = concurrency;
            let plan = run(&spec, &scenario);
            let summary = &plan.summary;
            proptest::prop_assert_eq!(
                summary.completed + summary.dead_lettered + summary.left,
                summary.messages
            );
            proptest::prop_assert_eq!(summary.left, 0, "activation 0: every message is taken");
            proptest::prop_assert!(summary.settled);
            for t in &plan.run.decisions {
                proptest::prop_assert_ne!(t.decision.from, t.decision.to);
                proptest::prop_assert!(t.decision.to <= max, "{:?}", t);
            }
            proptest::prop_assert!(summary.peak_replicas <= max);
        }
    }
}
