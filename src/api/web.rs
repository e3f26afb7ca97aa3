//! What browsers get: the CORS policy in front of gRPC-Web (tonic-web translates gRPC-Web to
//! gRPC on the same port). Only configured origins are answered with CORS headers; a page from
//! any other origin is refused by its own browser.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a gRPC-Web or Connect client sends, and what Conveyor reads.
const ALLOW_HEADERS: [&str; 13] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
    "authorization",
    "traceparent",
    "tracestate",
];

/// Response headers a page's script may read: the call's outcome.
const EXPOSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// The CORS layer for `origins` (exact origins like `https://app.example.com`, or `*`).
pub fn cors(origins: &[String]) -> Result<CorsLayer, String> {
    let allow = match origins {
        [any] if any == "*" => AllowOrigin::any(),
        _ => {
            let mut list = Vec::with_capacity(origins.len());
            for origin in origins {
                let parsed = url::Url::parse(origin)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/");
                if parsed.is_none() || origin.ends_with('/') {
                    return Err(format!(
                        "CONVEYOR_CORS_ORIGINS: {origin:?} is not an origin like https://app.example.com"
                    ));
                }
                list.push(HeaderValue::from_str(origin).map_err(|e| e.to_string())?);
            }
            AllowOrigin::list(list)
        }
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|h| HeaderName::from_static(h))
            .collect::<Vec<_>>()
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(names(&ALLOW_HEADERS))
        .expose_headers(names(&EXPOSE_HEADERS))
        .max_age(Duration::from_secs(24 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_or_a_star() {
        assert!(cors(&[]).is_ok());
        assert!(cors(&["*".into()]).is_ok());
        assert!(
            cors(&[
                "https://app.example.com".into(),
                "http://localhost:5173".into()
            ])
            .is_ok()
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://a.com/path",
            "ftp://a.com",
        ] {
            assert!(cors(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
