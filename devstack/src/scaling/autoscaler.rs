//! KEDA's loop and the HPA's loop over one Deployment, on one clock: when each runs next, what it
//! decides, and the replica count they leave. The live controller runs it against the sidecar's
//! queue on the `clock`; `plan` runs it in simulated time. Both hand it the same inputs (the
//! time a loop is due, the metric read then), so both take the same decisions.

use std::time::Duration;

use super::{
    decision::{By, Decision},
    hpa::Hpa,
    keda::Keda,
    spec::ScalingSpec,
};

/// Both loops and the Deployment's spec.replicas they set. Times are cluster time since the
/// controller started.
#[derive(Debug)]
pub struct Autoscaler {
    keda: Keda,
    hpa: Hpa,
    /// The Deployment's spec.replicas, as the loops last set it.
    desired: u32,
    poll_at: Duration,
    sync_at: Duration,
    hpa_first_sync: Duration,
}

impl Autoscaler {
    /// The loops of `spec`, the controller starting now (cluster time 0) with the Deployment at
    /// minReplicaCount: KEDA polls at once (as for a ScaledObject just created), then every
    /// pollingInterval; the HPA first syncs at `hpa_first_sync`, then every 15 s. That phase is
    /// the controller manager's: within a sync period of the start, at random in a cluster
    /// ([`Hpa::first_sync`]), chosen by whoever runs the loops.
    pub fn new(spec: &ScalingSpec, hpa_first_sync: Duration) -> Self {
        Self {
            keda: Keda::new(spec),
            hpa: spec.hpa(),
            desired: spec.min_replica_count,
            poll_at: Duration::ZERO,
            sync_at: hpa_first_sync,
            hpa_first_sync,
        }
    }

    /// The loop due next, and when. At the same instant the HPA's sync comes first: a tie needs a
    /// phase a whole number of polls from the start, which the random phase of a cluster has
    /// no reason to be, so either order is as true; this one is fixed.
    pub fn next(&self) -> (Duration, By) {
        match self.sync_at <= self.poll_at {
            true => (self.sync_at, By::Hpa),
            false => (self.poll_at, By::Keda),
        }
    }

    /// Runs the loop due ([`next`](Self::next)), with the `metric` read for it, `now` being when
    /// it really runs: at its due time in simulated time, a little after it in real time. The
    /// rules decide as of the due time; the next run of that loop is on its cadence after `now`,
    /// the runs already missed skipped, as Go's tickers drop ticks.
    pub fn run_due(&mut self, metric: u64, now: Duration) -> (Duration, Option<Decision>) {
        let (at, by) = self.next();
        let decision = match by {
            By::Keda => {
                self.poll_at = self.keda.next_poll(at, now);
                self.keda.poll(at, metric, self.desired)
            }
            By::Hpa => {
                self.sync_at = Hpa::next_sync(at, now);
                self.hpa.sync(at, metric, self.desired)
            }
        };
        if let Some(decision) = &decision {
            self.desired = decision.to;
        }
        (at, decision)
    }

    /// The Deployment's spec.replicas.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// KEDA's state: its last verdict, lastActiveTime, when the cooldown ends.
    pub fn keda(&self) -> &Keda {
        &self.keda
    }

    /// When the HPA first synced, or will: its phase.
    pub fn hpa_first_sync(&self) -> Duration {
        self.hpa_first_sync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn polls_and_syncs_interleave_on_their_cadences_the_hpa_first_at_a_tie() {
        let spec = ScalingSpec::committed().expect("the committed ScaledObject");
        let mut autoscaler = Autoscaler::new(&spec, s(4));
        let mut order = Vec::new();
        for _ in 0..6 {
            let (at, by) = autoscaler.next();
            order.push((at, by));
            autoscaler.run_due(0, at);
        }
        assert_eq!(
            order,
            [
                (s(0), By::Keda),
                (s(2), By::Keda),
                (s(4), By::Hpa),
                (s(4), By::Keda),
                (s(6), By::Keda),
                (s(8), By::Keda),
            ]
        );
        assert_eq!(autoscaler.next(), (s(10), By::Keda));
    }

    #[test]
    fn a_loop_run_late_decides_as_of_its_due_time_and_skips_the_runs_it_missed() {
        let spec = ScalingSpec::committed().expect("the committed ScaledObject");
        let mut autoscaler = Autoscaler::new(&spec, s(14));
        // The first poll runs 5 s late: it decides at 0, with the metric read then.
        let (at, decision) = autoscaler.run_due(50, s(5));
        assert_eq!(at, s(0));
        let decision = decision.expect("0 -> 1");
        assert_eq!((decision.from, decision.to), (0, 1));
        assert_eq!(autoscaler.keda().last_active_time(), Some(s(0)));
        assert_eq!(autoscaler.desired(), 1);
        // The polls of 2 and 4 s were missed; the next is at 6.
        assert_eq!(autoscaler.next(), (s(6), By::Keda));
    }
}
