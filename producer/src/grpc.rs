//! The gRPC front, `producer.v1.Producer`: the same batches as `POST /MessageProducer`, for grpcurl.

use std::{pin::Pin, sync::Arc};

use pipeline::proto::{
    ProduceProgress, ProduceReply, ProduceRequest,
    producer_server::{Producer, ProducerServer},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::UnboundedReceiverStream};
use tonic::{Code, Request, Response, Status, metadata::MetadataValue, server::NamedService};

use crate::{
    batch::{BatchError, BatchRequest, Batches, InvalidBatch, ProduceError},
    message_id::{IdempotencyKey, InvalidKey},
    metrics::Metrics,
    publisher::{PublishError, Trace},
};

/// Trailing metadata key carrying how many messages were sent before a batch failed.
pub const SENT_METADATA: &str = "producer-sent";

/// The methods of `producer.v1.Producer`, as the request metrics label them.
const PRODUCE: &str = "Produce";
const PRODUCE_STREAM: &str = "ProduceStream";

/// The method a request path calls, if it is one of `producer.v1.Producer`'s, for the metrics
/// of requests refused before they reach the service.
pub fn method(path: &str) -> Option<&'static str> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(<ProducerServer<ProducerService> as NamedService>::NAME)?
        .strip_prefix('/')?;
    [PRODUCE, PRODUCE_STREAM].into_iter().find(|m| *m == method)
}

/// `producer.v1.Producer` over the shared [`Batches`].
#[derive(Debug, Clone)]
pub struct ProducerService {
    batches: Batches,
    metrics: Arc<Metrics>,
}

impl ProducerService {
    pub fn new(batches: Batches, metrics: Arc<Metrics>) -> ProducerServer<Self> {
        ProducerServer::new(Self { batches, metrics })
    }

    fn count<T>(&self, method: &'static str, result: &Result<T, Status>) {
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.grpc_request(method, code);
    }
}

/// The batch a `ProduceRequest` asks for, with the idempotency key and the trace context of its
/// metadata.
fn batch_request(request: Request<ProduceRequest>) -> Result<BatchRequest, Status> {
    let (metadata, _, message) = request.into_parts();
    let headers = metadata.as_ref();
    Ok(BatchRequest {
        count: message.count.into(),
        interval_ms: message.interval_milliseconds.into(),
        text: message.text,
        idempotency_key: IdempotencyKey::from_headers(headers)?,
        trace: Trace::from_headers(headers),
    })
}

#[tonic::async_trait]
impl Producer for ProducerService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceReply>, Status> {
        let result = match batch_request(request) {
            Ok(batch) => self.batches.produce(batch).await.map_err(Status::from),
            Err(status) => Err(status),
        };
        self.count(PRODUCE, &result);
        Ok(Response::new(ProduceReply { sent: result? }))
    }

    type ProduceStreamStream = Pin<Box<dyn Stream<Item = Result<ProduceProgress, Status>> + Send>>;

    async fn produce_stream(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let accepted = batch_request(request)
            .and_then(|batch| self.batches.accept(batch).map_err(Status::from));
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(status) => {
                self.count::<()>(PRODUCE_STREAM, &Err(status.clone()));
                return Err(status);
            }
        };
        let count = accepted.count();
        let metrics = Arc::clone(&self.metrics);
        // Unbounded, yet at most `count` (<= MAX_COUNT) small reports: a slow reader neither
        // loses reports nor holds the batch back.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let progress = tx.clone();
            let run = accepted.run(move |sent| {
                let _ = progress.send(Ok(ProduceProgress { sent, count }));
            });
            // A client that cancels the stream closes `rx`: dropping `run` stops the batch.
            let result = tokio::select! {
                result = run => result,
                _ = tx.closed() => {
                    metrics.grpc_request(PRODUCE_STREAM, Code::Cancelled);
                    return;
                }
            };
            let code = match result {
                Ok(_) => Code::Ok,
                Err(error) => {
                    let status = Status::from(error);
                    let code = status.code();
                    let _ = tx.send(Err(status));
                    code
                }
            };
            metrics.grpc_request(PRODUCE_STREAM, code);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

impl From<ProduceError> for Status {
    fn from(error: ProduceError) -> Self {
        match error {
            ProduceError::Invalid(error) => error.into(),
            ProduceError::Batch(error) => error.into(),
        }
    }
}

impl From<InvalidBatch> for Status {
    fn from(error: InvalidBatch) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

impl From<InvalidKey> for Status {
    fn from(error: InvalidKey) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

impl From<BatchError> for Status {
    fn from(error: BatchError) -> Self {
        let message = error.to_string();
        let mut status = match &error {
            BatchError::Sidecar {
                source: PublishError::Unavailable(_),
                ..
            }
            | BatchError::Stopped { .. } => Status::unavailable(message),
            BatchError::Sidecar {
                source: PublishError::Timeout(_),
                ..
            } => Status::deadline_exceeded(message),
            BatchError::Busy { .. } => Status::resource_exhausted(message),
            // The caller's request was fine; the upstream failed it.
            BatchError::Sidecar {
                source: PublishError::Rejected(_),
                ..
            } => Status::internal(message),
        };
        status
            .metadata_mut()
            .insert(SENT_METADATA, MetadataValue::from(error.sent()));
        status
    }
}
