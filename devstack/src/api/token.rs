//! daprd's API token check, as one tower layer in front of the runtime gRPC API and of the HTTP
//! API's Dapr routes: with `DAPR_API_TOKEN` set, a request without that `dapr-api-token` is
//! refused before any handler runs, as daprd's `APITokenAuthMiddleware` and its gRPC interceptor
//! refuse it. Without a token, every request passes. The health routes (and devstack's own) are
//! not behind it, as daprd exempts its health routes.

use std::{
    future::{Ready, ready},
    task::{Context, Poll},
};

use axum::{Json, response::IntoResponse};
use futures::future::Either;
use http::{Request, Response, StatusCode};
use pipeline::api_token::{ApiToken, TokenError};
use serde_json::json;
use tonic::server::NamedService;
use tower::{Layer, Service};

/// How a refused request is answered, in its protocol.
pub trait Refusal: Clone + Send + Sync + 'static {
    type Body;
    fn refuse(&self, error: TokenError) -> Response<Self::Body>;
}

/// gRPC: UNAUTHENTICATED, worded as daprd words it.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRefusal;

impl Refusal for GrpcRefusal {
    type Body = tonic::body::Body;

    fn refuse(&self, error: TokenError) -> Response<Self::Body> {
        tonic::Status::unauthenticated(error.to_string()).into_http()
    }
}

/// HTTP: 401 with a JSON error.
#[derive(Debug, Clone, Copy)]
pub struct HttpRefusal;

impl Refusal for HttpRefusal {
    type Body = axum::body::Body;

    fn refuse(&self, _error: TokenError) -> Response<Self::Body> {
        let body = Json(json!({ "error": "invalid api token" }));
        (StatusCode::UNAUTHORIZED, body).into_response()
    }
}

/// Wraps a service in [`RequireApiToken`].
#[derive(Debug, Clone)]
pub struct ApiTokenLayer<R> {
    token: Option<ApiToken>,
    refusal: R,
}

impl<R> ApiTokenLayer<R> {
    /// Requires `token` (nothing when `None`), answering a refused request with `refusal`.
    pub fn new(token: Option<ApiToken>, refusal: R) -> Self {
        Self { token, refusal }
    }
}

impl<S, R: Clone> Layer<S> for ApiTokenLayer<R> {
    type Service = RequireApiToken<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireApiToken {
            inner,
            token: self.token.clone(),
            refusal: self.refusal.clone(),
        }
    }
}

/// A service that passes a request on only with the right `dapr-api-token`.
#[derive(Debug, Clone)]
pub struct RequireApiToken<S, R> {
    inner: S,
    token: Option<ApiToken>,
    refusal: R,
}

impl<S, R, B> Service<Request<B>> for RequireApiToken<S, R>
where
    S: Service<Request<B>, Response = Response<R::Body>>,
    R: Refusal,
{
    type Response = Response<R::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let checked = self
            .token
            .as_ref()
            .map_or(Ok(()), |token| token.check(request.headers()));
        match checked {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => Either::Left(ready(Ok(self.refusal.refuse(error)))),
        }
    }
}

/// The wrapped gRPC service keeps its name, by which tonic routes to it.
impl<S: NamedService, R> NamedService for RequireApiToken<S, R> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    fn token() -> Option<ApiToken> {
        Some(ApiToken::from_config("s3cret").unwrap())
    }

    async fn answer(token: Option<ApiToken>, presented: Option<&str>) -> StatusCode {
        let inner = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let service = ApiTokenLayer::new(token, HttpRefusal).layer(inner);
        let mut request = Request::builder().uri("/v1.0/metadata");
        if let Some(presented) = presented {
            request = request.header("dapr-api-token", presented);
        }
        let response = service
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        response.status()
    }

    #[tokio::test]
    async fn only_the_configured_token_passes_and_no_token_configured_passes_all() {
        assert_eq!(answer(token(), Some("s3cret")).await, StatusCode::OK);
        assert_eq!(answer(token(), None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer(token(), Some("wrong")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(answer(None, None).await, StatusCode::OK);
    }

    #[test]
    fn a_refused_grpc_call_is_unauthenticated_in_daprds_words() {
        let response = GrpcRefusal.refuse(TokenError::Mismatch);
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "authentication error: api token mismatch");
    }
}
