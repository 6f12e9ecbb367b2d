//! The server side of the one Dapr runtime call bindings need: `dapr.proto.runtime.v1.Dapr/InvokeBinding`.
//!
//! The generated `Dapr` server trait has ~90 methods and no defaults, so instead of stubbing them
//! all, [`DaprRuntimeServer`] routes by path: `InvokeBinding` goes to a [`BindingHandler`] with the
//! `dapr` crate's generated message types and prost codec (so the wire format is Dapr's own), and
//! every other method answers UNIMPLEMENTED, as a daprd without that building block would.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, task::Poll};

use tonic::{Request, Response, Status, body::Body, server::NamedService};

use crate::dapr_v1::{InvokeBindingRequest, InvokeBindingResponse};

/// gRPC path of `InvokeBinding`.
pub const INVOKE_BINDING_PATH: &str = "/dapr.proto.runtime.v1.Dapr/InvokeBinding";

/// What a sidecar does with an output binding call.
#[tonic::async_trait]
pub trait BindingHandler: Send + Sync + 'static {
    /// Handles one `InvokeBinding`; request metadata carries `dapr-api-token` and `traceparent`.
    async fn invoke_binding(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status>;
}

/// A `dapr.proto.runtime.v1.Dapr` service that serves `InvokeBinding` only.
#[derive(Debug)]
pub struct DaprRuntimeServer<H> {
    handler: Arc<H>,
}

impl<H> DaprRuntimeServer<H> {
    /// Serves `handler` as the sidecar's binding API.
    pub fn new(handler: H) -> Self {
        Self::from_arc(Arc::new(handler))
    }

    /// Like [`new`](Self::new), sharing a handler the caller keeps a handle on.
    pub fn from_arc(handler: Arc<H>) -> Self {
        Self { handler }
    }
}

impl<H> Clone for DaprRuntimeServer<H> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
        }
    }
}

impl<H> NamedService for DaprRuntimeServer<H> {
    const NAME: &'static str = "dapr.proto.runtime.v1.Dapr";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<H: BindingHandler> tower::Service<http::Request<Body>> for DaprRuntimeServer<H> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == INVOKE_BINDING_PATH {
            let method = InvokeBindingMethod(Arc::clone(&self.handler));
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            })
        } else {
            let status = Status::unimplemented(format!(
                "{} is not served by this sidecar",
                req.uri().path()
            ));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}

struct InvokeBindingMethod<H>(Arc<H>);

impl<H: BindingHandler> tonic::server::UnaryService<InvokeBindingRequest>
    for InvokeBindingMethod<H>
{
    type Response = InvokeBindingResponse;
    type Future = BoxFuture<Result<Response<InvokeBindingResponse>, Status>>;

    fn call(&mut self, request: Request<InvokeBindingRequest>) -> Self::Future {
        let handler = Arc::clone(&self.0);
        Box::pin(async move { handler.invoke_binding(request).await })
    }
}
