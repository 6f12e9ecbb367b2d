//! The app side, the one that calls consumers, as daprd does. A gRPC app: `ListInputBindings`
//! once at start (retried until the app is up), `AppCallbackHealthCheck` polled, and
//! `OnBindingEvent` for each locked message of a listed binding. An HTTP app (`http_app`): the
//! same steps as daprd's HTTP app channel takes them. At most `max_concurrency` in flight per app
//! and binding.
//! A failed call is retried per the binding's Resiliency retry policy, if any; then the message is
//! abandoned (available again at once) and the worker takes a retriable-error permit before it
//! receives again, as daprd's Service Bus binding does. Under a retry policy an HTTP app's 2xx
//! other than 200 is a failed call too, as daprd's retry runner has it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pipeline::{
    api_token::API_TOKEN_METADATA,
    dapr_v1::{
        BindingEventRequest, app_callback_client::AppCallbackClient,
        app_callback_health_check_client::AppCallbackHealthCheckClient,
    },
    trace_context::TRACEPARENT,
};
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tracing::{debug, info, warn};

use crate::{
    app::{self, AppProtocol, AppTarget, CallError},
    http_app::HttpAppClient,
    queue::{Abandoned, Lock, Queue, QueuedMessage, Queues},
    rate_limit::RateLimiter,
    registry::AppStatus,
    resiliency::BindingRetryPolicy,
    service_bus, spans,
};

/// Delivery behaviour shared by every app.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Sent as `dapr-api-token` with each event (gRPC metadata or HTTP header), as daprd sends
    /// APP_API_TOKEN.
    pub app_api_token: Option<MetadataValue<Ascii>>,
    pub health_interval: Duration,
    /// How long a delivery may take before its lock expires and the message is abandoned.
    pub lock_duration: Duration,
    /// Failed deliveries per second, per app and binding, before the worker pauses (0: no
    /// limit); the Service Bus binding's `maxRetriableErrorsPerSec`.
    pub max_retriable_errors_per_sec: u32,
    /// Each binding's inbound retry policy, from a Dapr Resiliency.
    pub retry_policies: Arc<BTreeMap<String, BindingRetryPolicy>>,
}

/// Serves one app, whose status is `status`, until `shutdown` (the sidecar's, or this app's
/// alone when it is scaled in): no message is taken for it after that, and in-flight deliveries
/// finish (bounded by the lock duration).
pub async fn serve_app(
    queues: Arc<Queues>,
    status: Arc<AppStatus>,
    target: AppTarget,
    settings: DeliverySettings,
    shutdown: CancellationToken,
) {
    let app = match target.protocol {
        AppProtocol::Grpc => AppChannel::Grpc(
            Endpoint::from_shared(format!("http://{}", target.address))
                .expect("a socket address is a valid URI")
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy(),
        ),
        AppProtocol::Http => match HttpAppClient::new(target.address, settings.lock_duration) {
            Ok(app) => AppChannel::Http(app),
            Err(error) => {
                warn!(app = %target.address, %error, "cannot build an HTTP client; delivering nothing to this app");
                return;
            }
        },
    };

    let Some(listed) = app
        .subscribed_bindings(queues.names(), target.address, &shutdown)
        .await
    else {
        return;
    };
    let mut subscribed = Vec::new();
    for binding in &listed {
        match queues.get(binding) {
            Some(queue) => subscribed.push(Arc::clone(queue)),
            None => {
                warn!(app = %target.address, binding, "app listed a binding this sidecar does not have")
            }
        }
    }
    status.set_bindings(listed.clone());
    info!(app = %target.address, protocol = target.protocol.as_str(), bindings = ?listed, "app listed its input bindings");

    let health = Arc::new(Health {
        app: Arc::clone(&status),
        address: target.address,
        tx: watch::channel(false).0,
    });
    // Once per app: every worker of every binding shares it.
    let warned_not_200 = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    tasks.spawn(watch_health(
        app.clone(),
        Arc::clone(&health),
        settings.health_interval,
        shutdown.clone(),
    ));
    for queue in subscribed {
        // One limiter per binding of an app, as daprd has one subscription per binding.
        let retriable_errors =
            RateLimiter::new(settings.max_retriable_errors_per_sec).map(Arc::new);
        for _ in 0..target.max_concurrency {
            let worker = Worker {
                queue: Arc::clone(&queue),
                channel: app.clone(),
                app: Arc::clone(&status),
                address: target.address,
                healthy: health.tx.subscribe(),
                health: Arc::clone(&health),
                settings: settings.clone(),
                retriable_errors: retriable_errors.clone(),
                retry: settings.retry_policies.get(queue.name()).cloned(),
                warned_not_200: Arc::clone(&warned_not_200),
            };
            tasks.spawn(worker.run(shutdown.clone()));
        }
    }
    tasks.join_all().await;
}

/// The sidecar's channel to an app, over the protocol it speaks.
#[derive(Clone)]
enum AppChannel {
    Grpc(Channel),
    Http(HttpAppClient),
}

impl AppChannel {
    /// Which of `bindings` the app takes, asking until the app answers, as daprd waits for its
    /// app at start; `None` on shutdown.
    async fn subscribed_bindings(
        &self,
        bindings: Vec<String>,
        app: SocketAddr,
        shutdown: &CancellationToken,
    ) -> Option<Vec<String>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let listed = match self {
                Self::Grpc(channel) => list_bindings(channel, app).await,
                Self::Http(http) => http.subscribed_bindings(&bindings).await,
            };
            if let Some(listed) = listed {
                return Some(listed);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// One health probe: true when the app may take events.
    async fn healthy(&self, interval: Duration) -> bool {
        match self {
            Self::Grpc(channel) => {
                let mut request = Request::new(());
                request.set_timeout(interval.max(Duration::from_millis(500)));
                match AppCallbackHealthCheckClient::new(channel.clone())
                    .health_check(request)
                    .await
                {
                    Ok(_) => true,
                    // No health check: healthy, as daprd without app health checks treats it.
                    Err(status) => status.code() == Code::Unimplemented,
                }
            }
            Self::Http(http) => http.healthy(interval.max(Duration::from_millis(500))).await,
        }
    }

    /// Sends one binding event; an HTTP app's 2xx status when it took it.
    async fn deliver(
        &self,
        binding: &str,
        message: &QueuedMessage,
        settings: &DeliverySettings,
        span: &tracing::Span,
    ) -> Result<Option<u16>, CallError> {
        let metadata = service_bus::event_metadata(&message.id, &message.envelope);
        let traceparent = spans::traceparent(span, &message.trace_id);
        match self {
            Self::Grpc(channel) => {
                let mut request = Request::new(BindingEventRequest {
                    name: binding.to_owned(),
                    data: message.data.clone(),
                    metadata,
                });
                if let Ok(value) = traceparent.parse() {
                    request.metadata_mut().insert(TRACEPARENT, value);
                }
                if let Some(token) = &settings.app_api_token {
                    request
                        .metadata_mut()
                        .insert(API_TOKEN_METADATA, token.clone());
                }
                AppCallbackClient::new(channel.clone())
                    .on_binding_event(request)
                    .await
                    .map(|_| None)
                    .map_err(CallError::from)
            }
            Self::Http(http) => http
                .deliver(
                    binding,
                    message.data.clone(),
                    &metadata,
                    &traceparent,
                    settings
                        .app_api_token
                        .as_ref()
                        .map(|token| token.as_bytes()),
                )
                .await
                .map(Some),
        }
    }
}

/// One ListInputBindings; `None` while the app is not answering.
async fn list_bindings(channel: &Channel, app: SocketAddr) -> Option<Vec<String>> {
    let mut request = Request::new(());
    request.set_timeout(Duration::from_secs(3));
    match AppCallbackClient::new(channel.clone())
        .list_input_bindings(request)
        .await
    {
        Ok(response) => Some(response.into_inner().bindings),
        // Not up yet (or not answering): wait for it, as daprd waits for its app port.
        Err(status) if !app::answered(&status) => {
            debug!(%app, error = %status.message(), "app not answering ListInputBindings yet");
            None
        }
        // daprd takes an error answer as "no bindings"; so does the sidecar.
        Err(status) => {
            warn!(%app, code = ?status.code(), error = %status.message(), "ListInputBindings failed; delivering no bindings to this app");
            Some(Vec::new())
        }
    }
}

/// An app's health, as the workers wait on it and the status shows it.
struct Health {
    app: Arc<AppStatus>,
    address: SocketAddr,
    tx: watch::Sender<bool>,
}

impl Health {
    fn set(&self, now: bool) {
        if self.app.set_healthy(now) {
            info!(app = %self.address, healthy = now, "app health changed");
        }
        self.tx
            .send_if_modified(|h| std::mem::replace(h, now) != now);
    }
}

/// Polls the app's health (see [`AppChannel::healthy`]).
async fn watch_health(
    app: AppChannel,
    health: Arc<Health>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        health.set(app.healthy(interval).await);
    }
}

struct Worker {
    queue: Arc<Queue>,
    channel: AppChannel,
    app: Arc<AppStatus>,
    address: SocketAddr,
    healthy: watch::Receiver<bool>,
    health: Arc<Health>,
    settings: DeliverySettings,
    retriable_errors: Option<Arc<RateLimiter>>,
    retry: Option<BindingRetryPolicy>,
    /// Whether this app was told that it answered a 2xx other than 200 under a retry policy.
    warned_not_200: Arc<AtomicBool>,
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let healthy = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                ready = self.healthy.wait_for(|healthy| *healthy) => ready.is_ok(),
            };
            if !healthy {
                return;
            }
            let lock = tokio::select! {
                // Once told to stop (a scaled-in app), take no message even if one is waiting.
                biased;
                _ = shutdown.cancelled() => return,
                lock = self.queue.receive() => lock,
                // An app that turns unhealthy while we wait for a message gets none: go back
                // to waiting for its health. (receive() takes a lock only when it returns.)
                _ = self.healthy.wait_for(|healthy| !*healthy) => continue,
            };
            self.app.delivery_started();
            let result = tokio::time::timeout(
                self.settings.lock_duration,
                self.deliver_retrying(lock.message()),
            )
            .await;
            self.app.delivery_ended(matches!(result, Ok(Ok(()))));
            if !self.settle(lock, result)
                && let Some(limiter) = &self.retriable_errors
            {
                // The abandoned message is available again at once; like the binding, this
                // worker takes a retriable-error permit before it receives again.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(limiter.reserve()) => {}
                }
            }
        }
    }

    /// Calls the app, and again as the binding's retry policy says while it fails, as daprd's
    /// resiliency runner does: every error counts but an HTTP status the policy's `matching`
    /// leaves out (see `resiliency`).
    ///
    /// daprd's runner for HTTP apps fails every answer but 200 (dapr/dapr
    /// `pkg/runtime/processor/binding/send.go`: `rResp.Status().GetCode() != http.StatusOK`), and
    /// discards each failed answer (`pkg/resiliency/policy.go`, the runner's `Disposer`), so a 201
    /// or 204 is POSTed again up to the policy's retries (once, when `matching` leaves it out)
    /// and then fails the delivery ("error invoking app: response object is nil"): the binding
    /// abandons the message, and Service Bus redelivers it up to its max delivery count. Without
    /// a retry policy the final check takes any 2xx.
    async fn deliver_retrying(&self, message: &QueuedMessage) -> Result<(), CallError> {
        let Some(policy) = &self.retry else {
            return self.deliver(message).await.map(drop);
        };
        let mut retries = policy.retries();
        loop {
            let error = match self.deliver(message).await {
                Ok(None | Some(200)) => return Ok(()),
                Ok(Some(status)) => self.not_200(status, policy),
                Err(error) => error,
            };
            if error
                .http_status
                .is_some_and(|status| !policy.retries_http_status(status))
            {
                return Err(error);
            }
            let Some(delay) = retries.next_delay() else {
                return Err(error);
            };
            debug!(app = %self.address, id = message.id, policy = policy.name, reason = error.reason, ?delay, "app call failed; retrying per the Resiliency");
            tokio::time::sleep(delay).await;
        }
    }

    /// An HTTP app's 2xx other than 200, under a retry policy: a failed call. Warns once per app.
    fn not_200(&self, status: u16, policy: &BindingRetryPolicy) -> CallError {
        if !self.warned_not_200.swap(true, Ordering::Relaxed) {
            warn!(
                app = %self.address,
                binding = self.queue.name(),
                status,
                policy = policy.name,
                "the app answered a 2xx other than 200 under a Resiliency retry policy: daprd posts \
                 the event again up to the policy's retries, then fails it, and Service Bus \
                 redelivers it until it is dead-lettered; answer 200"
            );
        }
        CallError {
            answered: true,
            http_status: Some(status),
            reason: format!(
                "app answered HTTP {status}, not 200: under a retry policy daprd takes only 200 \
                 (error invoking app: response object is nil)"
            ),
        }
    }

    async fn deliver(&self, message: &QueuedMessage) -> Result<Option<u16>, CallError> {
        let grpc = matches!(self.channel, AppChannel::Grpc(_));
        let span = spans::delivery(self.queue.name(), message, grpc);
        let result = self
            .channel
            .deliver(self.queue.name(), message, &self.settings, &span)
            .await;
        spans::end(&span, result.as_ref().err().map(|e| e.reason.clone()));
        result
    }

    /// Completes or abandons the message; true when it completed.
    fn settle(
        &self,
        lock: Lock,
        result: Result<Result<(), CallError>, tokio::time::error::Elapsed>,
    ) -> bool {
        let message = lock.message();
        let (id, delivery_count) = (message.id.clone(), message.delivery_count);
        let trace_id = message.trace_id.clone();
        let reason = match result {
            Ok(Ok(())) => {
                debug!(app = %self.address, id, trace_id, "message completed");
                lock.complete();
                return true;
            }
            Ok(Err(error)) => {
                if !error.answered {
                    // The app is gone or draining: stop delivering until its health check passes.
                    self.health.set(false);
                }
                error.reason
            }
            Err(_) => format!(
                "no answer within the lock duration ({:?})",
                self.settings.lock_duration
            ),
        };
        match lock.abandon(&reason) {
            Abandoned::Redelivered => {
                info!(app = %self.address, id, trace_id, delivery_count, %reason, "message abandoned; will be redelivered")
            }
            Abandoned::DeadLettered => {
                warn!(app = %self.address, id, trace_id, delivery_count, %reason, "message dead-lettered")
            }
        }
        false
    }
}
