//! The metadata cap (`CONVEYOR_MAX_METADATA`) for HTTP/1.1 requests (gRPC-Web): HTTP/2 requests
//! are held to it by the transport (SETTINGS_MAX_HEADER_LIST_SIZE), HTTP/1.1 ones here, counted
//! the same way (each header's name and value plus 32 bytes, RFC 9113 §6.5.2) and refused with
//! HTTP 431 before any other layer sees them.

use http::{StatusCode, Version};
use tonic::body::Body;

use super::intercept::{self, Request, Response};

/// The layer holding HTTP/1.1 requests to `max` bytes of headers.
pub fn layer(max: u32) -> intercept::Layer<impl Fn(&Request) -> Option<Response> + Clone> {
    let max = max as usize;
    intercept::Layer(move |request: &Request| {
        (request.version() < Version::HTTP_2 && list_size(request) > max).then(|| {
            let mut response = http::Response::new(Body::empty());
            *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            response
        })
    })
}

/// The size HTTP/2 accounts a header list at.
fn list_size(request: &Request) -> usize {
    let headers = request.headers().iter();
    headers.map(|(n, v)| n.as_str().len() + v.len() + 32).sum()
}
