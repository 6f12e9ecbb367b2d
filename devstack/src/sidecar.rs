//! devstack's sidecar, which stands in for daprd and the queue: the runtime gRPC API, the HTTP
//! API, the queues and the delivery to consumer apps, the faults and the journeys, served
//! together on loopback.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use futures::FutureExt;
use pipeline::{
    api_token::ApiToken,
    http_server::{self, ConnectionMetrics},
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    api::{self, devstack::DevstackApi, guard::AllowedHosts, http::HttpApi},
    app::AppTarget,
    changes::Changes,
    config::{SidecarArgs, SidecarOnlyArgs},
    dashboard::Dashboard,
    delivery::{self, DeliverySettings},
    faults::Faults,
    journey::Journeys,
    metadata::Metadata,
    queue::Queues,
    registry::{AppRegistry, AppStatus},
    runtime::Runtime,
    schedule,
    status::StatusBoard,
};

/// The sidecar's two ports, bound before anything is served.
pub struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
}

impl Listeners {
    /// Binds the gRPC and HTTP ports on 127.0.0.1 (0 picks a free port).
    pub async fn bind(args: &SidecarArgs) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(("127.0.0.1", args.grpc_port))
            .await
            .with_context(|| {
                format!(
                    "binding the gRPC port 127.0.0.1:{} (DAPR_GRPC_PORT)",
                    args.grpc_port
                )
            })?;
        let http = TcpListener::bind(("127.0.0.1", args.http_port))
            .await
            .with_context(|| {
                format!(
                    "binding the HTTP port 127.0.0.1:{} (DAPR_HTTP_PORT)",
                    args.http_port
                )
            })?;
        Ok(Self { grpc, http })
    }
}

/// `devstack sidecar`: serves on `listeners`, delivering to the apps of `args`, until `shutdown`.
pub async fn serve(
    listeners: Listeners,
    args: SidecarOnlyArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sidecar = Sidecar::start(listeners, &args.sidecar, shutdown)?;
    for target in args.targets() {
        // Apps started by hand have no part label: their address stands for one.
        sidecar.add_app(target, target.address.to_string());
    }
    sidecar.wait().await
}

/// A running sidecar.
pub struct Sidecar {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The page on the HTTP port; told the producer's address once devstack knows it.
    pub dashboard: Arc<Dashboard>,
    queues: Arc<Queues>,
    apps: Arc<AppRegistry>,
    status: Arc<StatusBoard>,
    faults: Arc<Faults>,
    delivery: DeliverySettings,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Sidecar {
    /// Starts serving on `listeners`, in tasks of its own, and returns at once; they run until
    /// `shutdown`. Delivers to no app until [`add_app`](Self::add_app).
    pub fn start(
        listeners: Listeners,
        args: &SidecarArgs,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let Listeners { grpc, http } = listeners;
        let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);

        let retry_policies = args.retry_policies()?;
        let changes = Changes::default();
        let journeys = Journeys::new(args.journey_messages);
        let queues = Arc::new(Queues::new(
            &args.bindings,
            args.queue_settings(),
            &changes,
            &journeys,
        ));
        let mut tasks = JoinSet::new();
        for queue in queues.iter() {
            let keep_time = schedule::keep_time(Arc::clone(queue), shutdown.clone());
            tasks.spawn(keep_time.map(Ok));
        }
        let apps = Arc::new(AppRegistry::new(changes.clone()));
        let faults = Arc::new(Faults::new(
            Arc::clone(&queues),
            journeys.clone(),
            changes.clone(),
        ));
        let status = Arc::new(StatusBoard::new(
            Arc::clone(&queues),
            Arc::clone(&apps),
            Arc::clone(&faults),
            journeys.clone(),
            changes,
        ));
        let runtime = Runtime::new(Arc::clone(&queues), Arc::clone(&faults));
        let metadata = Arc::new(Metadata::new(
            args.app_id.clone(),
            args.bindings.clone(),
            args.app_health_interval,
            Arc::clone(&apps),
        ));

        tasks.spawn(api::grpc::serve(
            grpc,
            args.http.clone(),
            runtime.clone(),
            Arc::clone(&metadata),
            args.dapr_api_token.clone(),
            shutdown.clone(),
        ));

        let dashboard = Dashboard::new(Arc::clone(&status) as _, shutdown.clone());
        tasks.spawn(Arc::clone(&dashboard).publish().map(Ok));
        tasks.spawn(Arc::clone(&dashboard).sample().map(Ok));
        let connections = ConnectionMetrics::default();
        let router = api::http::router(HttpApi {
            runtime,
            metadata,
            devstack: DevstackApi {
                status: Arc::clone(&status),
                connections: connections.clone(),
                queues: Arc::clone(&queues),
                faults: Arc::clone(&faults),
                journeys: journeys.clone(),
            },
            dashboard: Arc::clone(&dashboard),
            api_token: args.dapr_api_token.clone(),
            allowed_hosts: AllowedHosts::new(&args.allowed_hosts),
        });
        tasks.spawn(
            http_server::serve(
                http,
                router,
                args.http.clone(),
                connections,
                shutdown.clone(),
            )
            .map(Ok),
        );

        tasks.spawn(log_status(
            Arc::clone(&status),
            args.status_interval,
            shutdown.clone(),
        ));

        info!(%grpc_addr, %http_addr, bindings = ?args.bindings, "sidecar listening");
        Ok(Self {
            grpc_addr,
            http_addr,
            dashboard,
            queues,
            apps,
            status,
            faults: Arc::clone(&faults),
            delivery: DeliverySettings {
                app_api_token: args.app_api_token.as_ref().map(ApiToken::metadata_value),
                health_interval: args.app_health_interval,
                lock_duration: args.lock_duration,
                lock_renewal: args.lock_renewal_interval,
                max_retriable_errors_per_sec: args.max_retriable_errors_per_sec,
                retry_policies: Arc::new(retry_policies),
                faults,
                journeys,
            },
            shutdown,
            tasks,
        })
    }

    /// The queues, one per binding.
    pub fn queues(&self) -> &Arc<Queues> {
        &self.queues
    }

    /// What the status shows; the scaling controller publishes its state there.
    pub fn status(&self) -> &Arc<StatusBoard> {
        &self.status
    }

    /// The faults: where the consumers' process faults go is set there.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The consumer apps, as the status lists them.
    pub fn apps(&self) -> &Arc<AppRegistry> {
        &self.apps
    }

    /// Starts delivering to a consumer app (its ListInputBindings is retried until it is up),
    /// labelled `label` in the status.
    pub fn add_app(&mut self, target: AppTarget, label: String) -> AppHandle {
        let status = self.apps.register(label, target);
        self.deliver(status, target)
    }

    /// Delivers to `app`'s consumer again, restarted at `target`: the same row of the status,
    /// a delivery of its own (the old one stopped when the process exited).
    pub fn redeliver(&mut self, app: AppHandle, target: AppTarget) -> AppHandle {
        app.stop_delivery();
        app.status.set_target(target);
        self.deliver(app.status, target)
    }

    fn deliver(&mut self, status: Arc<AppStatus>, target: AppTarget) -> AppHandle {
        let stop = self.shutdown.child_token();
        let run = delivery::serve_app(
            Arc::clone(&self.queues),
            Arc::clone(&status),
            target,
            self.delivery.clone(),
            stop.clone(),
        );
        self.tasks.spawn(async move {
            run.await;
            Ok(())
        });
        AppHandle {
            address: target.address,
            status,
            stop,
        }
    }

    /// Forgets an app whose process has exited (its delivery stopped first, by
    /// [`AppHandle::stop_delivery`]): gone from the status and the metadata API.
    pub fn remove_app(&self, app: &AppHandle) {
        app.stop_delivery();
        self.apps.remove(&app.status);
    }

    /// Waits until shutdown has been requested and everything has stopped; in-flight deliveries
    /// finish first (bounded by the lock duration).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(result) = self.tasks.join_next().await {
            result.context("a sidecar task panicked")??;
        }
        info!("sidecar stopped");
        Ok(())
    }
}

/// An app the sidecar delivers to: its entry in the registry, and the switch that stops its
/// delivery.
#[derive(Debug)]
pub struct AppHandle {
    pub address: SocketAddr,
    pub status: Arc<AppStatus>,
    /// Stops this app's delivery alone; a child of the sidecar's shutdown.
    stop: CancellationToken,
}

impl AppHandle {
    /// Takes no more messages for this app, as daprd closes its input bindings at SIGTERM; what
    /// it has in flight finishes (or is abandoned, and redelivered, if the app goes away).
    pub fn stop_delivery(&self) {
        self.stop.cancel();
    }
}

async fn log_status(
    board: Arc<StatusBoard>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(interval);
    let mut last = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let status = board.status();
        let now = (status.queues.clone(), status.consumers_connected);
        if last.as_ref() == Some(&now) {
            continue;
        }
        for (queue, c) in &status.queues {
            info!(
                queue,
                produced = c.produced,
                scheduled = c.scheduled,
                active = c.active,
                locked = c.locked,
                completed = c.completed,
                dead_lettered = c.dead_lettered,
                expired = c.expired,
                duplicates_dropped = c.duplicates_dropped,
                duplicates_enqueued = c.duplicates_enqueued,
                consumers = status.consumers_connected,
                "queue status"
            );
        }
        last = Some(now);
    }
}
