//! gRPC-shaped local replies: a gRPC client cannot read a problem+json body, so an answer a
//! layer generates itself (a [`Rejection`]) is turned into a trailers-only gRPC response — status
//! `200`, `content-type: application/grpc`, `grpc-status` and `grpc-message`, no body — as the
//! gRPC over HTTP/2 protocol describes.
//!
//! ```
//! use gateway_core::{Problem, RejectReason, ResponseFlags, grpc};
//! use http::{Request, StatusCode};
//!
//! let req = Request::post("/pkg.Service/Method")
//!     .header("content-type", "application/grpc+proto")
//!     .body(())
//!     .unwrap();
//! assert!(grpc::is_grpc(&req));
//! let refused: http::Response<String> = Problem::new(StatusCode::TOO_MANY_REQUESTS)
//!     .detail("rate limit exceeded")
//!     .reason(RejectReason::RateLimited, ResponseFlags::RATE_LIMITED)
//!     .into_response();
//! let res = grpc::local_reply(refused);
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED
//! assert_eq!(res.headers()["grpc-message"], "rate%20limit%20exceeded");
//! assert!(res.body().is_empty());
//! ```

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::{RejectReason, Rejection};

/// Whether the request is gRPC (`content-type: application/grpc` or `application/grpc+…`;
/// gRPC-Web is not).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// The gRPC status code for a rejection: the one that says what happened (`RESOURCE_EXHAUSTED`
/// for a rate limit, `DEADLINE_EXCEEDED` for a timeout), else the gRPC spec's mapping of the HTTP
/// status.
pub fn status_code(reason: Option<RejectReason>, status: StatusCode) -> u8 {
    match reason {
        Some(RejectReason::Unauthenticated) => 16,
        Some(RejectReason::Forbidden) => 7,
        Some(RejectReason::NoRoute) => 12,
        Some(
            RejectReason::RateLimited
            | RejectReason::PayloadTooLarge
            | RejectReason::HeadersTooLarge
            | RejectReason::UriTooLong,
        ) => 8,
        Some(RejectReason::UpstreamTimeout) => 4,
        Some(
            RejectReason::NoHealthyUpstream
            | RejectReason::UpstreamConnect
            | RejectReason::UpstreamProtocol
            | RejectReason::CircuitOpen
            | RejectReason::Overloaded
            | RejectReason::ShuttingDown
            | RejectReason::DependencyFailed,
        ) => 14,
        Some(RejectReason::BadRequest | RejectReason::TransformFailed) => 13,
        Some(RejectReason::Sunset) => 12,
        Some(RejectReason::ValidationFailed) => 3,
        None => match status.as_u16() {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502..=504 => 14,
            _ => 2,
        },
    }
}

/// The `detail` of a [`crate::Problem`] response, in its extensions (so a gRPC reply can carry it
/// without parsing the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemDetail(pub String);

/// Turns a locally generated error response into a trailers-only gRPC response; a success is
/// returned as it is. Headers such as `Retry-After`, `WWW-Authenticate` and rate-limit headers
/// are kept; `grpc-message` is the problem's detail ([`ProblemDetail`], percent-encoded), or the
/// status's reason phrase.
pub fn local_reply<B: Default>(res: Response<B>) -> Response<B> {
    if res.status().is_success() {
        return res;
    }
    let reason = res.extensions().get::<Rejection>().map(|r| r.reason);
    let code = status_code(reason, res.status());
    let message = res.extensions().get::<ProblemDetail>().map_or_else(
        || {
            res.status()
                .canonical_reason()
                .unwrap_or("error")
                .to_owned()
        },
        |d| d.0.clone(),
    );
    let (mut parts, _) = res.into_parts();
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        parts.headers.insert("grpc-message", v);
    }
    Response::from_parts(parts, B::default())
}

/// gRPC's `grpc-message` encoding: percent-encode everything outside printable ASCII, and `%`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' && b != b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Problem, ResponseFlags};

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%é"), "a%20b%25%C3%A9");
        assert_eq!(percent_encode("line\nbreak"), "line%0Abreak");
    }

    #[test]
    fn reasons_map_to_the_codes_that_say_what_happened() {
        for (reason, code) in [
            (RejectReason::Unauthenticated, 16),
            (RejectReason::Forbidden, 7),
            (RejectReason::NoRoute, 12),
            (RejectReason::UpstreamTimeout, 4),
            (RejectReason::CircuitOpen, 14),
            (RejectReason::PayloadTooLarge, 8),
        ] {
            let res: Response<String> = Problem::new(StatusCode::BAD_GATEWAY)
                .detail("say \"why\"\n")
                .reason(reason, ResponseFlags::empty())
                .into_response();
            let res = local_reply(res);
            assert_eq!(res.headers()["grpc-status"], code.to_string().as_str());
            assert_eq!(res.headers()["grpc-message"], "say%20\"why\"%0A");
            assert_eq!(res.headers()["content-type"], "application/grpc");
        }
        let ok = Response::new(String::from("x"));
        let plain = local_reply(Response::builder().status(503).body(String::new()).unwrap());
        assert_eq!(plain.headers()["grpc-status"], "14");
        assert_eq!(plain.headers()["grpc-message"], "Service%20Unavailable");
        assert_eq!(local_reply(ok).body(), "x", "successes pass through");
        assert_eq!(status_code(None, StatusCode::IM_A_TEAPOT), 2);
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let is = |ct: &str| {
            is_grpc(
                &Request::post("/")
                    .header("content-type", ct)
                    .body(())
                    .unwrap(),
            )
        };
        assert!(is("application/grpc"));
        assert!(is("Application/gRPC+proto"));
        assert!(!is("application/grpc-web"));
        assert!(!is("application/json"));
    }
}
