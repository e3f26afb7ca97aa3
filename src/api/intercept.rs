//! A layer that answers some requests itself, before any other layer: a function looks at each
//! request and gives the response for the ones it takes (the dashboard's page, a request over the
//! metadata cap); the rest go on.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::body::Body;

pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;

#[derive(Clone)]
pub struct Layer<F>(pub F);

impl<S, F: Clone> tower::Layer<S> for Layer<F> {
    type Service = Intercept<S, F>;

    fn layer(&self, inner: S) -> Intercept<S, F> {
        Intercept {
            inner,
            answer: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Intercept<S, F> {
    inner: S,
    answer: F,
}

impl<S, F> tower::Service<Request> for Intercept<S, F>
where
    S: tower::Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    F: Fn(&Request) -> Option<Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match (self.answer)(&request) {
            Some(response) => Box::pin(async move { Ok(response) }),
            None => Box::pin(self.inner.call(request)),
        }
    }
}
