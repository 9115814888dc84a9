use std::error::Error as StdError;

use http::{Extensions, HeaderMap, StatusCode};

use crate::{Rejection, ResponseFlags};

/// What kind of failure a response or error was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// A server error status (5xx) from the upstream.
    Status(StatusCode),
    /// `429 Too Many Requests` (a failure only when the classifier says so).
    RateLimited,
    /// The upstream did not answer in time.
    Timeout,
    /// The connection to the upstream could not be made.
    Connect,
    /// The upstream broke the protocol or reset the connection.
    Protocol,
    /// Any other error.
    Other,
}

impl FailureKind {
    /// A short, stable, lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Protocol => "protocol",
            Self::Other => "other",
        }
    }
}

/// Decides whether a response or an error counts as a failure.
///
/// One classification shared by circuit breakers, retries, outlier detection and metrics, so they
/// agree on what "failed" means. [`DefaultClassifier`] covers the usual policy; a closure
/// `Fn(StatusCode, &HeaderMap, &Extensions) -> Option<FailureKind>` is a classifier too.
///
/// # Example
///
/// ```
/// use gateway_core::{ClassifyFailure, DefaultClassifier, FailureKind};
/// use http::{Extensions, HeaderMap, StatusCode};
///
/// let classify = DefaultClassifier::new();
/// let (h, e) = (HeaderMap::new(), Extensions::new());
/// assert_eq!(classify.classify_response(StatusCode::OK, &h, &e), None);
/// assert_eq!(
///     classify.classify_response(StatusCode::BAD_GATEWAY, &h, &e),
///     Some(FailureKind::Status(StatusCode::BAD_GATEWAY))
/// );
/// // 429 is a success unless asked for: a rate-limited backend is healthy.
/// assert_eq!(classify.classify_response(StatusCode::TOO_MANY_REQUESTS, &h, &e), None);
/// let strict = DefaultClassifier::new().rate_limited_is_failure(true);
/// assert_eq!(
///     strict.classify_response(StatusCode::TOO_MANY_REQUESTS, &h, &e),
///     Some(FailureKind::RateLimited)
/// );
///
/// // Closures work as classifiers.
/// let only_503 = |s: StatusCode, _: &HeaderMap, _: &Extensions| {
///     (s == StatusCode::SERVICE_UNAVAILABLE).then_some(FailureKind::Status(s))
/// };
/// assert_eq!(only_503.classify_response(StatusCode::BAD_GATEWAY, &h, &e), None);
/// ```
pub trait ClassifyFailure {
    /// Classifies a response by status, headers and extensions (a [`Rejection`] made by the
    /// gateway itself says whether a 504 was a timeout or a 502 a connect error).
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Option<FailureKind>;

    /// Classifies an error returned instead of a response. Every error is a failure; the default
    /// looks for an [`std::io::Error`] in the source chain to tell timeouts and refused
    /// connections apart.
    fn classify_error(&self, error: &(dyn StdError + 'static)) -> FailureKind {
        classify_error_chain(error)
    }
}

impl<F> ClassifyFailure for F
where
    F: Fn(StatusCode, &HeaderMap, &Extensions) -> Option<FailureKind>,
{
    fn classify_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Option<FailureKind> {
        self(status, headers, extensions)
    }
}

/// The default failure policy: 5xx responses, timeouts, connect and protocol errors are failures;
/// `429` is one only when [`rate_limited_is_failure`](Self::rate_limited_is_failure) is set.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier {
    rate_limited: bool,
    ignore_501: bool,
}

impl DefaultClassifier {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `429 Too Many Requests` counts as a failure (default `false`).
    #[must_use]
    pub fn rate_limited_is_failure(mut self, yes: bool) -> Self {
        self.rate_limited = yes;
        self
    }

    /// Whether `501 Not Implemented` is ignored, since it describes the request rather than the
    /// server's health (default `false`).
    #[must_use]
    pub fn ignore_not_implemented(mut self, yes: bool) -> Self {
        self.ignore_501 = yes;
        self
    }
}

impl ClassifyFailure for DefaultClassifier {
    fn classify_response(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Option<FailureKind> {
        if let Some(rejection) = extensions.get::<Rejection>() {
            let flags = rejection.flags;
            if flags.contains(ResponseFlags::UPSTREAM_TIMEOUT) {
                return Some(FailureKind::Timeout);
            }
            if flags.contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE) {
                return Some(FailureKind::Connect);
            }
            if flags.contains(ResponseFlags::UPSTREAM_PROTOCOL_ERROR)
                || flags.contains(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION)
            {
                return Some(FailureKind::Protocol);
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return self.rate_limited.then_some(FailureKind::RateLimited);
        }
        if status.is_server_error() && !(self.ignore_501 && status == StatusCode::NOT_IMPLEMENTED) {
            return Some(FailureKind::Status(status));
        }
        None
    }
}

fn classify_error_chain(error: &(dyn StdError + 'static)) -> FailureKind {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::TimedOut => FailureKind::Timeout,
                K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable => {
                    FailureKind::Connect
                }
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    FailureKind::Protocol
                }
                _ => FailureKind::Other,
            };
        }
        current = err.source();
    }
    FailureKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectReason;

    #[test]
    fn gateway_rejections_classify_by_flag_not_status() {
        let c = DefaultClassifier::new();
        let mut ext = Extensions::new();
        ext.insert(Rejection {
            reason: RejectReason::UpstreamTimeout,
            flags: ResponseFlags::UPSTREAM_TIMEOUT,
        });
        assert_eq!(
            c.classify_response(StatusCode::GATEWAY_TIMEOUT, &HeaderMap::new(), &ext),
            Some(FailureKind::Timeout)
        );
        let mut ext = Extensions::new();
        ext.insert(Rejection {
            reason: RejectReason::UpstreamConnect,
            flags: ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        });
        assert_eq!(
            c.classify_response(StatusCode::BAD_GATEWAY, &HeaderMap::new(), &ext),
            Some(FailureKind::Connect)
        );
    }

    #[test]
    fn not_implemented_can_be_ignored() {
        let (h, e) = (HeaderMap::new(), Extensions::new());
        let c = DefaultClassifier::new().ignore_not_implemented(true);
        assert_eq!(
            c.classify_response(StatusCode::NOT_IMPLEMENTED, &h, &e),
            None
        );
        assert_eq!(
            DefaultClassifier::new().classify_response(StatusCode::NOT_IMPLEMENTED, &h, &e),
            Some(FailureKind::Status(StatusCode::NOT_IMPLEMENTED))
        );
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn errors_classify_through_the_source_chain() {
        let c = DefaultClassifier::new();
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(c.classify_error(&refused), FailureKind::Connect);
        let timeout = Wrapper(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(c.classify_error(&timeout), FailureKind::Timeout);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(c.classify_error(&reset), FailureKind::Protocol);
        let fmt_err = std::fmt::Error;
        assert_eq!(c.classify_error(&fmt_err), FailureKind::Other);
    }
}
