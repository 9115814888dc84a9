//! Request validation with JSON Schema: a JSON body against a compiled [`Schema`], and query,
//! path and header parameters against [`ParamSpec`]s, every failure collected as a
//! [`Violation`] and answered as one RFC 9457 problem.
//!
//! Schemas are compiled once, when the configuration loads, and validate many requests. Drafts 4,
//! 6, 7, 2019-09 and 2020-12 are supported, chosen by `$schema` (2020-12 when absent, or the
//! default set with [`SchemaOptions::default_draft`]). `format` is asserted, not just annotated.
//!
//! # Example
//!
//! ```
//! use gateway_transform::validate::{Location, Schema};
//! use http::StatusCode;
//! use serde_json::json;
//!
//! let schema = Schema::compile(&json!({
//!     "type": "object",
//!     "required": ["name"],
//!     "properties": {
//!         "name": {"type": "string", "maxLength": 20},
//!         "age": {"type": "integer", "minimum": 0},
//!         "email": {"type": "string", "format": "email"}
//!     }
//! }))
//! .unwrap();
//! assert!(schema.validate(&json!({"name": "Ada", "age": 36})).is_ok());
//!
//! // Every error is collected, each with a JSON Pointer into the body.
//! let err = schema.validate(&json!({"age": -1, "email": "nope"})).unwrap_err();
//! assert_eq!(err.len(), 3);
//! let mut pointers: Vec<&str> = err.iter().map(|v| v.instance_path.as_str()).collect();
//! pointers.sort_unstable();
//! assert_eq!(pointers, ["", "/age", "/email"]);
//! assert!(err.iter().all(|v| v.location == Location::Body));
//!
//! // One problem+json body lists them all.
//! let problem = err.to_problem(StatusCode::BAD_REQUEST);
//! let body: serde_json::Value = serde_json::from_str(&problem.to_json()).unwrap();
//! assert_eq!(body["type"], "https://gateway.dev/problems/validation-failed");
//! assert_eq!(body["detail"], "3 errors");
//! assert_eq!(body["errors"].as_array().unwrap().len(), 3);
//! ```
//!
//! Parameters arrive as strings; they are percent-decoded and coerced by the schema's declared
//! `type` before validation:
//!
//! ```
//! use gateway_transform::validate::{ParamLocation, ParamSpec, Schema, validate_params};
//! use http::HeaderMap;
//! use serde_json::json;
//!
//! let specs = [
//!     ParamSpec::new("limit", ParamLocation::Query, Schema::compile(&json!({"type": "integer", "maximum": 100})).unwrap()),
//!     ParamSpec::new("tag", ParamLocation::Query, Schema::compile(&json!({"type": "array", "items": {"type": "string"}})).unwrap()),
//!     ParamSpec::new("petId", ParamLocation::Path, Schema::compile(&json!({"type": "integer"})).unwrap()),
//! ];
//! let path = [("petId".to_owned(), "42".to_owned())];
//! let headers = HeaderMap::new();
//! assert!(validate_params(&specs, Some("limit=10&tag=a%20b&tag=c"), &path, &headers).is_ok());
//!
//! let err = validate_params(&specs, Some("limit=1000"), &[], &headers).unwrap_err();
//! let found: Vec<(&str, &str)> = err.iter().map(|v| (v.location.name().unwrap(), v.keyword.as_str())).collect();
//! assert_eq!(found, [("limit", "maximum"), ("petId", "required")]);
//! ```
//!
//! # Security considerations
//!
//! - Nothing is ever fetched: a `$ref` that does not resolve inside the schema document
//!   (`https://...`, `file:...`, a relative file name) is a compile error, [`SchemaError::ExternalRef`].
//! - Messages never echo the offending value (it could be a credential) and are cut to about
//!   100 characters; pointers are cut to 200. At most [`DEFAULT_MAX_ERRORS`] violations are
//!   listed (configurable), then the list is marked truncated.
//! - Instances nested deeper than [`MAX_DEPTH`] are refused with one violation before any schema
//!   runs (`serde_json`'s own parser stops at 128 levels anyway).
//! - `pattern` uses `fancy-regex` (ECMA-262 look-around works) with a backtracking limit; a
//!   pattern that hits the limit is reported as a `pattern` violation, never as success.
//!
//! # Limits
//!
//! `idn-hostname` and `idn-email` formats are not checked (the `idna` feature of `jsonschema`
//! is off); unknown formats (OpenAPI's `int32`, `binary`, ...) are ignored; `uuid` is checked
//! under every draft, not only from 2019-09 on. Standards: JSON
//! Schema drafts 4 to 2020-12, RFC 6901 (JSON Pointer), RFC 9457 (problem details), RFC 3986
//! percent-encoding and the `application/x-www-form-urlencoded` `+` convention for queries.

use std::{borrow::Cow, fmt, sync::Arc};

use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{HeaderMap, StatusCode};
use jsonschema::{ReferencingError, error::ValidationErrorKind};
use percent_encoding::percent_decode_str;
use serde_json::Value;

/// The problem `type` of a request that failed validation.
pub const VALIDATION_FAILED: &str = "https://gateway.dev/problems/validation-failed";

/// The problem `type` of a request whose body has a media type the operation does not accept.
pub const UNSUPPORTED_MEDIA_TYPE: &str = "https://gateway.dev/problems/unsupported-media-type";

/// How many violations are collected by default before the list is marked truncated.
pub const DEFAULT_MAX_ERRORS: usize = 100;

/// The deepest instance (arrays and objects nested in each other) that is validated.
pub const MAX_DEPTH: usize = 128;

/// Longest message, in characters, a violation carries.
const MAX_MESSAGE_CHARS: usize = 100;
/// Longest instance pointer, in characters, a violation carries.
const MAX_POINTER_CHARS: usize = 200;
/// Longest compile-error message, in characters.
const MAX_COMPILE_MESSAGE_CHARS: usize = 300;
/// Most `$ref` hops followed when looking for a parameter schema's declared `type`.
const MAX_REF_HOPS: usize = 32;
/// Backtracking budget of one `pattern` match against request data.
const REGEX_BACKTRACK_LIMIT: usize = 100_000;

/// A JSON Schema draft.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Draft {
    /// Draft 4 (`http://json-schema.org/draft-04/schema#`): boolean `exclusiveMaximum`.
    Draft4,
    /// Draft 6.
    Draft6,
    /// Draft 7.
    Draft7,
    /// Draft 2019-09.
    Draft201909,
    /// Draft 2020-12, the default: `prefixItems`, `$defs`, `unevaluatedProperties`.
    #[default]
    Draft202012,
}

impl Draft {
    /// The draft a `$schema` URI names (`http` or `https`, with or without the trailing `#`), or
    /// `None` for a meta-schema this module does not know.
    pub fn from_uri(uri: &str) -> Option<Self> {
        match jsonschema::Draft::from_schema_uri(uri) {
            jsonschema::Draft::Draft4 => Some(Self::Draft4),
            jsonschema::Draft::Draft6 => Some(Self::Draft6),
            jsonschema::Draft::Draft7 => Some(Self::Draft7),
            jsonschema::Draft::Draft201909 => Some(Self::Draft201909),
            jsonschema::Draft::Draft202012 => Some(Self::Draft202012),
            _ => None,
        }
    }

    pub(crate) fn lib(self) -> jsonschema::Draft {
        match self {
            Self::Draft4 => jsonschema::Draft::Draft4,
            Self::Draft6 => jsonschema::Draft::Draft6,
            Self::Draft7 => jsonschema::Draft::Draft7,
            Self::Draft201909 => jsonschema::Draft::Draft201909,
            Self::Draft202012 => jsonschema::Draft::Draft202012,
        }
    }

    /// Checks `schema` against this draft's meta-schema.
    pub(crate) fn check_meta(self, schema: &Value) -> Result<(), SchemaError> {
        let result = match self {
            Self::Draft4 => jsonschema::draft4::meta::validate(schema),
            Self::Draft6 => jsonschema::draft6::meta::validate(schema),
            Self::Draft7 => jsonschema::draft7::meta::validate(schema),
            Self::Draft201909 => jsonschema::draft201909::meta::validate(schema),
            Self::Draft202012 => jsonschema::draft202012::meta::validate(schema),
        };
        result.map_err(|e| SchemaError::Invalid {
            pointer: e.instance_path().to_string(),
            message: truncate(&e.to_string(), MAX_COMPILE_MESSAGE_CHARS),
        })
    }
}

/// A schema that cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaError {
    /// A `$ref` points outside the schema document. Nothing is fetched: inline the schema or
    /// move it under `$defs` (`definitions` before 2019-09).
    ExternalRef {
        /// The reference, resolved against the document's base URI.
        reference: String,
    },
    /// `$schema` names a meta-schema other than drafts 4, 6, 7, 2019-09 and 2020-12.
    UnknownDialect {
        /// The `$schema` value.
        uri: String,
    },
    /// The schema is not valid under its draft, or a keyword cannot be compiled (a bad regular
    /// expression, a `$ref` to a place the document does not have).
    Invalid {
        /// JSON Pointer to the offending place in the schema (empty for the root).
        pointer: String,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExternalRef { reference } => write!(
                f,
                "$ref `{reference}` points outside the schema document and external schemas are \
                 never fetched; inline it or move it under $defs"
            ),
            Self::UnknownDialect { uri } => write!(
                f,
                "$schema `{uri}` is not a supported draft (use draft 4, 6, 7, 2019-09 or 2020-12)"
            ),
            Self::Invalid { pointer, message } if pointer.is_empty() => {
                write!(f, "invalid schema: {message}")
            }
            Self::Invalid { pointer, message } => {
                write!(f, "invalid schema at {pointer}: {message}")
            }
        }
    }
}

impl std::error::Error for SchemaError {}

impl SchemaError {
    fn from_build(e: &jsonschema::ValidationError<'static>) -> Self {
        if let ValidationErrorKind::Referencing(r) = e.kind() {
            match r {
                ReferencingError::Unretrievable { uri, .. } => {
                    return Self::ExternalRef {
                        reference: uri.clone(),
                    };
                }
                ReferencingError::UnknownSpecification { specification } => {
                    return Self::UnknownDialect {
                        uri: specification.clone(),
                    };
                }
                _ => {}
            }
        }
        Self::Invalid {
            pointer: e.instance_path().to_string(),
            message: truncate(&e.to_string(), MAX_COMPILE_MESSAGE_CHARS),
        }
    }
}

/// Options for compiling a [`Schema`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaOptions {
    draft: Draft,
    max_errors: usize,
}

impl Default for SchemaOptions {
    fn default() -> Self {
        Self {
            draft: Draft::default(),
            max_errors: DEFAULT_MAX_ERRORS,
        }
    }
}

impl SchemaOptions {
    /// Default options: draft 2020-12 when `$schema` is absent, [`DEFAULT_MAX_ERRORS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The draft used when the schema has no `$schema` (a `$schema` always wins).
    #[must_use]
    pub fn default_draft(mut self, draft: Draft) -> Self {
        self.draft = draft;
        self
    }

    /// How many violations [`Schema::validate`] collects before marking the list truncated
    /// (at least 1).
    #[must_use]
    pub fn max_errors(mut self, max_errors: usize) -> Self {
        self.max_errors = max_errors.max(1);
        self
    }

    /// Compiles `schema`.
    ///
    /// # Errors
    ///
    /// [`SchemaError::UnknownDialect`] for an unsupported `$schema`, [`SchemaError::ExternalRef`]
    /// for a `$ref` outside the document, [`SchemaError::Invalid`] for a schema its draft's
    /// meta-schema rejects or that cannot be compiled.
    pub fn compile(&self, schema: &Value) -> Result<Schema, SchemaError> {
        let draft = match schema.get("$schema") {
            None => self.draft,
            Some(Value::String(uri)) => Draft::from_uri(uri)
                .ok_or_else(|| SchemaError::UnknownDialect { uri: uri.clone() })?,
            Some(_) => {
                return Err(SchemaError::Invalid {
                    pointer: "/$schema".to_owned(),
                    message: "$schema must be a string".to_owned(),
                });
            }
        };
        let validator = build(schema, draft, None)?;
        Ok(Schema::from_parts(
            Some(validator),
            shape_of(schema, schema),
            draft,
            self.max_errors,
        ))
    }
}

fn build(
    schema: &Value,
    draft: Draft,
    registry: Option<&jsonschema::Registry<'_>>,
) -> Result<jsonschema::Validator, SchemaError> {
    let mut options = jsonschema::options()
        .with_draft(draft.lib())
        .should_validate_formats(true)
        // Drafts before 2019-09 do not know `uuid`; OpenAPI 3.0 documents use it all the time.
        .with_format("uuid", is_uuid)
        .offline()
        .with_pattern_options(
            jsonschema::PatternOptions::fancy_regex().backtrack_limit(REGEX_BACKTRACK_LIMIT),
        );
    if let Some(registry) = registry {
        options = options.with_registry(registry);
    }
    options
        .build(schema)
        .map_err(|e| SchemaError::from_build(&e))
}

/// `8-4-4-4-12` hexadecimal digits (RFC 9562's textual form, any version).
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A compiled JSON Schema: compile once, validate many.
///
/// Cheap to clone (an [`Arc`]), `Send` and `Sync`.
#[derive(Clone)]
pub struct Schema(Arc<Inner>);

struct Inner {
    /// `None` for [`Schema::any`].
    validator: Option<jsonschema::Validator>,
    shape: Shape,
    draft: Draft,
    max_errors: usize,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("draft", &self.0.draft)
            .field("shape", &self.0.shape)
            .field("max_errors", &self.0.max_errors)
            .finish_non_exhaustive()
    }
}

impl Schema {
    /// Compiles `schema` with default [`SchemaOptions`].
    ///
    /// # Errors
    ///
    /// See [`SchemaOptions::compile`].
    pub fn compile(schema: &Value) -> Result<Self, SchemaError> {
        SchemaOptions::default().compile(schema)
    }

    /// Options to compile with (a default draft, an error cap).
    pub fn options() -> SchemaOptions {
        SchemaOptions::default()
    }

    /// A schema every value satisfies (like `{}`), with no validator behind it.
    pub fn any() -> Self {
        Self::from_parts(
            None,
            Shape::Scalar(Scalars::default()),
            Draft::default(),
            DEFAULT_MAX_ERRORS,
        )
    }

    /// Compiles the schema at `pointer` inside a document registered in `registry` under
    /// `base_uri` (`doc` is the same document, read to find a parameter's declared `type`).
    pub(crate) fn compile_in_document(
        registry: &jsonschema::Registry<'_>,
        base_uri: &str,
        doc: &Value,
        pointer: &str,
        draft: Draft,
    ) -> Result<Self, SchemaError> {
        let target = doc.pointer(pointer).unwrap_or(&Value::Null);
        let fragment = percent_encoding::utf8_percent_encode(pointer, FRAGMENT).to_string();
        let wrapper = serde_json::json!({ "$ref": format!("{base_uri}#{fragment}") });
        let validator = build(&wrapper, draft, Some(registry))?;
        Ok(Self::from_parts(
            Some(validator),
            shape_of(doc, target),
            draft,
            DEFAULT_MAX_ERRORS,
        ))
    }

    /// Compiles the schemas at `pointers` in one build (shared `$ref` targets compile once), to
    /// find errors; nothing is kept.
    pub(crate) fn check_in_document(
        registry: &jsonschema::Registry<'_>,
        base_uri: &str,
        pointers: &[String],
        draft: Draft,
    ) -> Result<(), SchemaError> {
        if pointers.is_empty() {
            return Ok(());
        }
        let refs: Vec<Value> = pointers
            .iter()
            .map(|p| {
                let fragment = percent_encoding::utf8_percent_encode(p, FRAGMENT);
                serde_json::json!({ "$ref": format!("{base_uri}#{fragment}") })
            })
            .collect();
        build(&serde_json::json!({ "anyOf": refs }), draft, Some(registry)).map(drop)
    }

    fn from_parts(
        validator: Option<jsonschema::Validator>,
        shape: Shape,
        draft: Draft,
        max_errors: usize,
    ) -> Self {
        Self(Arc::new(Inner {
            validator,
            shape,
            draft,
            max_errors,
        }))
    }

    /// The draft the schema was compiled under.
    pub fn draft(&self) -> Draft {
        self.0.draft
    }

    /// Whether `instance` is valid (stops at the first error).
    pub fn is_valid(&self, instance: &Value) -> bool {
        match &self.0.validator {
            None => true,
            Some(v) => !exceeds_depth(instance, MAX_DEPTH) && v.is_valid(instance),
        }
    }

    /// Validates a request body, collecting every violation (up to the cap set with
    /// [`SchemaOptions::max_errors`]), each located in [`Location::Body`].
    ///
    /// # Errors
    ///
    /// The [`Violations`], when there is at least one.
    pub fn validate(&self, instance: &Value) -> Result<(), Violations> {
        self.validate_in(instance, &Location::Body)
    }

    /// Like [`Schema::validate`], with every violation located in `location` (a parameter's
    /// value validated on its own, say).
    ///
    /// # Errors
    ///
    /// The [`Violations`], when there is at least one.
    pub fn validate_in(&self, instance: &Value, location: &Location) -> Result<(), Violations> {
        let mut out = Collector::new(self.0.max_errors);
        self.collect(instance, location, &mut out);
        out.finish()
    }

    pub(crate) fn collect(&self, instance: &Value, location: &Location, out: &mut Collector) {
        let Some(validator) = &self.0.validator else {
            return;
        };
        if exceeds_depth(instance, MAX_DEPTH) {
            out.push(Violation {
                instance_path: String::new(),
                keyword: "depth".to_owned(),
                message: format!("value nests deeper than {MAX_DEPTH} levels"),
                location: location.clone(),
            });
            return;
        }
        for error in validator.iter_errors(instance) {
            let pushed = out.push(Violation {
                instance_path: truncate(error.instance_path().as_str(), MAX_POINTER_CHARS),
                keyword: error.kind().keyword().to_owned(),
                message: truncate(&error.masked().to_string(), MAX_MESSAGE_CHARS),
                location: location.clone(),
            });
            if !pushed {
                break;
            }
        }
    }
}

/// Characters escaped when a JSON Pointer becomes a URI fragment.
const FRAGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'~')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// Whether `value` nests arrays and objects more than `limit` levels deep (no recursion).
fn exceeds_depth(value: &Value, limit: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => {
                if depth >= limit {
                    return true;
                }
                stack.extend(items.iter().map(|c| (c, depth + 1)));
            }
            Value::Object(map) => {
                if depth >= limit {
                    return true;
                }
                stack.extend(map.values().map(|c| (c, depth + 1)));
            }
            _ => {}
        }
    }
    false
}

/// Cuts `s` to `max` characters, marking a cut with `…`.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((end, _)) => {
            let mut out = String::with_capacity(end + 3);
            out.push_str(s.get(..end).unwrap_or_default());
            out.push('…');
            out
        }
    }
}

/// Where in the request a violation is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Location {
    /// The JSON body.
    Body,
    /// A query parameter.
    Query(String),
    /// A path parameter.
    Path(String),
    /// A header (lowercase name).
    Header(String),
}

impl Location {
    /// `body`, `query`, `path` or `header`: the problem body's `in`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Query(_) => "query",
            Self::Path(_) => "path",
            Self::Header(_) => "header",
        }
    }

    /// The parameter's name (`None` for the body).
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Body => None,
            Self::Query(n) | Self::Path(n) | Self::Header(n) => Some(n),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} parameter `{name}`", self.as_str()),
            None => f.write_str("body"),
        }
    }
}

/// One way the request breaks its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// JSON Pointer (RFC 6901) into the value at `location`: `""` for the value itself,
    /// `/items/0/name` deeper in. Cut to 200 characters.
    pub instance_path: String,
    /// The JSON Schema keyword that failed (`type`, `required`, `format`, ...), or one of this
    /// module's: `required` (a missing parameter or body), `encoding` (not UTF-8), `repeated`
    /// (a single-valued query parameter given twice), `depth`, `mediaType` (a body the operation
    /// does not accept).
    pub keyword: String,
    /// A human-readable explanation that never contains the offending value; at most about 100
    /// characters.
    pub message: String,
    /// Where the value is.
    pub location: Location,
}

impl Violation {
    pub(crate) fn new(location: Location, keyword: &str, message: impl Into<String>) -> Self {
        Self {
            instance_path: String::new(),
            keyword: keyword.to_owned(),
            message: message.into(),
            location,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if !self.instance_path.is_empty() {
            write!(f, " at {}", self.instance_path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every violation found in a request (up to a cap), with a problem+json rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    items: Vec<Violation>,
    truncated: bool,
    unsupported_media_type: bool,
}

impl Violations {
    /// A single "media type not accepted" violation; [`Violations::status`] is 415.
    pub(crate) fn unsupported_media_type(violation: Violation) -> Self {
        Self {
            items: vec![violation],
            truncated: false,
            unsupported_media_type: true,
        }
    }

    /// How many violations were collected.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none (never the case for an `Err` this module returns).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The violations, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, Violation> {
        self.items.iter()
    }

    /// The violations as a slice.
    pub fn as_slice(&self) -> &[Violation] {
        &self.items
    }

    /// Whether more violations existed than were collected.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Whether the request was refused for its body's media type (answer 415, not 400).
    pub fn is_unsupported_media_type(&self) -> bool {
        self.unsupported_media_type
    }

    /// The status to answer with: 415 for an unaccepted media type, 400 otherwise.
    pub fn status(&self) -> StatusCode {
        if self.unsupported_media_type {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else {
            StatusCode::BAD_REQUEST
        }
    }

    fn summary(&self) -> String {
        match (self.items.len(), self.truncated) {
            (n, true) => format!("more than {n} errors; the first {n} are listed"),
            (1, false) => "1 error".to_owned(),
            (n, false) => format!("{n} errors"),
        }
    }

    /// An RFC 9457 problem: `type` [`VALIDATION_FAILED`] (or [`UNSUPPORTED_MEDIA_TYPE`]), a
    /// title, `detail` `"N errors"`, an `errors` array of
    /// `{"in", "name"?, "pointer", "keyword", "detail"}` and, when the list was cut,
    /// `"truncated": true`. The rejection reason is [`RejectReason::BadRequest`].
    pub fn to_problem(&self, status: StatusCode) -> Problem {
        let errors: Vec<Value> = self
            .items
            .iter()
            .map(|v| {
                let mut member = serde_json::Map::new();
                member.insert("in".to_owned(), v.location.as_str().into());
                if let Some(name) = v.location.name() {
                    member.insert("name".to_owned(), name.into());
                }
                member.insert("pointer".to_owned(), v.instance_path.as_str().into());
                member.insert("keyword".to_owned(), v.keyword.as_str().into());
                member.insert("detail".to_owned(), v.message.as_str().into());
                Value::Object(member)
            })
            .collect();
        let (type_uri, title) = if self.unsupported_media_type {
            (UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
        } else {
            (VALIDATION_FAILED, "Request validation failed")
        };
        let mut problem = Problem::new(status)
            .type_uri(type_uri)
            .title(title)
            .detail(self.summary())
            .extension_json("errors", Value::Array(errors).to_string());
        if self.truncated {
            problem = problem.extension_json("truncated", "true");
        }
        problem.reason(
            RejectReason::BadRequest,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        )
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        for (i, v) in self.items.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl<'a> IntoIterator for &'a Violations {
    type Item = &'a Violation;
    type IntoIter = std::slice::Iter<'a, Violation>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Collects violations up to a cap.
#[derive(Debug)]
pub(crate) struct Collector {
    violations: Violations,
    cap: usize,
}

impl Collector {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            violations: Violations::default(),
            cap: cap.max(1),
        }
    }

    /// Adds `v`; `false` (and the list marked truncated) when the cap is reached.
    pub(crate) fn push(&mut self, v: Violation) -> bool {
        if self.violations.items.len() >= self.cap {
            self.violations.truncated = true;
            return false;
        }
        self.violations.items.push(v);
        true
    }

    pub(crate) fn finish(self) -> Result<(), Violations> {
        if self.violations.items.is_empty() {
            Ok(())
        } else {
            Err(self.violations)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters

/// Where a parameter is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamLocation {
    /// The query string.
    Query,
    /// A path template variable.
    Path,
    /// A request header.
    Header,
}

/// How an array parameter is serialized (OpenAPI's `style`; scalars are the same in every style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamStyle {
    /// Query: with `explode`, one item per repeated key (`id=1&id=2`); without, `id=1,2`.
    Form,
    /// Path and header: comma-separated (`1,2`).
    Simple,
    /// Query: space-separated (`id=1%202`), one key.
    SpaceDelimited,
    /// Query: pipe-separated (`id=1|2`), one key.
    PipeDelimited,
}

/// A parameter to validate: where it is, whether it must be there, and its schema.
///
/// The schema's declared `type` (following local `$ref`s) decides how the raw string is
/// coerced: `integer`, `number`, `boolean`, `string`, or `array` of those (`items.type`);
/// anything else is validated as a string.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ParamSpec {
    /// The name (header names are matched case-insensitively).
    pub name: String,
    /// Where it is read from.
    pub location: ParamLocation,
    /// Whether a request without it is invalid (always `true` for path parameters).
    pub required: bool,
    /// Its schema.
    pub schema: Schema,
    /// How an array value is split.
    pub style: ParamStyle,
    /// With [`ParamStyle::Form`], whether each item is its own `key=value` pair.
    pub explode: bool,
}

impl ParamSpec {
    /// A parameter with the default style of its location (query: form, exploded; path and
    /// header: simple); required only in the path.
    pub fn new(name: impl Into<String>, location: ParamLocation, schema: Schema) -> Self {
        let mut name = name.into();
        if location == ParamLocation::Header {
            name.make_ascii_lowercase();
        }
        let (style, explode) = match location {
            ParamLocation::Query => (ParamStyle::Form, true),
            ParamLocation::Path | ParamLocation::Header => (ParamStyle::Simple, false),
        };
        Self {
            name,
            location,
            required: location == ParamLocation::Path,
            schema,
            style,
            explode,
        }
    }

    /// Sets whether the parameter must be present (path parameters always must).
    #[must_use]
    pub fn required(mut self, required: bool) -> Self {
        self.required = required || self.location == ParamLocation::Path;
        self
    }

    /// Sets how an array value is split.
    #[must_use]
    pub fn style(mut self, style: ParamStyle, explode: bool) -> Self {
        self.style = style;
        self.explode = explode;
        self
    }

    fn location_of(&self) -> Location {
        match self.location {
            ParamLocation::Query => Location::Query(self.name.clone()),
            ParamLocation::Path => Location::Path(self.name.clone()),
            ParamLocation::Header => Location::Header(self.name.clone()),
        }
    }
}

/// Validates parameters: every spec's value is found, percent-decoded (query `+` is a space;
/// headers are taken as they are), coerced by its schema's `type` and validated.
///
/// `query` is the raw query string (no `?`), `path_params` the raw (still percent-encoded)
/// template values, as [`crate::openapi::OpenApi::find`] returns them. Parameters the specs do not
/// name are ignored. A missing required parameter, a value that is not UTF-8 after decoding, and a
/// single-valued query parameter given more than once are violations. At most
/// [`DEFAULT_MAX_ERRORS`] are collected.
///
/// # Errors
///
/// The [`Violations`], when there is at least one.
pub fn validate_params(
    specs: &[ParamSpec],
    query: Option<&str>,
    path_params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(), Violations> {
    let mut out = Collector::new(DEFAULT_MAX_ERRORS);
    collect_params(specs, query, path_params, headers, &mut out);
    out.finish()
}

pub(crate) fn collect_params(
    specs: &[ParamSpec],
    query: Option<&str>,
    path_params: &[(String, String)],
    headers: &HeaderMap,
    out: &mut Collector,
) {
    let pairs = query.map(parse_query).unwrap_or_default();
    for spec in specs {
        let location = spec.location_of();
        let raw: Vec<&str> = match spec.location {
            ParamLocation::Query => pairs
                .iter()
                .filter(|(name, _)| *name == spec.name.as_str())
                .map(|(_, value)| *value)
                .collect(),
            ParamLocation::Path => path_params
                .iter()
                .find(|(name, _)| *name == spec.name)
                .map(|(_, value)| value.as_str())
                .into_iter()
                .collect(),
            ParamLocation::Header => {
                let values: Result<Vec<&str>, _> = headers
                    .get_all(spec.name.as_str())
                    .iter()
                    .map(|v| std::str::from_utf8(v.as_bytes()))
                    .collect();
                let Ok(values) = values else {
                    out.push(Violation::new(
                        location,
                        "encoding",
                        "header value is not valid UTF-8",
                    ));
                    continue;
                };
                values
            }
        };
        let Some(&first) = raw.first() else {
            if spec.required {
                out.push(Violation::new(
                    location,
                    "required",
                    format!(
                        "required {} parameter is missing",
                        location_word(spec.location)
                    ),
                ));
            }
            continue;
        };
        let value = match spec.schema.0.shape {
            Shape::Array(items) => {
                let Some(strings) = split_items(spec, &raw, &location, out) else {
                    continue;
                };
                let mut values = Vec::with_capacity(strings.len());
                let mut bad = false;
                for (i, item) in strings.into_iter().enumerate() {
                    match item {
                        Some(s) => values.push(coerce(s, items)),
                        None => {
                            let mut v = Violation::new(
                                location.clone(),
                                "encoding",
                                "value is not valid UTF-8 after percent-decoding",
                            );
                            v.instance_path = format!("/{i}");
                            out.push(v);
                            bad = true;
                        }
                    }
                }
                if bad {
                    continue;
                }
                Value::Array(values)
            }
            Shape::Scalar(kinds) => {
                let text = match spec.location {
                    ParamLocation::Header => Some(Cow::Owned(raw.join(", "))),
                    ParamLocation::Query => {
                        if raw.len() > 1 {
                            out.push(Violation::new(
                                location,
                                "repeated",
                                "query parameter must appear at most once",
                            ));
                            continue;
                        }
                        decode(first, true)
                    }
                    ParamLocation::Path => decode(first, false),
                };
                let Some(text) = text else {
                    out.push(Violation::new(
                        location,
                        "encoding",
                        "value is not valid UTF-8 after percent-decoding",
                    ));
                    continue;
                };
                coerce(text.into_owned(), kinds)
            }
        };
        spec.schema.collect(&value, &location, out);
    }
}

fn location_word(location: ParamLocation) -> &'static str {
    match location {
        ParamLocation::Query => "query",
        ParamLocation::Path => "path",
        ParamLocation::Header => "header",
    }
}

/// Splits an array parameter's raw values into decoded items (`None` for an item that is not
/// UTF-8). `None` when the parameter was given in a way its style forbids (reported).
fn split_items(
    spec: &ParamSpec,
    raw: &[&str],
    location: &Location,
    out: &mut Collector,
) -> Option<Vec<Option<String>>> {
    let decoded = |s: &str, plus: bool| decode(s, plus).map(Cow::into_owned);
    match spec.location {
        ParamLocation::Query => {
            if spec.style == ParamStyle::Form && spec.explode {
                return Some(raw.iter().map(|s| decoded(s, true)).collect());
            }
            if raw.len() > 1 {
                out.push(Violation::new(
                    location.clone(),
                    "repeated",
                    "query parameter must appear at most once (items are delimited)",
                ));
                return None;
            }
            let one = raw.first().copied().unwrap_or_default();
            Some(match spec.style {
                // Split before decoding, so an encoded `%2C` stays inside its item.
                ParamStyle::Form | ParamStyle::Simple => {
                    one.split(',').map(|s| decoded(s, true)).collect()
                }
                ParamStyle::SpaceDelimited => match decode(one, true) {
                    Some(text) => text.split(' ').map(|s| Some(s.to_owned())).collect(),
                    None => vec![None],
                },
                ParamStyle::PipeDelimited => match decode(one, true) {
                    Some(text) => text.split('|').map(|s| Some(s.to_owned())).collect(),
                    None => vec![None],
                },
            })
        }
        ParamLocation::Path => Some(
            raw.first()
                .copied()
                .unwrap_or_default()
                .split(',')
                .map(|s| decoded(s, false))
                .collect(),
        ),
        ParamLocation::Header => Some(
            raw.iter()
                .flat_map(|v| v.split(','))
                .map(|s| Some(s.trim_matches([' ', '\t']).to_owned()))
                .collect(),
        ),
    }
}

/// Splits a raw query into `(decoded name, raw value)` pairs; pairs whose name is not UTF-8
/// cannot name a parameter and are dropped.
fn parse_query(query: &str) -> Vec<(Cow<'_, str>, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            decode(name, true).map(|name| (name, value))
        })
        .collect()
}

/// Percent-decodes `s` (with `plus`, `+` first becomes a space); `None` when the result is not
/// UTF-8.
fn decode(s: &str, plus: bool) -> Option<Cow<'_, str>> {
    if !s.contains('%') && (!plus || !s.contains('+')) {
        return Some(Cow::Borrowed(s));
    }
    let spaced: Cow<'_, str> = if plus && s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    let bytes: Vec<u8> = percent_decode_str(&spaced).collect();
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// The JSON types a parameter's string may be coerced to (string is always the fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scalars {
    boolean: bool,
    integer: bool,
    number: bool,
}

/// A parameter schema's shape: one value, or an array of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Scalar(Scalars),
    Array(Scalars),
}

fn coerce(s: String, kinds: Scalars) -> Value {
    if kinds.boolean {
        match s.as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    if kinds.integer || kinds.number {
        if let Ok(i) = s.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = s.parse::<u64>() {
            return Value::from(u);
        }
        if let Ok(f) = s.parse::<f64>()
            && let Some(n) = serde_json::Number::from_f64(f)
        {
            // Non-finite values (`inf`, `NaN`, `1e999`) have no JSON number and stay strings.
            return Value::Number(n);
        }
    }
    Value::String(s)
}

/// Follows local `$ref`s (`#/...`, resolved in `root`) from `schema` while it declares no `type`.
fn deref<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..MAX_REF_HOPS {
        let Some(obj) = schema.as_object() else {
            break;
        };
        if obj.contains_key("type") {
            break;
        }
        let Some(fragment) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        else {
            break;
        };
        let Some(pointer) = decode(fragment, false) else {
            break;
        };
        match root.pointer(&pointer) {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

fn scalars_of(schema: &Value) -> Scalars {
    let mut kinds = Scalars::default();
    for t in type_names(schema) {
        match t {
            "boolean" => kinds.boolean = true,
            "integer" => kinds.integer = true,
            "number" => kinds.number = true,
            _ => {}
        }
    }
    kinds
}

fn type_names(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// How a parameter with `schema` (refs resolved in `root`) is coerced.
pub(crate) fn shape_of(root: &Value, schema: &Value) -> Shape {
    let schema = deref(root, schema);
    if type_names(schema).contains(&"array") {
        let items = schema
            .get("items")
            .map_or(Scalars::default(), |items| scalars_of(deref(root, items)));
        Shape::Array(items)
    } else {
        Shape::Scalar(scalars_of(schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn compile(v: &Value) -> Schema {
        Schema::compile(v).unwrap()
    }

    fn keywords(v: &Violations) -> Vec<&str> {
        v.iter().map(|v| v.keyword.as_str()).collect()
    }

    #[test]
    fn draft4_boolean_exclusive_maximum_excludes_the_limit() {
        let s = compile(&json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "number", "maximum": 10, "exclusiveMaximum": true
        }));
        assert_eq!(s.draft(), Draft::Draft4);
        assert!(s.validate(&json!(9.5)).is_ok());
        let err = s.validate(&json!(10)).unwrap_err();
        assert_eq!(keywords(&err), ["exclusiveMaximum"]);
        // The same keyword is a number in 2020-12: a boolean there is a schema error.
        assert!(matches!(
            Schema::compile(&json!({"maximum": 10, "exclusiveMaximum": true})),
            Err(SchemaError::Invalid { ref pointer, .. }) if pointer == "/exclusiveMaximum"
        ));
    }

    #[test]
    fn draft4_can_be_the_default_for_schemas_without_dollar_schema() {
        let s = Schema::options()
            .default_draft(Draft::Draft4)
            .compile(&json!({"maximum": 10, "exclusiveMaximum": true}))
            .unwrap();
        assert_eq!(s.draft(), Draft::Draft4);
        assert!(s.validate(&json!(10)).is_err());
        // `$schema` still wins over the default.
        let s = Schema::options()
            .default_draft(Draft::Draft4)
            .compile(&json!({"$schema": "https://json-schema.org/draft/2020-12/schema"}))
            .unwrap();
        assert_eq!(s.draft(), Draft::Draft202012);
    }

    #[test]
    fn draft_2020_12_prefix_items_are_positional() {
        let s = compile(&json!({
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": false
        }));
        assert_eq!(s.draft(), Draft::Draft202012);
        assert!(s.validate(&json!(["a", 1])).is_ok());
        let err = s.validate(&json!([1, "a", true])).unwrap_err();
        let mut found: Vec<(&str, &str)> = err
            .iter()
            .map(|v| (v.instance_path.as_str(), v.keyword.as_str()))
            .collect();
        found.sort_unstable();
        assert_eq!(
            found,
            [("/0", "type"), ("/1", "type"), ("/2", "falseSchema")]
        );
    }

    #[test]
    fn drafts_6_7_and_2019_09_are_chosen_by_dollar_schema() {
        for (uri, draft) in [
            ("http://json-schema.org/draft-06/schema#", Draft::Draft6),
            ("http://json-schema.org/draft-07/schema#", Draft::Draft7),
            (
                "https://json-schema.org/draft/2019-09/schema",
                Draft::Draft201909,
            ),
        ] {
            assert_eq!(compile(&json!({"$schema": uri})).draft(), draft);
        }
    }

    #[test]
    fn every_error_is_collected_with_its_pointer() {
        let s = compile(&json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string", "minLength": 2},
                "tags": {"type": "array", "items": {"type": "string"}}
            }
        }));
        let err = s
            .validate(&json!({"id": "x", "name": "a", "tags": ["ok", 5]}))
            .unwrap_err();
        assert_eq!(err.len(), 3);
        let mut found: Vec<(&str, &str)> = err
            .iter()
            .map(|v| (v.instance_path.as_str(), v.keyword.as_str()))
            .collect();
        found.sort_unstable();
        assert_eq!(
            found,
            [("/id", "type"), ("/name", "minLength"), ("/tags/1", "type")]
        );
        assert!(!err.is_truncated());
    }

    #[test]
    fn errors_past_the_cap_mark_the_list_truncated() {
        let s = Schema::options()
            .max_errors(5)
            .compile(&json!({"type": "array", "items": {"type": "string"}}))
            .unwrap();
        let err = s.validate(&json!((0..50).collect::<Vec<_>>())).unwrap_err();
        assert_eq!(err.len(), 5);
        assert!(err.is_truncated());
        let body: Value =
            serde_json::from_str(&err.to_problem(StatusCode::BAD_REQUEST).to_json()).unwrap();
        assert_eq!(body["truncated"], true);
        assert_eq!(body["detail"], "more than 5 errors; the first 5 are listed");
        // Exactly at the cap is not truncated.
        let err = s.validate(&json!([1, 2, 3, 4, 5])).unwrap_err();
        assert!(!err.is_truncated());
    }

    #[test]
    fn remote_and_file_refs_are_refused_at_compile_time() {
        for (schema, reference) in [
            (
                json!({"$ref": "https://example.com/pet.json"}),
                "https://example.com/pet.json",
            ),
            (
                json!({"properties": {"a": {"$ref": "file:///etc/passwd"}}}),
                "file:///etc/passwd",
            ),
        ] {
            let err = Schema::compile(&schema).unwrap_err();
            assert_eq!(
                err,
                SchemaError::ExternalRef {
                    reference: reference.to_owned()
                }
            );
            assert!(err.to_string().contains(reference));
        }
        // A relative name resolves outside the document too.
        assert!(matches!(
            Schema::compile(&json!({"$ref": "pet.json"})),
            Err(SchemaError::ExternalRef { .. })
        ));
        // Local references are fine.
        let s = compile(&json!({"$defs": {"id": {"type": "integer"}}, "$ref": "#/$defs/id"}));
        assert!(s.validate(&json!("x")).is_err());
    }

    #[test]
    fn unknown_dialects_and_broken_local_refs_are_compile_errors() {
        assert_eq!(
            Schema::compile(&json!({"$schema": "https://example.com/meta"})).unwrap_err(),
            SchemaError::UnknownDialect {
                uri: "https://example.com/meta".to_owned()
            }
        );
        assert!(matches!(
            Schema::compile(&json!({"$ref": "#/$defs/missing"})),
            Err(SchemaError::Invalid { .. })
        ));
        assert!(matches!(
            Schema::compile(&json!({"type": "strin"})),
            Err(SchemaError::Invalid { ref pointer, .. }) if pointer == "/type"
        ));
    }

    #[test]
    fn formats_are_asserted() {
        let s = compile(&json!({"type": "string", "format": "date-time"}));
        assert!(s.validate(&json!("2024-01-02T03:04:05Z")).is_ok());
        let err = s.validate(&json!("yesterday")).unwrap_err();
        assert_eq!(keywords(&err), ["format"]);
        // `uuid` even in draft 4; unknown formats are annotations.
        let s = Schema::options()
            .default_draft(Draft::Draft4)
            .compile(&json!({"properties": {"id": {"format": "uuid"}, "n": {"format": "int32"}}}))
            .unwrap();
        assert!(
            s.validate(&json!({"id": "3F2C8A8E-1b2d-4c5e-9f00-0a1b2c3d4e5f", "n": "x"}))
                .is_ok()
        );
        let err = s
            .validate(&json!({"id": "3f2c8a8e-1b2d-4c5e-9f00-0a1b2c3d4e5"}))
            .unwrap_err();
        assert_eq!(keywords(&err), ["format"]);
    }

    #[test]
    fn messages_never_echo_the_value_and_are_short() {
        let secret = "hunter2-".repeat(200);
        let s = compile(&json!({
            "type": "object",
            "properties": {"p": {"type": "string", "format": "email"}, "q": {"type": "integer"}},
            "additionalProperties": false
        }));
        let long_key = "k".repeat(5000);
        let err = s
            .validate(&json!({"p": secret, "q": secret, long_key: 1}))
            .unwrap_err();
        assert_eq!(err.len(), 3);
        for v in &err {
            assert!(!v.message.contains("hunter2"), "{}", v.message);
            assert!(v.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        }
        let additional = err
            .iter()
            .find(|v| v.keyword == "additionalProperties")
            .unwrap();
        assert!(additional.message.ends_with('…'));
    }

    #[test]
    fn over_deep_instances_are_refused_without_recursing() {
        let s = compile(
            &json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}),
        );
        let mut deep = json!([]);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        let err = s.validate(&deep).unwrap_err();
        assert_eq!(keywords(&err), ["depth"]);
        assert!(!s.is_valid(&deep));
        let mut ok = json!([]);
        for _ in 0..MAX_DEPTH - 1 {
            ok = json!([ok]);
        }
        assert!(s.validate(&ok).is_ok());
    }

    #[test]
    fn problem_body_has_the_rfc_9457_shape() {
        let s = compile(
            &json!({"type": "object", "required": ["a"], "properties": {"b": {"type": "integer"}}}),
        );
        let err = s.validate(&json!({"b": "x"})).unwrap_err();
        let problem = err.to_problem(StatusCode::UNPROCESSABLE_ENTITY);
        let res: http::Response<String> = problem.into_response();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(body["type"], VALIDATION_FAILED);
        assert_eq!(body["title"], "Request validation failed");
        assert_eq!(body["status"], 422);
        assert_eq!(body["detail"], "2 errors");
        let errors = body["errors"].as_array().unwrap();
        let b = errors.iter().find(|e| e["pointer"] == "/b").unwrap();
        assert_eq!(b["in"], "body");
        assert_eq!(b["keyword"], "type");
        assert!(b.get("name").is_none());
        assert!(b["detail"].as_str().unwrap().contains("integer"));
        let a = errors.iter().find(|e| e["keyword"] == "required").unwrap();
        assert_eq!(a["pointer"], "");
        let rejection = res.extensions().get::<gateway_core::Rejection>().unwrap();
        assert_eq!(rejection.reason, RejectReason::BadRequest);
    }

    fn int() -> Schema {
        compile(&json!({"type": "integer", "minimum": 1}))
    }

    #[test]
    fn query_values_are_coerced_by_declared_type() {
        let specs = [
            ParamSpec::new("limit", ParamLocation::Query, int()),
            ParamSpec::new(
                "verbose",
                ParamLocation::Query,
                compile(&json!({"type": "boolean"})),
            ),
            ParamSpec::new(
                "ratio",
                ParamLocation::Query,
                compile(&json!({"type": "number", "maximum": 1})),
            ),
            ParamSpec::new(
                "name",
                ParamLocation::Query,
                compile(&json!({"type": "string", "maxLength": 3})),
            ),
        ];
        let h = HeaderMap::new();
        assert!(
            validate_params(
                &specs,
                Some("limit=5&verbose=true&ratio=0.5&name=007"),
                &[],
                &h
            )
            .is_ok()
        );
        let err = validate_params(
            &specs,
            Some("limit=x&verbose=yes&ratio=2&name=abcd"),
            &[],
            &h,
        )
        .unwrap_err();
        let found: Vec<(&str, &str)> = err
            .iter()
            .map(|v| (v.location.name().unwrap(), v.keyword.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("limit", "type"),
                ("verbose", "type"),
                ("ratio", "maximum"),
                ("name", "maxLength")
            ]
        );
        // A fraction is not an integer; a huge exponent is not a number at all.
        let err = validate_params(&specs[..1], Some("limit=1.5"), &[], &h).unwrap_err();
        assert_eq!(keywords(&err), ["type"]);
        let err = validate_params(&specs[2..3], Some("ratio=1e999"), &[], &h).unwrap_err();
        assert_eq!(keywords(&err), ["type"]);
    }

    #[test]
    fn exploded_query_arrays_collect_repeated_keys() {
        let spec = ParamSpec::new(
            "id",
            ParamLocation::Query,
            compile(&json!({"type": "array", "items": {"type": "integer"}, "maxItems": 3})),
        );
        let h = HeaderMap::new();
        assert!(
            validate_params(std::slice::from_ref(&spec), Some("id=1&x=y&id=2"), &[], &h).is_ok()
        );
        let err =
            validate_params(std::slice::from_ref(&spec), Some("id=1&id=two"), &[], &h).unwrap_err();
        assert_eq!(err.as_slice()[0].instance_path, "/1");
        assert_eq!(err.as_slice()[0].keyword, "type");
        let err = validate_params(&[spec], Some("id=1&id=2&id=3&id=4"), &[], &h).unwrap_err();
        assert_eq!(keywords(&err), ["maxItems"]);
    }

    #[test]
    fn delimited_query_arrays_split_one_value() {
        let items = || compile(&json!({"type": "array", "items": {"type": "integer"}}));
        let h = HeaderMap::new();
        let form =
            ParamSpec::new("id", ParamLocation::Query, items()).style(ParamStyle::Form, false);
        assert!(validate_params(std::slice::from_ref(&form), Some("id=1,2,3"), &[], &h).is_ok());
        let err = validate_params(&[form], Some("id=1&id=2"), &[], &h).unwrap_err();
        assert_eq!(keywords(&err), ["repeated"]);
        let pipe = ParamSpec::new("id", ParamLocation::Query, items())
            .style(ParamStyle::PipeDelimited, false);
        assert!(validate_params(&[pipe], Some("id=1%7C2"), &[], &h).is_ok());
        let space = ParamSpec::new("id", ParamLocation::Query, items())
            .style(ParamStyle::SpaceDelimited, false);
        assert!(validate_params(&[space], Some("id=1+2%203"), &[], &h).is_ok());
    }

    #[test]
    fn header_and_path_arrays_are_comma_separated() {
        let items =
            || compile(&json!({"type": "array", "items": {"type": "integer"}, "minItems": 3}));
        let specs = [
            ParamSpec::new("X-Ids", ParamLocation::Header, items()),
            ParamSpec::new("ids", ParamLocation::Path, items()),
        ];
        let mut h = HeaderMap::new();
        h.append("x-ids", HeaderValue::from_static("1, 2"));
        h.append("x-ids", HeaderValue::from_static("3"));
        let path = [("ids".to_owned(), "4,5,6".to_owned())];
        assert!(validate_params(&specs, None, &path, &h).is_ok());
        let path = [("ids".to_owned(), "4,x".to_owned())];
        let err = validate_params(&specs, None, &path, &h).unwrap_err();
        let mut found: Vec<(&str, &str)> = err
            .iter()
            .map(|v| (v.instance_path.as_str(), v.keyword.as_str()))
            .collect();
        found.sort_unstable();
        assert_eq!(found, [("", "minItems"), ("/1", "type")]);
        assert_eq!(err.as_slice()[0].location, Location::Path("ids".to_owned()));
    }

    #[test]
    fn missing_required_parameters_are_violations() {
        let specs = [
            ParamSpec::new("q", ParamLocation::Query, Schema::any()).required(true),
            ParamSpec::new("x-tenant", ParamLocation::Header, Schema::any()).required(true),
            ParamSpec::new("id", ParamLocation::Path, int()).required(false),
            ParamSpec::new("page", ParamLocation::Query, int()),
        ];
        let err = validate_params(&specs, Some("other=1"), &[], &HeaderMap::new()).unwrap_err();
        let found: Vec<(&str, &str, &str)> = err
            .iter()
            .map(|v| {
                (
                    v.location.as_str(),
                    v.location.name().unwrap(),
                    v.keyword.as_str(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("query", "q", "required"),
                ("header", "x-tenant", "required"),
                ("path", "id", "required")
            ]
        );
    }

    #[test]
    fn values_are_percent_decoded_with_plus_as_space_in_queries_only() {
        let exact = |v: &str| compile(&json!({"const": v}));
        let specs = [
            ParamSpec::new("q", ParamLocation::Query, exact("a b/c&d")),
            ParamSpec::new("p", ParamLocation::Path, exact("x+y z")),
            ParamSpec::new("na me", ParamLocation::Query, exact("é")),
        ];
        let path = [("p".to_owned(), "x+y%20z".to_owned())];
        assert!(
            validate_params(
                &specs,
                Some("q=a+b%2Fc%26d&na%20me=%C3%A9"),
                &path,
                &HeaderMap::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn non_utf8_values_are_violations() {
        let specs = [
            ParamSpec::new("q", ParamLocation::Query, Schema::any()),
            ParamSpec::new("x-name", ParamLocation::Header, Schema::any()),
        ];
        let mut h = HeaderMap::new();
        h.insert("x-name", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let err = validate_params(&specs, Some("q=%FF"), &[], &h).unwrap_err();
        assert_eq!(keywords(&err), ["encoding", "encoding"]);
        assert_eq!(
            err.as_slice()[1].location,
            Location::Header("x-name".to_owned())
        );
    }

    #[test]
    fn single_valued_query_parameters_must_not_repeat() {
        let err = validate_params(
            &[ParamSpec::new("role", ParamLocation::Query, Schema::any())],
            Some("role=user&role=admin"),
            &[],
            &HeaderMap::new(),
        )
        .unwrap_err();
        assert_eq!(keywords(&err), ["repeated"]);
    }

    #[test]
    fn untyped_and_object_schemas_validate_the_string() {
        let s = compile(&json!({"type": "object"}));
        let err = validate_params(
            &[ParamSpec::new("f", ParamLocation::Query, s)],
            Some("f=1"),
            &[],
            &HeaderMap::new(),
        )
        .unwrap_err();
        assert_eq!(keywords(&err), ["type"]);
        let s = compile(&json!({"pattern": "^[0-9]+$"}));
        assert!(
            validate_params(
                &[ParamSpec::new("f", ParamLocation::Query, s)],
                Some("f=12"),
                &[],
                &HeaderMap::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn a_referenced_parameter_type_still_coerces() {
        let s = compile(&json!({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}));
        assert!(
            validate_params(
                &[ParamSpec::new("n", ParamLocation::Query, s)],
                Some("n=3"),
                &[],
                &HeaderMap::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn truncate_cuts_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hé", 2), "hé");
    }

    #[test]
    fn schema_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Schema>();
        assert_send_sync::<Violations>();
    }
}
