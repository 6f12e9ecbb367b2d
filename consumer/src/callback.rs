//! The `dapr.proto.runtime.v1.AppCallback` service daprd calls: input binding events are worked on,
//! everything else is declined. Also answers `AppCallbackHealthCheck`, and drains on shutdown.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use pipeline::{
    api_token::ApiToken,
    dapr_v1::{
        BindingEventRequest, BindingEventResponse, HealthCheckResponse, JobEventRequest,
        JobEventResponse, ListInputBindingsResponse, ListTopicSubscriptionsResponse,
        TopicEventBulkRequest, TopicEventBulkResponse, TopicEventRequest, TopicEventResponse,
        app_callback_health_check_server::AppCallbackHealthCheck, app_callback_server::AppCallback,
    },
    message::{DecodeError, Message},
    trace_context::{self, TraceContext},
};
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, warn};

use crate::{
    metrics::{Metrics, Reason},
    token_hint::MissingTokenHint,
    work,
};

/// The binding-event metadata key of the broker's message id: daprd's Service Bus queue binding
/// sends it as `id` (components-contrib `bindings/azure/servicebusqueues`), and no `MessageId`.
const MESSAGE_ID_KEY: &str = "id";

/// The gRPC path daprd calls with each input binding event.
const ON_BINDING_EVENT: &str = "/dapr.proto.runtime.v1.AppCallback/OnBindingEvent";

/// What the [`Consumer`] service needs from the configuration.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The one input binding this app consumes.
    pub binding_name: String,
    /// Simulated work per message.
    pub work_duration: Duration,
    /// Messages worked on at once; at least 1.
    pub max_concurrency: usize,
    /// How long [`Consumer::drain`]'s caller lets in-flight messages run after shutdown starts.
    pub drain_timeout: Duration,
    /// When set, binding events must carry it as `dapr-api-token`.
    pub api_token: Option<ApiToken>,
}

/// The AppCallback and AppCallbackHealthCheck services, sharing one state.
#[derive(Debug)]
pub struct Consumer {
    settings: ConsumerSettings,
    /// FIFO-fair, so messages start in the order daprd delivered them. Closed once shutdown
    /// starts: new and waiting events are turned away from then on.
    permits: Semaphore,
    /// Every binding event from arrival to response, so shutdown can wait for them.
    in_flight: TaskTracker,
    processed: AtomicU64,
    metrics: Arc<Metrics>,
    token_hint: MissingTokenHint,
}

/// Why a binding event is not processed; each maps to the gRPC code daprd acts on.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The app API token is required and was missing or wrong.
    #[error("missing or wrong dapr-api-token")]
    Unauthenticated,
    /// The event is for an input binding this app does not consume.
    #[error("unknown input binding {got:?}; this app consumes {expected:?}")]
    UnknownBinding {
        /// The binding named by the event.
        got: String,
        /// The configured binding.
        expected: String,
    },
    /// The payload is not a `{"text": ...}` message; redelivery will not fix it.
    #[error(transparent)]
    BadPayload(#[from] DecodeError),
    /// Shutdown has started; another instance should take the message.
    #[error("shutting down; not accepting new events")]
    Draining,
}

impl EventError {
    /// The `reason` label it is counted under.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Unauthenticated => Reason::Unauthenticated,
            Self::UnknownBinding { .. } => Reason::UnknownBinding,
            Self::BadPayload(_) => Reason::BadPayload,
            Self::Draining => Reason::Draining,
        }
    }
}

impl From<EventError> for Status {
    fn from(error: EventError) -> Self {
        let message = error.to_string();
        match error {
            EventError::Unauthenticated => Status::unauthenticated(message),
            EventError::UnknownBinding { .. } => Status::not_found(message),
            // Service Bus abandons the message, redelivers it, and dead-letters it at
            // MaxDeliveryCount: the right end for a message nobody can read.
            EventError::BadPayload(_) => Status::invalid_argument(message),
            // daprd abandons the message, so the broker redelivers it, likely elsewhere.
            EventError::Draining => Status::unavailable(message),
        }
    }
}

impl Consumer {
    /// A consumer that has not started draining.
    pub fn new(settings: ConsumerSettings) -> Self {
        Self {
            // Semaphore::new panics above usize::MAX >> 3 permits; Config caps this at u16::MAX.
            permits: Semaphore::new(settings.max_concurrency.max(1)),
            in_flight: TaskTracker::new(),
            processed: AtomicU64::new(0),
            metrics: Arc::new(Metrics::new(&settings.binding_name)),
            token_hint: MissingTokenHint::default(),
            settings,
        }
    }

    /// The metrics of this consumer's events, for the metrics server.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// How long in-flight events may run once shutdown starts.
    pub fn drain_timeout(&self) -> Duration {
        self.settings.drain_timeout
    }

    /// Events processed successfully so far.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Starts draining: new and waiting events get UNAVAILABLE, health checks fail. Then waits
    /// until in-flight events have answered or `deadline` passes; returns whether all answered.
    pub async fn drain(&self, deadline: Instant) -> bool {
        let started = Instant::now();
        self.permits.close();
        self.metrics.set_draining();
        self.in_flight.close();
        let in_flight = self.in_flight.len();
        info!(in_flight, "draining");
        match tokio::time::timeout_at(deadline, self.in_flight.wait()).await {
            Ok(()) => {
                let elapsed_ms = millis(started.elapsed());
                info!(in_flight, elapsed_ms, "drained");
                true
            }
            Err(_) => {
                warn!(
                    unfinished = self.in_flight.len(),
                    drain_timeout = %humantime::format_duration(self.settings.drain_timeout),
                    "drain timeout elapsed with events in flight; the broker will redeliver them"
                );
                false
            }
        }
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.permits.is_closed()
    }

    /// Handles one event inside its span; every outcome is counted.
    async fn handle(
        &self,
        request: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        let outcome = self.metrics.event(&request.get_ref().name);
        if let Some(token) = &self.settings.api_token
            && !token.authorizes(request.metadata())
        {
            warn!("binding event refused: missing or wrong dapr-api-token");
            self.token_hint.refused(request.metadata());
            outcome.failed(Reason::Unauthenticated);
            return Err(EventError::Unauthenticated.into());
        }
        match self.process(&request.into_inner()).await {
            Ok(work) => {
                outcome.processed(work);
                Ok(Response::new(BindingEventResponse::default()))
            }
            Err(error) => {
                if matches!(error, EventError::Draining) {
                    info!("binding event refused: shutting down");
                } else {
                    warn!(%error, "binding event rejected");
                }
                outcome.failed(error.reason());
                Err(error.into())
            }
        }
    }

    /// Decodes and works on one event; returns how long the work took.
    async fn process(&self, event: &BindingEventRequest) -> Result<Duration, EventError> {
        // Once draining, every new event is turned away alike, so the broker hands it elsewhere.
        if self.is_draining() {
            return Err(EventError::Draining);
        }
        if event.name != self.settings.binding_name {
            return Err(EventError::UnknownBinding {
                got: event.name.clone(),
                expected: self.settings.binding_name.clone(),
            });
        }
        let message = Message::from_json(&event.data)?;
        let _permit = self.permit().await?;
        debug!("event received");
        let done = work::simulate(self.settings.work_duration).await;
        self.processed.fetch_add(1, Ordering::Relaxed);
        info!(
            duration_ms = millis(done.elapsed),
            "{}",
            work::LogLine {
                text: &message.text,
                received: done.received,
                finished: done.finished,
            }
        );
        Ok(done.elapsed)
    }

    /// Waits for a work slot, unless shutdown starts first (or has already started): the drain
    /// closes the semaphore.
    async fn permit(&self) -> Result<SemaphorePermit<'_>, EventError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| EventError::Draining)
    }
}

#[tonic::async_trait]
impl AppCallback for Consumer {
    async fn on_binding_event(
        &self,
        request: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        // Taken before the draining check, so a drain that starts meanwhile still waits for us.
        let _in_flight = self.in_flight.token();
        let received = TraceContext::from_metadata(request.metadata());
        let event = request.get_ref();
        let id = message_id(&event.metadata);
        let span = event_span(&event.name, id);
        trace_context::set_remote_parent(&span, received.as_ref());
        let ids = trace_context::ids(&span);
        let (trace_id, span_id) = match &ids {
            Some((trace_id, span_id)) => (Some(trace_id.as_str()), Some(span_id.as_str())),
            None => (received.as_ref().map(|r| r.traceparent().trace_id()), None),
        };
        // Every log event of this event carries its binding, message id and trace id.
        let logged = pipeline::context_span!(
            "binding_event",
            binding = %event.name,
            id,
            trace_id,
            span_id,
        );
        let result = self
            .handle(request)
            .instrument(logged)
            .instrument(span.clone())
            .await;
        // OK, or the gRPC code and reason daprd receives.
        trace_context::end_grpc_span(&span, result.as_ref().err());
        result
    }

    /// Answered at once: daprd asks once at start-up, with a 3 s deadline, and treats an error
    /// as "no bindings", which would leave the queue unread.
    async fn list_input_bindings(
        &self,
        _request: Request<()>,
    ) -> Result<Response<ListInputBindingsResponse>, Status> {
        Ok(Response::new(ListInputBindingsResponse {
            bindings: vec![self.settings.binding_name.clone()],
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        _request: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse::default()))
    }

    async fn on_invoke(
        &self,
        _request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        Err(not_served("service invocation"))
    }

    async fn on_topic_event(
        &self,
        _request: Request<TopicEventRequest>,
    ) -> Result<Response<TopicEventResponse>, Status> {
        Err(not_served("pub/sub"))
    }

    async fn on_bulk_topic_event(
        &self,
        _request: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        Err(not_served("pub/sub"))
    }

    async fn on_job_event(
        &self,
        _request: Request<JobEventRequest>,
    ) -> Result<Response<JobEventResponse>, Status> {
        Err(not_served("jobs"))
    }
}

#[tonic::async_trait]
impl AppCallbackHealthCheck for Consumer {
    /// Fails once draining starts. At shutdown daprd has closed its input bindings already, and
    /// seeing the app unhealthy ends its `block-shutdown-duration` early; at any other time,
    /// daprd's app health checks stop the bindings while the app is unhealthy.
    async fn health_check(
        &self,
        _request: Request<()>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if self.is_draining() {
            Err(Status::unavailable("shutting down"))
        } else {
            Ok(Response::new(HealthCheckResponse {}))
        }
    }
}

fn not_served(building_block: &str) -> Status {
    Status::unimplemented(format!(
        "this app only consumes input bindings; {building_block} is not served"
    ))
}

/// The exported span of one event, covering the wait for a work slot and the work: a gRPC server
/// span, and the messaging `process` of the message.
fn event_span(binding: &str, id: Option<&str>) -> tracing::Span {
    pipeline::grpc_span!(
        ON_BINDING_EVENT,
        "server",
        // The app knows the queue only by its binding's name.
        messaging.system = binding,
        messaging.destination.name = binding,
        messaging.operation.type = "process",
        messaging.message.id = id,
    )
}

/// The broker's message id from a binding event's metadata, if any.
fn message_id(metadata: &HashMap<String, String>) -> Option<&str> {
    metadata
        .get(MESSAGE_ID_KEY)
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pipeline::api_token::API_TOKEN_METADATA;
    use tokio::task::JoinHandle;
    use tonic::Code;

    use super::*;

    fn settings() -> ConsumerSettings {
        ConsumerSettings {
            binding_name: "message-queue".to_owned(),
            work_duration: Duration::from_secs(5),
            max_concurrency: 1,
            drain_timeout: Duration::from_secs(25),
            api_token: None,
        }
    }

    fn event(binding: &str, data: &[u8]) -> Request<BindingEventRequest> {
        Request::new(BindingEventRequest {
            name: binding.to_owned(),
            data: data.to_vec(),
            metadata: HashMap::new(),
        })
    }

    fn good_event() -> Request<BindingEventRequest> {
        event("message-queue", br#"{"text":"Hello World"}"#)
    }

    fn spawn_event(
        consumer: &Arc<Consumer>,
        request: Request<BindingEventRequest>,
    ) -> JoinHandle<Result<Response<BindingEventResponse>, Status>> {
        let consumer = Arc::clone(consumer);
        tokio::spawn(async move { consumer.on_binding_event(request).await })
    }

    /// The value of one series in the consumer's metrics, e.g.
    /// `consumer_events_failed_total{binding="message-queue",reason="draining"}`.
    fn metric(consumer: &Consumer, series: &str) -> f64 {
        let text = consumer.metrics.encode().unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    fn failed(consumer: &Consumer, reason: &str) -> f64 {
        let series =
            format!(r#"consumer_events_failed_total{{binding="message-queue",reason="{reason}"}}"#);
        metric(consumer, &series)
    }

    const RECEIVED: &str = r#"consumer_events_received_total{binding="message-queue"}"#;
    const PROCESSED: &str = r#"consumer_events_processed_total{binding="message-queue"}"#;
    const IN_FLIGHT: &str = "consumer_events_in_flight";

    /// Lets spawned handlers run until `done` holds; bounded, and needs no clock.
    async fn settle(done: impl Fn() -> bool) {
        for _ in 0..1_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached after 1000 yields");
    }

    #[test]
    fn message_id_is_the_binding_id_only() {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(
            message_id(&map(&[("id", "a"), ("MessageId", "b")])),
            Some("a")
        );
        assert_eq!(message_id(&map(&[("MessageId", "b")])), None);
        assert_eq!(message_id(&map(&[("id", ""), ("MessageId", "b")])), None);
        assert_eq!(message_id(&map(&[("messageid", "c")])), None);
        assert_eq!(message_id(&map(&[])), None);
    }

    #[test]
    fn each_error_has_its_code() {
        let bad_payload = Message::from_json(b"nope").unwrap_err();
        for (error, code) in [
            (EventError::Unauthenticated, Code::Unauthenticated),
            (
                EventError::UnknownBinding {
                    got: "a".to_owned(),
                    expected: "b".to_owned(),
                },
                Code::NotFound,
            ),
            (EventError::BadPayload(bad_payload), Code::InvalidArgument),
            (EventError::Draining, Code::Unavailable),
        ] {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn processes_a_good_event_and_counts_it() {
        let consumer = Consumer::new(settings());
        consumer.on_binding_event(good_event()).await.unwrap();
        assert_eq!(consumer.processed(), 1);
        assert_eq!(metric(&consumer, RECEIVED), 1.0);
        assert_eq!(metric(&consumer, PROCESSED), 1.0);
        assert_eq!(metric(&consumer, IN_FLIGHT), 0.0);
        // Paused time: the work took exactly WORK_DURATION.
        assert_eq!(
            metric(&consumer, "consumer_event_processing_seconds_sum"),
            5.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checks_the_token_only_when_configured() {
        let consumer = Consumer::new(ConsumerSettings {
            api_token: Some(ApiToken::from_config("s3cret").unwrap()),
            ..settings()
        });
        let status = consumer.on_binding_event(good_event()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let mut request = good_event();
        request
            .metadata_mut()
            .insert(API_TOKEN_METADATA, "s3cret".parse().unwrap());
        consumer.on_binding_event(request).await.unwrap();
        assert_eq!(failed(&consumer, "unauthenticated"), 1.0);
        assert_eq!(metric(&consumer, RECEIVED), 2.0);
        // Listing bindings and health checks carry no token from daprd.
        consumer
            .list_input_bindings(Request::new(()))
            .await
            .unwrap();
        consumer.health_check(Request::new(())).await.unwrap();
        assert_eq!(consumer.processed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_unknown_bindings_and_bad_payloads_without_working() {
        let consumer = Consumer::new(settings());
        let status = consumer
            .on_binding_event(event("other", br#"{"text":"x"}"#))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let status = consumer
            .on_binding_event(event("message-queue", br#"{"text":5}"#))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("payload is not a message"));
        assert_eq!(consumer.processed(), 0);
        assert_eq!(failed(&consumer, "bad_payload"), 1.0);
        // The other binding's name is not a label value; the configured one's counts are apart.
        let other = r#"consumer_events_failed_total{binding="(other)",reason="unknown_binding"}"#;
        assert_eq!(metric(&consumer, other), 1.0);
        assert_eq!(failed(&consumer, "unknown_binding"), 0.0);
        assert_eq!(metric(&consumer, RECEIVED), 1.0);
        assert_eq!(metric(&consumer, PROCESSED), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_in_flight_work_and_refuses_waiting_and_new_events() {
        let consumer = Arc::new(Consumer::new(settings()));
        let first = spawn_event(&consumer, good_event());
        settle(|| consumer.permits.available_permits() == 0).await;
        let waiting = spawn_event(&consumer, good_event());
        settle(|| consumer.in_flight.len() == 2).await;
        // Working or waiting for a slot, both are in flight.
        assert_eq!(metric(&consumer, IN_FLIGHT), 2.0);
        assert_eq!(metric(&consumer, "consumer_draining"), 0.0);

        let deadline = Instant::now() + Duration::from_secs(25);
        let drain = consumer.drain(deadline);
        tokio::pin!(drain);
        // Polled once: the drain has started, the first event is still working.
        assert!(futures::poll!(&mut drain).is_pending());
        assert_eq!(metric(&consumer, "consumer_draining"), 1.0);
        assert!(drain.await);
        assert_eq!(metric(&consumer, IN_FLIGHT), 0.0);

        assert!(first.await.unwrap().is_ok());
        let status = waiting.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        // Every new event alike, even one that would be refused for what it holds.
        for event in [
            good_event(),
            event("message-queue", b"not json"),
            event("another-binding", b"{}"),
        ] {
            let status = consumer.on_binding_event(event).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
        }
        let status = consumer.health_check(Request::new(())).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(consumer.processed(), 1);
        assert_eq!(metric(&consumer, PROCESSED), 1.0);
        // The other binding's event counts under `(other)`.
        assert_eq!(failed(&consumer, "draining"), 3.0);
        assert_eq!(metric(&consumer, RECEIVED), 4.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_whose_caller_goes_away_counts_as_cancelled() {
        let consumer = Arc::new(Consumer::new(settings()));
        let first = spawn_event(&consumer, good_event());
        settle(|| consumer.permits.available_permits() == 0).await;
        assert_eq!(metric(&consumer, IN_FLIGHT), 1.0);
        // tonic drops the handler's future when the client cancels the call.
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(metric(&consumer, IN_FLIGHT), 0.0);
        assert_eq!(failed(&consumer, "cancelled"), 1.0);
        assert_eq!(metric(&consumer, PROCESSED), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let consumer = Arc::new(Consumer::new(ConsumerSettings {
            work_duration: Duration::from_secs(60),
            ..settings()
        }));
        let first = spawn_event(&consumer, good_event());
        settle(|| consumer.permits.available_permits() == 0).await;

        let started = Instant::now();
        assert!(!consumer.drain(started + Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(!first.is_finished());
        first.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn runs_up_to_max_concurrency_events_at_once() {
        let consumer = Arc::new(Consumer::new(ConsumerSettings {
            max_concurrency: 2,
            ..settings()
        }));
        let started = Instant::now();
        let events: Vec<_> = (0..4)
            .map(|_| spawn_event(&consumer, good_event()))
            .collect();
        for event in events {
            event.await.unwrap().unwrap();
        }
        // Two rounds of 5 s, not one (all at once) nor four (one by one).
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(consumer.processed(), 4);
    }

    /// Payloads a binding event may carry: any bytes, messages, and JSON close to a message.
    fn payload() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let text_value = prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            prop::collection::vec(any::<String>(), 0..3).prop_map(serde_json::Value::from),
        ];
        prop_oneof![
            any::<Vec<u8>>(),
            (text_value, any::<Option<String>>()).prop_map(|(text, extra)| {
                let mut fields = serde_json::Map::new();
                fields.insert("text".to_owned(), text);
                if let Some(extra) = extra {
                    fields.insert("extra".to_owned(), extra.into());
                }
                serde_json::to_vec(&fields).unwrap()
            }),
            // A message cut short or padded with stray bytes.
            (any::<String>(), any::<Vec<u8>>(), any::<bool>()).prop_map(|(text, noise, cut)| {
                let mut data = Message::new(text).to_json();
                if cut {
                    data.truncate(noise.len() % (data.len() + 1));
                } else {
                    data.extend_from_slice(&noise);
                }
                data
            }),
        ]
    }

    proptest::proptest! {
        /// Whatever the payload, the answer is OK (the broker completes the message) or
        /// INVALID_ARGUMENT (redelivered, then dead-lettered): never a panic, never another code,
        /// and the metrics account for the event either way.
        #[test]
        fn any_payload_is_ok_or_invalid_argument(data in payload()) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let consumer = Consumer::new(ConsumerSettings {
                work_duration: Duration::ZERO,
                ..settings()
            });
            let result = runtime.block_on(consumer.on_binding_event(event("message-queue", &data)));
            let decodes = Message::from_json(&data).is_ok();
            match result {
                Ok(_) => {
                    proptest::prop_assert!(decodes);
                    proptest::prop_assert_eq!(metric(&consumer, PROCESSED), 1.0);
                }
                Err(status) => {
                    proptest::prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
                    proptest::prop_assert!(!decodes);
                    proptest::prop_assert_eq!(failed(&consumer, "bad_payload"), 1.0);
                }
            }
            proptest::prop_assert_eq!(metric(&consumer, IN_FLIGHT), 0.0);
        }
    }
}
