//! The server side of the Dapr runtime calls bindings need: `dapr.proto.runtime.v1.Dapr/InvokeBinding`,
//! and optionally `Dapr/GetMetadata`, which some SDKs call before their first real call.
//!
//! The generated `Dapr` server trait has ~90 methods and no defaults, so instead of stubbing them
//! all, [`DaprRuntimeServer`] routes by path: `InvokeBinding` goes to a [`BindingHandler`],
//! `GetMetadata` to a [`MetadataHandler`] when one is given, both with the `dapr` crate's generated
//! message types and prost codec (so the wire format is Dapr's own), and every other method
//! answers UNIMPLEMENTED, as a daprd without that building block would.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, task::Poll};

use tonic::{Request, Response, Status, body::Body, server::NamedService};

use crate::dapr_v1::{
    GetMetadataRequest, GetMetadataResponse, InvokeBindingRequest, InvokeBindingResponse,
};

/// gRPC path of `InvokeBinding`.
pub const INVOKE_BINDING_PATH: &str = "/dapr.proto.runtime.v1.Dapr/InvokeBinding";
/// gRPC path of `GetMetadata`.
pub const GET_METADATA_PATH: &str = "/dapr.proto.runtime.v1.Dapr/GetMetadata";

/// What a sidecar does with an output binding call.
#[tonic::async_trait]
pub trait BindingHandler: Send + Sync + 'static {
    /// Handles one `InvokeBinding`; request metadata carries `dapr-api-token` and `traceparent`.
    async fn invoke_binding(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status>;
}

/// What a sidecar answers to the metadata API.
#[tonic::async_trait]
pub trait MetadataHandler: Send + Sync + 'static {
    /// Handles one `GetMetadata`; request metadata carries `dapr-api-token`.
    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status>;
}

/// A `dapr.proto.runtime.v1.Dapr` service that serves `InvokeBinding`, and `GetMetadata` when
/// given a [`MetadataHandler`].
pub struct DaprRuntimeServer<H> {
    handler: Arc<H>,
    metadata: Option<Arc<dyn MetadataHandler>>,
}

impl<H> DaprRuntimeServer<H> {
    /// Serves `handler` as the sidecar's binding API.
    pub fn new(handler: H) -> Self {
        Self::from_arc(Arc::new(handler))
    }

    /// Like [`new`](Self::new), sharing a handler the caller keeps a handle on.
    pub fn from_arc(handler: Arc<H>) -> Self {
        Self {
            handler,
            metadata: None,
        }
    }

    /// Also serves `GetMetadata`, with `metadata`.
    pub fn with_metadata(mut self, metadata: Arc<dyn MetadataHandler>) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

impl<H> std::fmt::Debug for DaprRuntimeServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaprRuntimeServer")
            .field("metadata", &self.metadata.is_some())
            .finish_non_exhaustive()
    }
}

impl<H> Clone for DaprRuntimeServer<H> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
            metadata: self.metadata.clone(),
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
        let path = req.uri().path();
        if path == INVOKE_BINDING_PATH {
            let method = InvokeBindingMethod(Arc::clone(&self.handler));
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            })
        } else if let Some(metadata) = self.metadata.as_ref().filter(|_| path == GET_METADATA_PATH)
        {
            let method = GetMetadataMethod(Arc::clone(metadata));
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

struct GetMetadataMethod(Arc<dyn MetadataHandler>);

impl tonic::server::UnaryService<GetMetadataRequest> for GetMetadataMethod {
    type Response = GetMetadataResponse;
    type Future = BoxFuture<Result<Response<GetMetadataResponse>, Status>>;

    fn call(&mut self, request: Request<GetMetadataRequest>) -> Self::Future {
        let handler = Arc::clone(&self.0);
        Box::pin(async move { handler.get_metadata(request).await })
    }
}
