//! The gRPC front, `producer.v1.Producer`: the same batches as `POST /MessageProducer`, for grpcurl.

use std::{num::NonZeroU32, pin::Pin, sync::Arc};

use bindings::proto::{
    ProduceProgress, ProduceReply, ProduceRequest,
    producer_server::{Producer, ProducerServer},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::UnboundedReceiverStream};
use tonic::{Code, Request, Response, Status, metadata::MetadataValue};

use crate::{
    batch::{Batch, BatchError, Batches, InvalidBatch},
    metrics::Metrics,
    publisher::{PublishError, Trace},
};

/// Trailing metadata key carrying how many messages were sent before a batch failed.
pub const SENT_METADATA: &str = "producer-sent";

/// `producer.v1.Producer` over the shared [`Batches`].
#[derive(Debug, Clone)]
pub struct ProducerService {
    batches: Batches,
    max_count: NonZeroU32,
    metrics: Arc<Metrics>,
}

impl ProducerService {
    pub fn new(
        batches: Batches,
        max_count: NonZeroU32,
        metrics: Arc<Metrics>,
    ) -> ProducerServer<Self> {
        ProducerServer::new(Self {
            batches,
            max_count,
            metrics,
        })
    }

    fn count<T>(&self, method: &'static str, result: &Result<T, Status>) {
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.grpc_request(method, code);
    }

    fn validate<T>(
        &self,
        request: &Request<T>,
        message: &ProduceRequest,
    ) -> Result<(Batch, Trace), Status> {
        let batch = Batch::validate(
            message.count.into(),
            message.interval_milliseconds.into(),
            message.text.clone(),
            self.max_count,
        )?;
        Ok((batch, Trace::from_headers(request.metadata().as_ref())))
    }
}

#[tonic::async_trait]
impl Producer for ProducerService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceReply>, Status> {
        let result = async {
            let (batch, trace) = self.validate(&request, request.get_ref())?;
            let slot = self.batches.reserve()?;
            Ok(self.batches.run(slot, batch, trace, |_| {}).await?)
        }
        .await;
        self.count("Produce", &result);
        Ok(Response::new(ProduceReply { sent: result? }))
    }

    type ProduceStreamStream = Pin<Box<dyn Stream<Item = Result<ProduceProgress, Status>> + Send>>;

    async fn produce_stream(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let reserved = self
            .validate(&request, request.get_ref())
            .and_then(|(batch, trace)| Ok((batch, trace, self.batches.reserve()?)));
        let (batch, trace, slot) = match reserved {
            Ok(reserved) => reserved,
            Err(status) => {
                self.count::<()>("ProduceStream", &Err(status.clone()));
                return Err(status);
            }
        };
        let count = batch.count;
        let metrics = Arc::clone(&self.metrics);
        // Unbounded, yet at most `count` (<= MAX_COUNT) small reports: a slow reader neither
        // loses reports nor holds the batch back.
        let (tx, rx) = mpsc::unbounded_channel();
        let batches = self.batches.clone();
        tokio::spawn(async move {
            let progress = tx.clone();
            let run = batches.run(slot, batch, trace, move |sent| {
                let _ = progress.send(Ok(ProduceProgress { sent, count }));
            });
            // A client that cancels the stream closes `rx`: dropping `run` stops the batch.
            let result = tokio::select! {
                result = run => result,
                _ = tx.closed() => {
                    metrics.grpc_request("ProduceStream", Code::Cancelled);
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
            metrics.grpc_request("ProduceStream", code);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

impl From<InvalidBatch> for Status {
    fn from(error: InvalidBatch) -> Self {
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
