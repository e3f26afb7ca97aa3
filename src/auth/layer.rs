//! The tower layer in front of every gRPC service: authenticates the caller, checks the method
//! is allowed to it, and hands the `Principal` to the handler in the request's extensions. A
//! refused call never reaches a handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{Authenticator, Need, need};

#[derive(Clone)]
pub struct Layer {
    auth: Arc<Authenticator>,
}

impl Layer {
    pub fn new(auth: Authenticator) -> Layer {
        Layer {
            auth: Arc::new(auth),
        }
    }
}

impl<S> tower::Layer<S> for Layer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl<S> tower::Service<Request> for Guard<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let needed = need(&path);
            if needed == Need::Nothing {
                return inner.call(request).await;
            }
            let bearer = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(bearer);
            let certs = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs());
            let certificate = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
            let admitted = auth
                .authenticate(bearer.as_deref(), certificate)
                .await
                .and_then(|principal| {
                    principal.check(needed, &path)?;
                    Ok(principal)
                });
            match admitted {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(e) => {
                    tracing::debug!(path, error = %e, "refused");
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}

/// The credential in an `authorization` value: `Bearer <token>` (the scheme in any case), or
/// the bare token.
fn bearer(value: &str) -> String {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_string(),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_optional() {
        assert_eq!(super::bearer("Bearer cvk_a_b"), "cvk_a_b");
        assert_eq!(super::bearer("bearer  cvk_a_b "), "cvk_a_b");
        assert_eq!(super::bearer("cvk_a_b"), "cvk_a_b");
    }
}
