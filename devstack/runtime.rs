//! The runtime side, the one producers call: `dapr.proto.runtime.v1.Dapr/InvokeBinding` with
//! operation `create` enqueues a message, as daprd with a queue binding does. Every other Dapr
//! method is UNIMPLEMENTED (see `bindings::dapr_runtime`).

use std::{collections::HashMap, sync::Arc};

use bindings::{
    api_token::ApiToken,
    dapr_runtime::BindingHandler,
    dapr_v1::{InvokeBindingRequest, InvokeBindingResponse},
    trace_context::{TRACEPARENT, TraceParent},
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::debug;

use crate::broker::Broker;

/// The one operation the queue bindings support.
pub const CREATE: &str = "create";

/// Why an output binding call was refused; worded as daprd words it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    #[error("error invoking output binding {0}: couldn't find output binding {0}")]
    UnknownBinding(String),
    #[error(
        "binding {binding} does not support operation {operation}. supported operations:{CREATE}"
    )]
    UnsupportedOperation { binding: String, operation: String },
}

/// The runtime API's shared state: the queues and the token callers must present.
#[derive(Debug, Clone)]
pub struct Runtime {
    broker: Arc<Broker>,
    api_token: Option<ApiToken>,
}

impl Runtime {
    pub fn new(broker: Arc<Broker>, api_token: Option<ApiToken>) -> Self {
        Self { broker, api_token }
    }

    /// Checks `dapr-api-token` when a token is configured, in constant time.
    pub fn authorize(&self, presented: Option<&[u8]>) -> Result<(), Status> {
        let Some(expected) = &self.api_token else {
            return Ok(());
        };
        match presented {
            Some(token) if expected.matches(token) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "authentication error: api token mismatch",
            )),
            None => Err(Status::unauthenticated(
                "authentication error: missing api token",
            )),
        }
    }

    /// Enqueues one message on `binding`'s queue; returns its id. Shared by gRPC and HTTP.
    pub fn invoke(
        &self,
        binding: &str,
        operation: &str,
        data: Vec<u8>,
        properties: HashMap<String, String>,
        trace: Option<TraceParent>,
    ) -> Result<String, InvokeError> {
        let queue = self
            .broker
            .queue(binding)
            .ok_or_else(|| InvokeError::UnknownBinding(binding.to_owned()))?;
        if operation != CREATE {
            return Err(InvokeError::UnsupportedOperation {
                binding: binding.to_owned(),
                operation: operation.to_owned(),
            });
        }
        let trace_id = trace.map(|tp| tp.trace_id().to_owned());
        let id = queue.send(data, properties, trace_id);
        debug!(binding, id, "message enqueued");
        Ok(id)
    }
}

fn traceparent(metadata: &MetadataMap) -> Option<TraceParent> {
    metadata
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
}

#[tonic::async_trait]
impl BindingHandler for Runtime {
    async fn invoke_binding(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        self.authorize(
            request
                .metadata()
                .get("dapr-api-token")
                .map(|v| v.as_bytes()),
        )?;
        let trace = traceparent(request.metadata());
        let InvokeBindingRequest {
            name,
            data,
            metadata,
            operation,
        } = request.into_inner();
        self.invoke(&name, &operation, data, metadata, trace)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(InvokeBindingResponse::default()))
    }
}
