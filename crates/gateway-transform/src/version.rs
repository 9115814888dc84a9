//! API version selection: which version of an API a request asks for, read from the path, a
//! header, a query parameter or the `Accept` header, in a configured order.
//!
//! A [`VersionSelector`] holds the known versions, an ordered list of [`VersionSource`]s and an
//! optional default. [`select`](VersionSelector::select) asks each source in turn; the first one
//! that finds a version decides, and a source that finds a bad one fails the request rather than
//! fall through to the next (a client that names a version must get it or an error, never
//! silently another one). No source and no default is [`VersionError::Missing`].
//!
//! Version strings are 1 to [`MAX_VERSION_LEN`] characters of `A-Z a-z 0-9 . _ -`.
//!
//! # Example
//!
//! ```
//! use gateway_transform::version::{SourceKind, VersionError, VersionSelector, VersionSource};
//! use http::{HeaderMap, StatusCode};
//!
//! let selector = VersionSelector::builder()
//!     .versions(["1", "2"])
//!     .source(VersionSource::path("v{version}", true).unwrap())
//!     .source(VersionSource::header("api-version").unwrap())
//!     .source(VersionSource::accept("application/vnd.example.v{version}+json").unwrap())
//!     .default_version("1")
//!     .build()
//!     .unwrap();
//!
//! let none = HeaderMap::new();
//! let v = selector.select("/v2/users", None, &none).unwrap();
//! assert_eq!((v.version.as_str(), v.source), ("2", SourceKind::Path));
//! assert_eq!(v.forward_path("/v2/users"), "/users");
//!
//! let mut accept = HeaderMap::new();
//! accept.insert(
//!     "accept",
//!     "application/vnd.example.v1+json;q=0.5, application/vnd.example.v2+json".parse().unwrap(),
//! );
//! let v = selector.select("/users", None, &accept).unwrap();
//! assert_eq!((v.version.as_str(), v.source), ("2", SourceKind::Accept));
//!
//! assert_eq!(selector.select("/users", None, &none).unwrap().source, SourceKind::Default);
//!
//! let err = selector.select("/v9/users", None, &none).unwrap_err();
//! assert_eq!(err, VersionError::Unknown { version: "9".into(), source: SourceKind::Path });
//! assert_eq!(err.status(), StatusCode::NOT_FOUND);
//! ```
//!
//! # Answering errors
//!
//! [`VersionError::status`] maps each error to a status, and [`VersionSelector::problem`] builds
//! an RFC 9457 problem response listing the supported versions:
//!
//! - an unknown version in the path: `404 Not Found` (no such resource);
//! - an unknown or invalid vendor version in `Accept`: `406 Not Acceptable` (RFC 9110 §15.5.7);
//! - an unknown or invalid version in a header or query parameter, or none at all without a
//!   default: `400 Bad Request`.
//!
//! # Sources
//!
//! - **Path** (`v{version}`): the first path segment. A segment that does not have the pattern's
//!   shape, or whose version part is not a valid version string, is not a version and the next
//!   source is asked; a valid but unknown one is [`VersionError::Unknown`] (404). Choose a pattern
//!   your unversioned paths cannot match: with `v{version}`, `/videos` reads as version `ideos`.
//!   With `strip`, [`Selected::forward_path`] drops the segment (`/v2/users` forwards `/users`).
//! - **Header** (`Api-Version: 2`): one value, surrounding whitespace ignored. Several header
//!   lines, a non-text value or an invalid version string are [`VersionError::Invalid`].
//! - **Query** (`?api-version=2`): the parameter's decoded value (`+` is a space, then `%XX`). A
//!   parameter given more than once or without a valid value is [`VersionError::Invalid`].
//! - **Accept** (`application/vnd.example.v{version}+json`): every media range in every
//!   `Accept` line whose type and subtype (case-insensitive) fit the pattern. Ranges with `q=0`
//!   or a malformed `q` are skipped; the known version with the highest `q` wins, the earliest
//!   on ties. Ranges that fit but name only unknown (or invalid) versions are an error (406);
//!   no fitting range (`*/*`, `application/json`) asks the next source. At most
//!   [`MAX_MEDIA_RANGES`] ranges are read: more is [`VersionError::Invalid`].

use std::{borrow::Cow, fmt};

use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{HeaderMap, HeaderName, StatusCode, header};
use percent_encoding::percent_decode_str;

/// The longest version string, in bytes.
pub const MAX_VERSION_LEN: usize = 32;

/// The most media ranges read from `Accept` lines.
pub const MAX_MEDIA_RANGES: usize = 64;

/// The most known versions a selector holds.
pub const MAX_VERSIONS: usize = 256;

/// Whether `s` is a version string: 1 to [`MAX_VERSION_LEN`] characters of
/// `A-Z a-z 0-9 . _ -`.
pub fn is_valid_version(s: &str) -> bool {
    (1..=MAX_VERSION_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where a version was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceKind {
    /// The first path segment.
    Path,
    /// A request header.
    Header,
    /// A query parameter.
    Query,
    /// A vendor media type in `Accept`.
    Accept,
    /// Nowhere: the selector's default.
    Default,
}

impl SourceKind {
    /// A short lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Header => "header",
            Self::Query => "query",
            Self::Accept => "accept",
            Self::Default => "default",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why no version was selected, or a selector could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionError {
    /// No source named a version and there is no default.
    Missing,
    /// A well-formed version that is not known.
    Unknown {
        /// The version as the client wrote it (a valid version string, safe to echo).
        version: String,
        /// Where it was found.
        source: SourceKind,
    },
    /// A source held something that is not a usable version.
    Invalid {
        /// Where.
        source: SourceKind,
        /// What was wrong, safe to show a client.
        reason: &'static str,
    },
    /// The selector or a source cannot be built (config time).
    Config(String),
}

impl VersionError {
    /// The status to answer with: `404` for an unknown path version, `406` for any `Accept`
    /// error, `500` for [`Config`](Self::Config), `400` otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unknown {
                source: SourceKind::Path,
                ..
            } => StatusCode::NOT_FOUND,
            Self::Unknown {
                source: SourceKind::Accept,
                ..
            }
            | Self::Invalid {
                source: SourceKind::Accept,
                ..
            } => StatusCode::NOT_ACCEPTABLE,
            Self::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no API version was requested and there is no default"),
            Self::Unknown { version, source } => {
                write!(
                    f,
                    "API version `{version}` (from the {source}) is not supported"
                )
            }
            Self::Invalid { source, reason } => {
                write!(f, "invalid API version in the {source}: {reason}")
            }
            Self::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for VersionError {}

fn config(m: String) -> VersionError {
    VersionError::Config(m)
}

/// A pattern with one `{version}` placeholder: `v{version}`,
/// `application/vnd.example.v{version}+json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionPattern {
    prefix: String,
    suffix: String,
}

impl VersionPattern {
    fn parse(pattern: &str, allowed: fn(u8) -> bool, what: &str) -> Result<Self, VersionError> {
        let bad = |why: &str| config(format!("{what} pattern `{pattern}`: {why}"));
        let (prefix, suffix) = pattern
            .split_once("{version}")
            .ok_or_else(|| bad("needs a `{version}` placeholder"))?;
        if suffix.contains("{version}") {
            return Err(bad("has more than one `{version}`"));
        }
        if pattern.len() > 256 {
            return Err(bad("longer than 256 bytes"));
        }
        if !prefix.bytes().chain(suffix.bytes()).all(allowed) {
            return Err(bad("has a character that cannot appear there"));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The version part of `s` when `s` has the pattern's shape (non-empty version part).
    fn extract<'s>(&self, s: &'s str, ignore_case: bool) -> Option<&'s str> {
        let (p, x) = (self.prefix.as_bytes(), self.suffix.as_bytes());
        let b = s.as_bytes();
        if b.len() <= p.len() + x.len() {
            return None;
        }
        let head = b.get(..p.len())?;
        let tail = b.get(b.len() - x.len()..)?;
        let fits = if ignore_case {
            head.eq_ignore_ascii_case(p) && tail.eq_ignore_ascii_case(x)
        } else {
            head == p && tail == x
        };
        if !fits {
            return None;
        }
        s.get(p.len()..s.len() - x.len())
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where a version may be found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionSource {
    /// The first path segment, fitting `pattern`.
    Path {
        /// The segment's shape, such as `v{version}` (case-sensitive).
        pattern: VersionPattern,
        /// Whether the caller forwards the path without the segment.
        strip: bool,
    },
    /// A request header.
    Header(HeaderName),
    /// A query parameter, by decoded name.
    Query(String),
    /// A vendor media type in `Accept`.
    Accept {
        /// The media type's shape, such as `application/vnd.example.v{version}+json`
        /// (compared case-insensitively).
        pattern: VersionPattern,
    },
}

impl VersionSource {
    /// The first path segment, shaped like `pattern` (`v{version}`, `{version}`, `api-{version}`).
    ///
    /// # Errors
    ///
    /// [`VersionError::Config`]: no or several `{version}`, or a `/`, `?`, `#`, `%` or a
    /// character that is not path text around it.
    pub fn path(pattern: &str, strip: bool) -> Result<Self, VersionError> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b);
        Ok(Self::Path {
            pattern: VersionPattern::parse(pattern, allowed, "path")?,
            strip,
        })
    }

    /// A request header.
    ///
    /// # Errors
    ///
    /// [`VersionError::Config`]: not a header name.
    pub fn header(name: &str) -> Result<Self, VersionError> {
        HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map(Self::Header)
            .map_err(|_| config(format!("`{name}` is not a header name")))
    }

    /// A query parameter, compared with each parameter's decoded name.
    ///
    /// # Errors
    ///
    /// [`VersionError::Config`]: an empty name, one over 256 bytes, or one with control
    /// characters.
    pub fn query(name: &str) -> Result<Self, VersionError> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(config(format!(
                "`{}` is not a query parameter name",
                name.escape_debug()
            )));
        }
        Ok(Self::Query(name.to_owned()))
    }

    /// A vendor media type in `Accept`, such as `application/vnd.example.v{version}+json`.
    ///
    /// # Errors
    ///
    /// [`VersionError::Config`]: no or several `{version}`, no `/` before it, or characters
    /// that are not RFC 9110 token characters.
    pub fn accept(pattern: &str) -> Result<Self, VersionError> {
        let allowed = |b: u8| is_tchar(b) || b == b'/';
        let pattern = VersionPattern::parse(pattern, allowed, "media type")?;
        let slashes = pattern.prefix.bytes().filter(|&b| b == b'/').count();
        if slashes != 1 || pattern.suffix.contains('/') || pattern.prefix.starts_with('/') {
            return Err(config(format!(
                "media type pattern `{}{{version}}{}` must be `type/subtype` with the version \
                 in the subtype",
                pattern.prefix, pattern.suffix
            )));
        }
        Ok(Self::Accept { pattern })
    }

    /// Which kind of source this is.
    pub fn kind(&self) -> SourceKind {
        match self {
            Self::Path { .. } => SourceKind::Path,
            Self::Header(_) => SourceKind::Header,
            Self::Query(_) => SourceKind::Query,
            Self::Accept { .. } => SourceKind::Accept,
        }
    }
}

/// The selected version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The version, spelled as configured.
    pub version: String,
    /// Where it was found.
    pub source: SourceKind,
    /// For a path source with `strip`: how many leading bytes of the path (`/v2`) to drop
    /// before forwarding; see [`forward_path`](Self::forward_path).
    pub strip_path_prefix: Option<usize>,
}

impl Selected {
    /// The path to forward: `path` without the version segment when the selection says so
    /// (`/v2/users` gives `/users`, `/v2` gives `/`), else `path` itself.
    pub fn forward_path<'p>(&self, path: &'p str) -> &'p str {
        match self.strip_path_prefix.and_then(|n| path.get(n..)) {
            Some("") => "/",
            Some(rest) => rest,
            None => path,
        }
    }
}

/// Picks a request's API version; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct VersionSelector {
    versions: Vec<String>,
    sources: Vec<VersionSource>,
    default: Option<String>,
}

/// Builds a [`VersionSelector`].
#[derive(Debug, Default)]
pub struct VersionSelectorBuilder {
    versions: Vec<String>,
    sources: Vec<VersionSource>,
    default: Option<String>,
}

impl VersionSelectorBuilder {
    /// Adds known versions.
    #[must_use]
    pub fn versions<I, S>(mut self, versions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.versions.extend(versions.into_iter().map(Into::into));
        self
    }

    /// Adds a source, asked after those added before it.
    #[must_use]
    pub fn source(mut self, source: VersionSource) -> Self {
        self.sources.push(source);
        self
    }

    /// The version of requests that name none.
    #[must_use]
    pub fn default_version(mut self, version: impl Into<String>) -> Self {
        self.default = Some(version.into());
        self
    }

    /// The selector.
    ///
    /// # Errors
    ///
    /// [`VersionError::Config`]: no versions or more than [`MAX_VERSIONS`], an invalid version
    /// string, two versions that differ only in case (`Accept` could not tell them apart), a
    /// default that is not known, or neither a source nor a default.
    pub fn build(self) -> Result<VersionSelector, VersionError> {
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return Err(config(format!(
                "a version selector needs 1 to {MAX_VERSIONS} known versions"
            )));
        }
        for (i, v) in self.versions.iter().enumerate() {
            if !is_valid_version(v) {
                return Err(config(format!(
                    "`{}` is not a version: 1 to {MAX_VERSION_LEN} of A-Z a-z 0-9 . _ -",
                    v.escape_debug()
                )));
            }
            if self
                .versions
                .iter()
                .take(i)
                .any(|w| w.eq_ignore_ascii_case(v))
            {
                return Err(config(format!(
                    "version `{v}` is listed twice (versions are compared ignoring case in Accept)"
                )));
            }
        }
        if let Some(d) = &self.default
            && !self.versions.contains(d)
        {
            return Err(config(format!(
                "default version `{}` is not one of the known versions",
                d.escape_debug()
            )));
        }
        if self.sources.is_empty() && self.default.is_none() {
            return Err(config(
                "a version selector needs a source or a default".to_owned(),
            ));
        }
        Ok(VersionSelector {
            versions: self.versions,
            sources: self.sources,
            default: self.default,
        })
    }
}

/// What one source found: a version string and, for a stripping path source, the prefix length.
enum Found<'a> {
    Nothing,
    Version(Cow<'a, str>, Option<usize>),
}

impl VersionSelector {
    /// A builder.
    pub fn builder() -> VersionSelectorBuilder {
        VersionSelectorBuilder::default()
    }

    /// The known versions.
    pub fn versions(&self) -> &[String] {
        &self.versions
    }

    /// The default version.
    pub fn default_version(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The version for a request with the normalized `path`, raw `query` (without `?`) and
    /// `headers`.
    ///
    /// # Errors
    ///
    /// - [`VersionError::Unknown`]: the first source that named a version named an unknown one;
    /// - [`VersionError::Invalid`]: it held something that is not a usable version;
    /// - [`VersionError::Missing`]: no source named one and there is no default.
    ///
    /// [`VersionError::status`] says how to answer.
    pub fn select(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Selected, VersionError> {
        for source in &self.sources {
            let found = match source {
                VersionSource::Path { pattern, strip } => from_path(pattern, *strip, path),
                VersionSource::Header(name) => from_header(name, headers)?,
                VersionSource::Query(name) => from_query(name, query.unwrap_or_default())?,
                VersionSource::Accept { pattern } => {
                    accepted(self.accept_version(pattern, headers)?)
                }
            };
            let Found::Version(version, strip) = found else {
                continue;
            };
            let kind = source.kind();
            let known = if kind == SourceKind::Accept {
                self.versions
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(&version))
            } else {
                self.versions.iter().find(|k| **k == *version)
            };
            return match known {
                Some(k) => Ok(Selected {
                    version: k.clone(),
                    source: kind,
                    strip_path_prefix: strip,
                }),
                None => Err(VersionError::Unknown {
                    version: version.into_owned(),
                    source: kind,
                }),
            };
        }
        match &self.default {
            Some(d) => Ok(Selected {
                version: d.clone(),
                source: SourceKind::Default,
                strip_path_prefix: None,
            }),
            None => Err(VersionError::Missing),
        }
    }

    /// A problem (RFC 9457) response for `err`, with [`VersionError::status`], the error as the
    /// detail (a configuration error only says the version could not be selected) and a
    /// `versions` member listing the known versions.
    pub fn problem(&self, err: &VersionError) -> Problem {
        let detail = match err {
            VersionError::Config(_) => "the API version could not be selected".to_owned(),
            _ => err.to_string(),
        };
        // Version strings are `[A-Za-z0-9._-]`: nothing to escape in JSON.
        let mut list = String::from("[");
        for (i, v) in self.versions.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push('"');
            list.push_str(v);
            list.push('"');
        }
        list.push(']');
        let reason = if err.status() == StatusCode::NOT_FOUND {
            RejectReason::NoRoute
        } else {
            RejectReason::BadRequest
        };
        Problem::new(err.status())
            .detail(detail)
            .extension_json("versions", list)
            .reason(reason, ResponseFlags::empty())
    }

    /// The best known version among the `Accept` ranges that fit `pattern`.
    fn accept_version<'h>(
        &self,
        pattern: &VersionPattern,
        headers: &'h HeaderMap,
    ) -> Result<Option<&'h str>, VersionError> {
        let invalid = |reason| VersionError::Invalid {
            source: SourceKind::Accept,
            reason,
        };
        let mut best: Option<(u16, &'h str)> = None;
        let mut unknown: Option<&'h str> = None;
        let mut malformed = false;
        let mut ranges = 0usize;
        for line in headers.get_all(header::ACCEPT) {
            let Ok(line) = line.to_str() else {
                continue;
            };
            for range in split_unquoted(line, b',') {
                if range.trim().is_empty() {
                    continue;
                }
                ranges += 1;
                if ranges > MAX_MEDIA_RANGES {
                    return Err(invalid("too many media ranges in Accept"));
                }
                let mut parts = split_unquoted(range, b';');
                let media = parts.next().unwrap_or_default().trim();
                let Some(version) = pattern.extract(media, true) else {
                    continue;
                };
                let Some(q) = weight(parts) else {
                    continue;
                };
                if q == 0 {
                    continue;
                }
                if !is_valid_version(version) {
                    malformed = true;
                    continue;
                }
                if self
                    .versions
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(version))
                {
                    if best.is_none_or(|(bq, _)| q > bq) {
                        best = Some((q, version));
                    }
                } else {
                    unknown = unknown.or(Some(version));
                }
            }
        }
        if let Some((_, v)) = best {
            return Ok(Some(v));
        }
        if let Some(v) = unknown {
            return Err(VersionError::Unknown {
                version: v.to_owned(),
                source: SourceKind::Accept,
            });
        }
        if malformed {
            return Err(invalid("the vendor media type names no valid version"));
        }
        Ok(None)
    }
}

fn accepted(v: Option<&str>) -> Found<'_> {
    v.map_or(Found::Nothing, |v| Found::Version(Cow::Borrowed(v), None))
}

fn from_path<'p>(pattern: &VersionPattern, strip: bool, path: &'p str) -> Found<'p> {
    let Some(rest) = path.strip_prefix('/') else {
        return Found::Nothing;
    };
    let segment = rest.split('/').next().unwrap_or_default();
    match pattern.extract(segment, false) {
        Some(v) if is_valid_version(v) => {
            Found::Version(Cow::Borrowed(v), strip.then_some(1 + segment.len()))
        }
        _ => Found::Nothing,
    }
}

fn from_header<'h>(name: &HeaderName, headers: &'h HeaderMap) -> Result<Found<'h>, VersionError> {
    let invalid = |reason| VersionError::Invalid {
        source: SourceKind::Header,
        reason,
    };
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(Found::Nothing);
    };
    if values.next().is_some() {
        return Err(invalid("the version header is given more than once"));
    }
    let value = value
        .to_str()
        .map_err(|_| invalid("the version header is not text"))?
        .trim();
    if !is_valid_version(value) {
        return Err(invalid("a version is 1 to 32 of A-Z a-z 0-9 . _ -"));
    }
    Ok(Found::Version(Cow::Borrowed(value), None))
}

fn from_query<'q>(name: &str, query: &'q str) -> Result<Found<'q>, VersionError> {
    let invalid = |reason| VersionError::Invalid {
        source: SourceKind::Query,
        reason,
    };
    let mut found: Option<&'q str> = None;
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(n) != name {
            continue;
        }
        if found.is_some() {
            return Err(invalid("the version parameter is given more than once"));
        }
        found = Some(v);
    }
    let Some(raw) = found else {
        return Ok(Found::Nothing);
    };
    let value = decode(raw);
    if !is_valid_version(&value) {
        return Err(invalid("a version is 1 to 32 of A-Z a-z 0-9 . _ -"));
    }
    Ok(Found::Version(value, None))
}

/// A query component decoded as a form would be: `+` is a space, then `%XX`.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['+', '%']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The `q` of a media range's parameters, in thousandths; `None` when malformed. Defaults to 1.
fn weight<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            return parse_q(value.trim());
        }
    }
    Some(1000)
}

/// RFC 9110 §12.4.2 `qvalue`: `0[.ddd]` or `1[.000]`.
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        let scale = [100, 10, 1].get(i).copied()?;
        thousandths += u16::from(b - b'0') * scale;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Splits `s` at `sep` outside double-quoted strings (with `\` escapes).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, b) in current.bytes().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                rest = current.get(i + 1..);
                return current.get(..i);
            }
        }
        rest = None;
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(sources: Vec<VersionSource>, default: Option<&str>) -> VersionSelector {
        let mut b = VersionSelector::builder().versions(["1", "2", "2024-06-01", "Beta"]);
        for s in sources {
            b = b.source(s);
        }
        if let Some(d) = default {
            b = b.default_version(d);
        }
        b.build().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn accept_selector() -> VersionSelector {
        selector(
            vec![VersionSource::accept("application/vnd.example.v{version}+json").unwrap()],
            None,
        )
    }

    fn from_accept(values: &[&str]) -> Result<Selected, VersionError> {
        let pairs: Vec<_> = values.iter().map(|v| ("accept", *v)).collect();
        accept_selector().select("/x", None, &headers(&pairs))
    }

    #[test]
    fn path_source_selects_and_strips() {
        let s = selector(vec![VersionSource::path("v{version}", true).unwrap()], None);
        let none = HeaderMap::new();
        let v = s.select("/v2/users/7", None, &none).unwrap();
        assert_eq!(
            v,
            Selected {
                version: "2".into(),
                source: SourceKind::Path,
                strip_path_prefix: Some(3),
            }
        );
        assert_eq!(v.forward_path("/v2/users/7"), "/users/7");
        let bare = s.select("/v2", None, &none).unwrap();
        assert_eq!(bare.forward_path("/v2"), "/");
        assert_eq!(
            s.select("/v2/", None, &none).unwrap().forward_path("/v2/"),
            "/"
        );
        let keep = selector(
            vec![VersionSource::path("v{version}", false).unwrap()],
            None,
        );
        let v = keep.select("/v2024-06-01/x", None, &none).unwrap();
        assert_eq!(
            (v.version.as_str(), v.strip_path_prefix),
            ("2024-06-01", None)
        );
        assert_eq!(v.forward_path("/v2024-06-01/x"), "/v2024-06-01/x");
    }

    #[test]
    fn path_segments_without_a_version_shape_fall_through() {
        let s = selector(
            vec![VersionSource::path("api-v{version}", true).unwrap()],
            Some("1"),
        );
        let none = HeaderMap::new();
        for p in ["/users", "/", "/api-v", "/api-v%20x/y", "relative", ""] {
            let v = s.select(p, None, &none).unwrap();
            assert_eq!(v.source, SourceKind::Default, "{p:?}");
        }
        let long = format!("/api-v{}", "9".repeat(MAX_VERSION_LEN + 1));
        assert_eq!(
            s.select(&long, None, &none).unwrap().source,
            SourceKind::Default
        );
        assert_eq!(
            s.select("/api-v3/users", None, &none),
            Err(VersionError::Unknown {
                version: "3".into(),
                source: SourceKind::Path
            })
        );
        assert_eq!(
            s.select("/API-V2/users", None, &none).unwrap().source,
            SourceKind::Default,
            "paths are case-sensitive"
        );
    }

    #[test]
    fn header_source_selects_and_refuses_bad_values() {
        let s = selector(vec![VersionSource::header("Api-Version").unwrap()], None);
        let v = s
            .select("/x", None, &headers(&[("api-version", " 2 ")]))
            .unwrap();
        assert_eq!((v.version.as_str(), v.source), ("2", SourceKind::Header));
        assert_eq!(
            s.select("/x", None, &headers(&[("api-version", "3")])),
            Err(VersionError::Unknown {
                version: "3".into(),
                source: SourceKind::Header
            })
        );
        for bad in ["", "1, 2", "v 2", "../1", &"1".repeat(33)] {
            let err = s
                .select("/x", None, &headers(&[("api-version", bad)]))
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    VersionError::Invalid {
                        source: SourceKind::Header,
                        ..
                    }
                ),
                "{bad:?}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        let twice = headers(&[("api-version", "1"), ("api-version", "2")]);
        assert!(matches!(
            s.select("/x", None, &twice),
            Err(VersionError::Invalid { .. })
        ));
        let mut obs = HeaderMap::new();
        obs.insert(
            "api-version",
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert!(matches!(
            s.select("/x", None, &obs),
            Err(VersionError::Invalid { .. })
        ));
        assert_eq!(
            s.select("/x", None, &HeaderMap::new()),
            Err(VersionError::Missing)
        );
        assert_eq!(VersionError::Missing.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn query_source_decodes_names_and_values() {
        let s = selector(vec![VersionSource::query("api version").unwrap()], None);
        let none = HeaderMap::new();
        let v = s.select("/x", Some("a=1&api+version=%32"), &none).unwrap();
        assert_eq!((v.version.as_str(), v.source), ("2", SourceKind::Query));
        assert_eq!(
            s.select("/x", Some("api%20version=Beta"), &none)
                .unwrap()
                .version,
            "Beta"
        );
        assert_eq!(
            s.select("/x", Some("api%20version=beta"), &none),
            Err(VersionError::Unknown {
                version: "beta".into(),
                source: SourceKind::Query
            }),
            "query versions are case-sensitive"
        );
        for bad in [
            "api+version=1&api+version=1",
            "api+version",
            "api+version=",
            "api+version=1%262",
            "api+version=1+2",
        ] {
            assert!(
                matches!(
                    s.select("/x", Some(bad), &none),
                    Err(VersionError::Invalid {
                        source: SourceKind::Query,
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            s.select("/x", Some("other=1"), &none),
            Err(VersionError::Missing)
        );
        assert_eq!(s.select("/x", None, &none), Err(VersionError::Missing));
    }

    #[test]
    fn accept_picks_the_highest_q_known_version() {
        let pick = |v: &[&str]| from_accept(v).map(|s| s.version);
        assert_eq!(pick(&["application/vnd.example.v2+json"]), Ok("2".into()));
        assert_eq!(
            pick(&["application/vnd.example.v1+json;q=0.9, application/vnd.example.v2+json;q=0.5"]),
            Ok("1".into())
        );
        assert_eq!(
            pick(&[
                "application/vnd.example.v1+json;q=0.5",
                "application/vnd.example.v2+json"
            ]),
            Ok("2".into()),
            "several Accept lines"
        );
        assert_eq!(
            pick(&["application/vnd.example.v1+json;q=0.5, application/vnd.example.v2+json;q=0.5"]),
            Ok("1".into()),
            "ties go to the first"
        );
        assert_eq!(
            pick(&["application/vnd.example.v9+json, application/vnd.example.v1+json;q=0.1"]),
            Ok("1".into()),
            "an unknown version with a higher q loses to a known one"
        );
        assert_eq!(
            pick(&["application/vnd.example.v2+json;q=0, application/vnd.example.v1+json;q=0.001"]),
            Ok("1".into()),
            "q=0 is excluded"
        );
        assert_eq!(
            pick(&["APPLICATION/VND.EXAMPLE.VBETA+JSON"]),
            Ok("Beta".into()),
            "media types are case-insensitive; the configured spelling is returned"
        );
        assert_eq!(
            pick(&[r#"application/vnd.example.v2+json; charset="a,b;q=0"; q=0.8, text/html"#]),
            Ok("2".into()),
            "quoted parameters with separators"
        );
        assert_eq!(
            pick(&["application/vnd.example.v2+json;q=2, application/vnd.example.v1+json;q=0.3"]),
            Ok("1".into()),
            "a malformed q skips the range"
        );
    }

    #[test]
    fn accept_without_a_known_version_is_not_acceptable() {
        let err = from_accept(&["application/vnd.example.v9+json"]).unwrap_err();
        assert_eq!(
            err,
            VersionError::Unknown {
                version: "9".into(),
                source: SourceKind::Accept
            }
        );
        assert_eq!(err.status(), StatusCode::NOT_ACCEPTABLE);
        let err = from_accept(&["application/vnd.example.v!!+json"]).unwrap_err();
        assert!(matches!(
            err,
            VersionError::Invalid {
                source: SourceKind::Accept,
                ..
            }
        ));
        assert_eq!(err.status(), StatusCode::NOT_ACCEPTABLE);
        for ignored in [
            "*/*",
            "application/json",
            "application/*",
            "application/vnd.example.v+json",
            "application/vnd.example.v2+json;q=0",
        ] {
            assert_eq!(
                from_accept(&[ignored]),
                Err(VersionError::Missing),
                "{ignored}"
            );
        }
        let many = vec!["text/plain"; MAX_MEDIA_RANGES + 1].join(",");
        assert!(matches!(
            from_accept(&[&many]),
            Err(VersionError::Invalid { .. })
        ));
    }

    #[test]
    fn sources_are_asked_in_order_and_the_first_claim_decides() {
        let s = selector(
            vec![
                VersionSource::header("api-version").unwrap(),
                VersionSource::query("v").unwrap(),
                VersionSource::path("v{version}", false).unwrap(),
            ],
            Some("1"),
        );
        let h = headers(&[("api-version", "2")]);
        let v = s.select("/vBeta/x", Some("v=2024-06-01"), &h).unwrap();
        assert_eq!((v.version.as_str(), v.source), ("2", SourceKind::Header));
        let none = HeaderMap::new();
        let v = s.select("/vBeta/x", Some("v=2024-06-01"), &none).unwrap();
        assert_eq!(
            (v.version.as_str(), v.source),
            ("2024-06-01", SourceKind::Query)
        );
        let v = s.select("/vBeta/x", None, &none).unwrap();
        assert_eq!((v.version.as_str(), v.source), ("Beta", SourceKind::Path));
        let v = s.select("/x", None, &none).unwrap();
        assert_eq!((v.version.as_str(), v.source), ("1", SourceKind::Default));
        // An unknown earlier claim is an error, not a fall-through to a later source.
        let bad = headers(&[("api-version", "7")]);
        assert!(matches!(
            s.select("/v2/x", None, &bad),
            Err(VersionError::Unknown {
                source: SourceKind::Header,
                ..
            })
        ));
    }

    #[test]
    fn invalid_configuration_is_refused() {
        let b = || VersionSelector::builder().source(VersionSource::header("v").unwrap());
        assert!(b().build().is_err(), "no versions");
        assert!(b().versions(["1", "bad version"]).build().is_err());
        assert!(b().versions([""]).build().is_err());
        assert!(b().versions(["x".repeat(33)]).build().is_err());
        assert!(b().versions(["v1", "V1"]).build().is_err());
        assert!(b().versions(["1"]).default_version("2").build().is_err());
        assert!(VersionSelector::builder().versions(["1"]).build().is_err());
        assert!(
            VersionSelector::builder()
                .versions(["1"])
                .default_version("1")
                .build()
                .is_ok()
        );
        assert!(VersionSource::path("v", true).is_err());
        assert!(VersionSource::path("{version}{version}", true).is_err());
        assert!(VersionSource::path("a/{version}", true).is_err());
        assert!(VersionSource::path("v{version}?", true).is_err());
        assert!(VersionSource::accept("vnd.v{version}").is_err());
        assert!(VersionSource::accept("application/x/v{version}").is_err());
        assert!(VersionSource::accept("application/{version}/json").is_err());
        assert!(VersionSource::accept("application/vnd v{version}").is_err());
        assert!(VersionSource::header("bad header").is_err());
        assert!(VersionSource::query("").is_err());
        assert_eq!(
            VersionError::Config("x".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn problems_name_the_supported_versions() {
        let s = accept_selector();
        let err = from_accept(&["application/vnd.example.v9+json"]).unwrap_err();
        let problem = s.problem(&err);
        assert_eq!(problem.status(), StatusCode::NOT_ACCEPTABLE);
        let json = problem.to_json();
        assert!(
            json.contains(r#""versions":["1","2","2024-06-01","Beta"]"#),
            "{json}"
        );
        assert!(json.contains("`9`"), "{json}");
        let hidden = s.problem(&VersionError::Config("secret".into()));
        assert!(!hidden.to_json().contains("secret"));
    }

    #[test]
    fn qvalues_parse_strictly() {
        for (q, want) in [
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1.001", None),
            ("0.1234", None),
            ("2", None),
            ("-1", None),
            ("", None),
            ("0.", Some(0)),
            ("0.a", None),
        ] {
            assert_eq!(parse_q(q), want, "{q:?}");
        }
    }
}
