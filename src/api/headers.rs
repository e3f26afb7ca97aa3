//! The metadata cap (`CONVEYOR_MAX_METADATA`) for HTTP/1.1 requests (gRPC-Web): HTTP/2 requests
//! are held to it by the transport (SETTINGS_MAX_HEADER_LIST_SIZE), HTTP/1.1 ones here, counted
//! the same way (each header's name and value plus 32 bytes, RFC 9113 §6.5.2) and refused with
//! HTTP 431 before any other layer sees them.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{StatusCode, Version};
use tonic::body::Body;

#[derive(Clone, Copy)]
pub struct Layer {
    pub max: u32,
}

impl<S> tower::Layer<S> for Layer {
    type Service = Headers<S>;

    fn layer(&self, inner: S) -> Headers<S> {
        Headers {
            inner,
            max: self.max as usize,
        }
    }
}

#[derive(Clone)]
pub struct Headers<S> {
    inner: S,
    max: usize,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

/// The size HTTP/2 accounts a header list at.
fn list_size(request: &Request) -> usize {
    let headers = request.headers().iter();
    headers.map(|(n, v)| n.as_str().len() + v.len() + 32).sum()
}

impl<S> tower::Service<Request> for Headers<S>
where
    S: tower::Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.version() < Version::HTTP_2 && list_size(&request) > self.max {
            let mut response = http::Response::new(Body::empty());
            *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}
