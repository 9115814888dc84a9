//! Response aggregation: one request fanned out to several upstream calls at once, composed into
//! one JSON object with a named section per call.
//!
//! An [`Aggregate`] is a list of [`Part`]s (a JSON key, a timeout, whether it is required) and a
//! [`Policy`]. [`Aggregate::run`] starts every part's call at once through a closure the caller
//! supplies (so this module knows nothing of connections, routes or clients), bounds each part
//! by its own timeout (the body read included), and composes the answer:
//!
//! - every part succeeded: `200 application/json` with `{"<name>": <value>, ...}` in the order
//!   the parts were declared. A part succeeds when its status is 2xx, its `Content-Type` is
//!   JSON in UTF-8 ([`is_json_media_type`], [`json_charset_ok`]) without a `Content-Encoding`,
//!   and its body, read up to [`AggregateBuilder::max_body`] bytes, parses with
//!   [`parse_strict`] (duplicate keys, lone surrogates, lossy integers... refused).
//! - some optional parts failed under [`Policy::OmitFailed`]: the same `200`, without the failed
//!   sections, plus an [`ERRORS_KEY`] (`"_errors"`) section saying why, and
//!   [`Composed::partial`] set so the caller can add a header (`x-aggregate-partial: 1`) or keep
//!   the response out of a cache:
//!   `"_errors": {"orders": {"status": 504, "detail": "timed out after 1s"}}`.
//! - a part failed under [`Policy::FailWhole`], or a [`required`](Part::required) part failed
//!   under either policy: an RFC 9457 `application/problem+json` answer, `504 Gateway Timeout`
//!   when that part timed out and `502 Bad Gateway` otherwise, whose `detail` names the part and
//!   whose `errors` member has the same shape as `_errors`. The calls still running are dropped
//!   (cancelled) at once, not awaited.
//!
//! | part outcome ([`PartOutcome`]) | `status` | `detail` |
//! | --- | --- | --- |
//! | [`Timeout`](PartOutcome::Timeout) | 504 | `timed out after 1s` |
//! | [`Status`](PartOutcome::Status) | 502 | `upstream answered 500` |
//! | [`NotJson`](PartOutcome::NotJson) | 502 | `not JSON` |
//! | [`TooLarge`](PartOutcome::TooLarge) | 502 | `body over 1048576 bytes` |
//! | [`Invalid`](PartOutcome::Invalid) | 502 | `invalid JSON: duplicate key at line 1, column 9` |
//! | [`Transport`](PartOutcome::Transport) | 503 | `upstream call failed` |
//!
//! [`Composed::parts`] has every part's [`PartOutcome`] and how long it took, for logs and
//! metrics ([`PartOutcome::as_str`] is a stable label).
//!
//! Standards: RFC 8259 (JSON), RFC 9457 (problem details), RFC 9110 §15.6.3 and §15.6.5 (`502`,
//! `504`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use gateway_transform::aggregate::{Aggregate, Part, PartOutcome, Policy};
//! use http::{Response, header};
//! use http_body_util::{BodyExt, Full};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let aggregate = Aggregate::builder()
//!     .part(Part::new("user", Duration::from_secs(1)).required(true))
//!     .part(Part::new("orders", Duration::from_millis(500)))
//!     .policy(Policy::OmitFailed)
//!     .build()?;
//!
//! let composed = aggregate
//!     .run(|_index, part| {
//!         let name = part.name.clone();
//!         // A gateway sends the part's upstream request here; this one answers itself.
//!         async move {
//!             match name.as_str() {
//!                 "user" => Response::builder()
//!                     .header(header::CONTENT_TYPE, "application/json")
//!                     .body(Full::new(Bytes::from_static(br#"{"id": 7}"#))),
//!                 _ => Response::builder()
//!                     .status(500)
//!                     .body(Full::new(Bytes::from_static(b"stack trace"))),
//!             }
//!         }
//!     })
//!     .await;
//!
//! assert!(composed.partial);
//! assert_eq!(composed.parts[0].outcome, PartOutcome::Ok);
//! assert_eq!(composed.parts[1].outcome, PartOutcome::Status(500));
//! let res = composed.response;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["content-type"], "application/json");
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"user":{"id":7},"_errors":{"orders":{"status":502,"detail":"upstream answered 500"}}}"#
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # Security considerations
//!
//! - **Nothing upstream is echoed in errors.** `detail`s come from the fixed vocabulary above:
//!   no upstream body, no `Content-Type`, and no transport error text (which can name internal
//!   hosts and addresses); that text is kept in [`PartOutcome::Transport`] for logs only. A
//!   JSON error names its kind and position, never the offending key or token.
//! - **Parser differentials.** Part bodies are parsed strictly and the composed response is
//!   re-serialized from the parsed values, so the client reads exactly what was checked (object
//!   keys come out sorted, numbers in their shortest form). A `charset` other than UTF-8 or a
//!   `Content-Encoding` is refused rather than guessed at: send part requests with
//!   `accept-encoding: identity`, or decode before handing the response over.
//! - **Resources.** At most [`MAX_PARTS`] parts; each body is read up to `max_body` bytes (a
//!   declared length above it is refused before reading, a streamed body is cut at it), so one
//!   compose holds at most `parts × max_body` bytes of bodies, plus their parsed values (up to
//!   ~80 times the text for bodies of many small objects, see [`crate::json`]) and the composed
//!   output. Nesting is bounded by the default [`JsonLimits::max_depth`]. Every part has a
//!   timeout covering headers and body; a slow body cannot hold the compose open.
//! - **Cancellation.** Dropping the future [`Aggregate::run`] returns drops every call still
//!   running, as does a failure that fails the whole response.

use std::{
    fmt::{self, Write as _},
    future::{Future, poll_fn},
    pin::pin,
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::time::Instant;

use crate::json::{
    JsonError, JsonErrorKind, JsonLimits, is_json_media_type, json_charset_ok, parse_strict,
};

/// The most parts an [`Aggregate`] may have.
pub const MAX_PARTS: usize = 16;

/// The longest part name, in bytes (names are ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// The key of the section listing the parts omitted under [`Policy::OmitFailed`]; no part may
/// be named this.
pub const ERRORS_KEY: &str = "_errors";

/// The default [`AggregateBuilder::max_body`]: 1 MiB per part.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The longest transport error text kept in [`PartOutcome::Transport`], in bytes.
const MAX_TRANSPORT_TEXT: usize = 512;

/// One upstream call of an [`Aggregate`] and the section of the response it fills.
///
/// Fields are checked by [`AggregateBuilder::build`]: the name is the JSON key (1 to
/// [`MAX_NAME_LEN`] characters from `A-Z a-z 0-9 _ -`, not [`ERRORS_KEY`], unique within the
/// aggregate) and the timeout is not zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The JSON key of the part's section.
    pub name: String,
    /// How long the call may take, from the start of the compose to the end of its body.
    pub timeout: Duration,
    /// Whether the response fails when this part fails, whatever the [`Policy`].
    pub required: bool,
}

impl Part {
    /// An optional part named `name` with `timeout`.
    pub fn new(name: impl Into<String>, timeout: Duration) -> Self {
        Self {
            name: name.into(),
            timeout,
            required: false,
        }
    }

    /// Sets whether the part is required (default: not).
    #[must_use]
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }
}

/// What a failed optional part does to the response. [`Part::required`] parts always fail it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// Any failed part fails the whole response (`502`/`504` problem), and the calls still
    /// running are cancelled. The default.
    #[default]
    FailWhole,
    /// Failed optional parts are left out and listed under [`ERRORS_KEY`]; the response is
    /// still `200`.
    OmitFailed,
}

/// A configuration that a part name, a part list or a size limit made impossible to build.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AggregateError {
    /// The aggregate has no parts.
    NoParts,
    /// The aggregate has more than [`MAX_PARTS`] parts.
    TooManyParts {
        /// How many were given.
        count: usize,
    },
    /// A part name is empty, longer than [`MAX_NAME_LEN`] or has a character outside
    /// `A-Z a-z 0-9 _ -`.
    InvalidName {
        /// The name (at most 80 characters of it).
        name: String,
    },
    /// A part is named [`ERRORS_KEY`].
    ReservedName {
        /// The name.
        name: String,
    },
    /// Two parts have the same name.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A part's timeout is zero, so it could never succeed.
    ZeroTimeout {
        /// The part's name.
        name: String,
    },
    /// `max_body` is zero, so no part could ever succeed.
    ZeroMaxBody,
}

impl fmt::Display for AggregateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoParts => f.write_str("an aggregate needs at least one part"),
            Self::TooManyParts { count } => {
                write!(f, "an aggregate has at most {MAX_PARTS} parts, not {count}")
            }
            Self::InvalidName { name } => write!(
                f,
                "part name {name:?} is invalid: use 1 to {MAX_NAME_LEN} characters from \
                 A-Z, a-z, 0-9, `_` and `-`"
            ),
            Self::ReservedName { name } => write!(
                f,
                "part name {name:?} is reserved for the section listing failed parts"
            ),
            Self::DuplicateName { name } => {
                write!(f, "part name {name:?} is used twice: names must be unique")
            }
            Self::ZeroTimeout { name } => {
                write!(
                    f,
                    "part {name:?} has a zero timeout: give it time to answer"
                )
            }
            Self::ZeroMaxBody => f.write_str("max_body is zero: no part body could be read"),
        }
    }
}

impl std::error::Error for AggregateError {}

/// Builds an [`Aggregate`]; see [`Aggregate::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct AggregateBuilder {
    parts: Vec<Part>,
    policy: Policy,
    max_body: usize,
}

impl AggregateBuilder {
    /// Adds a part; its section comes after those added before it.
    pub fn part(mut self, part: Part) -> Self {
        self.parts.push(part);
        self
    }

    /// Sets the policy for failed optional parts (default [`Policy::FailWhole`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the largest body read from each part, in bytes (default [`DEFAULT_MAX_BODY`]). A
    /// longer body fails its part with [`PartOutcome::TooLarge`].
    pub fn max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Checks the parts and builds the aggregate.
    ///
    /// # Errors
    ///
    /// [`AggregateError`]: no parts or more than [`MAX_PARTS`], an invalid, reserved or
    /// duplicate name, a zero timeout, or a zero `max_body`.
    pub fn build(self) -> Result<Aggregate, AggregateError> {
        if self.parts.is_empty() {
            return Err(AggregateError::NoParts);
        }
        if self.parts.len() > MAX_PARTS {
            return Err(AggregateError::TooManyParts {
                count: self.parts.len(),
            });
        }
        if self.max_body == 0 {
            return Err(AggregateError::ZeroMaxBody);
        }
        for (i, part) in self.parts.iter().enumerate() {
            check_name(&part.name)?;
            if self.parts.iter().take(i).any(|p| p.name == part.name) {
                return Err(AggregateError::DuplicateName {
                    name: part.name.clone(),
                });
            }
            if part.timeout.is_zero() {
                return Err(AggregateError::ZeroTimeout {
                    name: part.name.clone(),
                });
            }
        }
        Ok(Aggregate {
            parts: self.parts,
            policy: self.policy,
            limits: JsonLimits {
                max_bytes: self.max_body,
                ..JsonLimits::default()
            },
        })
    }
}

fn check_name(name: &str) -> Result<(), AggregateError> {
    let valid = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(AggregateError::InvalidName {
            name: name.chars().take(80).collect(),
        });
    }
    if name == ERRORS_KEY {
        return Err(AggregateError::ReservedName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A checked list of parts and a policy: runs the calls and composes one JSON response.
///
/// `Clone`; build once per route and share it.
#[derive(Clone, Debug)]
pub struct Aggregate {
    parts: Vec<Part>,
    policy: Policy,
    limits: JsonLimits,
}

/// What happened to one part in an [`Aggregate::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartOutcome {
    /// A 2xx JSON answer that parsed; its value is in the response.
    Ok,
    /// The call or its body took longer than the part's timeout.
    Timeout,
    /// The upstream answered with this status, not a 2xx one. The body was not read.
    Status(u16),
    /// The `Content-Type` is missing, not JSON, repeated or has a charset other than UTF-8, or
    /// the body has a `Content-Encoding`. The body was not read.
    NotJson,
    /// The body is longer than `max_body`. Reading stopped at the limit.
    TooLarge,
    /// The body is not strict JSON. The error's `Display` may quote up to 64 characters of
    /// the body: log it with care. Responses only carry its kind and position.
    Invalid(JsonError),
    /// The call failed before an answer, or the body failed while being read: the error's
    /// text, for logs only (at most 512 bytes). Responses say `upstream call failed`.
    Transport(String),
    /// The call was dropped unfinished, because another part's failure failed the response.
    Cancelled,
}

impl PartOutcome {
    /// Whether the part succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }

    /// A short, stable, lowercase label for metrics and logs: `ok`, `timeout`, `status`,
    /// `not_json`, `too_large`, `invalid`, `transport` or `cancelled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
            Self::NotJson => "not_json",
            Self::TooLarge => "too_large",
            Self::Invalid(_) => "invalid",
            Self::Transport(_) => "transport",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status reported for a failed part (`504` for a timeout, `503` for a transport
    /// failure, `502` otherwise); `None` for [`Ok`](Self::Ok) and
    /// [`Cancelled`](Self::Cancelled).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Ok | Self::Cancelled => None,
            Self::Timeout => Some(StatusCode::GATEWAY_TIMEOUT),
            Self::Transport(_) => Some(StatusCode::SERVICE_UNAVAILABLE),
            Self::Status(_) | Self::NotJson | Self::TooLarge | Self::Invalid(_) => {
                Some(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

/// For logs: includes the transport error text, never body content beyond what
/// [`JsonError`]'s `Display` quotes.
impl fmt::Display for PartOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Timeout => f.write_str("timed out"),
            Self::Status(status) => write!(f, "upstream answered {status}"),
            Self::NotJson => f.write_str("not JSON"),
            Self::TooLarge => f.write_str("body over the size limit"),
            Self::Invalid(err) => write!(f, "invalid JSON: {err}"),
            Self::Transport(err) => write!(f, "upstream call failed: {err}"),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// One part's outcome and how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartReport {
    /// What happened.
    pub outcome: PartOutcome,
    /// From the start of the compose to the part's end (or its cancellation).
    pub elapsed: Duration,
}

/// The result of [`Aggregate::run`]: the response and what happened to each part.
#[derive(Debug)]
#[non_exhaustive]
pub struct Composed {
    /// The response to send: `200 application/json`, or a `502`/`504`
    /// `application/problem+json` (with a [`Rejection`](gateway_core::Rejection) extension).
    pub response: Response<Full<Bytes>>,
    /// One report per part, in the order of [`Aggregate::parts`].
    pub parts: Vec<PartReport>,
    /// Whether the response is a `200` with failed parts left out (listed under
    /// [`ERRORS_KEY`]). Callers may add a header such as `x-aggregate-partial: 1`, or keep the
    /// response out of caches.
    pub partial: bool,
    /// The index of the part whose failure failed the whole response, if one did.
    pub failed_by: Option<usize>,
}

impl Composed {
    /// The response, without the reports.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.response
    }
}

impl Aggregate {
    /// A builder with no parts, [`Policy::FailWhole`] and a `max_body` of
    /// [`DEFAULT_MAX_BODY`].
    pub fn builder() -> AggregateBuilder {
        AggregateBuilder {
            parts: Vec::new(),
            policy: Policy::default(),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The policy for failed optional parts.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The largest body read from each part, in bytes.
    pub fn max_body(&self) -> usize {
        self.limits.max_bytes
    }

    /// Runs every part's call at once and composes the response.
    ///
    /// `call(index, part)` is called once per part, in order, before any of the futures is
    /// polled; the futures then run concurrently on the current task (no spawning, so they
    /// need not be `'static`; the returned future is `Send` when they, `F` and the bodies are).
    /// Each is bounded by its part's timeout, the body read included. A failure that fails the
    /// whole response (any failure under [`Policy::FailWhole`], a required part's under
    /// either) is answered at once and the calls still running are dropped.
    ///
    /// The response and the part reports are described in the [module docs](self).
    ///
    /// # Panics
    ///
    /// When polled outside a Tokio runtime with the time driver enabled (as
    /// [`tokio::time::timeout`] does).
    pub async fn run<F, Fut, B, E>(&self, mut call: F) -> Composed
    where
        F: FnMut(usize, &Part) -> Fut,
        Fut: Future<Output = Result<Response<B>, E>>,
        B: Body<Data = Bytes>,
        B::Error: fmt::Display,
        E: fmt::Display,
    {
        let started = Instant::now();
        let limits = self.limits;
        let mut running: Vec<_> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| Some(Box::pin(fetch(call(i, part), part.timeout, limits))))
            .collect();
        let mut finished: Vec<Option<(Result<Value, PartOutcome>, Duration)>> =
            self.parts.iter().map(|_| None).collect();
        let mut left = self.parts.len();

        let failed_by = poll_fn(|cx| {
            let slots = running.iter_mut().zip(finished.iter_mut());
            for (i, ((slot, done), part)) in slots.zip(&self.parts).enumerate() {
                let Some(fut) = slot else { continue };
                let Poll::Ready(result) = fut.as_mut().poll(cx) else {
                    continue;
                };
                *slot = None;
                left -= 1;
                let fails_whole =
                    result.is_err() && (part.required || self.policy == Policy::FailWhole);
                *done = Some((result, started.elapsed()));
                if fails_whole {
                    return Poll::Ready(Some(i));
                }
            }
            if left == 0 {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        // Cancel whatever is still running before composing.
        drop(running);
        let cancelled_at = started.elapsed();

        let mut values = Vec::with_capacity(finished.len());
        let mut parts = Vec::with_capacity(finished.len());
        for slot in finished {
            let (outcome, elapsed) = match slot {
                Some((Ok(value), elapsed)) => {
                    values.push(Some(value));
                    (PartOutcome::Ok, elapsed)
                }
                Some((Err(outcome), elapsed)) => {
                    values.push(None);
                    (outcome, elapsed)
                }
                None => {
                    values.push(None);
                    (PartOutcome::Cancelled, cancelled_at)
                }
            };
            parts.push(PartReport { outcome, elapsed });
        }

        let errors = self.errors_json(&parts);
        let fatal = failed_by.and_then(|i| self.parts.get(i).zip(parts.get(i)));
        let (response, partial) = match fatal {
            Some((part, report)) => (self.problem(part, &report.outcome, errors), false),
            None => {
                let partial = errors.is_some();
                (self.composed(values, errors), partial)
            }
        };
        Composed {
            response,
            parts,
            partial,
            failed_by,
        }
    }

    /// `{"name": {"status": 504, "detail": "..."}, ...}` for the failed parts, or `None`.
    fn errors_json(&self, reports: &[PartReport]) -> Option<String> {
        let mut out = String::new();
        for (part, report) in self.parts.iter().zip(reports) {
            let Some(status) = report.outcome.status() else {
                continue;
            };
            out.push(if out.is_empty() { '{' } else { ',' });
            let detail = Value::String(self.detail(part, &report.outcome));
            // Names are checked to need no escaping.
            let _ = write!(
                out,
                "\"{}\":{{\"status\":{},\"detail\":{detail}}}",
                part.name,
                status.as_u16()
            );
        }
        if out.is_empty() {
            return None;
        }
        out.push('}');
        Some(out)
    }

    /// The client-facing description of a failed part: fixed words, never upstream content.
    fn detail(&self, part: &Part, outcome: &PartOutcome) -> String {
        match outcome {
            PartOutcome::Ok => "ok".to_owned(),
            PartOutcome::Cancelled => "cancelled".to_owned(),
            PartOutcome::Timeout => format!("timed out after {}", Human(part.timeout)),
            PartOutcome::Status(status) => format!("upstream answered {status}"),
            PartOutcome::NotJson => "not JSON".to_owned(),
            PartOutcome::TooLarge => format!("body over {} bytes", self.limits.max_bytes),
            PartOutcome::Invalid(err) => {
                let mut detail = format!("invalid JSON: {}", json_error_words(err.kind()));
                if let Some((line, column)) = err.line_column() {
                    let _ = write!(detail, " at line {line}, column {column}");
                }
                detail
            }
            PartOutcome::Transport(_) => "upstream call failed".to_owned(),
        }
    }

    fn problem(
        &self,
        part: &Part,
        outcome: &PartOutcome,
        errors: Option<String>,
    ) -> Response<Full<Bytes>> {
        let (status, reason, flags) = match outcome {
            PartOutcome::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                RejectReason::UpstreamTimeout,
                ResponseFlags::UPSTREAM_TIMEOUT,
            ),
            PartOutcome::Transport(_) => (
                StatusCode::BAD_GATEWAY,
                RejectReason::UpstreamConnect,
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                RejectReason::UpstreamProtocol,
                ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            ),
        };
        let mut problem = Problem::new(status).reason(reason, flags).detail(format!(
            "part \"{}\" failed: {}",
            part.name,
            self.detail(part, outcome)
        ));
        if let Some(errors) = errors {
            problem = problem.extension_json("errors", errors);
        }
        problem.into_response()
    }

    fn composed(
        &self,
        values: Vec<Option<Value>>,
        errors: Option<String>,
    ) -> Response<Full<Bytes>> {
        let mut out = String::new();
        for (part, value) in self.parts.iter().zip(values) {
            let Some(value) = value else { continue };
            out.push(if out.is_empty() { '{' } else { ',' });
            let _ = write!(out, "\"{}\":{value}", part.name);
        }
        if let Some(errors) = errors {
            out.push(if out.is_empty() { '{' } else { ',' });
            let _ = write!(out, "\"{ERRORS_KEY}\":{errors}");
        }
        if out.is_empty() {
            out.push('{');
        }
        out.push('}');
        let mut res = Response::new(Full::new(Bytes::from(out)));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

/// One part's call, its checks and its body read, within its timeout.
async fn fetch<Fut, B, E>(
    call: Fut,
    timeout: Duration,
    limits: JsonLimits,
) -> Result<Value, PartOutcome>
where
    Fut: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
    E: fmt::Display,
{
    let fetch = async {
        let res = call
            .await
            .map_err(|err| PartOutcome::Transport(bounded_text(&err)))?;
        let status = res.status();
        if !status.is_success() {
            return Err(PartOutcome::Status(status.as_u16()));
        }
        if !is_plain_json(res.headers()) {
            return Err(PartOutcome::NotJson);
        }
        let body = read_capped(res.into_body(), limits.max_bytes).await?;
        parse_strict(&body, &limits).map_err(|err| match err.kind() {
            JsonErrorKind::TooLarge => PartOutcome::TooLarge,
            _ => PartOutcome::Invalid(err),
        })
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err(PartOutcome::Timeout))
}

/// One JSON `Content-Type` in UTF-8, and no content coding.
fn is_plain_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let one_json_type = match (types.next(), types.next()) {
        (Some(value), None) => is_json_media_type(value) && json_charset_ok(value),
        _ => false,
    };
    let identity = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(|value| value.as_bytes().eq_ignore_ascii_case(b"identity"));
    one_json_type && identity
}

/// Reads `body` whole, failing with [`PartOutcome::TooLarge`] as soon as it is known to be
/// longer than `max`.
async fn read_capped<B>(body: B, max: usize) -> Result<Bytes, PartOutcome>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    if body.size_hint().lower() > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(PartOutcome::TooLarge);
    }
    let mut body = pin!(body);
    // One data frame (the common case) is kept as is; more are copied into `joined`.
    let mut single: Option<Bytes> = None;
    let mut joined = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            PartOutcome::Transport(bounded_text(&format_args!("reading the body: {err}")))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        let have = single.as_ref().map_or(joined.len(), Bytes::len);
        if have.saturating_add(data.len()) > max {
            return Err(PartOutcome::TooLarge);
        }
        match single.take() {
            None if joined.is_empty() => single = Some(data),
            Some(first) => {
                joined.reserve(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
            }
            None => joined.extend_from_slice(&data),
        }
    }
    Ok(single.unwrap_or_else(|| Bytes::from(joined)))
}

/// `value`'s text, cut to [`MAX_TRANSPORT_TEXT`] bytes at a character boundary.
fn bounded_text(value: &dyn fmt::Display) -> String {
    let mut text = value.to_string();
    if text.len() > MAX_TRANSPORT_TEXT {
        let mut end = MAX_TRANSPORT_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// What a [`JsonErrorKind`] means, without quoting the body.
fn json_error_words(kind: JsonErrorKind) -> &'static str {
    match kind {
        JsonErrorKind::TooLarge => "too large",
        JsonErrorKind::TooDeep => "nested too deeply",
        JsonErrorKind::DuplicateKey => "duplicate key",
        JsonErrorKind::InvalidUtf8 => "invalid UTF-8",
        JsonErrorKind::LoneSurrogate => "lone surrogate escape",
        JsonErrorKind::NumberOutOfRange => "number out of range",
        JsonErrorKind::TrailingData => "data after the value",
        JsonErrorKind::ByteOrderMark => "byte order mark",
        _ => "syntax error",
    }
}

/// A timeout as people write it: `1s`, `250ms`, `1500us`, `10ns`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.subsec_nanos();
        if nanos == 0 {
            write!(f, "{}s", d.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", d.as_micros())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        task::Context,
    };

    use gateway_core::Rejection;
    use http_body::{Frame, SizeHint};
    use tokio::{sync::Barrier, time::sleep};

    use super::*;

    /// A test body: whole, in chunks (no size hint), never ending, or failing.
    enum TestBody {
        Whole(Option<Bytes>),
        Chunks(VecDeque<Bytes>),
        Stalled,
        Broken,
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = String;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            match self.get_mut() {
                Self::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
                Self::Chunks(chunks) => Poll::Ready(chunks.pop_front().map(|b| Ok(Frame::data(b)))),
                // Never woken: only the part's timeout ends it.
                Self::Stalled => Poll::Pending,
                Self::Broken => Poll::Ready(Some(Err("reset by 10.0.0.7:8080".to_owned()))),
            }
        }

        fn size_hint(&self) -> SizeHint {
            match self {
                Self::Whole(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
                _ => SizeHint::default(),
            }
        }
    }

    fn with_type(content_type: &str, body: TestBody) -> Response<TestBody> {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap()
    }

    fn json(text: &'static str) -> Response<TestBody> {
        with_type(
            "application/json",
            TestBody::Whole(Some(Bytes::from_static(text.as_bytes()))),
        )
    }

    fn status(code: u16, text: &'static str) -> Response<TestBody> {
        let mut res = json(text);
        *res.status_mut() = StatusCode::from_u16(code).unwrap();
        res
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn aggregate(policy: Policy, parts: &[(&str, u64, bool)]) -> Aggregate {
        parts
            .iter()
            .fold(Aggregate::builder().policy(policy), |b, &(name, t, req)| {
                b.part(Part::new(name, secs(t)).required(req))
            })
            .build()
            .unwrap()
    }

    async fn body_text(res: Response<Full<Bytes>>) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Runs one part answering `res` and returns its outcome and the response body.
    async fn single(res: Response<TestBody>, max_body: usize) -> (PartOutcome, String) {
        let agg = Aggregate::builder()
            .part(Part::new("p", secs(1)))
            .policy(Policy::OmitFailed)
            .max_body(max_body)
            .build()
            .unwrap();
        let mut res = Some(res);
        let composed = agg
            .run(|_, _| {
                let res = res.take();
                async move { res.ok_or("called twice") }
            })
            .await;
        let outcome = composed.parts[0].outcome.clone();
        (outcome, body_text(composed.response).await)
    }

    #[tokio::test(start_paused = true)]
    async fn all_parts_start_before_any_finishes() {
        // Each part waits until all three have started: run one at a time and the first
        // part waits forever, failing with a timeout.
        let agg = aggregate(
            Policy::OmitFailed,
            &[("a", 1, false), ("b", 1, false), ("c", 1, false)],
        );
        let barrier = Arc::new(Barrier::new(3));
        let started = Arc::new(AtomicUsize::new(0));
        let composed = agg
            .run(|i, _| {
                let (barrier, started) = (Arc::clone(&barrier), Arc::clone(&started));
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    barrier.wait().await;
                    Ok::<_, Infallible>(match i {
                        0 => json("1"),
                        1 => json("2"),
                        _ => json("3"),
                    })
                }
            })
            .await;
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert!(
            composed.parts.iter().all(|p| p.outcome.is_ok()),
            "{:?}",
            composed.parts
        );
        assert!(!composed.partial);
        assert_eq!(body_text(composed.response).await, r#"{"a":1,"b":2,"c":3}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn each_part_has_its_own_timeout() {
        let agg = aggregate(
            Policy::OmitFailed,
            &[("short", 1, false), ("long", 5, false)],
        );
        let began = Instant::now();
        let composed = agg
            .run(|i, _| async move {
                // `short` needs 2s of its 1s; `long` needs 3s of its 5s.
                sleep(secs(if i == 0 { 2 } else { 3 })).await;
                Ok::<_, Infallible>(json(r#"{"done":true}"#))
            })
            .await;
        assert_eq!(composed.parts[0].outcome, PartOutcome::Timeout);
        assert_eq!(composed.parts[1].outcome, PartOutcome::Ok);
        let (short, long) = (composed.parts[0].elapsed, composed.parts[1].elapsed);
        assert!(
            short >= secs(1) && short < Duration::from_millis(1100),
            "{short:?}"
        );
        assert!(
            long >= secs(3) && long < Duration::from_millis(3100),
            "{long:?}"
        );
        // Concurrent: the compose took as long as the slowest part, not the sum.
        assert!(began.elapsed() < Duration::from_millis(3100));
        assert_eq!(
            body_text(composed.response).await,
            r#"{"long":{"done":true},"_errors":{"short":{"status":504,"detail":"timed out after 1s"}}}"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_covers_the_body_read() {
        let (outcome, _) = single(with_type("application/json", TestBody::Stalled), 1024).await;
        assert_eq!(outcome, PartOutcome::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn omit_failed_leaves_failed_parts_out_and_lists_them() {
        let agg = Aggregate::builder()
            .part(Part::new("user", secs(1)))
            .part(Part::new("orders", Duration::from_millis(250)))
            .part(Part::new("prices", secs(1)))
            .part(Part::new("stock", secs(1)))
            .policy(Policy::OmitFailed)
            .build()
            .unwrap();
        let composed = agg
            .run(|i, _| async move {
                match i {
                    0 => Ok(json(r#"{"id":7}"#)),
                    1 => {
                        sleep(secs(2)).await;
                        Ok(json("[]"))
                    }
                    2 => Ok(status(500, "internal stack trace")),
                    _ => Err("connect to 10.0.0.7:8080 refused"),
                }
            })
            .await;
        assert!(composed.partial);
        assert_eq!(composed.failed_by, None);
        let outcomes: Vec<_> = composed.parts.iter().map(|p| p.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [
                PartOutcome::Ok,
                PartOutcome::Timeout,
                PartOutcome::Status(500),
                PartOutcome::Transport("connect to 10.0.0.7:8080 refused".to_owned())
            ]
        );
        assert_eq!(composed.response.status(), 200);
        assert_eq!(
            composed.response.headers()[header::CONTENT_TYPE],
            "application/json"
        );
        let body = body_text(composed.response).await;
        assert_eq!(
            body,
            concat!(
                r#"{"user":{"id":7},"_errors":{"#,
                r#""orders":{"status":504,"detail":"timed out after 250ms"},"#,
                r#""prices":{"status":502,"detail":"upstream answered 500"},"#,
                r#""stock":{"status":503,"detail":"upstream call failed"}}}"#
            )
        );
        assert!(serde_json::from_str::<Value>(&body).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn omit_failed_with_every_part_failed_is_still_an_object() {
        let agg = aggregate(Policy::OmitFailed, &[("a", 1, false)]);
        let composed = agg
            .run(|_, _| async { Ok::<_, Infallible>(status(404, "")) })
            .await;
        assert!(composed.partial);
        assert_eq!(
            body_text(composed.response).await,
            r#"{"_errors":{"a":{"status":502,"detail":"upstream answered 404"}}}"#
        );
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fail_whole_cancels_the_calls_still_running() {
        let agg = aggregate(
            Policy::FailWhole,
            &[("fast", 1, false), ("slow", 30, false)],
        );
        let dropped = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let composed = agg
            .run(|i, _| {
                let guard = (i == 1).then(|| SetOnDrop(Arc::clone(&dropped)));
                let completed = Arc::clone(&completed);
                async move {
                    if i == 0 {
                        return Ok::<_, Infallible>(status(500, "secret stack trace"));
                    }
                    let _guard = guard;
                    sleep(secs(10)).await;
                    completed.store(true, Ordering::SeqCst);
                    Ok(json("1"))
                }
            })
            .await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "the slow call was not dropped"
        );
        assert!(!completed.load(Ordering::SeqCst));
        // Paused time only moves when every task waits: the slow part was never waited for.
        assert_eq!(began.elapsed(), Duration::ZERO);
        assert_eq!(composed.failed_by, Some(0));
        assert_eq!(composed.parts[1].outcome, PartOutcome::Cancelled);
        let res = composed.response;
        assert_eq!(res.status(), 502);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let rejection = res.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.reason, RejectReason::UpstreamProtocol);
        let body = body_text(res).await;
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(
            body,
            concat!(
                r#"{"type":"about:blank","title":"Bad Gateway","status":502,"#,
                r#""detail":"part \"fast\" failed: upstream answered 500","#,
                r#""errors":{"fast":{"status":502,"detail":"upstream answered 500"}}}"#
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fail_whole_answers_504_when_the_failing_part_timed_out() {
        let agg = aggregate(Policy::FailWhole, &[("a", 2, false), ("b", 1, false)]);
        let composed = agg
            .run(|i, _| async move {
                if i == 1 {
                    sleep(secs(5)).await;
                }
                sleep(secs(1)).await;
                Ok::<_, Infallible>(json("{}"))
            })
            .await;
        // `a` succeeds at 1s, when `b` times out: `b`'s timeout fails the response.
        assert_eq!(composed.failed_by, Some(1));
        assert_eq!(composed.parts[1].outcome, PartOutcome::Timeout);
        let res = composed.response;
        assert_eq!(res.status(), 504);
        let rejection = res.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.reason, RejectReason::UpstreamTimeout);
        assert!(rejection.flags.contains(ResponseFlags::UPSTREAM_TIMEOUT));
        let body: Value = serde_json::from_str(&body_text(res).await).unwrap();
        assert_eq!(body["detail"], "part \"b\" failed: timed out after 1s");
        assert_eq!(body["errors"]["b"]["status"], 504);
    }

    #[tokio::test(start_paused = true)]
    async fn a_required_part_failing_under_omit_failed_fails_the_response() {
        let agg = aggregate(
            Policy::OmitFailed,
            &[("extra", 10, false), ("user", 1, true)],
        );
        let dropped = Arc::new(AtomicBool::new(false));
        let composed = agg
            .run(|i, _| {
                let guard = (i == 0).then(|| SetOnDrop(Arc::clone(&dropped)));
                async move {
                    let _guard = guard;
                    if i == 0 {
                        sleep(secs(5)).await;
                        return Ok::<_, Infallible>(json("1"));
                    }
                    Ok(status(503, "down"))
                }
            })
            .await;
        assert_eq!(composed.response.status(), 502);
        assert!(!composed.partial);
        assert_eq!(composed.failed_by, Some(1));
        assert_eq!(composed.parts[0].outcome, PartOutcome::Cancelled);
        assert!(dropped.load(Ordering::SeqCst));
        let body: Value = serde_json::from_str(&body_text(composed.response).await).unwrap();
        assert_eq!(
            body["detail"],
            "part \"user\" failed: upstream answered 503"
        );
        assert_eq!(body["errors"]["user"]["status"], 502);

        // And a required part that times out gives 504.
        let agg = aggregate(
            Policy::OmitFailed,
            &[("user", 1, true), ("extra", 1, false)],
        );
        let composed = agg
            .run(|i, _| async move {
                if i == 0 {
                    sleep(secs(2)).await;
                }
                Ok::<_, Infallible>(json("1"))
            })
            .await;
        assert_eq!(composed.response.status(), 504);
        assert_eq!(composed.parts[1].outcome, PartOutcome::Ok);
    }

    #[tokio::test]
    async fn an_optional_part_failing_under_omit_failed_does_not_cancel_the_others() {
        let agg = aggregate(Policy::OmitFailed, &[("a", 1, false), ("b", 1, true)]);
        let composed = agg
            .run(|i, _| async move {
                Ok::<_, Infallible>(if i == 0 {
                    status(500, "")
                } else {
                    json("true")
                })
            })
            .await;
        assert_eq!(composed.response.status(), 200);
        assert_eq!(composed.parts[1].outcome, PartOutcome::Ok);
    }

    #[tokio::test]
    async fn every_part_ok_gives_the_sections_in_declaration_order() {
        let agg = aggregate(
            Policy::FailWhole,
            &[("zeta", 1, false), ("alpha", 1, false)],
        );
        let composed = agg
            .run(|i, _| async move {
                Ok::<_, Infallible>(if i == 0 {
                    json(r#" { "b" : 1, "a" : [1 , 2.50] } "#)
                } else {
                    json(r#""\u00e9""#)
                })
            })
            .await;
        assert!(!composed.partial);
        assert_eq!(composed.failed_by, None);
        // Re-serialized from the parsed values: compact, object keys sorted.
        assert_eq!(
            body_text(composed.response).await,
            r#"{"zeta":{"a":[1,2.5],"b":1},"alpha":"é"}"#
        );
    }

    #[tokio::test]
    async fn a_part_that_is_not_json_fails_without_its_body_being_read() {
        for content_type in [
            "text/html",
            "text/json",
            "application/json-seq",
            "application/json; charset=latin1",
        ] {
            // A stalled body would time out if it were read.
            let res = with_type(content_type, TestBody::Stalled);
            assert_eq!(
                single(res, 1024).await.0,
                PartOutcome::NotJson,
                "{content_type}"
            );
        }
        let mut untyped = json("{}");
        untyped.headers_mut().remove(header::CONTENT_TYPE);
        assert_eq!(single(untyped, 1024).await.0, PartOutcome::NotJson);

        let mut twice = json("{}");
        twice
            .headers_mut()
            .append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(single(twice, 1024).await.0, PartOutcome::NotJson);

        let mut gzipped = json("{}");
        gzipped
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (outcome, body) = single(gzipped, 1024).await;
        assert_eq!(outcome, PartOutcome::NotJson);
        assert_eq!(
            body,
            r#"{"_errors":{"p":{"status":502,"detail":"not JSON"}}}"#
        );

        let vendor = with_type(
            "application/vnd.api+json; charset=UTF-8",
            TestBody::Whole(Some(Bytes::from_static(b"[1]"))),
        );
        assert_eq!(
            single(vendor, 1024).await,
            (PartOutcome::Ok, r#"{"p":[1]}"#.to_owned())
        );
    }

    #[tokio::test]
    async fn an_oversized_body_fails_its_part() {
        // Declared by its length: refused before reading.
        let declared = json(r#"{"a":"0123456789"}"#);
        let (outcome, body) = single(declared, 16).await;
        assert_eq!(outcome, PartOutcome::TooLarge);
        assert_eq!(
            body,
            r#"{"_errors":{"p":{"status":502,"detail":"body over 16 bytes"}}}"#
        );

        // Streamed without a length: cut at the limit, the rest never pulled.
        let chunks = [r#"{"a":"0123"#, r#"456789"}"#, "never read"]
            .map(|c| Bytes::from_static(c.as_bytes()));
        let streamed = with_type("application/json", TestBody::Chunks(chunks.into()));
        assert_eq!(single(streamed, 16).await.0, PartOutcome::TooLarge);

        // Exactly at the limit is fine, whole or in chunks.
        let exact = json(r#"{"a":"012345678"}"#);
        assert_eq!(single(exact, 17).await.0, PartOutcome::Ok);
        let chunks = [r#"{"a":"0123"#, r#"45678"}"#].map(|c| Bytes::from_static(c.as_bytes()));
        let exact = with_type("application/json", TestBody::Chunks(chunks.into()));
        assert_eq!(
            single(exact, 17).await,
            (PartOutcome::Ok, r#"{"p":{"a":"012345678"}}"#.to_owned())
        );
    }

    #[tokio::test]
    async fn duplicate_keys_in_a_part_are_refused_without_echoing_them() {
        let (outcome, body) = single(json(r#"{"secret_key":1,"secret_key":2}"#), 1024).await;
        let PartOutcome::Invalid(err) = outcome else {
            panic!("expected Invalid, got {outcome:?}");
        };
        assert_eq!(err.kind(), JsonErrorKind::DuplicateKey);
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(
            body,
            r#"{"_errors":{"p":{"status":502,"detail":"invalid JSON: duplicate key at line 1, column 17"}}}"#
        );
    }

    #[tokio::test]
    async fn other_invalid_json_is_refused() {
        for (text, kind) in [
            ("", JsonErrorKind::Syntax),
            ("{\"a\":1,}", JsonErrorKind::Syntax),
            ("{} {}", JsonErrorKind::TrailingData),
            ("18446744073709551616", JsonErrorKind::NumberOutOfRange),
            ("\"\\ud800\"", JsonErrorKind::LoneSurrogate),
        ] {
            match single(json(text), 1024).await.0 {
                PartOutcome::Invalid(err) => assert_eq!(err.kind(), kind, "{text}"),
                other => panic!("{text}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_non_2xx_status_fails_its_part_without_echoing_the_body() {
        for code in [301, 404, 500] {
            let (outcome, body) = single(status(code, r#"{"leak":"internal"}"#), 1024).await;
            assert_eq!(outcome, PartOutcome::Status(code));
            assert!(!body.contains("internal"), "{body}");
            assert!(
                body.contains(&format!("upstream answered {code}")),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn transport_errors_are_kept_for_logs_but_not_sent() {
        let broken = with_type("application/json", TestBody::Broken);
        let (outcome, body) = single(broken, 1024).await;
        assert_eq!(
            outcome,
            PartOutcome::Transport("reading the body: reset by 10.0.0.7:8080".to_owned())
        );
        assert_eq!(outcome.as_str(), "transport");
        assert!(outcome.to_string().contains("10.0.0.7"));
        assert!(!body.contains("10.0.0.7"), "{body}");
        assert_eq!(
            body,
            r#"{"_errors":{"p":{"status":503,"detail":"upstream call failed"}}}"#
        );

        // Huge error texts are bounded.
        let agg = aggregate(Policy::OmitFailed, &[("p", 1, false)]);
        let composed = agg
            .run(|_, _| async { Err::<Response<TestBody>, _>("é".repeat(1000)) })
            .await;
        let PartOutcome::Transport(text) = &composed.parts[0].outcome else {
            panic!("expected Transport");
        };
        assert!(text.len() <= MAX_TRANSPORT_TEXT + 3 && text.ends_with("..."));
    }

    #[tokio::test]
    async fn a_transport_failure_that_fails_the_whole_is_a_502() {
        let agg = aggregate(Policy::FailWhole, &[("p", 1, false)]);
        let composed = agg
            .run(|_, _| async { Err::<Response<TestBody>, _>("connection refused") })
            .await;
        assert_eq!(composed.response.status(), 502);
        let rejection = composed.response.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.reason, RejectReason::UpstreamConnect);
    }

    #[test]
    fn part_names_are_checked() {
        let build = |names: &[&str]| {
            names
                .iter()
                .fold(Aggregate::builder(), |b, n| b.part(Part::new(*n, secs(1))))
                .build()
        };
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(build(&["user", "order-lines", "A_9", &long]).is_ok());
        for bad in [
            "",
            "a b",
            "a.b",
            "é",
            "a\"b",
            "a\n",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(
                matches!(build(&[bad]), Err(AggregateError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        let err = build(&["x".repeat(500).as_str()]).unwrap_err();
        assert!(err.to_string().len() < 250, "{err}");
        assert_eq!(
            build(&["_errors"]).unwrap_err(),
            AggregateError::ReservedName {
                name: "_errors".to_owned()
            }
        );
        assert_eq!(
            build(&["a", "b", "a"]).unwrap_err(),
            AggregateError::DuplicateName {
                name: "a".to_owned()
            }
        );
        assert_eq!(build(&[]).unwrap_err(), AggregateError::NoParts);
        let names: Vec<String> = (0..=MAX_PARTS).map(|i| format!("p{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(build(&names[..MAX_PARTS]).is_ok());
        assert_eq!(
            build(&names).unwrap_err(),
            AggregateError::TooManyParts {
                count: MAX_PARTS + 1
            }
        );
        assert_eq!(
            Aggregate::builder()
                .part(Part::new("a", Duration::ZERO))
                .build()
                .unwrap_err(),
            AggregateError::ZeroTimeout {
                name: "a".to_owned()
            }
        );
        assert_eq!(
            Aggregate::builder()
                .part(Part::new("a", secs(1)))
                .max_body(0)
                .build()
                .unwrap_err()
                .to_string(),
            "max_body is zero: no part body could be read"
        );
    }

    #[test]
    fn timeouts_are_written_as_people_write_them() {
        let cases = [
            (secs(1), "1s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(2500), "2500us"),
            (Duration::from_nanos(7), "7ns"),
        ];
        for (d, text) in cases {
            assert_eq!(Human(d).to_string(), text);
        }
    }

    #[test]
    fn the_run_future_is_send_when_its_parts_are() {
        fn assert_send<T: Send>(_: &T) {}
        let agg = aggregate(Policy::FailWhole, &[("a", 1, false)]);
        let fut = agg.run(|_, _| async { Ok::<_, Infallible>(json("1")) });
        assert_send(&fut);
    }
}
