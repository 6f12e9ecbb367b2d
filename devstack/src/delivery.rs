//! The app side, the one that calls consumers, as daprd does. A gRPC app: `ListInputBindings`
//! once at start (retried until the app is up), `AppCallbackHealthCheck` polled, and
//! `OnBindingEvent` for each locked message of a listed binding. An HTTP app (`http_app`): the
//! same steps as daprd's HTTP app channel takes them. At most `max_concurrency` in flight per app
//! and binding.
//! While a delivery holds a message, its subscription renews the lock every `lockRenewalInSec`,
//! as the binding's renewal loop does (components-contrib `common/component/azure/servicebus`,
//! `renewLocksBlocking`); the app call itself has no time limit, as the binding's handler has
//! none (`handlerTimeoutInSec` 0).
//! A failed call is retried per the binding's Resiliency retry policy, if any; then the message is
//! abandoned (available again at once) and the worker takes a retriable-error permit before it
//! receives again, as daprd's Service Bus binding does. Under a retry policy an HTTP app's 2xx
//! other than 200 is a failed call too, as daprd's retry runner has it.
//! Each call is recorded in the message's journey, with its consumer, attempt and outcome.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;

use pipeline::{
    api_token::API_TOKEN_METADATA,
    dapr_v1::{
        BindingEventRequest, app_callback_client::AppCallbackClient,
        app_callback_health_check_client::AppCallbackHealthCheckClient,
    },
    trace_context::TRACEPARENT,
};
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tracing::{debug, info, warn};

use crate::{
    app::{self, AppProtocol, AppTarget, CallError},
    faults::Faults,
    http_app::HttpAppClient,
    journey::{DeliveryRef, Journeys, Outcome},
    queue::{Abandoned, Lock, LockLost, Queue, QueuedMessage, Queues},
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
    /// The queue's lock duration: a delivery still in flight when its app is told to stop gets
    /// this long to end.
    pub lock_duration: Duration,
    /// How often a subscription renews the locks of the messages in flight: the binding's
    /// `lockRenewalInSec`.
    pub lock_renewal: Duration,
    /// Failed deliveries per second, per app and binding, before the worker pauses (0: no
    /// limit); the Service Bus binding's `maxRetriableErrorsPerSec`.
    pub max_retriable_errors_per_sec: u32,
    /// Each binding's inbound retry policy, from a Dapr Resiliency.
    pub retry_policies: Arc<BTreeMap<String, BindingRetryPolicy>>,
    /// The faults that act on deliveries: lost completes and lost locks.
    pub faults: Arc<Faults>,
    pub journeys: Journeys,
}

/// Serves one app, whose status is `status`, until `shutdown` (the sidecar's, or this app's
/// alone when it is scaled in or has exited): no message is taken for it after that, and
/// in-flight deliveries finish (bounded by the lock duration).
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
        AppProtocol::Http => match HttpAppClient::new(target.address) {
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
    // The renewals go on while a delivery is in flight, past `shutdown`, until every worker
    // has ended.
    let renewing = CancellationToken::new();
    let mut renewals = JoinSet::new();
    tasks.spawn(watch_health(
        app.clone(),
        Arc::clone(&health),
        settings.health_interval,
        shutdown.clone(),
    ));
    for queue in subscribed {
        // One limiter and one renewal loop per binding of an app, as daprd has one subscription
        // per binding.
        let retriable_errors =
            RateLimiter::new(settings.max_retriable_errors_per_sec).map(Arc::new);
        let active = Arc::new(InFlight::default());
        renewals.spawn(renew_locks(
            Arc::clone(&queue),
            Arc::clone(&active),
            Arc::clone(&settings.faults),
            target.address,
            settings.lock_renewal,
            renewing.clone(),
        ));
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
                active: Arc::clone(&active),
            };
            tasks.spawn(worker.run(shutdown.clone()));
        }
    }
    tasks.join_all().await;
    renewing.cancel();
    renewals.join_all().await;
}

/// The locks a subscription holds now, by token, with their message's id.
#[derive(Debug, Default)]
struct InFlight(Mutex<HashMap<u64, String>>);

/// Renews the locks of `active` every `every`, as the binding's renewal loop does: a ticker
/// for the whole subscription, its first tick one period after the start; a lock whose renewal
/// has stopped (the `lost-lock` fault) is skipped.
async fn renew_locks(
    queue: Arc<Queue>,
    active: Arc<InFlight>,
    faults: Arc<Faults>,
    app: SocketAddr,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    // Go's ticker drops the ticks a slow receiver missed.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let locks: Vec<(u64, String)> = active
            .0
            .lock()
            .iter()
            .map(|(token, id)| (*token, id.clone()))
            .collect();
        for (token, id) in locks {
            if faults.renewal_stopped(queue.name(), token) {
                debug!(%app, id, "lock renewal stopped by a fault; not renewing");
                continue;
            }
            match queue.renew(token) {
                Ok(_) => debug!(%app, id, "message lock renewed"),
                Err(LockLost) => {
                    warn!(%app, id, "couldn't renew active message lock: lock has been lost")
                }
            }
        }
    }
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
    active: Arc<InFlight>,
}

/// A call's journey entry, ended when the call ends; a call dropped unfinished (the sidecar
/// stopped first) ends as cancelled.
struct Journal<'a> {
    journeys: &'a Journeys,
    delivery: DeliveryRef,
    ended: bool,
}

impl Journal<'_> {
    fn end(mut self, result: &Result<(), CallError>) {
        self.ended = true;
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Ok, None),
            Err(e) if e.answered => (Outcome::Error, Some(e.reason.clone())),
            Err(e) => (Outcome::NoAnswer, Some(e.reason.clone())),
        };
        self.journeys.delivery_ended(&self.delivery, outcome, error);
    }
}

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.journeys
                .delivery_ended(&self.delivery, Outcome::Cancelled, None);
        }
    }
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
            let token = lock.token();
            self.active
                .0
                .lock()
                .insert(token, lock.message().id.clone());
            self.app.delivery_started();
            // Once the app is told to stop, what it has in flight gets a lock duration to end.
            let stopped = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.settings.lock_duration).await;
            };
            let result = tokio::select! {
                result = self.deliver_retrying(lock.message()) => Some(result),
                _ = stopped => None,
            };
            self.active.0.lock().remove(&token);
            self.app.delivery_ended(matches!(result, Some(Ok(()))));
            let answered_ok = self.settle(lock, result, shutdown.is_cancelled());
            self.settings.faults.settled(self.queue.name(), token);
            if !answered_ok && let Some(limiter) = &self.retriable_errors {
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
            return self.deliver(message, 1, None).await;
        };
        let mut retries = policy.retries();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.deliver(message, attempt, Some(policy)).await {
                Ok(()) => return Ok(()),
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

    /// One call to the app: `attempt` of this delivery, per the Resiliency. Under a retry
    /// `policy`, an HTTP app's 2xx other than 200 fails the call, as daprd's runner has it.
    async fn deliver(
        &self,
        message: &QueuedMessage,
        attempt: u32,
        policy: Option<&BindingRetryPolicy>,
    ) -> Result<(), CallError> {
        let grpc = matches!(self.channel, AppChannel::Grpc(_));
        let span = spans::delivery(self.queue.name(), message, grpc);
        let journeys = &self.settings.journeys;
        let journal = Journal {
            journeys,
            delivery: journeys.delivery_started(
                &message.id,
                self.app.label(),
                message.delivery_count,
                attempt,
            ),
            ended: false,
        };
        let result = self
            .channel
            .deliver(self.queue.name(), message, &self.settings, &span)
            .await
            .and_then(|status| match (status, policy) {
                (Some(status), Some(policy)) if status != 200 => Err(self.not_200(status, policy)),
                _ => Ok(()),
            });
        journal.end(&result);
        spans::end(&span, result.as_ref().err().map(|e| e.reason.clone()));
        result
    }

    /// Completes or abandons the message; true when the app answered OK (whether or not the
    /// complete took). `None`: the sidecar stopped before the app answered. A delivery told to
    /// stop (its app exited, or is scaled in) leaves the app's health to the delivery after it.
    fn settle(&self, lock: Lock, result: Option<Result<(), CallError>>, stopped: bool) -> bool {
        let message = lock.message();
        let (id, delivery_count) = (message.id.clone(), message.delivery_count);
        let trace_id = message.trace_id.clone();
        let reason = match result {
            Some(Ok(())) => {
                if self.settings.faults.take_lost_complete(&id) {
                    warn!(app = %self.address, id, trace_id, "message completed, but the complete is lost (fault); its lock will run out");
                    lock.forget();
                    return true;
                }
                match lock.complete() {
                    Ok(()) => debug!(app = %self.address, id, trace_id, "message completed"),
                    // As the binding logs it: the message comes back, at-least-once.
                    Err(e) => {
                        warn!(app = %self.address, id, trace_id, error = %e, "error completing message; it will be delivered again")
                    }
                }
                return true;
            }
            Some(Err(error)) => {
                if !error.answered && !stopped {
                    // The app is gone or draining: stop delivering until its health check passes.
                    self.health.set(false);
                }
                error.reason
            }
            None => "the app did not answer before the sidecar stopped delivering to it".to_owned(),
        };
        match lock.abandon(&reason) {
            Ok(Abandoned::Redelivered) => {
                info!(app = %self.address, id, trace_id, delivery_count, %reason, "message abandoned; will be redelivered")
            }
            Ok(Abandoned::DeadLettered) => {
                warn!(app = %self.address, id, trace_id, delivery_count, %reason, "message dead-lettered")
            }
            Err(e) => {
                warn!(app = %self.address, id, trace_id, delivery_count, %reason, error = %e, "error abandoning message")
            }
        }
        false
    }
}
