//! The consumer Deployment's pods, as the ReplicaSet controller and the kubelet run them: scaling
//! up starts `consumer` processes, each on free ports and labelled `consumer-N` (N never reused);
//! scaling in picks victims as the ReplicaSet controller does, stops the sidecar's delivery to
//! each (daprd closes its input bindings at SIGTERM), sends SIGTERM, and kills a victim still
//! running after terminationGracePeriodSeconds. A victim's in-flight messages finish, or are
//! abandoned (its lock dropped) and redelivered: none is lost.

use std::{cmp::Ordering, net::SocketAddr, process::ExitStatus, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{
    app::{AppProtocol, AppTarget},
    process::{self, LISTEN_LIMIT, Launch, Listening, Process, STOP_LIMIT},
    registry::{ReplicaState, Terminating},
    sidecar::{AppHandle, Sidecar},
};

use super::{clock::Clock, status::Unregistered};

/// What every replica runs: the consumer's launch (each replica labelled `consumer-N`), and how
/// many events the sidecar has in flight to each.
#[derive(Debug, Clone)]
pub struct Template {
    pub launch: Launch,
    pub max_concurrency: usize,
}

/// Starts delivering to the consumer `label` at `address`, and says where it is.
pub fn deliver_to(
    sidecar: &mut Sidecar,
    label: &str,
    address: SocketAddr,
    max_concurrency: usize,
) -> AppHandle {
    info!(part = %label, app = %address, "delivering to consumer");
    sidecar.add_app(
        AppTarget {
            protocol: AppProtocol::Grpc,
            address,
            max_concurrency,
        },
        label.to_owned(),
    )
}

/// What a replica's watcher reports.
#[derive(Debug)]
pub enum ReplicaEvent {
    /// It logged the address it bound (or did not within the limit).
    Listening {
        n: u32,
        address: anyhow::Result<SocketAddr>,
    },
    /// Its process exited.
    Exited {
        n: u32,
        status: std::io::Result<ExitStatus>,
    },
}

/// One consumer process.
#[derive(Debug)]
struct Replica {
    n: u32,
    label: String,
    /// Once its address is known: the sidecar delivers to it.
    app: Option<AppHandle>,
    /// `Some(grace)` asks its watcher to SIGTERM it and kill it after `grace`.
    stop: watch::Sender<Option<Duration>>,
    /// Picked to scale in (or stopping with the stack).
    terminating: bool,
}

impl Replica {
    fn rank(&self) -> Rank {
        let (state, ready_since) = match &self.app {
            None => (ReplicaState::Starting, None),
            Some(app) => (app.status.state(), app.status.ready_since()),
        };
        Rank {
            running: self.app.is_some(),
            ready_since: (state == ReplicaState::Ready)
                .then_some(ready_since)
                .flatten(),
            n: self.n,
        }
    }
}

/// The consumer processes of an autoscaled stack.
#[derive(Debug)]
pub struct ReplicaSet {
    template: Template,
    /// The pods' terminationGracePeriod.
    grace: Duration,
    clock: Clock,
    /// Live replicas, oldest first.
    replicas: Vec<Replica>,
    next: u32,
    events_tx: mpsc::UnboundedSender<ReplicaEvent>,
    events: mpsc::UnboundedReceiver<ReplicaEvent>,
    /// The tasks relaying the replicas' output and watching their processes.
    tasks: JoinSet<()>,
}

impl ReplicaSet {
    /// No replica yet; each is started from `template`, and gets `grace` (the pods'
    /// terminationGracePeriod) when scaled in.
    pub fn new(template: Template, grace: Duration, clock: Clock) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            template,
            grace,
            clock,
            replicas: Vec::new(),
            next: 1,
            events_tx,
            events,
            tasks: JoinSet::new(),
        }
    }

    /// Replicas that count towards the Deployment's replicas (not terminating).
    pub fn active(&self) -> u32 {
        let n = self.replicas.iter().filter(|r| !r.terminating).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub fn unregistered(&self) -> Unregistered {
        let mut counts = Unregistered::default();
        for replica in self.replicas.iter().filter(|r| r.app.is_none()) {
            match replica.terminating {
                true => counts.terminating += 1,
                false => counts.starting += 1,
            }
        }
        counts
    }

    /// Starts or scales in replicas until `desired` are not terminating.
    pub fn scale_to(&mut self, desired: u32) -> anyhow::Result<()> {
        let active = self.active();
        for _ in active..desired {
            self.start_one()?;
        }
        if active > desired {
            let candidates: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| !self.replicas[i].terminating)
                .collect();
            let ranks: Vec<Rank> = candidates
                .iter()
                .map(|&i| self.replicas[i].rank())
                .collect();
            let count = usize::try_from(active - desired).unwrap_or(usize::MAX);
            for victim in victims(&ranks, count) {
                let i = candidates[victim];
                self.terminate(i, self.grace);
            }
        }
        Ok(())
    }

    fn start_one(&mut self) -> anyhow::Result<()> {
        let n = self.next;
        self.next += 1;
        let label = format!("consumer-{n}");
        // Each pod has its own ports: the template's are free ones, learnt from its `listening`
        // event.
        let launch = self.template.launch.labelled(label.clone());
        let (process, listening) = launch.spawn(&mut self.tasks)?;
        let (stop, stopped) = watch::channel(None);
        self.tasks.spawn(watch_replica(
            n,
            process,
            listening,
            stopped,
            self.events_tx.clone(),
        ));
        self.replicas.push(Replica {
            n,
            label,
            app: None,
            stop,
            terminating: false,
        });
        Ok(())
    }

    /// Stops delivering to replica `i`, then has it sent SIGTERM, and killed after `grace`.
    fn terminate(&mut self, i: usize, grace: Duration) {
        let replica = &mut self.replicas[i];
        replica.terminating = true;
        let at = Instant::now();
        let mut in_flight = 0;
        if let Some(app) = &replica.app {
            app.stop_delivery();
            app.status.set_terminating(Terminating {
                at: self.clock.wall_at(at),
                kill_at: self.clock.wall_at(at + grace),
            });
            in_flight = app.status.in_flight();
        }
        // What it has in flight finishes within the grace period, or is redelivered.
        info!(part = %replica.label, in_flight, ?grace, "scaling in: delivery stopped, sending SIGTERM");
        let _ = replica.stop.send(Some(grace));
    }

    /// The next report of a replica's watcher.
    pub async fn next_event(&mut self) -> ReplicaEvent {
        self.events
            .recv()
            .await
            .expect("the replica set holds a sender")
    }

    /// Acts on a watcher's report. An error means the stack must stop: a replica exited without
    /// being scaled in, or never said where it listens.
    pub fn handle(&mut self, event: ReplicaEvent, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        match event {
            ReplicaEvent::Listening { n, address } => {
                let Some(replica) = self.replicas.iter_mut().find(|r| r.n == n) else {
                    return Ok(());
                };
                if replica.terminating {
                    // Scaled in before it was up: the sidecar never delivers to it.
                    return Ok(());
                }
                let address = address.inspect_err(|e| {
                    error!(part = %replica.label, error = %e, "stopping the stack");
                })?;
                replica.app = Some(deliver_to(
                    sidecar,
                    &replica.label,
                    address,
                    self.template.max_concurrency,
                ));
                Ok(())
            }
            ReplicaEvent::Exited { n, status } => {
                let Some(i) = self.replicas.iter().position(|r| r.n == n) else {
                    return Ok(());
                };
                let replica = self.replicas.remove(i);
                if let Some(app) = &replica.app {
                    sidecar.remove_app(app);
                }
                if !replica.terminating {
                    return Err(process::died(&replica.label, status).into());
                }
                process::stopped(&replica.label, status);
                Ok(())
            }
        }
    }

    /// SIGTERM to every replica still running, as Kubernetes does when the stack stops, then
    /// waits (bounded) for each, killing what is still running after [`STOP_LIMIT`].
    pub async fn stop_all(&mut self, sidecar: &mut Sidecar) {
        for replica in &mut self.replicas {
            replica.terminating = true;
            let _ = replica.stop.send(Some(STOP_LIMIT));
        }
        let deadline = Instant::now() + STOP_LIMIT + Duration::from_secs(5);
        while !self.replicas.is_empty() {
            match tokio::time::timeout_at(deadline, self.next_event()).await {
                Ok(event) => {
                    let _ = self.handle(event, sidecar);
                }
                Err(_) => {
                    for replica in &self.replicas {
                        warn!(part = %replica.label, "did not stop in time");
                    }
                    break;
                }
            }
        }
        // The watchers have reported; their relays end with the processes' output.
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Owns one replica's process: reports its address and its exit, and on request sends it
/// SIGTERM, then kills it if still running after the grace period.
async fn watch_replica(
    n: u32,
    mut process: Process,
    listening: Listening,
    mut stop: watch::Receiver<Option<Duration>>,
    events: mpsc::UnboundedSender<ReplicaEvent>,
) {
    let deadline = Instant::now() + LISTEN_LIMIT;
    let status = tokio::select! {
        status = process.wait() => Some(status),
        grace = stop_requested(&mut stop) => Some(process.stop(grace).await),
        address = listening.address(deadline) => {
            let _ = events.send(ReplicaEvent::Listening { n, address });
            None
        }
    };
    let status = match status {
        Some(status) => status,
        None => tokio::select! {
            status = process.wait() => status,
            grace = stop_requested(&mut stop) => process.stop(grace).await,
        },
    };
    let _ = events.send(ReplicaEvent::Exited { n, status });
}

/// The grace period once a stop is asked for; a replica set that is gone means stop now.
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or(Duration::ZERO),
        Err(_) => Duration::ZERO,
    }
}

/// What the ReplicaSet controller ranks a pod on to delete it, for processes on one node. `T` is
/// the time: the replica set's instants, or `plan`'s simulated cluster time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank<T = Instant> {
    /// Its server is up (it logged its address): a pod past Pending.
    pub running: bool,
    /// Since when it has been ready; `None` while not ready.
    pub ready_since: Option<T>,
    /// Its creation order: higher is newer.
    pub n: u32,
}

/// kubernetes `ActivePodsWithRanks.Less` (pkg/controller/controller_utils.go), for what differs
/// between our processes: Pending before Running, not ready before ready, then the most recently
/// ready first, then the newest first. The rest (node, deletion cost, co-located pods, restarts)
/// is the same for every process here. The LogarithmicScaleDown buckets are not emulated: times
/// compare exactly, so the order is deterministic.
pub fn deletion_order<T: Ord>(a: &Rank<T>, b: &Rank<T>) -> Ordering {
    // `false` sorts first: pending before running, not ready before ready.
    a.running
        .cmp(&b.running)
        .then(a.ready_since.is_some().cmp(&b.ready_since.is_some()))
        // Both ready: the later ready time first.
        .then(b.ready_since.cmp(&a.ready_since))
        .then(b.n.cmp(&a.n))
}

/// The indices of the `count` replicas to scale in, first victims first
/// (replica_set.go `getPodsToDelete`).
pub fn victims<T: Ord>(ranks: &[Rank<T>], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    order.sort_by(|&a, &b| deletion_order(&ranks[a], &ranks[b]));
    order.truncate(count);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(n: u32, running: bool, ready_secs_ago: Option<u64>, now: Instant) -> Rank {
        Rank {
            running,
            ready_since: ready_secs_ago.map(|s| now - Duration::from_secs(s)),
            n,
        }
    }

    #[test]
    fn not_ready_first_then_the_most_recently_ready_then_the_newest() {
        let now = Instant::now() + Duration::from_secs(1000);
        let ranks = [
            rank(1, true, Some(100), now), // ready longest
            rank(2, true, Some(10), now),  // ready most recently
            rank(3, true, None, now),      // running, not ready
            rank(4, false, None, now),     // not yet listening
            rank(5, true, Some(50), now),
            rank(6, true, None, now), // newer, not ready
        ];
        assert_eq!(victims(&ranks, 6), [3, 5, 2, 1, 4, 0]);
        assert_eq!(victims(&ranks, 2), [3, 5]);
        assert_eq!(victims(&ranks, 0), Vec::<usize>::new());
    }

    #[test]
    fn equally_ready_replicas_go_newest_first() {
        let now = Instant::now() + Duration::from_secs(1000);
        let ranks = [
            rank(7, true, Some(5), now),
            rank(9, true, Some(5), now),
            rank(8, true, Some(5), now),
        ];
        assert_eq!(victims(&ranks, 3), [1, 2, 0]);
    }

    #[test]
    fn scaling_in_more_than_there_are_takes_them_all() {
        let now = Instant::now();
        let ranks = [rank(1, true, None, now), rank(2, false, None, now)];
        assert_eq!(victims(&ranks, 5), [1, 0]);
    }
}
