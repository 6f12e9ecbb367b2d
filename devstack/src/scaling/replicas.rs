//! The consumer Deployment's pods, as the ReplicaSet controller and the kubelet run them, for
//! `--autoscale` and for `--consumers N` alike.
//!
//! - Scaling up starts `consumer` processes, each labelled `consumer-N` (N never reused), on free
//!   ports or on the ports `--app-port` and `--metrics-port` give.
//! - Scaling in picks victims as the ReplicaSet controller does, stops the sidecar's delivery to
//!   each (daprd closes its input bindings at SIGTERM), sends SIGTERM, and kills a victim still
//!   running after terminationGracePeriodSeconds. A victim's in-flight messages finish, or are
//!   abandoned and redelivered: none is lost.
//! - A process that exits without being told to is restarted as the kubelet restarts a container
//!   under `restartPolicy: Always`, after its CrashLoopBackOff (`crashloop`); the sidecar's
//!   calls to it fail meanwhile, so what it held is abandoned and redelivered. The consumer keeps
//!   its label and its row in the status, with its restarts and last exit. With `stop_on_crash`
//!   the stack stops instead.
//! - The process faults (`kill`, `sigterm`, `pause`) are carried out here, by the task that owns
//!   each process.

use std::{cmp::Ordering, net::SocketAddr, process::ExitStatus, time::Duration};

use nix::sys::signal::Signal as Sig;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{
    app::{AppProtocol, AppTarget},
    faults::{ConsumerControl, FaultError, ProcessFault, Signal},
    process::{self, LISTEN_LIMIT, Launch, Listening, NotListening, Process, STOP_LIMIT},
    registry::{Down, ReplicaState, Terminating},
    sidecar::{AppHandle, Sidecar},
};

use super::{clock::Clock, crashloop::CrashLoop, status::Unregistered};

/// What every replica runs: the consumer's launch, where each replica listens, how many events
/// the sidecar has in flight to each, and how replicas are labelled.
#[derive(Debug, Clone)]
pub struct Template {
    pub launch: Launch,
    pub max_concurrency: usize,
    pub ports: Ports,
    /// `consumer` for a lone fixed consumer, `consumer-N` otherwise.
    pub numbered: bool,
}

/// Where a replica listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Free ports, learnt from its `listening` event, as each pod has its own.
    Free,
    /// Replica N on `app + N - 1` and `metrics + N - 1`.
    From { app: u16, metrics: u16 },
}

impl Template {
    fn label(&self, n: u32) -> String {
        match self.numbered {
            true => format!("consumer-{n}"),
            false => "consumer".to_owned(),
        }
    }

    /// Replica `n`'s launch, and its app address when its port is known beforehand.
    pub fn replica(&self, n: u32) -> anyhow::Result<(Launch, Option<SocketAddr>)> {
        let launch = self.launch.labelled(self.label(n));
        let nth = |first: u16, what: &str| {
            nth_port(first, n - 1)
                .ok_or_else(|| anyhow::anyhow!("{what} + consumers is past port 65535"))
        };
        match self.ports {
            Ports::Free => Ok((launch.env("APP_PORT", 0).env("METRICS_PORT", 0), None)),
            Ports::From { app, metrics } => {
                let (app, metrics) = (nth(app, "APP_PORT")?, nth(metrics, "METRICS_PORT")?);
                let launch = launch.env("APP_PORT", app).env("METRICS_PORT", metrics);
                let address = (app != 0).then(|| ([127, 0, 0, 1], app).into());
                Ok((launch, address))
            }
        }
    }
}

/// Replica `n`'s port (0-based) when the first one's is `first`: the next ones follow it, and
/// 0 stays 0 (each picks a free port).
pub fn nth_port(first: u16, n: u32) -> Option<u16> {
    match first {
        0 => Some(0),
        first => first.checked_add(u16::try_from(n).ok()?),
    }
}

/// Starts delivering to the consumer `label` at `address`, and says where it is.
pub fn deliver_to(
    sidecar: &mut Sidecar,
    label: &str,
    address: SocketAddr,
    max_concurrency: usize,
) -> AppHandle {
    info!(part = %label, app = %address, "delivering to consumer");
    sidecar.add_app(target(address, max_concurrency), label.to_owned())
}

fn target(address: SocketAddr, max_concurrency: usize) -> AppTarget {
    AppTarget {
        protocol: AppProtocol::Grpc,
        address,
        max_concurrency,
    }
}

/// What happens to the replica set, for [`ReplicaSet::handle`].
#[derive(Debug)]
pub enum ReplicaEvent {
    /// A replica's process logged the address it bound.
    Listening { n: u32, address: SocketAddr },
    /// It did not within the limit, and still runs: the stack stops.
    Silent { n: u32, error: String },
    /// Its process exited.
    Exited {
        n: u32,
        status: std::io::Result<ExitStatus>,
    },
    /// A replica waiting out its back-off is scaled in: it has no process to stop.
    Gone { n: u32 },
    /// Its back-off is over: start it again.
    RestartDue { n: u32 },
    /// A process fault to carry out.
    Fault(ProcessFault),
}

/// What a replica's process watcher is told to do.
#[derive(Debug)]
enum Command {
    /// SIGTERM, and SIGKILL after the grace period.
    Stop(Duration),
    Signal(Signal, oneshot::Sender<Result<u32, FaultError>>),
}

/// One consumer: a process now, or waiting to be restarted.
#[derive(Debug)]
struct Replica {
    n: u32,
    label: String,
    /// Once its address is known: the sidecar delivers to it.
    app: Option<AppHandle>,
    /// Its process's watcher, while a process runs.
    process: Option<mpsc::UnboundedSender<Command>>,
    /// Picked to scale in (or stopping with the stack).
    terminating: bool,
    crashloop: CrashLoop,
    /// While waiting out its back-off: when it restarts, and when (cluster time) it exited.
    restart_at: Option<(Instant, Duration)>,
    /// Exited before it was ever known to the sidecar, and not restarted yet.
    down_unknown: bool,
}

impl Replica {
    fn rank(&self) -> Rank {
        let (state, ready_since, restarts) = match &self.app {
            None => (ReplicaState::Starting, None, 0),
            Some(app) => (
                app.status.state(),
                app.status.ready_since(),
                app.status.restarts(),
            ),
        };
        Rank {
            running: self.app.is_some(),
            ready_since: (state == ReplicaState::Ready)
                .then_some(ready_since)
                .flatten(),
            restarts,
            n: self.n,
        }
    }
}

/// The consumer processes of the stack.
#[derive(Debug)]
pub struct ReplicaSet {
    template: Template,
    /// The pods' terminationGracePeriod.
    grace: Duration,
    clock: Clock,
    /// Stop the stack when a process exits on its own, instead of restarting it.
    stop_on_crash: bool,
    /// Live replicas, oldest first.
    replicas: Vec<Replica>,
    next: u32,
    events_tx: mpsc::UnboundedSender<ReplicaEvent>,
    events: mpsc::UnboundedReceiver<ReplicaEvent>,
    control: ConsumerControl,
    faults: mpsc::UnboundedReceiver<ProcessFault>,
    /// The tasks relaying the replicas' output and watching their processes.
    tasks: JoinSet<()>,
}

impl ReplicaSet {
    /// No replica yet; each is started from `template`, gets `grace` (the pods'
    /// terminationGracePeriod) when scaled in, and waits out its back-off on `clock`.
    pub fn new(template: Template, grace: Duration, clock: Clock, stop_on_crash: bool) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (control, faults) = mpsc::unbounded_channel();
        Self {
            template,
            grace,
            clock,
            stop_on_crash,
            replicas: Vec::new(),
            next: 1,
            events_tx,
            events,
            control,
            faults,
            tasks: JoinSet::new(),
        }
    }

    /// Where the process faults for these consumers go.
    pub fn control(&self) -> ConsumerControl {
        self.control.clone()
    }

    /// Replicas that count towards the Deployment's replicas (not terminating).
    pub fn active(&self) -> u32 {
        let n = self.replicas.iter().filter(|r| !r.terminating).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub fn unregistered(&self) -> Unregistered {
        let mut counts = Unregistered::default();
        for replica in self.replicas.iter().filter(|r| r.app.is_none()) {
            match (replica.terminating, replica.down_unknown) {
                (true, _) => counts.terminating += 1,
                (false, true) => counts.restarting += 1,
                (false, false) => counts.starting += 1,
            }
        }
        counts
    }

    /// Starts or scales in replicas until `desired` are not terminating.
    pub fn scale_to(&mut self, desired: u32, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        let active = self.active();
        for _ in active..desired {
            let n = self.next;
            self.next += 1;
            self.replicas.push(Replica {
                n,
                label: self.template.label(n),
                app: None,
                process: None,
                terminating: false,
                crashloop: CrashLoop::default(),
                restart_at: None,
                down_unknown: false,
            });
            let i = self.replicas.len() - 1;
            self.spawn(i, sidecar)?;
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

    /// Starts replica `i`'s process (again, after an exit), and delivers to it at once when its
    /// port is known beforehand.
    fn spawn(&mut self, i: usize, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        let (launch, address) = self.template.replica(self.replicas[i].n)?;
        let (process, listening) = launch.spawn(&mut self.tasks)?;
        let (commands, received) = mpsc::unbounded_channel();
        self.tasks.spawn(watch_replica(
            self.replicas[i].n,
            process,
            listening,
            received,
            self.events_tx.clone(),
        ));
        let replica = &mut self.replicas[i];
        replica.process = Some(commands);
        replica.restart_at = None;
        if let Some(app) = &replica.app {
            app.status.set_restarted();
        }
        if let Some(address) = address {
            self.listening(i, address, sidecar);
        }
        Ok(())
    }

    /// Replica `i` listens at `address`: the sidecar delivers to it there.
    fn listening(&mut self, i: usize, address: SocketAddr, sidecar: &mut Sidecar) {
        let max_concurrency = self.template.max_concurrency;
        let replica = &mut self.replicas[i];
        replica.down_unknown = false;
        replica.app = Some(match replica.app.take() {
            Some(app) => {
                info!(part = %replica.label, app = %address, "delivering to the restarted consumer");
                sidecar.redeliver(app, target(address, max_concurrency))
            }
            None => deliver_to(sidecar, &replica.label, address, max_concurrency),
        });
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
        match &replica.process {
            Some(process) => {
                let _ = process.send(Command::Stop(grace));
            }
            // Waiting out its back-off: nothing to stop.
            None => {
                let _ = self.events_tx.send(ReplicaEvent::Gone { n: replica.n });
            }
        }
    }

    /// The next thing to act on: a watcher's report, a back-off that ends, a process fault.
    pub async fn next_event(&mut self) -> ReplicaEvent {
        let restart = self
            .replicas
            .iter()
            .filter_map(|r| r.restart_at.map(|(at, _)| (at, r.n)))
            .min();
        let due = async {
            match restart {
                Some((at, n)) => {
                    tokio::time::sleep_until(at).await;
                    n
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = self.events.recv() => event.expect("the replica set holds a sender"),
            fault = self.faults.recv() => ReplicaEvent::Fault(fault.expect("the replica set holds a sender")),
            n = due => ReplicaEvent::RestartDue { n },
        }
    }

    /// Acts on an event. An error means the stack must stop: a replica never said where it
    /// listens, or (with `stop_on_crash`) one exited without being scaled in.
    pub fn handle(&mut self, event: ReplicaEvent, sidecar: &mut Sidecar) -> anyhow::Result<()> {
        let position = |replicas: &[Replica], n: u32| replicas.iter().position(|r| r.n == n);
        match event {
            ReplicaEvent::Listening { n, address } => {
                let Some(i) = position(&self.replicas, n) else {
                    return Ok(());
                };
                if self.replicas[i].terminating {
                    // Scaled in before it was up: the sidecar never delivers to it.
                    return Ok(());
                }
                self.listening(i, address, sidecar);
                Ok(())
            }
            ReplicaEvent::Silent { n, error } => {
                let label = position(&self.replicas, n).map(|i| self.replicas[i].label.clone());
                error!(part = ?label, %error, "stopping the stack");
                anyhow::bail!(error)
            }
            ReplicaEvent::Exited { n, status } => {
                let Some(i) = position(&self.replicas, n) else {
                    return Ok(());
                };
                self.replicas[i].process = None;
                if self.replicas[i].terminating {
                    let replica = self.replicas.remove(i);
                    if let Some(app) = &replica.app {
                        sidecar.remove_app(app);
                    }
                    process::stopped(&replica.label, status);
                    return Ok(());
                }
                if self.stop_on_crash {
                    let replica = self.replicas.remove(i);
                    if let Some(app) = &replica.app {
                        sidecar.remove_app(app);
                    }
                    return Err(process::died(&replica.label, status).into());
                }
                self.crashed(i, status, sidecar)
            }
            ReplicaEvent::Gone { n } => {
                if let Some(i) = position(&self.replicas, n) {
                    let replica = self.replicas.remove(i);
                    if let Some(app) = &replica.app {
                        sidecar.remove_app(app);
                    }
                    info!(part = %replica.label, "scaled in while waiting out its back-off");
                }
                Ok(())
            }
            ReplicaEvent::RestartDue { n } => {
                let Some(i) = position(&self.replicas, n) else {
                    return Ok(());
                };
                let Some((_, finished)) = self.replicas[i].restart_at else {
                    return Ok(());
                };
                self.replicas[i]
                    .crashloop
                    .restarted(finished, self.clock.now());
                info!(part = %self.replicas[i].label, "back-off over: restarting");
                self.spawn(i, sidecar)
            }
            ReplicaEvent::Fault(fault) => {
                self.fault(fault);
                Ok(())
            }
        }
    }

    /// Replica `i`'s process exited on its own: the sidecar's calls to it fail (what it held
    /// is abandoned), and it is restarted as the kubelet restarts a container.
    fn crashed(
        &mut self,
        i: usize,
        status: std::io::Result<ExitStatus>,
        sidecar: &mut Sidecar,
    ) -> anyhow::Result<()> {
        let how = match &status {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let finished = self.clock.now();
        let delay = self.replicas[i].crashloop.delay(finished);
        let replica = &mut self.replicas[i];
        let down = match delay.is_zero() {
            true => Down::Restarting,
            false => Down::CrashLoop {
                until: self.clock.wall(finished + delay),
            },
        };
        match &replica.app {
            Some(app) => {
                app.stop_delivery();
                app.status.set_exited(how.clone(), down);
            }
            None => replica.down_unknown = true,
        }
        if delay.is_zero() {
            warn!(part = %replica.label, status = %how, "a consumer exited on its own; restarting it, as the kubelet does (restartPolicy: Always)");
            replica.crashloop.restarted(finished, finished);
            return self.spawn(i, sidecar);
        }
        let real = self.clock.real(delay);
        warn!(part = %replica.label, status = %how, backoff = ?delay, restart_in = ?real, "a consumer exited on its own again; waiting out its back-off (CrashLoopBackOff)");
        replica.restart_at = Some((Instant::now() + real, finished));
        Ok(())
    }

    /// Carries out a process fault on the consumer it names.
    fn fault(&mut self, fault: ProcessFault) {
        let ProcessFault {
            consumer,
            signal,
            reply,
        } = fault;
        let Some(replica) = self.replicas.iter().find(|r| r.label == consumer) else {
            let running = self
                .replicas
                .iter()
                .filter(|r| r.process.is_some() && !r.terminating)
                .map(|r| r.label.clone())
                .collect();
            let _ = reply.send(Err(FaultError::UnknownConsumer {
                name: consumer,
                running,
            }));
            return;
        };
        match &replica.process {
            Some(process) if !replica.terminating => {
                if let Err(mpsc::error::SendError(Command::Signal(_, reply))) =
                    process.send(Command::Signal(signal, reply))
                {
                    let _ = reply.send(Err(FaultError::NotRunning(consumer)));
                }
            }
            _ => {
                let _ = reply.send(Err(FaultError::NotRunning(consumer)));
            }
        }
    }

    /// SIGTERM to every replica still running, as Kubernetes does when the stack stops, then
    /// waits (bounded) for each, killing what is still running after [`STOP_LIMIT`].
    pub async fn stop_all(&mut self, sidecar: &mut Sidecar) {
        for i in (0..self.replicas.len()).rev() {
            let replica = &mut self.replicas[i];
            replica.terminating = true;
            match &replica.process {
                Some(process) => {
                    let _ = process.send(Command::Stop(STOP_LIMIT));
                }
                None => {
                    let replica = self.replicas.remove(i);
                    if let Some(app) = &replica.app {
                        sidecar.remove_app(app);
                    }
                }
            }
        }
        let deadline = Instant::now() + STOP_LIMIT + Duration::from_secs(5);
        while !self.replicas.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    let _ = self.handle(event, sidecar);
                }
                Ok(None) | Err(_) => {
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

/// Owns one run of a replica's process: reports its address and its exit, carries out the
/// signals asked of it, and on request sends it SIGTERM, then kills it if still running after
/// the grace period.
async fn watch_replica(
    n: u32,
    mut process: Process,
    listening: Listening,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ReplicaEvent>,
) {
    let address = listening.address(Instant::now() + LISTEN_LIMIT);
    tokio::pin!(address);
    let mut waiting_for_address = true;
    // While paused (SIGSTOP): when SIGCONT is due.
    let mut resume_at: Option<Instant> = None;
    let status = loop {
        let resume = async {
            match resume_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = process.wait() => break status,
            address = &mut address, if waiting_for_address => {
                waiting_for_address = false;
                let event = match address {
                    Ok(address) => ReplicaEvent::Listening { n, address },
                    // It exited first: its exit is reported next.
                    Err(NotListening::Exited(_)) => continue,
                    Err(e @ NotListening::Silent(_)) => ReplicaEvent::Silent { n, error: e.to_string() },
                };
                let _ = events.send(event);
            }
            command = commands.recv() => match command {
                Some(Command::Signal(signal, reply)) => {
                    let sent = match signal {
                        Signal::Kill => process.signal(Sig::SIGKILL),
                        Signal::Terminate => process.signal(Sig::SIGTERM),
                        Signal::Pause(pause) => {
                            let sent = process.signal(Sig::SIGSTOP);
                            if sent.is_ok() {
                                resume_at = Some(Instant::now() + pause);
                            }
                            sent
                        }
                    };
                    let _ = reply.send(sent.map_err(|e| FaultError::Signal {
                        consumer: process.label().to_owned(),
                        error: e.to_string(),
                    }));
                }
                Some(Command::Stop(grace)) => {
                    // A paused process must run to act on its SIGTERM.
                    if resume_at.take().is_some() {
                        let _ = process.signal(Sig::SIGCONT);
                    }
                    break process.stop(grace).await;
                }
                // The replica set is gone: stop now.
                None => break process.stop(Duration::ZERO).await,
            },
            _ = resume => {
                resume_at = None;
                match process.signal(Sig::SIGCONT) {
                    Ok(_) => info!(part = %process.label(), "pause over: SIGCONT"),
                    Err(e) => warn!(part = %process.label(), error = %e, "cannot resume the paused consumer"),
                }
            }
        }
    };
    let _ = events.send(ReplicaEvent::Exited { n, status });
}

/// What the ReplicaSet controller ranks a pod on to delete it, for processes on one node. `T` is
/// the time: the replica set's instants, or `plan`'s simulated cluster time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank<T = Instant> {
    /// Its server is up (it logged its address): a pod past Pending.
    pub running: bool,
    /// Since when it has been ready; `None` while not ready.
    pub ready_since: Option<T>,
    /// Times its container was restarted.
    pub restarts: u32,
    /// Its creation order: higher is newer.
    pub n: u32,
}

/// kubernetes `ActivePodsWithRanks.Less` (pkg/controller/controller_utils.go), for what differs
/// between our processes: Pending before Running, not ready before ready, then the most recently
/// ready first, then the most restarted first, then the newest first. The rest (node, deletion
/// cost, co-located pods) is the same for every process here. The LogarithmicScaleDown buckets
/// are not emulated: times compare exactly, so the order is deterministic.
pub fn deletion_order<T: Ord>(a: &Rank<T>, b: &Rank<T>) -> Ordering {
    // `false` sorts first: pending before running, not ready before ready.
    a.running
        .cmp(&b.running)
        .then(a.ready_since.is_some().cmp(&b.ready_since.is_some()))
        // Both ready: the later ready time first.
        .then(b.ready_since.cmp(&a.ready_since))
        .then(b.restarts.cmp(&a.restarts))
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
            restarts: 0,
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
    fn among_equals_the_most_restarted_goes_first() {
        let now = Instant::now() + Duration::from_secs(1000);
        let restarted = |n, restarts| Rank {
            restarts,
            ..rank(n, true, None, now)
        };
        let ranks = [restarted(1, 3), restarted(2, 0), restarted(3, 1)];
        assert_eq!(victims(&ranks, 3), [0, 2, 1]);
    }

    #[test]
    fn scaling_in_more_than_there_are_takes_them_all() {
        let now = Instant::now();
        let ranks = [rank(1, true, None, now), rank(2, false, None, now)];
        assert_eq!(victims(&ranks, 5), [1, 0]);
    }

    #[test]
    fn replicas_follow_the_first_port_or_all_pick_free_ones() {
        let ports: Vec<_> = (0..3).map(|n| nth_port(50051, n)).collect();
        assert_eq!(ports, [Some(50051), Some(50052), Some(50053)]);
        assert_eq!(nth_port(0, 7), Some(0));
        assert_eq!(nth_port(u16::MAX, 1), None);
    }
}
