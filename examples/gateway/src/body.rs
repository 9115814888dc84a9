//! Request bodies and what a route does with whole bodies: validation (`validate`) and
//! transforms (`transform.request_body` / `transform.response_body`).
//!
//! Bodies stream through untouched unless a route needs them whole: then they are read up to
//! the route's cap (a larger request is `413`; a larger upstream answer `502`), parsed strictly
//! (duplicate keys, depth, lone surrogates and integers that would lose precision are refused),
//! and forwarded from memory with a fresh `Content-Length`.

use bytes::Bytes;
use gateway_core::{Problem, RejectReason, ResponseFlags};
use gateway_transform::{
    json::{JsonEdits, JsonLimits, is_json_media_type, json_charset_ok, parse_strict},
    openapi::OpenApi,
    validate::{Location, ParamSpec, Schema, Violations, validate_params},
    xml::{JsonToXml, XmlLimits, json_to_xml, xml_to_json},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

type BoxError = gateway_core::BoxError;

use crate::pipeline::ClientBody;

/// The client's body, streamed, at most `max` bytes.
pub(crate) fn streamed(body: Incoming, max: usize) -> ClientBody {
    ClientBody::streaming(Limited::new(body, max))
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Over the cap.
    TooLarge,
    /// The stream failed (the client went away, the upstream reset).
    Failed,
}

/// Reads `body` whole, at most `cap` bytes.
pub(crate) async fn read_whole<B>(body: B, cap: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            // The client's own `max_body_bytes` limit (inner) or this cap (outer).
            // Both `Limited` layers pass the inner error on as it is.
            if e.is::<http_body_util::LengthLimitError>() {
                Err(ReadError::TooLarge)
            } else {
                Err(ReadError::Failed)
            }
        }
    }
}

/// Whether `Content-Length` announces a body (`Transfer-Encoding` is stripped before this runs;
/// see [`carries_body`]).
fn has_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
}

fn is_xml_media_type(v: &HeaderValue) -> bool {
    let Ok(s) = v.to_str() else { return false };
    let essence = s
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/xml"
        || essence == "text/xml"
        || (essence.starts_with("application/") && essence.ends_with("+xml"))
}

/// A conversion between XML and JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Convert {
    XmlToJson,
    JsonToXml,
}

/// A compiled body transform.
#[derive(Debug)]
pub(crate) struct BodyRules {
    pub(crate) edits: JsonEdits,
    pub(crate) convert: Option<Convert>,
    pub(crate) to_xml: JsonToXml,
    pub(crate) max_bytes: usize,
}

/// Why a body transform failed (bad JSON, bad XML, an edit that does not fit the document);
/// the side decides the status (the client's request: `400`; the upstream's answer: `502`).
#[derive(Debug)]
pub(crate) struct TransformError(String);

impl TransformError {
    /// What went wrong, safe to show the client whose body it was.
    pub(crate) fn detail(&self) -> &str {
        &self.0
    }
}

impl BodyRules {
    /// The content type a conversion gives, if there is one.
    pub(crate) fn converted_type(&self) -> Option<&'static str> {
        match self.convert? {
            Convert::XmlToJson => Some("application/json"),
            Convert::JsonToXml => Some("application/xml"),
        }
    }

    /// Whether a body with this content type is transformed (others pass through untouched).
    pub(crate) fn applies(&self, content_type: Option<&HeaderValue>) -> bool {
        let Some(ct) = content_type else { return false };
        match self.convert {
            Some(Convert::XmlToJson) => is_xml_media_type(ct),
            _ => is_json_media_type(ct),
        }
    }

    /// Transforms a whole body: the new body and, after a conversion, its new content type.
    pub(crate) fn apply(
        &self,
        bytes: &[u8],
    ) -> Result<(Bytes, Option<&'static str>), TransformError> {
        let invalid = |e: &dyn std::fmt::Display| TransformError(e.to_string());
        let limits = JsonLimits {
            max_bytes: self.max_bytes,
            ..JsonLimits::default()
        };
        let mut value = match self.convert {
            Some(Convert::XmlToJson) => {
                let limits = XmlLimits {
                    max_bytes: self.max_bytes,
                    ..XmlLimits::default()
                };
                xml_to_json(bytes, &limits).map_err(|e| invalid(&e))?
            }
            _ => parse_strict(bytes, &limits).map_err(|e| invalid(&e))?,
        };
        self.edits.apply(&mut value).map_err(|e| invalid(&e))?;
        match self.convert {
            Some(Convert::JsonToXml) => {
                let xml = json_to_xml(&value, &self.to_xml).map_err(|e| invalid(&e))?;
                Ok((Bytes::from(xml), Some("application/xml")))
            }
            Some(Convert::XmlToJson) => {
                Ok((Bytes::from(value.to_string()), Some("application/json")))
            }
            None => Ok((Bytes::from(value.to_string()), None)),
        }
    }
}

/// A route's compiled `validate` block.
#[derive(Debug)]
pub(crate) struct Validation {
    pub(crate) body: Option<Schema>,
    pub(crate) params: Vec<ParamSpec>,
    pub(crate) openapi: Option<OpenApi>,
    pub(crate) max_bytes: usize,
}

/// What validating a request decided.
pub(crate) enum Checked {
    /// Valid; the body when it was read whole (to forward from memory).
    Valid(Option<Bytes>),
    /// Refused with this answer.
    Refused(Problem),
}

fn refused(violations: &Violations) -> Problem {
    let status = if violations.is_unsupported_media_type() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    } else if violations
        .iter()
        .all(|v| matches!(v.location, Location::Body))
    {
        // The request is well-formed; its content is not what the API accepts.
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    violations
        .to_problem(status)
        .reason(RejectReason::ValidationFailed, ResponseFlags::empty())
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Problem {
    Problem::new(status)
        .detail(detail)
        .reason(RejectReason::ValidationFailed, ResponseFlags::empty())
}

/// A request's one `Content-Type`, or a refusal when it has several (parsers disagree on which
/// one counts).
pub(crate) fn single_content_type(
    headers: &HeaderMap,
) -> Result<Option<&HeaderValue>, &'static str> {
    let mut all = headers.get_all(header::CONTENT_TYPE).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err("several Content-Type fields");
    }
    Ok(first)
}

/// Whether a request body is coded (`Content-Encoding` other than `identity`): the gateway
/// would read something else than the upstream decodes.
pub(crate) fn is_coded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Whether a request carries a body: a length above zero, or a stream that has not ended
/// (chunked, or HTTP/2 without `Content-Length`; `Transfer-Encoding` itself is gone by now).
pub(crate) fn carries_body(headers: &HeaderMap, body: Option<&ClientBody>) -> bool {
    has_body(headers) || body.is_some_and(|b| !b.is_end_stream())
}

/// The declared length, when it is over `max`.
fn declared_over(headers: &HeaderMap, max: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
}

fn too_large(max: usize) -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .detail(format!(
            "the body is larger than this route accepts ({max} bytes)"
        ))
        .reason(RejectReason::PayloadTooLarge, ResponseFlags::empty())
}

fn unsupported(detail: &str) -> Problem {
    Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .detail(detail)
        .reason(RejectReason::ValidationFailed, ResponseFlags::empty())
}

impl Validation {
    /// Checks a request: the operation (OpenAPI) and parameters first, then the body, read
    /// only when a schema needs it.
    pub(crate) async fn check(
        &self,
        parts: &http::request::Parts,
        params: &[(String, String)],
        body: &mut Option<ClientBody>,
    ) -> Checked {
        let query = parts.uri.query();
        let content_type = match single_content_type(&parts.headers) {
            Ok(ct) => ct,
            Err(why) => return Checked::Refused(problem(StatusCode::BAD_REQUEST, why)),
        };
        let announced = carries_body(&parts.headers, body.as_ref());
        // The cheap checks first: no body is read for a request refused anyway.
        let op = match &self.openapi {
            Some(api) => match api.find(&parts.method, parts.uri.path()) {
                Some(found) => Some(found),
                None => {
                    return Checked::Refused(problem(
                        StatusCode::NOT_FOUND,
                        "no operation of the API description matches this method and path",
                    ));
                }
            },
            None => None,
        };
        if !self.params.is_empty()
            && let Err(v) = validate_params(&self.params, query, params, &parts.headers)
        {
            return Checked::Refused(refused(&v));
        }
        let needs_body = self.body.is_some() || op.is_some();
        let mut bytes = None;
        let mut value = None;
        if needs_body && announced {
            if is_coded(&parts.headers) {
                return Checked::Refused(unsupported(
                    "coded (compressed) request bodies are not accepted on this route",
                ));
            }
            if declared_over(&parts.headers, self.max_bytes) {
                return Checked::Refused(too_large(self.max_bytes));
            }
            // A body claiming JSON is read as JSON whatever its parameters; one that claims
            // JSON in another charset, or anything else without an API description that
            // declares it, is 415.
            let claims_json = content_type.is_some_and(is_json_media_type);
            if claims_json && !content_type.is_some_and(json_charset_ok) {
                return Checked::Refused(unsupported("JSON bodies must be UTF-8"));
            }
            if claims_json {
                let Some(b) = body.take() else {
                    return Checked::Refused(problem(StatusCode::BAD_REQUEST, "no body"));
                };
                let read = match read_whole(b, self.max_bytes).await {
                    Ok(read) => read,
                    Err(ReadError::TooLarge) => return Checked::Refused(too_large(self.max_bytes)),
                    Err(ReadError::Failed) => {
                        return Checked::Refused(problem(
                            StatusCode::BAD_REQUEST,
                            "the body could not be read",
                        ));
                    }
                };
                let limits = JsonLimits {
                    max_bytes: self.max_bytes,
                    ..JsonLimits::default()
                };
                match parse_strict(&read, &limits) {
                    Ok(v) => value = Some(v),
                    Err(e) => {
                        return Checked::Refused(problem(
                            StatusCode::BAD_REQUEST,
                            format!("the body is not valid JSON: {e}"),
                        ));
                    }
                }
                bytes = Some(read);
            } else if op.is_none() {
                return Checked::Refused(unsupported(
                    "this route accepts `application/json` bodies (UTF-8)",
                ));
            }
        }
        if let Some((op, op_params)) = &op {
            let ct = if announced { content_type } else { None };
            if let Err(v) = op.validate(query, op_params, &parts.headers, value.as_ref(), ct) {
                return Checked::Refused(refused(&v));
            }
        }
        if let Some(schema) = &self.body {
            match &value {
                Some(v) => {
                    if let Err(v) = schema.validate(v) {
                        return Checked::Refused(refused(&v));
                    }
                }
                // Methods that carry a body must send one; others may go without.
                None if matches!(
                    parts.method,
                    http::Method::POST | http::Method::PUT | http::Method::PATCH
                ) =>
                {
                    return Checked::Refused(problem(
                        StatusCode::BAD_REQUEST,
                        "this route needs a JSON body",
                    ));
                }
                None => {}
            }
        }
        Checked::Valid(bytes)
    }
}
