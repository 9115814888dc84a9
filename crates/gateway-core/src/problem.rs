use std::fmt::{self, Write as _};

use http::{HeaderValue, Response, StatusCode, header};

/// The media type of an RFC 9457 problem details body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a layer answered a request itself instead of passing it on.
///
/// Carried in a [`Rejection`] in the response extensions, so logging and metrics can label a
/// response without parsing its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The request was malformed (bad path encoding, bad header).
    BadRequest,
    /// No route matched.
    NoRoute,
    /// Authentication failed or was missing.
    Unauthenticated,
    /// The caller is authenticated but not allowed.
    Forbidden,
    /// A rate limit or quota was exceeded.
    RateLimited,
    /// The request body was larger than allowed.
    PayloadTooLarge,
    /// The request headers were larger or more numerous than allowed.
    HeadersTooLarge,
    /// The request target was longer than allowed.
    UriTooLong,
    /// No healthy upstream endpoint was available.
    NoHealthyUpstream,
    /// Connecting to the upstream failed.
    UpstreamConnect,
    /// The upstream broke the protocol or reset the connection.
    UpstreamProtocol,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A circuit breaker is open.
    CircuitOpen,
    /// A concurrency limit or bulkhead is full.
    Overloaded,
    /// The gateway is shutting down.
    ShuttingDown,
    /// A dependency the decision needs (a rate-limit store, a key set) failed and its policy is
    /// to fail closed.
    DependencyFailed,
    /// The API version is past its sunset (`410 Gone`).
    Sunset,
    /// A configured transform could not be applied safely (a templated header value would
    /// have contained CR, LF or NUL).
    TransformFailed,
    /// The request does not match the route's schema or API description.
    ValidationFailed,
}

impl RejectReason {
    /// A short, stable, lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NoRoute => "no_route",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::CircuitOpen => "circuit_open",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::DependencyFailed => "dependency_failed",
            Self::Sunset => "sunset",
            Self::TransformFailed => "transform_failed",
            Self::ValidationFailed => "validation_failed",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Response flags in the spirit of Envoy's: short codes saying what happened to a request.
///
/// A set of flags; [`Display`](fmt::Display) writes them comma-separated (`UF,URX`), or `-` when
/// empty, as in an access log.
///
/// # Example
///
/// ```
/// use gateway_core::ResponseFlags;
///
/// let flags = ResponseFlags::UPSTREAM_TIMEOUT | ResponseFlags::RATE_LIMITED;
/// assert!(flags.contains(ResponseFlags::UPSTREAM_TIMEOUT));
/// assert_eq!(flags.to_string(), "UT,RL");
/// assert_eq!(ResponseFlags::empty().to_string(), "-");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $code:literal;)*) => {
        impl ResponseFlags {
            $($(#[$doc])* pub const $name: Self = Self(1 << $bit);)*
            const CODES: &'static [(Self, &'static str)] = &[$((Self::$name, $code),)*];
        }
    };
}

flags! {
    /// `UH`: no healthy upstream endpoint.
    NO_HEALTHY_UPSTREAM = 0, "UH";
    /// `UF`: connecting to the upstream failed.
    UPSTREAM_CONNECTION_FAILURE = 1, "UF";
    /// `UO`: upstream overflow (circuit breaker open, bulkhead full).
    UPSTREAM_OVERFLOW = 2, "UO";
    /// `NR`: no route matched.
    NO_ROUTE = 3, "NR";
    /// `UT`: the upstream timed out.
    UPSTREAM_TIMEOUT = 4, "UT";
    /// `UC`: the upstream connection was terminated.
    UPSTREAM_CONNECTION_TERMINATION = 5, "UC";
    /// `UPE`: the upstream broke the HTTP protocol.
    UPSTREAM_PROTOCOL_ERROR = 6, "UPE";
    /// `RL`: rate limited locally.
    RATE_LIMITED = 7, "RL";
    /// `UAEX`: an authorization service denied the request.
    UNAUTHORIZED = 8, "UAEX";
    /// `DPE`: the downstream request broke the protocol or the gateway's limits.
    DOWNSTREAM_PROTOCOL_ERROR = 9, "DPE";
    /// `URX`: the retry limit was reached.
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 10, "URX";
    /// `DC`: the downstream connection was terminated.
    DOWNSTREAM_CONNECTION_TERMINATION = 11, "DC";
    /// `RLSE`: the rate-limit store failed (and the policy was to refuse).
    RATE_LIMIT_SERVICE_ERROR = 12, "RLSE";
}

impl ResponseFlags {
    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Self::CODES {
            if self.contains(*flag) {
                if !first {
                    f.write_char(',')?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

/// Response extension saying that a layer answered the request itself, and why.
///
/// [`Problem::into_response`] inserts one; observability layers read it to label metrics and
/// logs, and the failure classifier reads its flags to tell a timeout from a connect error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The reason.
    pub reason: RejectReason,
    /// The response flags.
    pub flags: ResponseFlags,
}

/// An RFC 9457 problem details response under construction.
///
/// The body is `application/problem+json` with `type`, `title`, `status` and, when set, `detail`,
/// `instance` and extension members. Strings are JSON-escaped; nothing from the request is echoed
/// unless the caller puts it in `detail`, so keep credentials out of it.
///
/// # Example
///
/// ```
/// use gateway_core::{Problem, RejectReason, Rejection, ResponseFlags};
/// use http::StatusCode;
///
/// let res: http::Response<String> = Problem::new(StatusCode::TOO_MANY_REQUESTS)
///     .detail("rate limit of 10/s exceeded")
///     .extension("retry_after", 3)
///     .reason(RejectReason::RateLimited, ResponseFlags::RATE_LIMITED)
///     .into_response();
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// assert_eq!(
///     res.body(),
///     r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"rate limit of 10/s exceeded","retry_after":3}"#
/// );
/// let rejection = res.extensions().get::<Rejection>().unwrap();
/// assert_eq!(rejection.reason, RejectReason::RateLimited);
/// ```
#[derive(Clone, Debug)]
pub struct Problem {
    status: StatusCode,
    type_uri: &'static str,
    title: Option<String>,
    detail: Option<String>,
    instance: Option<String>,
    extensions: Vec<(String, ExtValue)>,
    rejection: Option<Rejection>,
}

#[derive(Clone, Debug)]
enum ExtValue {
    Str(String),
    Int(i64),
    Raw(String),
}

/// A value that can be an extension member of a [`Problem`].
pub trait ProblemValue: sealed::Sealed {
    #[doc(hidden)]
    fn into_ext(self) -> ExtValueRepr;
}

#[doc(hidden)]
#[derive(Debug)]
pub struct ExtValueRepr(ExtValue);

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for &str {}
impl ProblemValue for &str {
    fn into_ext(self) -> ExtValueRepr {
        ExtValueRepr(ExtValue::Str(self.to_owned()))
    }
}
impl sealed::Sealed for String {}
impl ProblemValue for String {
    fn into_ext(self) -> ExtValueRepr {
        ExtValueRepr(ExtValue::Str(self))
    }
}
macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl ProblemValue for $t {
            fn into_ext(self) -> ExtValueRepr {
                ExtValueRepr(ExtValue::Int(i64::try_from(self).unwrap_or(i64::MAX)))
            }
        }
    )*};
}
int_value!(i32, i64, u16, u32, u64, usize);

impl Problem {
    /// A problem with `status`; the title defaults to the status's canonical reason.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            type_uri: "about:blank",
            title: None,
            detail: None,
            instance: None,
            extensions: Vec::new(),
            rejection: None,
        }
    }

    /// Sets the `type` URI (default `about:blank`).
    #[must_use]
    pub fn type_uri(mut self, type_uri: &'static str) -> Self {
        self.type_uri = type_uri;
        self
    }

    /// Sets the `title`.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets the `detail`: a human-readable explanation of this occurrence.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the `instance` URI.
    #[must_use]
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// Adds an extension member with a string or integer value.
    #[must_use]
    pub fn extension(mut self, name: impl Into<String>, value: impl ProblemValue) -> Self {
        self.extensions.push((name.into(), value.into_ext().0));
        self
    }

    /// Adds an extension member whose value is already-serialized JSON (an array of validation
    /// errors, say). The caller guarantees `json` is valid JSON.
    #[must_use]
    pub fn extension_json(mut self, name: impl Into<String>, json: impl Into<String>) -> Self {
        self.extensions
            .push((name.into(), ExtValue::Raw(json.into())));
        self
    }

    /// Records why the response was generated; see [`Rejection`].
    #[must_use]
    pub fn reason(mut self, reason: RejectReason, flags: ResponseFlags) -> Self {
        self.rejection = Some(Rejection { reason, flags });
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The serialized JSON body.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push_str("{\"type\":");
        push_json_str(&mut out, self.type_uri);
        out.push_str(",\"title\":");
        let title = self
            .title
            .as_deref()
            .or_else(|| self.status.canonical_reason())
            .unwrap_or("Error");
        push_json_str(&mut out, title);
        let _ = write!(out, ",\"status\":{}", self.status.as_u16());
        if let Some(detail) = &self.detail {
            out.push_str(",\"detail\":");
            push_json_str(&mut out, detail);
        }
        if let Some(instance) = &self.instance {
            out.push_str(",\"instance\":");
            push_json_str(&mut out, instance);
        }
        for (name, value) in &self.extensions {
            out.push(',');
            push_json_str(&mut out, name);
            out.push(':');
            match value {
                ExtValue::Str(s) => push_json_str(&mut out, s),
                ExtValue::Int(i) => {
                    let _ = write!(out, "{i}");
                }
                ExtValue::Raw(raw) => out.push_str(raw),
            }
        }
        out.push('}');
        out
    }

    /// Builds the response: status, `content-type: application/problem+json`, the JSON body, the
    /// [`Rejection`] extension when a reason was set and the
    /// [`ProblemDetail`](crate::grpc::ProblemDetail) extension when a detail was.
    pub fn into_response<B: From<String>>(self) -> Response<B> {
        let mut res = Response::new(B::from(self.to_json()));
        *res.status_mut() = self.status;
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(rejection) = self.rejection {
            res.extensions_mut().insert(rejection);
        }
        if let Some(detail) = self.detail {
            res.extensions_mut()
                .insert(crate::grpc::ProblemDetail(detail));
        }
        res
    }
}

/// Appends `s` as a JSON string literal, escaping quotes, backslashes and control characters.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings_so_the_body_stays_json() {
        let p = Problem::new(StatusCode::BAD_REQUEST).detail("a \"quoted\"\\ \n\u{1} value");
        assert_eq!(
            p.to_json(),
            r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"a \"quoted\"\\ \n\u0001 value"}"#
        );
    }

    #[test]
    fn raw_extensions_and_instance_are_written() {
        let p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
            .type_uri("https://example.com/validation")
            .title("Invalid body")
            .instance("/orders/1")
            .extension_json("errors", r#"[{"path":"/a"}]"#);
        assert_eq!(
            p.to_json(),
            r#"{"type":"https://example.com/validation","title":"Invalid body","status":422,"instance":"/orders/1","errors":[{"path":"/a"}]}"#
        );
    }

    #[test]
    fn no_reason_means_no_rejection_extension() {
        let res: Response<String> = Problem::new(StatusCode::NOT_FOUND).into_response();
        assert!(res.extensions().get::<Rejection>().is_none());
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn flags_display_in_declaration_order() {
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED | ResponseFlags::NO_HEALTHY_UPSTREAM;
        assert_eq!(f.to_string(), "UH,URX");
        assert_eq!(format!("{f:?}"), "ResponseFlags(UH,URX)");
    }
}
