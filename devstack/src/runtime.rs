//! The runtime side, the one producers call: `dapr.proto.runtime.v1.Dapr/InvokeBinding` with
//! operation `create` enqueues a message, as daprd with a queue binding does (over HTTP, `POST
//! /v1.0/bindings/{name}` comes here too). Every other Dapr method but `GetMetadata`
//! (`metadata.rs`) is UNIMPLEMENTED (see `pipeline::dapr_runtime`). The API token is checked
//! before a call gets here (`api::token`). The `unavailable` and `latency` faults act here.

use std::{collections::HashMap, sync::Arc};

use pipeline::{
    dapr_runtime::BindingHandler,
    dapr_v1::{InvokeBindingRequest, InvokeBindingResponse},
    message::OPERATION_CREATE,
    trace_context::{TRACEPARENT, TraceParent},
};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::{
    faults::{Faults, Unavailable},
    ids,
    journey::Via,
    queue::Queues,
    service_bus::{Envelope, MessageError},
    spans,
};

/// Why an output binding call was refused; worded as daprd words it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    #[error("error invoking output binding {0}: couldn't find output binding {0}")]
    UnknownBinding(String),
    #[error(
        "binding {binding} does not support operation {operation}. supported operations:{OPERATION_CREATE}"
    )]
    UnsupportedOperation { binding: String, operation: String },
    /// The binding could not build a Service Bus message from the request's metadata.
    #[error("error invoking output binding {binding}: failed to create message: {source}")]
    Message {
        binding: String,
        source: MessageError,
    },
    /// The `unavailable` fault.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The runtime API's shared state: the queues producers send to, and the faults in force.
#[derive(Debug, Clone)]
pub struct Runtime {
    queues: Arc<Queues>,
    faults: Arc<Faults>,
}

impl Runtime {
    pub fn new(queues: Arc<Queues>, faults: Arc<Faults>) -> Self {
        Self { queues, faults }
    }

    /// Enqueues one message on `binding`'s queue, sent `via` gRPC or HTTP; returns its id.
    /// `metadata` maps onto the message as the Service Bus binding maps it.
    pub async fn invoke(
        &self,
        binding: &str,
        operation: &str,
        data: Vec<u8>,
        mut metadata: HashMap<String, String>,
        trace: Option<TraceParent>,
        via: Via,
    ) -> Result<String, InvokeError> {
        let span = spans::send(binding, trace.as_ref());
        if let Err(unavailable) = self.faults.before_send().await {
            spans::end(&span, Some(unavailable.to_string()));
            return Err(unavailable.into());
        }
        let queue = self.queues.get(binding);
        let Some(queue) = queue.filter(|_| operation == OPERATION_CREATE) else {
            let error = match queue {
                None => InvokeError::UnknownBinding(binding.to_owned()),
                Some(_) => InvokeError::UnsupportedOperation {
                    binding: binding.to_owned(),
                    operation: operation.to_owned(),
                },
            };
            spans::end(&span, Some(error.to_string()));
            return Err(error);
        };
        // A message sent untraced gets a trace of its own here, so its deliveries share one.
        let trace_id = spans::trace_id(&span)
            .or_else(|| trace.map(|tp| tp.trace_id().to_owned()))
            .unwrap_or_else(ids::trace_id);
        // daprd adds its span's `traceparent` to an output binding's metadata, where the Service
        // Bus binding makes it an application property: consumers find it in the event metadata.
        metadata.insert(TRACEPARENT.to_owned(), spans::traceparent(&span, &trace_id));
        let envelope = match Envelope::from_invoke_metadata(metadata) {
            Ok(envelope) => envelope,
            Err(source) => {
                let error = InvokeError::Message {
                    binding: binding.to_owned(),
                    source,
                };
                spans::end(&span, Some(error.to_string()));
                return Err(error);
            }
        };
        let id = queue.send(data, envelope, Some(trace_id), via);
        spans::enqueued(&span, &id);
        spans::end(&span, None);
        debug!(binding, id, "message enqueued");
        Ok(id)
    }
}

#[tonic::async_trait]
impl BindingHandler for Runtime {
    async fn invoke_binding(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        let trace = TraceParent::from_metadata(request.metadata());
        let InvokeBindingRequest {
            name,
            data,
            metadata,
            operation,
        } = request.into_inner();
        self.invoke(&name, &operation, data, metadata, trace, Via::Grpc)
            .await
            .map_err(|e| match e {
                // What a producer retries, as it retries daprd's UNAVAILABLE.
                InvokeError::Unavailable(e) => Status::unavailable(e.to_string()),
                e => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(InvokeBindingResponse::default()))
    }
}
