//! The dashboard: a static page (built from `clients/typescript/dashboard`, embedded at compile
//! time) served on the gRPC port, so its gRPC-Web calls are same-origin and need no CORS. The
//! page holds no secrets: its calls carry the credential the user types, and are authenticated
//! like any other.

use http::{HeaderValue, Method, StatusCode, header};
use tonic::body::Body;

use super::intercept::{self, Request, Response};

const ROOT: &str = "/dashboard/";

/// The page's files: path, content type, bytes.
const FILES: [(&str, &str, &str); 3] = [
    (
        "/dashboard/",
        "text/html; charset=utf-8",
        include_str!("../../clients/typescript/dashboard/dist/index.html"),
    ),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/typescript/dashboard/dist/app.js"),
    ),
    (
        "/dashboard/app.css",
        "text/css; charset=utf-8",
        include_str!("../../clients/typescript/dashboard/dist/app.css"),
    ),
];

/// Answers GET and HEAD of the dashboard's paths (and `/`, which redirects to it); everything
/// else goes on to gRPC.
pub fn layer() -> intercept::Layer<fn(&Request) -> Option<Response>> {
    intercept::Layer(page)
}

/// The response for a dashboard request, or `None` for a request that is not one.
fn page(request: &Request) -> Option<Response> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    let path = request.uri().path();
    let mut response = if path == "/" || path == "/dashboard" {
        let mut r = http::Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(ROOT));
        r
    } else {
        let (_, content_type, text) = FILES.iter().find(|(p, _, _)| *p == path)?;
        let body = if request.method() == Method::HEAD {
            Body::empty()
        } else {
            Body::new(http_body_util::Full::new(bytes::Bytes::from_static(
                text.as_bytes(),
            )))
        };
        let mut r = http::Response::new(body);
        let headers = r.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        r
    };
    let headers = response.headers_mut();
    // Revalidated each time: a new server version brings a new page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page runs only its own script and talks only to this server.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(response)
}
