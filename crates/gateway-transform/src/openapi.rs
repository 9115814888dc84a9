//! Request validation from an OpenAPI 3.0 or 3.1 document: find the operation a request is for,
//! then check its parameters and its JSON body, every failure collected as a
//! [`Violation`].
//!
//! Everything is compiled by [`OpenApi::from_value`]: internal references
//! (`#/components/schemas/..`, `#/components/parameters/..`, `#/components/requestBodies/..`) are
//! resolved, every schema is compiled, and any problem is reported with the JSON Pointer of the
//! offending place in the document. Nothing is fetched: a `$ref` to another file or URL is an
//! error.
//!
//! - **3.0** schemas are validated with draft 4 semantics (boolean `exclusiveMinimum` and
//!   `exclusiveMaximum`), and `nullable: true` adds `"null"` to the schema's `type` (an `enum`
//!   must still list `null` to allow it, as 3.0.3 clarifies).
//! - **3.1** schemas are JSON Schema 2020-12.
//!
//! # Example
//!
//! ```
//! use gateway_transform::openapi::OpenApi;
//! use http::{HeaderMap, HeaderValue, Method};
//! use serde_json::json;
//!
//! let api = OpenApi::from_value(&json!({
//!     "openapi": "3.0.3",
//!     "info": {"title": "pets", "version": "1"},
//!     "servers": [{"url": "https://api.example.com/v1"}],
//!     "paths": {
//!         "/pets/{petId}": {
//!             "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer"}}],
//!             "put": {
//!                 "requestBody": {
//!                     "required": true,
//!                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}
//!                 },
//!                 "responses": {"200": {"description": "ok"}}
//!             }
//!         }
//!     },
//!     "components": {"schemas": {"Pet": {
//!         "type": "object",
//!         "required": ["name"],
//!         "properties": {"name": {"type": "string"}, "tag": {"type": "string", "nullable": true}}
//!     }}}
//! }))
//! .unwrap();
//!
//! // The servers[0] path prefix is honoured; template values come back raw.
//! let (op, params) = api.find(&Method::PUT, "/v1/pets/42").unwrap();
//! assert_eq!(op.path_template(), "/pets/{petId}");
//! assert_eq!(params, [("petId".to_owned(), "42".to_owned())]);
//!
//! let json = HeaderValue::from_static("application/json");
//! let headers = HeaderMap::new();
//! let pet = json!({"name": "Rex", "tag": null});
//! assert!(op.validate(None, &params, &headers, Some(&pet), Some(&json)).is_ok());
//!
//! // A bad path parameter and a bad body are reported together.
//! let (op, params) = api.find(&Method::PUT, "/v1/pets/rex").unwrap();
//! let err = op.validate(None, &params, &headers, Some(&json!({"tag": 1})), Some(&json)).unwrap_err();
//! let found: Vec<String> = err.iter().map(|v| format!("{} {}", v.location.as_str(), v.keyword)).collect();
//! assert_eq!(found, ["path type", "body required", "body type"]);
//! assert_eq!(err.status(), 400);
//!
//! // A body the operation does not declare is a 415.
//! let xml = HeaderValue::from_static("application/xml");
//! let err = op.validate(None, &params, &headers, None, Some(&xml)).unwrap_err();
//! assert!(err.is_unsupported_media_type());
//! assert_eq!(err.status(), 415);
//! ```
//!
//! # Matching
//!
//! [`OpenApi::find`] matches the request path (raw, as received, without the query) against the
//! path templates: a literal segment beats a segment with a template expression and a literal
//! prefix or suffix (`{name}.json`), which beats a segment that is only a template expression,
//! compared left to right. The most specific matching path wins; if it has no operation for the
//! method, there is no match (`HEAD` falls back to `GET`). By default the path of `servers[0].url`
//! (server variables take their defaults) is a prefix the request path must start with, and is
//! stripped; [`OpenApi::with_base_path`] changes or removes it.
//!
//! # Limits
//!
//! Only document-local references (`#/...` JSON Pointers) are resolved; `$id`-based and anchor
//! references inside the document are not indexed. Parameters `in: cookie`, the headers `Accept`,
//! `Content-Type` and `Authorization` (which OpenAPI says to ignore) and parameter styles
//! `matrix`, `label` and `deepObject` are not validated; parameters described with `content`
//! are checked only for presence. Operation-level `servers` are ignored. Request bodies are
//! validated for `application/json`, `*+json` and wildcard media types; other media types are
//! accepted when declared, without a schema check. Responses are not validated.
//!
//! Compiling costs time in proportion to the schemas each operation reaches through `$ref`s
//! (a schema shared by many operations is compiled once per distinct use site): do it when the
//! configuration loads, never per request.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    fmt,
};

use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value};

use crate::validate::{
    Collector, DEFAULT_MAX_ERRORS, Draft, Location, ParamLocation, ParamSpec, ParamStyle, Schema,
    SchemaError, Violation, Violations, collect_params, truncate,
};

/// The URI the document is registered under while its schemas compile.
const BASE_URI: &str = "json-schema:///openapi.json";
/// Deepest nesting of the document that is walked.
const MAX_DOC_DEPTH: usize = 256;
/// Most `$ref` hops followed for one parameter, request body or path item.
const MAX_REF_HOPS: usize = 32;
/// Most path segments a request path may have to be matched.
const MAX_PATH_SEGMENTS: usize = 128;
/// Longest message about a refused media type, in characters.
const MAX_MEDIA_MESSAGE_CHARS: usize = 200;

/// The path item keys that are operations.
const METHODS: [(&str, Method); 8] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

/// Keys whose value maps names (chosen by the document's author) to objects: a name such as
/// `schema` or `$ref` there is not a keyword.
const NAMED_MAPS: [&str; 9] = [
    "paths",
    "webhooks",
    "responses",
    "headers",
    "content",
    "callbacks",
    "links",
    "encoding",
    "variables",
];

/// Schema keywords whose value is one subschema.
const SUBSCHEMA: [&str; 12] = [
    "additionalProperties",
    "additionalItems",
    "items",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
];
/// Schema keywords whose value is an array of subschemas.
const SUBSCHEMA_ARRAYS: [&str; 5] = ["allOf", "anyOf", "oneOf", "prefixItems", "items"];
/// Schema keywords whose value maps names to subschemas.
const SUBSCHEMA_MAPS: [&str; 6] = [
    "properties",
    "patternProperties",
    "definitions",
    "$defs",
    "dependentSchemas",
    "dependencies",
];

/// The OpenAPI version of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpenApiVersion {
    /// 3.0.x: schemas are draft 4 plus `nullable`.
    V3_0,
    /// 3.1.x: schemas are JSON Schema 2020-12.
    V3_1,
}

/// A document that cannot be used, and where in it the problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenApiError {
    pointer: String,
    kind: OpenApiErrorKind,
}

/// What is wrong with an OpenAPI document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenApiErrorKind {
    /// Not OpenAPI 3.0.x or 3.1.x (Swagger 2.0, 3.2, a missing `openapi` field, ...).
    UnsupportedVersion(String),
    /// The document does not have the structure OpenAPI requires here.
    Malformed(String),
    /// A `$ref` to another document (a file or URL); nothing is fetched.
    ExternalRef(String),
    /// A local `$ref` that points to nothing.
    UnresolvedRef(String),
    /// A schema that does not compile.
    Schema(SchemaError),
    /// Something valid in OpenAPI that this module cannot enforce.
    Unsupported(String),
    /// The document nests deeper than this module walks.
    TooDeep,
}

impl OpenApiError {
    fn new(pointer: impl Into<String>, kind: OpenApiErrorKind) -> Self {
        Self {
            pointer: pointer.into(),
            kind,
        }
    }

    fn malformed(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(pointer, OpenApiErrorKind::Malformed(message.into()))
    }

    /// JSON Pointer (RFC 6901) to the offending place in the document (`""` for the root).
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// What is wrong.
    pub fn kind(&self) -> &OpenApiErrorKind {
        &self.kind
    }
}

impl fmt::Display for OpenApiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion(v) => write!(
                f,
                "unsupported OpenAPI version {v}: only 3.0.x and 3.1.x are supported (convert \
                 Swagger 2.0 documents to OpenAPI 3)"
            ),
            Self::Malformed(m) | Self::Unsupported(m) => f.write_str(m),
            Self::ExternalRef(r) => write!(
                f,
                "$ref `{r}` points outside the document and nothing is fetched; bundle the \
                 document so every $ref is a local `#/...` pointer"
            ),
            Self::UnresolvedRef(r) => write!(f, "$ref `{r}` points to nothing in the document"),
            Self::Schema(SchemaError::Invalid { message, .. }) => {
                write!(f, "invalid schema: {message}")
            }
            Self::Schema(e) => e.fmt(f),
            Self::TooDeep => write!(f, "the document nests deeper than {MAX_DOC_DEPTH} levels"),
        }
    }
}

impl fmt::Display for OpenApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "the document root"
        } else {
            &self.pointer
        };
        write!(f, "{} (at {at})", self.kind)
    }
}

impl std::error::Error for OpenApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            OpenApiErrorKind::Schema(e) => Some(e),
            _ => None,
        }
    }
}

/// A compiled OpenAPI document: its operations, ready to be found and validated against.
///
/// `Clone` (schemas are shared), `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct OpenApi {
    version: OpenApiVersion,
    base_path: Option<String>,
    /// Most specific first.
    paths: Vec<PathEntry>,
}

#[derive(Clone, Debug)]
struct PathEntry {
    segments: Vec<Segment>,
    operations: Vec<Operation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Partial {
        prefix: String,
        name: String,
        suffix: String,
    },
    Param(String),
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Self::Literal(_) => 0,
            Self::Partial { .. } => 1,
            Self::Param(_) => 2,
        }
    }

    /// The segment with its variable names erased: two templates with the same shape are the
    /// same template.
    fn shape(&self) -> (u8, &str, &str) {
        match self {
            Self::Literal(l) => (0, l, ""),
            Self::Partial { prefix, suffix, .. } => (1, prefix, suffix),
            Self::Param(_) => (2, "", ""),
        }
    }

    /// Matches the raw segment `raw`; a variable's raw value is pushed to `params`.
    fn matches(&self, raw: &str, params: &mut Vec<(String, String)>) -> bool {
        match self {
            Self::Literal(l) => {
                raw == l
                    || (raw.contains('%')
                        && percent_encoding::percent_decode_str(raw)
                            .decode_utf8()
                            .is_ok_and(|d| d == l.as_str()))
            }
            Self::Param(name) => {
                if raw.is_empty() {
                    return false;
                }
                params.push((name.clone(), raw.to_owned()));
                true
            }
            Self::Partial {
                prefix,
                name,
                suffix,
            } => match raw
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_suffix(suffix.as_str()))
            {
                Some(value) if !value.is_empty() => {
                    params.push((name.clone(), value.to_owned()));
                    true
                }
                _ => false,
            },
        }
    }
}

/// One operation (a method on a path) with its parameters and request body, compiled.
#[derive(Clone, Debug)]
pub struct Operation {
    method: Method,
    path: String,
    operation_id: Option<String>,
    pointer: String,
    params: Vec<ParamSpec>,
    body: Option<RequestBody>,
}

#[derive(Clone, Debug)]
struct RequestBody {
    required: bool,
    media: Vec<MediaType>,
}

#[derive(Clone, Debug)]
struct MediaType {
    /// Lowercase `type/subtype`, possibly `type/*` or `*/*`.
    range: String,
    schema: Option<Schema>,
}

impl RequestBody {
    /// The declared media type for the request's `essence`: exact, then `type/*`, then `*/*`.
    fn find(&self, essence: &str) -> Option<&MediaType> {
        let main = essence.split_once('/').map_or(essence, |(t, _)| t);
        self.media
            .iter()
            .find(|m| m.range == essence)
            .or_else(|| {
                self.media
                    .iter()
                    .find(|m| m.range.strip_suffix("/*") == Some(main))
            })
            .or_else(|| self.media.iter().find(|m| m.range == "*/*"))
    }

    fn declared(&self) -> String {
        let ranges: Vec<&str> = self.media.iter().map(|m| m.range.as_str()).collect();
        ranges.join(", ")
    }
}

impl Operation {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path template as the document writes it (`/pets/{petId}`).
    pub fn path_template(&self) -> &str {
        &self.path
    }

    /// The `operationId`, if the document gives one.
    pub fn operation_id(&self) -> Option<&str> {
        self.operation_id.as_deref()
    }

    /// JSON Pointer to the operation in the document (`/paths/~1pets~1{petId}/put`).
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The parameters validated: path-level and operation-level merged (the operation's win by
    /// name and location).
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Validates a request for this operation: its parameters (see
    /// [`validate_params`](crate::validate::validate_params)) and its body.
    ///
    /// A request has a body when `body` (the parsed JSON) or `content_type` (its `Content-Type`)
    /// is given; pass neither for a request without one. A body must have a media type the
    /// operation declares in `requestBody.content` (exact, `type/*` or `*/*`), or the result is
    /// a single violation for which [`Violations::is_unsupported_media_type`] is true (answer
    /// 415), found before anything else is checked. A parsed `body` is validated against the
    /// matched media type's schema. When `requestBody.required`, a request without a body is a
    /// violation, and so is one whose media type has a JSON schema but whose `body` is `None`
    /// (an empty body); a declared media type without a schema (`text/plain`) needs no `body`.
    ///
    /// # Errors
    ///
    /// The [`Violations`] (up to [`DEFAULT_MAX_ERRORS`]) when there is at least one.
    pub fn validate(
        &self,
        query: Option<&str>,
        path_params: &[(String, String)],
        headers: &HeaderMap,
        body: Option<&Value>,
        content_type: Option<&HeaderValue>,
    ) -> Result<(), Violations> {
        let has_body = body.is_some() || content_type.is_some();
        let media = if has_body {
            Some(self.media_for(content_type)?)
        } else {
            None
        };
        let mut out = Collector::new(DEFAULT_MAX_ERRORS);
        collect_params(&self.params, query, path_params, headers, &mut out);
        let required = self.body.as_ref().is_some_and(|b| b.required);
        // Without a parsed body, a media type with a schema counts as no body at all.
        let missing = match (media.and_then(|m| m.schema.as_ref()), body) {
            (Some(schema), Some(value)) => {
                schema.collect(value, &Location::Body, &mut out);
                false
            }
            (Some(_), None) => true,
            (None, _) => media.is_none(),
        };
        if missing && required {
            out.push(Violation::new(
                Location::Body,
                "required",
                "a request body is required",
            ));
        }
        out.finish()
    }

    fn media_for(&self, content_type: Option<&HeaderValue>) -> Result<&MediaType, Violations> {
        let raw = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()));
        let essence = raw.as_deref().and_then(essence_of);
        if let (Some(body), Some(essence)) = (&self.body, &essence)
            && let Some(media) = body.find(essence)
        {
            return Ok(media);
        }
        let message = match (&self.body, &raw) {
            (None, _) => "this operation takes no request body".to_owned(),
            (Some(body), None) => format!(
                "the request has a body but no content-type; expected {}",
                body.declared()
            ),
            (Some(body), Some(_)) => format!(
                "the request's media type is not accepted; expected {}",
                body.declared()
            ),
        };
        Err(Violations::unsupported_media_type(Violation::new(
            Location::Header("content-type".to_owned()),
            "mediaType",
            truncate(&message, MAX_MEDIA_MESSAGE_CHARS),
        )))
    }
}

/// The lowercase `type/subtype` of a media type, without parameters; `None` if it is not one.
fn essence_of(media_type: &str) -> Option<String> {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (main, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    (token(main) && token(sub)).then_some(essence)
}

/// Whether a declared media range carries JSON (so its schema is compiled).
fn is_json_range(range: &str) -> bool {
    range == "application/json"
        || range.ends_with("+json")
        || range == "*/*"
        || range == "application/*"
}

impl OpenApi {
    /// Compiles an OpenAPI 3.0.x or 3.1.x document (already parsed from JSON or YAML).
    ///
    /// # Errors
    ///
    /// An [`OpenApiError`] with the JSON Pointer of the offending place: an unsupported version,
    /// a malformed structure, an external or dangling `$ref`, a schema that does not compile,
    /// two path templates that differ only in variable names.
    pub fn from_value(doc: &Value) -> Result<Self, OpenApiError> {
        if !doc.is_object() {
            return Err(OpenApiError::malformed(
                "",
                "an OpenAPI document must be a JSON object",
            ));
        }
        let version = detect_version(doc)?;
        let draft = match version {
            OpenApiVersion::V3_0 => Draft::Draft4,
            OpenApiVersion::V3_1 => {
                check_dialect(doc)?;
                Draft::Draft202012
            }
        };
        let mut work = doc.clone();
        let mut prep = Prep {
            version,
            refs: Vec::new(),
            embedded: 0,
        };
        prepare_doc(&mut work, &mut String::new(), 0, &mut prep)?;
        check_refs(&work, &prep.refs)?;

        let registry = jsonschema::Registry::new()
            .draft(draft.lib())
            .add(BASE_URI, draft.lib().create_resource(work.clone()))
            .and_then(jsonschema::RegistryBuilder::prepare)
            .map_err(|e| OpenApiError::malformed("", e.to_string()))?;
        let cx = Cx {
            doc: &work,
            registry: &registry,
            draft,
            compiled: RefCell::new(HashMap::new()),
        };

        // Compile every component, used or not, so a broken one is found now.
        cx.check_components()?;
        if let Some(params) = work
            .pointer("/components/parameters")
            .and_then(Value::as_object)
        {
            for (name, param) in params {
                cx.param(&cx.raw_param(param, child("/components/parameters", name))?)?;
            }
        }
        if let Some(bodies) = work
            .pointer("/components/requestBodies")
            .and_then(Value::as_object)
        {
            for (name, body) in bodies {
                cx.request_body(body, child("/components/requestBodies", name))?;
            }
        }

        let mut paths = Vec::new();
        match work.get("paths") {
            None if version == OpenApiVersion::V3_1 => {}
            None => {
                return Err(OpenApiError::malformed(
                    "",
                    "an OpenAPI 3.0 document must have `paths`",
                ));
            }
            Some(Value::Object(items)) => {
                let mut shapes = HashSet::new();
                for (template, item) in items.iter().filter(|(k, _)| !k.starts_with("x-")) {
                    let entry = cx.path_entry(template, item)?;
                    let shape: Vec<(u8, String, String)> = entry
                        .segments
                        .iter()
                        .map(|s| {
                            let (rank, a, b) = s.shape();
                            (rank, a.to_owned(), b.to_owned())
                        })
                        .collect();
                    if !shapes.insert(shape) {
                        return Err(OpenApiError::malformed(
                            child("/paths", template),
                            format!(
                                "path `{template}` differs from another path only in its \
                                 variable names, so requests cannot tell them apart"
                            ),
                        ));
                    }
                    paths.push(entry);
                }
            }
            Some(_) => {
                return Err(OpenApiError::malformed(
                    "/paths",
                    "`paths` must be an object",
                ));
            }
        }
        paths.sort_by(|a, b| {
            a.segments.len().cmp(&b.segments.len()).then_with(|| {
                a.segments
                    .iter()
                    .map(Segment::rank)
                    .cmp(b.segments.iter().map(Segment::rank))
            })
        });
        Ok(Self {
            version,
            base_path: server_base_path(&work),
            paths,
        })
    }

    /// The document's OpenAPI version.
    pub fn version(&self) -> OpenApiVersion {
        self.version
    }

    /// The path prefix request paths must start with (from `servers[0].url` by default).
    pub fn base_path(&self) -> Option<&str> {
        self.base_path.as_deref()
    }

    /// Replaces the path prefix: `Some("/v1")` requires and strips it, `None` (or `"/"`)
    /// matches paths as the document writes them. A trailing `/` is ignored.
    #[must_use]
    pub fn with_base_path(mut self, base_path: Option<&str>) -> Self {
        self.base_path = base_path
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty())
            .map(|p| {
                if p.starts_with('/') {
                    p.to_owned()
                } else {
                    format!("/{p}")
                }
            });
        self
    }

    /// Every operation, most specific path first.
    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.paths.iter().flat_map(|p| p.operations.iter())
    }

    /// The operation for `method` on `path` (raw, as received; anything from `?` on is ignored)
    /// and the template variables' raw values, in template order. See the module docs for
    /// precedence. `None` when no path matches, or the most specific matching path has no
    /// operation for the method.
    pub fn find(&self, method: &Method, path: &str) -> Option<(&Operation, Vec<(String, String)>)> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let rest = match &self.base_path {
            Some(base) => match path.strip_prefix(base.as_str())? {
                "" => "/",
                r if r.starts_with('/') => r,
                _ => return None,
            },
            None => path,
        };
        let rest = rest.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').take(MAX_PATH_SEGMENTS + 1).collect();
        if segments.len() > MAX_PATH_SEGMENTS {
            return None;
        }
        let mut params = Vec::new();
        let entry = self.paths.iter().find(|entry| {
            params.clear();
            entry.segments.len() == segments.len()
                && entry
                    .segments
                    .iter()
                    .zip(&segments)
                    .all(|(seg, raw)| seg.matches(raw, &mut params))
        })?;
        let find = |m: &Method| entry.operations.iter().find(|op| op.method == *m);
        let op = find(method).or_else(|| {
            if *method == Method::HEAD {
                find(&Method::GET)
            } else {
                None
            }
        })?;
        Some((op, params))
    }
}

fn detect_version(doc: &Value) -> Result<OpenApiVersion, OpenApiError> {
    match (doc.get("openapi"), doc.get("swagger")) {
        (Some(Value::String(v)), _) if v.starts_with("3.0.") => Ok(OpenApiVersion::V3_0),
        (Some(Value::String(v)), _) if v.starts_with("3.1.") => Ok(OpenApiVersion::V3_1),
        (Some(Value::String(v)), _) => Err(OpenApiError::new(
            "/openapi",
            OpenApiErrorKind::UnsupportedVersion(truncate(v, 40)),
        )),
        (Some(_), _) => Err(OpenApiError::malformed(
            "/openapi",
            "`openapi` must be a version string such as \"3.1.0\"",
        )),
        (None, Some(v)) => Err(OpenApiError::new(
            "/swagger",
            OpenApiErrorKind::UnsupportedVersion(format!(
                "Swagger {}",
                truncate(v.as_str().unwrap_or("2.0"), 40)
            )),
        )),
        (None, None) => Err(OpenApiError::new(
            "",
            OpenApiErrorKind::UnsupportedVersion("(no `openapi` field)".to_owned()),
        )),
    }
}

/// 3.1's `jsonSchemaDialect`: the OpenAPI dialect or plain 2020-12 only.
fn check_dialect(doc: &Value) -> Result<(), OpenApiError> {
    match doc.get("jsonSchemaDialect") {
        None => Ok(()),
        Some(Value::String(d))
            if d.starts_with("https://spec.openapis.org/oas/3.1/dialect/")
                || Draft::from_uri(d) == Some(Draft::Draft202012) =>
        {
            Ok(())
        }
        Some(other) => Err(OpenApiError::new(
            "/jsonSchemaDialect",
            OpenApiErrorKind::Unsupported(format!(
                "jsonSchemaDialect {} is not supported; only the OpenAPI 3.1 dialect and JSON \
                 Schema 2020-12 are",
                truncate(&other.to_string(), 80)
            )),
        )),
    }
}

/// The path of `servers[0].url`, server variables replaced by their defaults; `None` when it
/// is empty, `/`, relative or has a variable without a default.
fn server_base_path(doc: &Value) -> Option<String> {
    let server = doc.get("servers")?.as_array()?.first()?;
    let mut url = server.get("url")?.as_str()?.to_owned();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            if let Some(default) = var.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    let path = match url.split_once("://") {
        Some((_, after)) => after.find('/').and_then(|i| after.get(i..)).unwrap_or(""),
        None => url.as_str(),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    (path.starts_with('/') && !path.contains(['{', '}'])).then(|| path.to_owned())
}

/// Appends a JSON Pointer segment (RFC 6901 escaping).
fn push_segment(pointer: &mut String, segment: &str) {
    pointer.push('/');
    for c in segment.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

fn child(pointer: &str, segment: &str) -> String {
    let mut out = pointer.to_owned();
    push_segment(&mut out, segment);
    out
}

/// Walks the document outside schemas: finds every schema (`schema` members and
/// `components/schemas`), and checks Reference Objects are local.
fn prepare_doc(
    value: &mut Value,
    pointer: &mut String,
    depth: usize,
    prep: &mut Prep,
) -> Result<(), OpenApiError> {
    if depth > MAX_DOC_DEPTH {
        return Err(OpenApiError::new(
            pointer.clone(),
            OpenApiErrorKind::TooDeep,
        ));
    }
    match value {
        Value::Object(map) => {
            let in_components = pointer == "/components";
            for (key, member) in map.iter_mut() {
                if key == "example" || key == "examples" || key.starts_with("x-") {
                    continue;
                }
                let len = pointer.len();
                push_segment(pointer, key);
                if key == "schema" {
                    prepare_schema(member, pointer, depth + 1, prep)?;
                } else if key == "$ref" {
                    check_local_ref(member, pointer)?;
                } else if in_components && key == "schemas" {
                    prepare_named(member, pointer, depth + 1, prep, true)?;
                } else if in_components || NAMED_MAPS.contains(&key.as_str()) {
                    prepare_named(member, pointer, depth + 1, prep, false)?;
                } else {
                    prepare_doc(member, pointer, depth + 1, prep)?;
                }
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                push_segment(pointer, &i.to_string());
                prepare_doc(item, pointer, depth + 1, prep)?;
                pointer.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Walks a map of author-chosen names: each member is a schema, or an OpenAPI object.
fn prepare_named(
    value: &mut Value,
    pointer: &mut String,
    depth: usize,
    prep: &mut Prep,
    schemas: bool,
) -> Result<(), OpenApiError> {
    let Value::Object(map) = value else {
        return prepare_doc(value, pointer, depth, prep);
    };
    for (name, member) in map.iter_mut() {
        let len = pointer.len();
        push_segment(pointer, name);
        if schemas {
            prepare_schema(member, pointer, depth + 1, prep)?;
        } else {
            prepare_doc(member, pointer, depth + 1, prep)?;
        }
        pointer.truncate(len);
    }
    Ok(())
}

/// Walks a schema: 3.0's `nullable: true` becomes a `"null"` type; every `$ref` must be local.
fn prepare_schema(
    value: &mut Value,
    pointer: &mut String,
    depth: usize,
    prep: &mut Prep,
) -> Result<(), OpenApiError> {
    if depth > MAX_DOC_DEPTH {
        return Err(OpenApiError::new(
            pointer.clone(),
            OpenApiErrorKind::TooDeep,
        ));
    }
    let Value::Object(map) = value else {
        return Ok(());
    };
    if prep.version == OpenApiVersion::V3_1 && map.contains_key("$id") {
        // Local references below resolve against this embedded resource, not the document.
        prep.embedded += 1;
    }
    if let Some(reference) = map.get("$ref") {
        let len = pointer.len();
        push_segment(pointer, "$ref");
        check_local_ref(reference, pointer)?;
        if prep.embedded == 0
            && let Some(r) = reference.as_str()
            && (r == "#" || r.starts_with("#/"))
        {
            prep.refs.push((pointer.clone(), r.to_owned()));
        }
        pointer.truncate(len);
    }
    if prep.version == OpenApiVersion::V3_0 && map.get("nullable") == Some(&Value::Bool(true)) {
        match map.get_mut("type") {
            Some(Value::String(t)) => {
                let t = std::mem::take(t);
                map.insert(
                    "type".to_owned(),
                    Value::Array(vec![Value::String(t), Value::from("null")]),
                );
            }
            Some(Value::Array(types)) if !types.iter().any(|t| t == "null") => {
                types.push(Value::from("null"));
            }
            _ => {}
        }
    }
    for (key, member) in map.iter_mut() {
        let len = pointer.len();
        push_segment(pointer, key);
        let key = key.as_str();
        match member {
            Value::Object(_) | Value::Bool(_) if SUBSCHEMA.contains(&key) => {
                prepare_schema(member, pointer, depth + 1, prep)?;
            }
            Value::Array(items) if SUBSCHEMA_ARRAYS.contains(&key) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = pointer.len();
                    push_segment(pointer, &i.to_string());
                    prepare_schema(item, pointer, depth + 1, prep)?;
                    pointer.truncate(len);
                }
            }
            Value::Object(members) if SUBSCHEMA_MAPS.contains(&key) => {
                for (name, item) in members.iter_mut() {
                    let len = pointer.len();
                    push_segment(pointer, name);
                    prepare_schema(item, pointer, depth + 1, prep)?;
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
        pointer.truncate(len);
    }
    if prep.version == OpenApiVersion::V3_1 && map.contains_key("$id") {
        prep.embedded -= 1;
    }
    Ok(())
}

/// What walking the document collects.
struct Prep {
    version: OpenApiVersion,
    /// `(where, reference)` of every document-level `#/...` schema reference.
    refs: Vec<(String, String)>,
    /// How many schemas with an `$id` enclose the current one.
    embedded: usize,
}

/// Every `#/...` schema reference must point into the document.
fn check_refs(doc: &Value, refs: &[(String, String)]) -> Result<(), OpenApiError> {
    for (at, reference) in refs {
        let fragment = reference.strip_prefix('#').unwrap_or_default();
        let found = percent_encoding::percent_decode_str(fragment)
            .decode_utf8()
            .is_ok_and(|p| doc.pointer(&p).is_some());
        if !found {
            return Err(OpenApiError::new(
                at.clone(),
                OpenApiErrorKind::UnresolvedRef(truncate(reference, 200)),
            ));
        }
    }
    Ok(())
}

fn check_local_ref(reference: &Value, pointer: &str) -> Result<(), OpenApiError> {
    match reference.as_str() {
        Some(r) if r.starts_with('#') => Ok(()),
        Some(r) => Err(OpenApiError::new(
            pointer,
            OpenApiErrorKind::ExternalRef(truncate(r, 200)),
        )),
        None => Err(OpenApiError::malformed(pointer, "$ref must be a string")),
    }
}

/// What compiling needs: the prepared document and the registry it is in.
struct Cx<'a> {
    doc: &'a Value,
    registry: &'a jsonschema::Registry<'a>,
    draft: Draft,
    /// Schemas compiled so far, by pointer.
    compiled: RefCell<HashMap<String, Schema>>,
}

/// A parameter found in the document, before compiling.
struct RawParam<'a> {
    name: &'a str,
    location: &'a str,
    value: &'a Map<String, Value>,
    pointer: String,
}

impl RawParam<'_> {
    fn same(&self, other: &RawParam<'_>) -> bool {
        self.location == other.location
            && if self.location == "header" {
                self.name.eq_ignore_ascii_case(other.name)
            } else {
                self.name == other.name
            }
    }
}

impl<'a> Cx<'a> {
    /// Follows Reference Objects from `value` (at `pointer`) to the object they name.
    fn resolve(
        &self,
        value: &'a Value,
        pointer: String,
    ) -> Result<(&'a Value, String), OpenApiError> {
        let mut value = value;
        let mut pointer = pointer;
        for _ in 0..MAX_REF_HOPS {
            let Some(reference) = value.get("$ref") else {
                return Ok((value, pointer));
            };
            let at = child(&pointer, "$ref");
            let Some(r) = reference.as_str() else {
                return Err(OpenApiError::malformed(at, "$ref must be a string"));
            };
            let Some(fragment) = r.strip_prefix('#') else {
                return Err(OpenApiError::new(
                    at,
                    OpenApiErrorKind::ExternalRef(truncate(r, 200)),
                ));
            };
            let target = percent_encoding::percent_decode_str(fragment)
                .decode_utf8()
                .ok()
                .and_then(|p| self.doc.pointer(&p).map(|t| (t, p.into_owned())));
            let Some((target, target_pointer)) = target else {
                return Err(OpenApiError::new(
                    at,
                    OpenApiErrorKind::UnresolvedRef(truncate(r, 200)),
                ));
            };
            value = target;
            pointer = target_pointer;
        }
        Err(OpenApiError::malformed(
            pointer,
            format!("$ref chain longer than {MAX_REF_HOPS} hops (a cycle?)"),
        ))
    }

    /// Follows a schema that is only a `$ref` (in 3.0, any schema with a `$ref`: its siblings
    /// are ignored) to the schema it names, so every site naming one component shares one
    /// compiled schema.
    fn canonical(&self, pointer: &str) -> String {
        let mut pointer = pointer.to_owned();
        for _ in 0..MAX_REF_HOPS {
            let Some(obj) = self.doc.pointer(&pointer).and_then(Value::as_object) else {
                break;
            };
            let Some(reference) = obj.get("$ref").and_then(Value::as_str) else {
                break;
            };
            if obj.len() > 1 && self.draft != Draft::Draft4 {
                break;
            }
            let target = reference.strip_prefix('#').and_then(|f| {
                percent_encoding::percent_decode_str(f)
                    .decode_utf8()
                    .ok()
                    .filter(|p| self.doc.pointer(p).is_some())
            });
            match target {
                Some(target) => pointer = target.into_owned(),
                None => break,
            }
        }
        pointer
    }

    /// Checks the schema at `pointer` against its draft's meta-schema.
    fn check_meta(&self, pointer: &str) -> Result<(), OpenApiError> {
        let target = self.doc.pointer(pointer).unwrap_or(&Value::Null);
        self.draft.check_meta(target).map_err(|e| {
            let at = match &e {
                SchemaError::Invalid { pointer: inner, .. } => format!("{pointer}{inner}"),
                _ => pointer.to_owned(),
            };
            OpenApiError::new(at, OpenApiErrorKind::Schema(e))
        })
    }

    /// A compile error, placed where the document has it: errors inside referenced schemas
    /// carry their own pointer.
    fn compile_error(&self, site: &str, e: SchemaError) -> OpenApiError {
        let at = match &e {
            SchemaError::Invalid { pointer: inner, .. }
                if !inner.is_empty() && self.doc.pointer(inner).is_some() =>
            {
                inner.clone()
            }
            _ => site.to_owned(),
        };
        OpenApiError::new(at, OpenApiErrorKind::Schema(e))
    }

    /// Compiles the schema at `pointer` (once per distinct schema).
    fn schema(&self, pointer: &str) -> Result<Schema, OpenApiError> {
        let pointer = self.canonical(pointer);
        if let Some(schema) = self.compiled.borrow().get(&pointer) {
            return Ok(schema.clone());
        }
        self.check_meta(&pointer)?;
        let schema =
            Schema::compile_in_document(self.registry, BASE_URI, self.doc, &pointer, self.draft)
                .map_err(|e| self.compile_error(&pointer, e))?;
        self.compiled.borrow_mut().insert(pointer, schema.clone());
        Ok(schema)
    }

    /// Checks every component schema, used or not, in one build.
    fn check_components(&self) -> Result<(), OpenApiError> {
        let Some(schemas) = self
            .doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        else {
            return Ok(());
        };
        let pointers: Vec<String> = schemas
            .keys()
            .map(|name| child("/components/schemas", name))
            .collect();
        for pointer in &pointers {
            self.check_meta(pointer)?;
        }
        Schema::check_in_document(self.registry, BASE_URI, &pointers, self.draft)
            .map_err(|e| self.compile_error("/components/schemas", e))
    }

    fn path_entry(&self, template: &str, item: &'a Value) -> Result<PathEntry, OpenApiError> {
        let item_pointer = child("/paths", template);
        let segments =
            parse_template(template).map_err(|m| OpenApiError::malformed(&*item_pointer, m))?;
        let (item, item_pointer) = self.resolve(item, item_pointer)?;
        let Some(item) = item.as_object() else {
            return Err(OpenApiError::malformed(
                item_pointer,
                "a path item must be an object",
            ));
        };
        let shared = self.raw_params(item.get("parameters"), &item_pointer)?;
        let mut operations = Vec::new();
        for (key, method) in &METHODS {
            let Some(op) = item.get(*key) else {
                continue;
            };
            let op_pointer = child(&item_pointer, key);
            let Some(op) = op.as_object() else {
                return Err(OpenApiError::malformed(
                    op_pointer,
                    "an operation must be an object",
                ));
            };
            let mut raw = Vec::new();
            for p in &shared {
                raw.push(RawParam {
                    name: p.name,
                    location: p.location,
                    value: p.value,
                    pointer: p.pointer.clone(),
                });
            }
            for p in self.raw_params(op.get("parameters"), &op_pointer)? {
                match raw.iter_mut().find(|existing| existing.same(&p)) {
                    Some(existing) => *existing = p,
                    None => raw.push(p),
                }
            }
            let mut params = Vec::with_capacity(raw.len());
            for p in &raw {
                if p.location == "path" && !template_has(&segments, p.name) {
                    return Err(OpenApiError::malformed(
                        child(&p.pointer, "name"),
                        format!(
                            "path parameter `{}` does not appear in the path `{template}`",
                            truncate(p.name, 60)
                        ),
                    ));
                }
                if let Some(spec) = self.param(p)? {
                    params.push(spec);
                }
            }
            let body = match op.get("requestBody") {
                None => None,
                Some(b) => Some(self.request_body(b, child(&op_pointer, "requestBody"))?),
            };
            operations.push(Operation {
                method: method.clone(),
                path: template.to_owned(),
                operation_id: op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                pointer: op_pointer,
                params,
                body,
            });
        }
        Ok(PathEntry {
            segments,
            operations,
        })
    }

    fn raw_params(
        &self,
        list: Option<&'a Value>,
        owner: &str,
    ) -> Result<Vec<RawParam<'a>>, OpenApiError> {
        let list_pointer = format!("{owner}/parameters");
        let items = match list {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(OpenApiError::malformed(
                    list_pointer,
                    "`parameters` must be an array",
                ));
            }
        };
        let mut out: Vec<RawParam<'a>> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = self.raw_param(item, format!("{list_pointer}/{i}"))?;
            if out.iter().any(|q| q.same(&p)) {
                return Err(OpenApiError::malformed(
                    p.pointer,
                    format!("parameter `{}` in {} is listed twice", p.name, p.location),
                ));
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Reads one parameter (following its `$ref`).
    fn raw_param(&self, item: &'a Value, pointer: String) -> Result<RawParam<'a>, OpenApiError> {
        let (value, pointer) = self.resolve(item, pointer)?;
        let Some(value) = value.as_object() else {
            return Err(OpenApiError::malformed(
                pointer,
                "a parameter must be an object",
            ));
        };
        let field = |name: &str| {
            value.get(name).and_then(Value::as_str).ok_or_else(|| {
                OpenApiError::malformed(
                    pointer.clone(),
                    format!("a parameter needs a string `{name}`"),
                )
            })
        };
        Ok(RawParam {
            name: field("name")?,
            location: field("in")?,
            value,
            pointer: pointer.clone(),
        })
    }

    /// Compiles a parameter; `None` for one that is not validated (cookie, ignored headers).
    fn param(&self, p: &RawParam<'_>) -> Result<Option<ParamSpec>, OpenApiError> {
        let location = match p.location {
            "query" => ParamLocation::Query,
            "path" => ParamLocation::Path,
            "header" => {
                const IGNORED: [&str; 3] = ["accept", "content-type", "authorization"];
                if IGNORED.iter().any(|h| p.name.eq_ignore_ascii_case(h)) {
                    return Ok(None);
                }
                ParamLocation::Header
            }
            "cookie" => return Ok(None),
            other => {
                return Err(OpenApiError::malformed(
                    child(&p.pointer, "in"),
                    format!(
                        "parameter `in` must be query, path, header or cookie, not `{}`",
                        truncate(other, 40)
                    ),
                ));
            }
        };
        let style = p.value.get("style").map(|s| (s.as_str(), s));
        // (style, default explode, whether the value can be validated)
        let (style, default_explode, checked) = match (location, style.map(|s| s.0)) {
            (ParamLocation::Query, None | Some(Some("form"))) => (ParamStyle::Form, true, true),
            (ParamLocation::Query, Some(Some("spaceDelimited"))) => {
                (ParamStyle::SpaceDelimited, false, true)
            }
            (ParamLocation::Query, Some(Some("pipeDelimited"))) => {
                (ParamStyle::PipeDelimited, false, true)
            }
            (ParamLocation::Path | ParamLocation::Header, None | Some(Some("simple"))) => {
                (ParamStyle::Simple, false, true)
            }
            (ParamLocation::Query, Some(Some("deepObject")))
            | (ParamLocation::Path, Some(Some("matrix" | "label"))) => {
                (ParamStyle::Simple, false, false)
            }
            _ => {
                return Err(OpenApiError::malformed(
                    child(&p.pointer, "style"),
                    format!(
                        "style {} is not valid for a {} parameter",
                        truncate(&style.map_or(Value::Null, |s| s.1.clone()).to_string(), 40),
                        p.location
                    ),
                ));
            }
        };
        let explode = p
            .value
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(default_explode);
        let required = p
            .value
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let schema = match p.value.get("schema") {
            Some(_) if checked => self.schema(&child(&p.pointer, "schema"))?,
            _ => Schema::any(),
        };
        // A deepObject parameter is spread over `name[key]` pairs: its name never appears alone.
        let required = required && (checked || location == ParamLocation::Path);
        Ok(Some(
            ParamSpec::new(p.name, location, schema)
                .required(required)
                .style(style, explode),
        ))
    }

    fn request_body(&self, value: &'a Value, pointer: String) -> Result<RequestBody, OpenApiError> {
        let (value, pointer) = self.resolve(value, pointer)?;
        let Some(value) = value.as_object() else {
            return Err(OpenApiError::malformed(
                pointer,
                "a request body must be an object",
            ));
        };
        let required = value
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let content_pointer = child(&pointer, "content");
        let Some(content) = value.get("content").and_then(Value::as_object) else {
            return Err(OpenApiError::malformed(
                pointer,
                "a request body needs a `content` object",
            ));
        };
        let mut media = Vec::with_capacity(content.len());
        for (key, entry) in content {
            let entry_pointer = child(&content_pointer, key);
            let Some(range) = essence_of(key) else {
                return Err(OpenApiError::malformed(
                    entry_pointer,
                    format!("`{}` is not a media type", truncate(key, 60)),
                ));
            };
            let schema = match entry.get("schema") {
                Some(_) if is_json_range(&range) => {
                    Some(self.schema(&child(&entry_pointer, "schema"))?)
                }
                _ => None,
            };
            media.push(MediaType { range, schema });
        }
        Ok(RequestBody { required, media })
    }
}

/// Whether the template has a variable `name`.
fn template_has(segments: &[Segment], name: &str) -> bool {
    segments.iter().any(|s| match s {
        Segment::Param(n) | Segment::Partial { name: n, .. } => n == name,
        Segment::Literal(_) => false,
    })
}

/// Parses a path template into segments.
fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = template.strip_prefix('/') else {
        return Err(format!(
            "path `{}` must start with `/`",
            truncate(template, 60)
        ));
    };
    let mut names = HashSet::new();
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let segment = match raw.split_once('{') {
            None if raw.contains('}') => return Err(format!("unbalanced `}}` in `{raw}`")),
            None => Segment::Literal(raw.to_owned()),
            Some((prefix, after)) => {
                let Some((name, suffix)) = after.split_once('}') else {
                    return Err(format!("unbalanced `{{` in `{raw}`"));
                };
                if name.is_empty() || suffix.contains(['{', '}']) || name.contains('{') {
                    return Err(format!(
                        "segment `{raw}` must hold at most one `{{name}}` expression"
                    ));
                }
                if !names.insert(name.to_owned()) {
                    return Err(format!("variable `{name}` appears twice in the path"));
                }
                if prefix.is_empty() && suffix.is_empty() {
                    Segment::Param(name.to_owned())
                } else {
                    Segment::Partial {
                        prefix: prefix.to_owned(),
                        name: name.to_owned(),
                        suffix: suffix.to_owned(),
                    }
                }
            }
        };
        segments.push(segment);
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;

    fn petstore() -> Value {
        json!({
            "openapi": "3.0.3",
            "info": {"title": "Petstore", "version": "1.0.0"},
            "servers": [{"url": "https://{host}/api/{version}", "variables": {
                "host": {"default": "pets.example.com"}, "version": {"default": "v1"}
            }}],
            "paths": {
                "/pets": {
                    "get": {
                        "operationId": "listPets",
                        "parameters": [
                            {"$ref": "#/components/parameters/Limit"},
                            {"name": "tags", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
                            {"name": "X-Request-Id", "in": "header", "required": true, "schema": {"type": "string", "format": "uuid"}},
                            {"name": "Accept", "in": "header", "required": true, "schema": {"type": "integer"}},
                            {"name": "session", "in": "cookie", "required": true, "schema": {"type": "string"}}
                        ],
                        "responses": {"200": {"description": "ok"}}
                    },
                    "post": {
                        "operationId": "createPet",
                        "requestBody": {"$ref": "#/components/requestBodies/NewPet"},
                        "responses": {"201": {"description": "created"}}
                    }
                },
                "/pets/{petId}": {
                    "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                    "get": {"operationId": "showPet", "responses": {"200": {"description": "ok"}}},
                    "delete": {
                        "operationId": "deletePet",
                        "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z]+$"}}],
                        "responses": {"204": {"description": "gone"}}
                    }
                },
                "/pets/mine": {"get": {"operationId": "myPets", "responses": {"200": {"description": "ok"}}}},
                "/files/{name}.json": {"get": {
                    "operationId": "file",
                    "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 5}}],
                    "responses": {"200": {"description": "ok"}}
                }},
                "/files/{path}": {"get": {"operationId": "anyFile", "responses": {"200": {"description": "ok"}}}}
            },
            "components": {
                "parameters": {
                    "Limit": {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
                },
                "requestBodies": {
                    "NewPet": {"required": true, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}},
                        "text/plain": {}
                    }}
                },
                "schemas": {
                    "Pet": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "tag": {"type": "string", "nullable": true},
                            "owner": {"$ref": "#/components/schemas/Owner"},
                            "weight": {"type": "number", "minimum": 0, "exclusiveMinimum": true}
                        }
                    },
                    "Owner": {
                        "type": "object",
                        "nullable": true,
                        "properties": {"name": {"type": "string"}, "pets": {"type": "array", "items": {"$ref": "#/components/schemas/Pet"}}}
                    }
                }
            }
        })
    }

    fn api() -> OpenApi {
        OpenApi::from_value(&petstore()).unwrap()
    }

    fn ct(v: &'static str) -> HeaderValue {
        HeaderValue::from_static(v)
    }

    fn found(err: &Violations) -> Vec<(String, String)> {
        err.iter()
            .map(|v| {
                (
                    format!("{}{}", v.location.as_str(), v.instance_path),
                    v.keyword.clone(),
                )
            })
            .collect()
    }

    fn op_id<'a>(api: &'a OpenApi, method: &Method, path: &str) -> Option<&'a str> {
        api.find(method, path).and_then(|(op, _)| op.operation_id())
    }

    #[test]
    fn openapi_3_0_body_resolves_component_refs_and_nullable() {
        let api = api();
        assert_eq!(api.version(), OpenApiVersion::V3_0);
        let (op, params) = api.find(&Method::POST, "/api/v1/pets").unwrap();
        assert_eq!(op.operation_id(), Some("createPet"));
        let h = HeaderMap::new();
        let json = ct("application/json");
        let ok = json!({"name": "Rex", "tag": null, "owner": null, "weight": 3});
        assert!(
            op.validate(None, &params, &h, Some(&ok), Some(&json))
                .is_ok()
        );
        let nested = json!({"name": "Rex", "owner": {"name": "Ann", "pets": [{"name": ""}]}});
        let err = op
            .validate(None, &params, &h, Some(&nested), Some(&json))
            .unwrap_err();
        assert_eq!(
            found(&err),
            [("body/owner/pets/0/name".to_owned(), "minLength".to_owned())]
        );
        // `name` is not nullable; draft 4's boolean exclusiveMinimum excludes 0.
        let bad = json!({"name": null, "weight": 0});
        let mut f = found(
            &op.validate(None, &params, &h, Some(&bad), Some(&json))
                .unwrap_err(),
        );
        f.sort();
        assert_eq!(
            f,
            [
                ("body/name".to_owned(), "type".to_owned()),
                ("body/weight".to_owned(), "exclusiveMinimum".to_owned())
            ]
        );
    }

    #[test]
    fn three_bad_fields_give_three_violations_with_pointers() {
        let api = api();
        let (op, params) = api.find(&Method::POST, "/api/v1/pets").unwrap();
        let body = json!({"name": 5, "tag": 6, "weight": "heavy"});
        let err = op
            .validate(
                None,
                &params,
                &HeaderMap::new(),
                Some(&body),
                Some(&ct("application/json")),
            )
            .unwrap_err();
        let mut pointers: Vec<&str> = err.iter().map(|v| v.instance_path.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, ["/name", "/tag", "/weight"]);
    }

    #[test]
    fn parameters_from_components_are_coerced_and_validated() {
        let api = api();
        let (op, params) = api.find(&Method::GET, "/api/v1/pets").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-request-id", ct("3f2c8a8e-1b2d-4c5e-9f00-0a1b2c3d4e5f"));
        assert!(
            op.validate(Some("limit=10&tags=a&tags=b"), &params, &h, None, None)
                .is_ok()
        );
        // Accept and cookie parameters are not validated; X-Request-Id is required.
        let err = op
            .validate(
                Some("limit=0&tags=a"),
                &params,
                &HeaderMap::new(),
                None,
                None,
            )
            .unwrap_err();
        assert_eq!(
            found(&err),
            [
                ("query".to_owned(), "minimum".to_owned()),
                ("header".to_owned(), "required".to_owned())
            ]
        );
        assert_eq!(
            err.as_slice()[1].location,
            Location::Header("x-request-id".to_owned())
        );
        h.insert("x-request-id", ct("not-a-uuid"));
        let err = op.validate(None, &params, &h, None, None).unwrap_err();
        assert_eq!(found(&err), [("header".to_owned(), "format".to_owned())]);
    }

    #[test]
    fn operation_parameters_override_path_parameters() {
        let api = api();
        let (get, params) = api.find(&Method::GET, "/api/v1/pets/rex").unwrap();
        assert_eq!(get.operation_id(), Some("showPet"));
        let h = HeaderMap::new();
        let err = get.validate(None, &params, &h, None, None).unwrap_err();
        assert_eq!(found(&err), [("path".to_owned(), "type".to_owned())]);
        let (delete, params) = api.find(&Method::DELETE, "/api/v1/pets/rex").unwrap();
        assert_eq!(delete.params().len(), 1);
        assert!(delete.validate(None, &params, &h, None, None).is_ok());
        let (delete, params) = api.find(&Method::DELETE, "/api/v1/pets/42").unwrap();
        let err = delete.validate(None, &params, &h, None, None).unwrap_err();
        assert_eq!(found(&err), [("path".to_owned(), "pattern".to_owned())]);
    }

    #[test]
    fn literal_segments_beat_templated_ones() {
        let api = api();
        assert_eq!(
            op_id(&api, &Method::GET, "/api/v1/pets/mine"),
            Some("myPets")
        );
        assert_eq!(op_id(&api, &Method::GET, "/api/v1/pets/7"), Some("showPet"));
        // The most specific path wins even when it lacks the method: no fallback.
        assert_eq!(op_id(&api, &Method::DELETE, "/api/v1/pets/mine"), None);
        assert_eq!(
            op_id(&api, &Method::GET, "/api/v1/files/a.json"),
            Some("file")
        );
        assert_eq!(
            op_id(&api, &Method::GET, "/api/v1/files/a.txt"),
            Some("anyFile")
        );
        let (_, params) = api.find(&Method::GET, "/api/v1/files/report.json").unwrap();
        assert_eq!(params, [("name".to_owned(), "report".to_owned())]);
        // HEAD falls back to GET; the query is ignored; unknown paths do not match.
        assert_eq!(
            op_id(&api, &Method::HEAD, "/api/v1/pets?limit=3"),
            Some("listPets")
        );
        assert_eq!(op_id(&api, &Method::GET, "/api/v1/pets/7/toys"), None);
        assert_eq!(op_id(&api, &Method::GET, "/api/v1/pets/"), None);
        assert_eq!(op_id(&api, &Method::PATCH, "/api/v1/pets"), None);
    }

    #[test]
    fn the_server_path_prefix_is_honoured_and_can_be_changed() {
        let api = api();
        assert_eq!(api.base_path(), Some("/api/v1"));
        assert_eq!(op_id(&api, &Method::GET, "/pets"), None);
        assert_eq!(op_id(&api, &Method::GET, "/api/v1pets"), None);
        let api = api.with_base_path(None);
        assert_eq!(op_id(&api, &Method::GET, "/pets"), Some("listPets"));
        let api = api.with_base_path(Some("/gw/"));
        assert_eq!(op_id(&api, &Method::GET, "/gw/pets"), Some("listPets"));
    }

    #[test]
    fn path_values_are_returned_raw_and_decoded_when_validated() {
        let api = api().with_base_path(None);
        let (op, params) = api.find(&Method::DELETE, "/pets/r%65x").unwrap();
        assert_eq!(params, [("petId".to_owned(), "r%65x".to_owned())]);
        assert!(
            op.validate(None, &params, &HeaderMap::new(), None, None)
                .is_ok()
        );
        // An encoded literal still matches its literal segment.
        assert_eq!(op_id(&api, &Method::GET, "/pets/m%69ne"), Some("myPets"));
    }

    #[test]
    fn undeclared_media_types_are_415() {
        let api = api().with_base_path(None);
        let h = HeaderMap::new();
        let (create, params) = api.find(&Method::POST, "/pets").unwrap();
        let body = json!({"name": "Rex"});
        let err = create
            .validate(None, &params, &h, Some(&body), Some(&ct("application/xml")))
            .unwrap_err();
        assert!(err.is_unsupported_media_type());
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(err.len(), 1);
        assert_eq!(err.as_slice()[0].keyword, "mediaType");
        assert!(
            err.as_slice()[0]
                .message
                .contains("application/json, text/plain")
        );
        let p: Value = serde_json::from_str(&err.to_problem(err.status()).to_json()).unwrap();
        assert_eq!(
            p["type"],
            "https://gateway.dev/problems/unsupported-media-type"
        );
        assert_eq!(p["status"], 415);
        assert_eq!(p["errors"][0]["in"], "header");
        assert_eq!(p["errors"][0]["name"], "content-type");
        // A body without a content type; a body to an operation that takes none.
        let err = create
            .validate(None, &params, &h, Some(&body), None)
            .unwrap_err();
        assert!(err.is_unsupported_media_type());
        let (list, params) = api.find(&Method::GET, "/pets").unwrap();
        let mut with_id = HeaderMap::new();
        with_id.insert("x-request-id", ct("3f2c8a8e-1b2d-4c5e-9f00-0a1b2c3d4e5f"));
        let err = list
            .validate(
                None,
                &params,
                &with_id,
                Some(&body),
                Some(&ct("application/json")),
            )
            .unwrap_err();
        assert!(err.is_unsupported_media_type());
        // Parameters, case and a charset do not matter; declared non-JSON types are accepted.
        let (create, params) = api.find(&Method::POST, "/pets").unwrap();
        let utf8 = ct("Application/JSON; charset=utf-8");
        assert!(
            create
                .validate(None, &params, &h, Some(&body), Some(&utf8))
                .is_ok()
        );
        assert!(
            create
                .validate(None, &params, &h, None, Some(&ct("text/plain")))
                .is_ok()
        );
    }

    #[test]
    fn a_required_body_must_be_present() {
        let api = api().with_base_path(None);
        let (op, params) = api.find(&Method::POST, "/pets").unwrap();
        let err = op
            .validate(None, &params, &HeaderMap::new(), None, None)
            .unwrap_err();
        assert!(!err.is_unsupported_media_type());
        assert_eq!(found(&err), [("body".to_owned(), "required".to_owned())]);
        let err = op
            .validate(
                None,
                &params,
                &HeaderMap::new(),
                None,
                Some(&ct("application/json")),
            )
            .unwrap_err();
        assert_eq!(found(&err), [("body".to_owned(), "required".to_owned())]);
    }

    #[test]
    fn problem_lists_parameter_and_body_errors() {
        let api = api().with_base_path(None);
        let mut doc = petstore();
        doc["paths"]["/pets/{petId}"]["put"] = json!({
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
            "responses": {"200": {"description": "ok"}}
        });
        let api2 = OpenApi::from_value(&doc).unwrap().with_base_path(None);
        drop(api);
        let (op, params) = api2.find(&Method::PUT, "/pets/0").unwrap();
        let err = op
            .validate(
                None,
                &params,
                &HeaderMap::new(),
                Some(&json!({"tag": 1})),
                Some(&ct("application/json")),
            )
            .unwrap_err();
        let p: Value =
            serde_json::from_str(&err.to_problem(StatusCode::BAD_REQUEST).to_json()).unwrap();
        assert_eq!(p["type"], "https://gateway.dev/problems/validation-failed");
        assert_eq!(p["status"], 400);
        assert_eq!(p["detail"], "3 errors");
        let errors = p["errors"].as_array().unwrap();
        assert_eq!(
            errors[0],
            json!({
                "in": "path", "name": "petId", "pointer": "", "keyword": "minimum",
                "detail": "value is less than the minimum of 1"
            })
        );
        assert!(
            errors
                .iter()
                .any(|e| e["in"] == "body" && e["pointer"] == "/tag" && e["keyword"] == "type")
        );
        assert!(
            errors
                .iter()
                .any(|e| e["in"] == "body" && e["pointer"] == "" && e["keyword"] == "required")
        );
    }

    #[test]
    fn openapi_3_1_uses_2020_12() {
        let api = OpenApi::from_value(&json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
            "paths": {"/points": {"post": {
                "requestBody": {"required": true, "content": {"application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/Point"}}}},
                "responses": {"200": {"description": "ok"}}
            }}},
            "components": {"schemas": {"Point": {
                "type": "object",
                "properties": {
                    "xy": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "items": false},
                    "label": {"type": ["string", "null"]},
                    "speed": {"type": "number", "exclusiveMinimum": 0}
                },
                "unevaluatedProperties": false
            }}}
        }))
        .unwrap();
        assert_eq!(api.version(), OpenApiVersion::V3_1);
        assert_eq!(api.base_path(), None);
        let (op, params) = api.find(&Method::POST, "/points").unwrap();
        let h = HeaderMap::new();
        let ct = ct("application/merge-patch+json");
        let ok = json!({"xy": [1, 2.5], "label": null, "speed": 0.1});
        assert!(op.validate(None, &params, &h, Some(&ok), Some(&ct)).is_ok());
        let bad = json!({"xy": [1, "a", 3], "speed": 0, "extra": true});
        let mut f = found(
            &op.validate(None, &params, &h, Some(&bad), Some(&ct))
                .unwrap_err(),
        );
        f.sort();
        assert_eq!(
            f,
            [
                ("body".to_owned(), "unevaluatedProperties".to_owned()),
                ("body/speed".to_owned(), "exclusiveMinimum".to_owned()),
                ("body/xy/1".to_owned(), "type".to_owned()),
                ("body/xy/2".to_owned(), "falseSchema".to_owned()),
            ]
        );
    }

    #[test]
    fn unsupported_versions_are_refused() {
        let err = OpenApi::from_value(&json!({"swagger": "2.0", "paths": {}})).unwrap_err();
        assert_eq!(err.pointer(), "/swagger");
        assert!(matches!(
            err.kind(),
            OpenApiErrorKind::UnsupportedVersion(_)
        ));
        assert!(err.to_string().contains("Swagger 2.0"), "{err}");
        let err = OpenApi::from_value(&json!({"openapi": "3.2.0", "paths": {}})).unwrap_err();
        assert_eq!(err.pointer(), "/openapi");
        assert!(err.to_string().contains("3.2.0"));
        assert!(OpenApi::from_value(&json!({"paths": {}})).is_err());
        assert!(OpenApi::from_value(&json!([])).is_err());
        let err = OpenApi::from_value(&json!({"openapi": "3.0.0"})).unwrap_err();
        assert!(matches!(err.kind(), OpenApiErrorKind::Malformed(_)));
        let err = OpenApi::from_value(&json!({
            "openapi": "3.1.0", "jsonSchemaDialect": "https://example.com/dialect", "paths": {}
        }))
        .unwrap_err();
        assert_eq!(err.pointer(), "/jsonSchemaDialect");
    }

    fn with_schema(schema: Value) -> Value {
        let mut doc = petstore();
        doc["components"]["schemas"]["Pet"]["properties"]["extra"] = schema;
        doc
    }

    #[test]
    fn external_refs_are_refused_with_their_pointer() {
        let err = OpenApi::from_value(&with_schema(json!({"$ref": "https://example.com/x.json"})))
            .unwrap_err();
        assert_eq!(
            err.pointer(),
            "/components/schemas/Pet/properties/extra/$ref"
        );
        assert_eq!(
            err.kind(),
            &OpenApiErrorKind::ExternalRef("https://example.com/x.json".to_owned())
        );
        let mut doc = petstore();
        doc["paths"]["/pets"]["get"]["parameters"][0] = json!({"$ref": "common.yaml#/Limit"});
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert_eq!(err.pointer(), "/paths/~1pets/get/parameters/0/$ref");
        assert!(matches!(err.kind(), OpenApiErrorKind::ExternalRef(_)));
    }

    #[test]
    fn dangling_refs_and_bad_schemas_are_reported_where_they_are() {
        let mut doc = petstore();
        doc["paths"]["/pets"]["get"]["parameters"][0] =
            json!({"$ref": "#/components/parameters/Nope"});
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert_eq!(err.pointer(), "/paths/~1pets/get/parameters/0/$ref");
        assert!(matches!(err.kind(), OpenApiErrorKind::UnresolvedRef(_)));

        let err = OpenApi::from_value(&with_schema(json!({"type": "strin"}))).unwrap_err();
        assert_eq!(
            err.pointer(),
            "/components/schemas/Pet/properties/extra/type"
        );
        assert!(matches!(err.kind(), OpenApiErrorKind::Schema(_)));

        let err = OpenApi::from_value(&with_schema(json!({"$ref": "#/components/schemas/Nope"})))
            .unwrap_err();
        assert_eq!(
            err.pointer(),
            "/components/schemas/Pet/properties/extra/$ref"
        );
        assert!(
            matches!(err.kind(), OpenApiErrorKind::UnresolvedRef(_)),
            "{err}"
        );

        let mut doc = petstore();
        doc["paths"]["/pets"]["get"]["parameters"][1]["in"] = json!("body");
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert_eq!(err.pointer(), "/paths/~1pets/get/parameters/1/in");
    }

    #[test]
    fn unused_components_and_stray_path_parameters_are_checked() {
        let mut doc = petstore();
        doc["components"]["parameters"]["Unused"] =
            json!({"name": "u", "in": "query", "schema": {"type": "integr"}});
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert_eq!(err.pointer(), "/components/parameters/Unused/schema/type");
        let mut doc = petstore();
        doc["components"]["requestBodies"]["Unused"] = json!({"description": "no content"});
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert_eq!(err.pointer(), "/components/requestBodies/Unused");
        let mut doc = petstore();
        doc["paths"]["/pets"]["get"]["parameters"][1]["in"] = json!("path");
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert_eq!(err.pointer(), "/paths/~1pets/get/parameters/1/name");
        assert!(
            err.to_string().contains("does not appear in the path"),
            "{err}"
        );
    }

    #[test]
    fn templates_differing_only_in_names_are_ambiguous() {
        let mut doc = petstore();
        doc["paths"]["/pets/{id}"] = json!({"get": {"responses": {"200": {"description": "ok"}}}});
        let err = OpenApi::from_value(&doc).unwrap_err();
        assert!(err.pointer().starts_with("/paths/~1pets~1{"), "{err}");
        let mut doc = petstore();
        doc["paths"]["/a/{x}{y}"] = json!({});
        assert!(OpenApi::from_value(&doc).is_err());
    }

    #[test]
    fn recursive_component_schemas_compile_and_validate() {
        // Pet -> Owner -> pets: [Pet] is a cycle; it must compile and validate at depth.
        let api = api().with_base_path(None);
        let (op, params) = api.find(&Method::POST, "/pets").unwrap();
        let mut body = json!({"name": "a"});
        for _ in 0..20 {
            body = json!({"name": "a", "owner": {"pets": [body]}});
        }
        assert!(
            op.validate(
                None,
                &params,
                &HeaderMap::new(),
                Some(&body),
                Some(&ct("application/json"))
            )
            .is_ok()
        );
    }

    #[test]
    fn nullable_with_enum_still_needs_null_listed() {
        let doc = with_schema(json!({"type": "string", "nullable": true, "enum": ["a"]}));
        let api = OpenApi::from_value(&doc).unwrap().with_base_path(None);
        let (op, params) = api.find(&Method::POST, "/pets").unwrap();
        let err = op
            .validate(
                None,
                &params,
                &HeaderMap::new(),
                Some(&json!({"name": "x", "extra": null})),
                Some(&ct("application/json")),
            )
            .unwrap_err();
        assert_eq!(found(&err), [("body/extra".to_owned(), "enum".to_owned())]);
    }

    #[test]
    fn examples_and_extensions_are_not_treated_as_schemas() {
        let mut doc = petstore();
        doc["components"]["schemas"]["Pet"]["example"] =
            json!({"$ref": "https://example.com/not-a-ref"});
        doc["paths"]["/pets"]["x-internal"] = json!({"schema": {"$ref": "https://example.com"}});
        doc["paths"]["x-note"] = json!("paths may carry extensions too");
        assert!(OpenApi::from_value(&doc).is_ok());
    }

    #[test]
    fn openapi_is_send_sync_and_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<OpenApi>();
        assert_send_sync::<OpenApiError>();
    }
}
