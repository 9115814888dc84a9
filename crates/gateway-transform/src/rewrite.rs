//! Path and query rewrites: the path and query forwarded upstream, built from a template or a
//! regex and an ordered list of query operations.
//!
//! A rewrite runs after routing and policy (authentication, rate limits) on the normalized path
//! ([`gateway_core::normalize_path`]); the rewritten path and query are what is forwarded and
//! logged. The path comes from one of:
//!
//! - a [`PathTemplate`] such as `/internal/users/${path.id}`: the literal text is kept as written
//!   and every substituted value is percent-encoded as one path segment, so a `/`, `?`, `#` or
//!   `%` in a value cannot create a segment, a query or an escape. Route parameters
//!   (`${path.NAME}`) come from the request path still percent-encoded: their valid `%XX`
//!   escapes are kept as they are (`john%20doe` is not encoded twice), and they are checked
//!   decoded (`..%2F` is refused like `../`). `${path}` (the
//!   normalized path itself) is the one exception: it is inserted as it is, so
//!   `/internal${path}` prefixes the path;
//! - a [`RegexRewrite`]: a [`regex`] pattern matched against the normalized path and a
//!   replacement with `$1` / `${name}` captures, substituted as they are (the captured text is
//!   already a normalized path).
//!
//! Either way the result is checked before it is used: it must start with `/`, and it must not
//! contain dot segments (`.`, `..`, also as `%2E`), empty segments (`//`), `?`, `#`, control
//! characters, encoded CR, LF or NUL, or characters a path cannot hold raw. A failed check is an
//! error ([`RewriteError::Unsafe`]); nothing half-rewritten is forwarded.
//!
//! [`QueryRules`] then edit the query string: `remove`, `rename`, `set`, `add` and `keep_only`,
//! applied in the order they were added. Untouched pairs keep their order and their original
//! encoding; names are compared after decoding (`+` is a space, then `%XX`); written names and
//! values are percent-encoded, everything but `A-Z a-z 0-9 - . _ ~`. An empty result has no `?`.
//!
//! # Example
//!
//! ```
//! use gateway_transform::rewrite::{PathRewrite, QueryRules, Rewrite, RewriteError};
//! use gateway_transform::template::Context;
//!
//! let rewrite = Rewrite {
//!     path: Some(PathRewrite::template("/internal/users/${path.id}").unwrap()),
//!     query: QueryRules::builder()
//!         .remove("debug").unwrap()
//!         .rename("q", "search").unwrap()
//!         .set("tenant", "${principal.consumer}").unwrap()
//!         .build(),
//! };
//! let params = vec![("id".to_owned(), "42".to_owned())];
//! let ctx = Context { consumer: Some("acme co"), params: &params, ..Context::default() };
//! let out = rewrite.apply("/users/42", Some("q=a%20b&debug=1&tenant=evil"), &ctx).unwrap();
//! assert_eq!(out, "/internal/users/42?search=a%20b&tenant=acme%20co");
//!
//! // A hostile parameter stays inside its segment.
//! let params = vec![("id".to_owned(), "../admin?x=1".to_owned())];
//! let ctx = Context { params: &params, ..Context::default() };
//! let err = rewrite.apply("/users/x", None, &ctx).unwrap_err();
//! assert!(matches!(err, RewriteError::Unsafe { .. }), "a `..` segment in a value is refused");
//! let params = vec![("id".to_owned(), "a/b?x=1#f".to_owned())];
//! let ctx = Context { params: &params, ..Context::default() };
//! let out = rewrite.apply("/users/x", None, &ctx).unwrap();
//! assert_eq!(out, "/internal/users/a%2Fb%3Fx%3D1%23f");
//!
//! // Regex rewrites with captures.
//! let strip = Rewrite {
//!     path: Some(PathRewrite::regex(r"^/api/v1/(?P<rest>.*)$", "/${rest}").unwrap()),
//!     ..Rewrite::default()
//! };
//! assert_eq!(strip.apply("/api/v1/orders/7", None, &Context::default()).unwrap(), "/orders/7");
//! ```
//!
//! # Security considerations
//!
//! - An upstream that decodes `%2F` (or `%5C`) before routing sees a substituted `a/b` as two
//!   segments. A value whose `/`- or `\`-separated pieces include `.` or `..` is therefore
//!   refused outright, so `../admin` cannot climb even there; prefer upstreams that keep `%2F`
//!   encoded.
//! - A variable without a value fails a path template ([`RewriteError::MissingValue`]) rather
//!   than forwarding a shorter path; an empty value is refused, since `/users/` and `/users/x`
//!   are different resources.
//! - `set` with a variable without a value removes every client-supplied occurrence, so a client
//!   cannot supply the value the gateway would have set.
//! - The [`regex`] crate matches in linear time (no backreferences or lookaround), so a pattern
//!   cannot be made to backtrack catastrophically by a crafted path. Patterns are compiled once,
//!   with a 1 MiB size limit.

use std::{borrow::Cow, fmt};

use gateway_core::{Problem, RejectReason, ResponseFlags};
use http::{StatusCode, uri::PathAndQuery};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use regex::{Regex, RegexBuilder};

use crate::template::{Context, Template, TemplateError, Token};

/// The longest path and query a rewrite produces, in bytes.
pub const MAX_LEN: usize = 16 * 1024;

/// The longest regex pattern, path template or replacement accepted, in bytes.
pub const MAX_RULE_LEN: usize = 4 * 1024;

/// The longest query parameter name a rule may name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Compiled size limit of one regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Everything but the unreserved characters (RFC 3986 §2.3) is encoded in written values.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a rewrite could not be built or applied.
///
/// Config-time variants ([`Config`](Self::Config), [`Regex`](Self::Regex), and
/// [`Template`](Self::Template) holding [`TemplateError::Syntax`]) come from the constructors;
/// the others from [`Rewrite::apply`]. [`status`](Self::status) says how to answer the request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RewriteError {
    /// A template that does not parse (config time), or a rendered value containing CR, LF or
    /// NUL (request time).
    Template(TemplateError),
    /// A regex pattern that does not compile (config time); the message says why.
    Regex(String),
    /// A rule that cannot be built (config time): bad literal text, an unknown capture group,
    /// a bad parameter name.
    Config(String),
    /// A path template variable has no value for this request (no principal, no such header).
    MissingValue {
        /// The variable, as written inside `${...}`.
        variable: String,
    },
    /// The regex did not match and the rewrite says [`OnNoMatch::Reject`].
    NoMatch,
    /// The rewritten path or query was refused.
    Unsafe {
        /// What was wrong, safe to show a client.
        reason: &'static str,
    },
}

impl RewriteError {
    /// The status to answer a request whose rewrite failed with this error: `400 Bad Request`
    /// when the request's own data made the result unsafe, or a variable read from a request
    /// header is missing; `404 Not Found` for [`NoMatch`](Self::NoMatch); `500 Internal Server
    /// Error` otherwise (the configuration does not fit the request: a missing principal on a
    /// route without authentication, say).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Template(TemplateError::Injection) | Self::Unsafe { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::MissingValue { variable } if variable.starts_with("header.") => {
                StatusCode::BAD_REQUEST
            }
            Self::NoMatch => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A problem (RFC 9457) response for this error, with [`status`](Self::status) and
    /// [`RejectReason::TransformFailed`]. The detail names what was refused for `4xx`; a `5xx`
    /// says only that the request could not be rewritten, keeping configuration private.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = if status.is_client_error() {
            self.to_string()
        } else {
            "the request could not be rewritten".to_owned()
        };
        Problem::new(status)
            .detail(detail)
            .reason(RejectReason::TransformFailed, ResponseFlags::empty())
    }
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Template(TemplateError::Injection) => {
                f.write_str("a rewritten value would contain CR, LF or NUL")
            }
            Self::Template(e) => write!(f, "template: {e}"),
            Self::Regex(e) => write!(f, "invalid regex: {e}"),
            Self::Config(m) => f.write_str(m),
            Self::MissingValue { variable } => {
                write!(f, "`${{{variable}}}` has no value for this request")
            }
            Self::NoMatch => f.write_str("the path does not match the rewrite pattern"),
            Self::Unsafe { reason } => write!(f, "rewrite refused: {reason}"),
        }
    }
}

impl std::error::Error for RewriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Template(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TemplateError> for RewriteError {
    fn from(e: TemplateError) -> Self {
        Self::Template(e)
    }
}

const fn unsafe_(reason: &'static str) -> RewriteError {
    RewriteError::Unsafe { reason }
}

// ---------------------------------------------------------------------------------------------
// Path templates
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// Literal path text, written as configured.
    Literal(String),
    /// `${path}`: the normalized path, inserted as it is.
    WholePath,
    /// Any other variable: rendered, then encoded as one segment's worth of text.
    Value { name: String, template: Template },
}

/// A path built from literal text and `${variable}` placeholders (the variables of
/// [`crate::template`]), parsed once.
///
/// Literal text must start with `/` and may hold only characters a path can carry raw
/// (`A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , ; = : @ /`) and `%XX` escapes; it is kept as written.
/// Each substituted value is percent-encoded except for `A-Z a-z 0-9 - . _ ~`, so it stays
/// within the segment it is written in. `${path}` is the normalized path, inserted unencoded.
/// `$$` is a literal `$`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl PathTemplate {
    /// Parses `source`.
    ///
    /// # Errors
    ///
    /// [`RewriteError::Template`] for an unclosed `${` or an unknown variable;
    /// [`RewriteError::Config`] when `source` does not start with `/`, is longer than
    /// [`MAX_RULE_LEN`], or has literal text a path cannot hold (`?`, `#`, space, a control or
    /// non-ASCII character, a malformed `%` escape).
    pub fn parse(source: &str) -> Result<Self, RewriteError> {
        if !source.starts_with('/') {
            return Err(RewriteError::Config(format!(
                "path template `{source}` must start with `/`"
            )));
        }
        if source.len() > MAX_RULE_LEN {
            return Err(RewriteError::Config(format!(
                "path template is longer than {MAX_RULE_LEN} bytes"
            )));
        }
        let mut pieces = Vec::new();
        for token in crate::template::tokenize(source)? {
            match token {
                Token::Text(text) => pieces.push(literal(text, source)?),
                Token::Var("path") => pieces.push(Piece::WholePath),
                Token::Var(name) => pieces.push(Piece::Value {
                    name: name.to_owned(),
                    template: Template::parse(&format!("${{{name}}}"))?,
                }),
            }
        }
        Ok(Self {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders the path for `ctx` (`${path}` reads `ctx.path`). The result is not yet checked;
    /// [`Rewrite::apply`] checks it.
    fn render(&self, ctx: &Context<'_>) -> Result<String, RewriteError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(t) => out.push_str(t),
                Piece::WholePath => {
                    let path = ctx.path.ok_or_else(|| RewriteError::MissingValue {
                        variable: "path".to_owned(),
                    })?;
                    out.push_str(path);
                }
                Piece::Value { name, template } => {
                    let value =
                        template
                            .render(ctx)?
                            .ok_or_else(|| RewriteError::MissingValue {
                                variable: name.clone(),
                            })?;
                    let value = value.as_bytes();
                    if value.is_empty() {
                        return Err(unsafe_("a substituted path value is empty"));
                    }
                    // Path parameters arrive as they were in the (normalized) path: still
                    // percent-encoded. Their escapes are kept (`john%20doe` stays one escape,
                    // not `john%2520doe`), and they are checked decoded.
                    let encoded = name.starts_with("path.");
                    let decoded: std::borrow::Cow<'_, [u8]> = if encoded {
                        percent_encoding::percent_decode(value).into()
                    } else {
                        value.into()
                    };
                    if climbs(&decoded) {
                        return Err(unsafe_(
                            "a substituted path value contains a `.` or `..` segment",
                        ));
                    }
                    if encoded {
                        push_keeping_escapes(&mut out, value);
                    } else {
                        out.extend(percent_encode(value, COMPONENT));
                    }
                }
            }
            if out.len() > MAX_LEN {
                return Err(unsafe_("the rewritten path is too long"));
            }
        }
        Ok(out)
    }
}

/// Appends `value` encoded for one segment, keeping its valid `%XX` escapes as they are.
fn push_keeping_escapes(out: &mut String, value: &[u8]) {
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (value.get(i + 1), value.get(i + 2))
            && h.is_ascii_hexdigit()
            && l.is_ascii_hexdigit()
        {
            out.push('%');
            out.push(char::from(*h));
            out.push(char::from(*l));
            i += 3;
            continue;
        }
        out.extend(percent_encode(&value[i..=i], COMPONENT));
        i += 1;
    }
}

/// Whether a raw value, split at `/` or `\`, has a `.` or `..` piece.
fn climbs(value: &[u8]) -> bool {
    value
        .split(|&b| b == b'/' || b == b'\\')
        .any(|piece| piece == b"." || piece == b"..")
}

fn literal(text: String, source: &str) -> Result<Piece, RewriteError> {
    check_literal(&text).map_err(|what| {
        RewriteError::Config(format!(
            "`{source}`: {what}; write it percent-encoded (a query belongs in query rules)"
        ))
    })?;
    Ok(Piece::Literal(text))
}

/// Characters a path segment can carry raw (RFC 3986 `pchar` without `%`), and `/`.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Checks that configured literal path text holds only path characters and `%XX` escapes.
fn check_literal(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(_), Some(_)) => i += 3,
                _ => return Err("malformed `%` escape"),
            }
            continue;
        }
        if !is_path_char(b) {
            return Err(match b {
                b'?' | b'#' => "`?` and `#` cannot appear in a path",
                _ => "a character a path cannot hold raw",
            });
        }
        i += 1;
    }
    Ok(())
}

/// The checks every rewritten path passes before it is forwarded.
fn check_path(path: &str) -> Result<(), RewriteError> {
    if !path.starts_with('/') {
        return Err(unsafe_("the rewritten path does not start with `/`"));
    }
    if path.len() > MAX_LEN {
        return Err(unsafe_("the rewritten path is too long"));
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'?' | b'#' => return Err(unsafe_("the rewritten path contains `?` or `#`")),
            0..=0x1f | 0x7f => {
                return Err(unsafe_("the rewritten path contains a control character"));
            }
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(unsafe_("the rewritten path has a malformed `%` escape"));
                };
                if matches!(hi << 4 | lo, 0 | b'\r' | b'\n') {
                    return Err(unsafe_(
                        "the rewritten path contains an encoded CR, LF or NUL",
                    ));
                }
                i += 3;
                continue;
            }
            b if !is_path_char(b) => {
                return Err(unsafe_(
                    "the rewritten path contains a character that must be percent-encoded",
                ));
            }
            _ => {}
        }
        i += 1;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(unsafe_("the rewritten path has an empty segment (`//`)"));
        }
        if is_dot_segment(segment) {
            return Err(unsafe_("the rewritten path has a `.` or `..` segment"));
        }
    }
    Ok(())
}

/// `.` or `..`, with any dot written as `%2E` or `%2e`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(b".") {
            rest = r;
        } else if rest
            .get(..3)
            .is_some_and(|e| e.eq_ignore_ascii_case(b"%2e"))
        {
            rest = rest.get(3..).unwrap_or_default();
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

// ---------------------------------------------------------------------------------------------
// Regex rewrites
// ---------------------------------------------------------------------------------------------

/// What a [`RegexRewrite`] does with a path its pattern does not match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnNoMatch {
    /// Forward the path unchanged.
    #[default]
    Keep,
    /// Fail with [`RewriteError::NoMatch`] (answer `404`).
    Reject,
}

/// A regex matched against the normalized path, and a replacement for the first match.
///
/// The replacement uses the [`regex`] crate's syntax: `$1` or `${1}` for a numbered group,
/// `$name` or `${name}` for a named one, `$$` for a literal `$`. Every group it names must
/// exist in the pattern (checked when built: `$1a` names a group `1a`, so write `${1}a`). The
/// text outside the match is kept, so an unanchored pattern rewrites part of the path; anchor
/// it (`^...$`) to rewrite the whole path. Captured text is inserted as it is: it is already
/// part of a normalized path.
#[derive(Clone, Debug)]
pub struct RegexRewrite {
    pattern: Regex,
    replacement: String,
    on_no_match: OnNoMatch,
}

impl RegexRewrite {
    /// Compiles `pattern` and checks `replacement`.
    ///
    /// # Errors
    ///
    /// [`RewriteError::Regex`] when the pattern does not compile (Unicode-aware `(?i)` needs
    /// the `regex` crate's `unicode-case` feature, which this crate does not ask for: write
    /// `(?i-u)`, the path is ASCII anyway);
    /// [`RewriteError::Config`] when either is longer than [`MAX_RULE_LEN`], the replacement
    /// names a group the pattern does not have, or its literal text is not path text (`?`,
    /// `#`, space ...).
    pub fn new(
        pattern: &str,
        replacement: &str,
        on_no_match: OnNoMatch,
    ) -> Result<Self, RewriteError> {
        if pattern.len() > MAX_RULE_LEN || replacement.len() > MAX_RULE_LEN {
            return Err(RewriteError::Config(format!(
                "a rewrite pattern or replacement is longer than {MAX_RULE_LEN} bytes"
            )));
        }
        let regex = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| RewriteError::Regex(e.to_string()))?;
        check_replacement(&regex, replacement)?;
        Ok(Self {
            pattern: regex,
            replacement: replacement.to_owned(),
            on_no_match,
        })
    }

    /// The compiled pattern.
    pub fn pattern(&self) -> &Regex {
        &self.pattern
    }

    /// The replacement, as configured.
    pub fn replacement(&self) -> &str {
        &self.replacement
    }

    /// What happens to paths the pattern does not match.
    pub fn on_no_match(&self) -> OnNoMatch {
        self.on_no_match
    }

    /// The path with its first match replaced (not yet checked).
    fn rewrite<'p>(&self, path: &'p str) -> Result<Cow<'p, str>, RewriteError> {
        let Some(caps) = self.pattern.captures(path) else {
            return match self.on_no_match {
                OnNoMatch::Keep => Ok(Cow::Borrowed(path)),
                OnNoMatch::Reject => Err(RewriteError::NoMatch),
            };
        };
        let Some(whole) = caps.get(0) else {
            return Err(RewriteError::NoMatch);
        };
        let mut out = String::with_capacity(path.len() + self.replacement.len());
        out.push_str(path.get(..whole.start()).unwrap_or_default());
        caps.expand(&self.replacement, &mut out);
        out.push_str(path.get(whole.end()..).unwrap_or_default());
        Ok(Cow::Owned(out))
    }
}

/// Checks that every group the replacement names exists and that its literal text is path text.
/// Follows the regex crate's reading: `$$`, `${name}`, `$name` (longest `[0-9A-Za-z_]+`), and a
/// lone `$` is literal.
fn check_replacement(regex: &Regex, replacement: &str) -> Result<(), RewriteError> {
    let mut text = String::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        text.push_str(rest.get(..at).unwrap_or_default());
        let after = rest.get(at + 1..).unwrap_or_default();
        if let Some(tail) = after.strip_prefix('$') {
            text.push('$');
            rest = tail;
            continue;
        }
        let (name, tail) = if let Some((name, tail)) = after
            .strip_prefix('{')
            .and_then(|inner| inner.split_once('}'))
        {
            (name, tail)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (
                after.get(..end).unwrap_or_default(),
                after.get(end..).unwrap_or_default(),
            )
        };
        if name.is_empty() {
            text.push('$');
            rest = after;
            continue;
        }
        let exists = match name.parse::<usize>() {
            Ok(n) => n < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == name),
        };
        if !exists {
            return Err(RewriteError::Config(format!(
                "replacement `{replacement}` refers to `${name}`, which the pattern does not \
                 capture (to follow a group with letters or digits, write `${{1}}x`)"
            )));
        }
        rest = tail;
    }
    text.push_str(rest);
    check_literal(&text)
        .map_err(|what| RewriteError::Config(format!("replacement `{replacement}`: {what}")))
}

// ---------------------------------------------------------------------------------------------
// Path rewrite
// ---------------------------------------------------------------------------------------------

/// How the forwarded path is made.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PathRewrite {
    /// Rendered from a template.
    Template(PathTemplate),
    /// A regex replacement.
    Regex(RegexRewrite),
}

impl PathRewrite {
    /// A template rewrite; see [`PathTemplate::parse`].
    ///
    /// # Errors
    ///
    /// As [`PathTemplate::parse`].
    pub fn template(source: &str) -> Result<Self, RewriteError> {
        PathTemplate::parse(source).map(Self::Template)
    }

    /// A regex rewrite that leaves non-matching paths alone; see [`RegexRewrite::new`].
    ///
    /// # Errors
    ///
    /// As [`RegexRewrite::new`].
    pub fn regex(pattern: &str, replacement: &str) -> Result<Self, RewriteError> {
        RegexRewrite::new(pattern, replacement, OnNoMatch::Keep).map(Self::Regex)
    }

    /// The rewritten path for `path`, checked.
    ///
    /// # Errors
    ///
    /// See [`Rewrite::apply`].
    pub fn apply<'p>(
        &self,
        path: &'p str,
        ctx: &Context<'_>,
    ) -> Result<Cow<'p, str>, RewriteError> {
        let out = match self {
            Self::Template(t) => {
                let own = Context {
                    path: ctx.path.or(Some(path)),
                    ..*ctx
                };
                Cow::Owned(t.render(&own)?)
            }
            Self::Regex(r) => r.rewrite(path)?,
        };
        check_path(&out)?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Query rules
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum QueryOp {
    Remove(String),
    Rename { from: String, to: String },
    Set(String, Template),
    Add(String, Template),
    KeepOnly(Vec<String>),
}

/// Query string operations, applied in the order they were added.
///
/// - `remove(name)`: drops every pair named `name`;
/// - `rename(from, to)`: renames every `from` pair in place, keeping its value as it was
///   encoded; existing `to` pairs are dropped first, so the upstream never chooses between two;
/// - `set(name, template)`: the first `name` pair gets the rendered value, later ones are
///   dropped, and without one the pair is appended; a variable without a value drops every
///   `name` pair (a client cannot supply what the gateway would have set);
/// - `add(name, template)`: appends a pair (nothing when a variable has no value);
/// - `keep_only(names)`: drops every pair whose name is not listed.
///
/// Names given to rules are taken literally and compared with each pair's decoded name (`+` is a
/// space, then `%XX`, invalid UTF-8 replaced). Empty pieces (`a=1&&b=2`) are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryRules {
    ops: Vec<QueryOp>,
}

/// Builds [`QueryRules`].
#[derive(Debug, Default)]
pub struct QueryRulesBuilder(QueryRules);

fn query_name(name: &str) -> Result<String, RewriteError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(RewriteError::Config(format!(
            "`{}` is not a query parameter name: 1 to {MAX_NAME_LEN} bytes, no control characters",
            name.escape_debug()
        )));
    }
    Ok(name.to_owned())
}

impl QueryRulesBuilder {
    /// Removes every `name` pair.
    ///
    /// # Errors
    ///
    /// [`RewriteError::Config`]: an empty or overlong name, or one with control characters.
    pub fn remove(mut self, name: &str) -> Result<Self, RewriteError> {
        self.0.ops.push(QueryOp::Remove(query_name(name)?));
        Ok(self)
    }

    /// Renames every `from` pair to `to`, dropping existing `to` pairs first.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove), for either name, or `from` equal to `to`.
    pub fn rename(mut self, from: &str, to: &str) -> Result<Self, RewriteError> {
        let (from, to) = (query_name(from)?, query_name(to)?);
        if from == to {
            return Err(RewriteError::Config(format!(
                "renaming query parameter `{from}` to itself"
            )));
        }
        self.0.ops.push(QueryOp::Rename { from, to });
        Ok(self)
    }

    /// Sets `name` to the rendered `value`, replacing every occurrence.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove), or [`RewriteError::Template`] for a bad template.
    pub fn set(mut self, name: &str, value: &str) -> Result<Self, RewriteError> {
        self.0
            .ops
            .push(QueryOp::Set(query_name(name)?, Template::parse(value)?));
        Ok(self)
    }

    /// Appends `name=value`, the value rendered.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn add(mut self, name: &str, value: &str) -> Result<Self, RewriteError> {
        self.0
            .ops
            .push(QueryOp::Add(query_name(name)?, Template::parse(value)?));
        Ok(self)
    }

    /// Drops every pair whose name is not in `names`.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove), for any name.
    pub fn keep_only<S: AsRef<str>>(mut self, names: &[S]) -> Result<Self, RewriteError> {
        let names = names
            .iter()
            .map(|n| query_name(n.as_ref()))
            .collect::<Result<_, _>>()?;
        self.0.ops.push(QueryOp::KeepOnly(names));
        Ok(self)
    }

    /// The rules.
    pub fn build(self) -> QueryRules {
        self.0
    }
}

/// One `name[=value]` piece of a query.
#[derive(Debug)]
struct Pair<'q> {
    /// The piece as it will be written.
    raw: Cow<'q, str>,
    /// The decoded name.
    name: Cow<'q, str>,
}

impl<'q> Pair<'q> {
    fn parse(raw: &'q str) -> Self {
        let name = raw.split_once('=').map_or(raw, |(n, _)| n);
        Self {
            raw: Cow::Borrowed(raw),
            name: decode_component(name),
        }
    }

    fn written(name: &str, value: Option<&[u8]>) -> Self {
        let mut raw = encode(name.as_bytes());
        if let Some(v) = value {
            raw.push('=');
            raw.push_str(&encode(v));
        }
        Self {
            raw: Cow::Owned(raw),
            name: Cow::Owned(name.to_owned()),
        }
    }
}

fn encode(bytes: &[u8]) -> String {
    percent_encode(bytes, COMPONENT).collect()
}

/// A query component decoded as a form would be: `+` is a space, then `%XX`; invalid UTF-8 is
/// replaced. Malformed escapes stay as written.
fn decode_component(s: &str) -> Cow<'_, str> {
    if !s.contains(['+', '%']) {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

impl QueryRules {
    /// A builder.
    pub fn builder() -> QueryRulesBuilder {
        QueryRulesBuilder::default()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The query after the rules, `None` when empty. With no rules the query is kept exactly.
    ///
    /// # Errors
    ///
    /// [`RewriteError::Template`] when a rendered value contains CR, LF or NUL;
    /// [`RewriteError::Unsafe`] when the query contains `#`, a space or a control character, or
    /// the result is longer than [`MAX_LEN`].
    pub fn apply<'q>(
        &self,
        query: Option<&'q str>,
        ctx: &Context<'_>,
    ) -> Result<Option<Cow<'q, str>>, RewriteError> {
        let query = query.unwrap_or_default();
        if query.bytes().any(|b| b == b'#' || b <= b' ' || b == 0x7f) {
            return Err(unsafe_(
                "the query contains `#`, a space or a control character",
            ));
        }
        if self.ops.is_empty() {
            return Ok((!query.is_empty()).then_some(Cow::Borrowed(query)));
        }
        let mut pairs: Vec<Pair<'q>> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(Pair::parse)
            .collect();
        for op in &self.ops {
            match op {
                QueryOp::Remove(name) => pairs.retain(|p| p.name != name.as_str()),
                QueryOp::Rename { from, to } => {
                    pairs.retain(|p| p.name != to.as_str());
                    for p in pairs.iter_mut().filter(|p| p.name == from.as_str()) {
                        let mut raw = encode(to.as_bytes());
                        if let Some((_, value)) = p.raw.split_once('=') {
                            raw.push('=');
                            raw.push_str(value);
                        }
                        *p = Pair {
                            raw: Cow::Owned(raw),
                            name: Cow::Owned(to.clone()),
                        };
                    }
                }
                QueryOp::Set(name, template) => {
                    let value = template.render(ctx)?;
                    let first = pairs.iter().position(|p| p.name == name.as_str());
                    pairs.retain(|p| p.name != name.as_str());
                    if let Some(v) = value {
                        let pair = Pair::written(name, Some(v.as_bytes()));
                        match first {
                            Some(at) => pairs.insert(at.min(pairs.len()), pair),
                            None => pairs.push(pair),
                        }
                    }
                }
                QueryOp::Add(name, template) => {
                    if let Some(v) = template.render(ctx)? {
                        pairs.push(Pair::written(name, Some(v.as_bytes())));
                    }
                }
                QueryOp::KeepOnly(names) => {
                    pairs.retain(|p| names.iter().any(|n| p.name == n.as_str()));
                }
            }
        }
        if pairs.is_empty() {
            return Ok(None);
        }
        let len = pairs.iter().map(|p| p.raw.len() + 1).sum::<usize>();
        if len > MAX_LEN {
            return Err(unsafe_("the rewritten query is too long"));
        }
        let mut out = String::with_capacity(len);
        for (i, p) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(&p.raw);
        }
        Ok(Some(Cow::Owned(out)))
    }
}

// ---------------------------------------------------------------------------------------------
// Rewrite
// ---------------------------------------------------------------------------------------------

/// A path rewrite (optional) and query rules: what one route forwards.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    /// How the path is rewritten; `None` forwards the normalized path.
    pub path: Option<PathRewrite>,
    /// The query rules; empty forwards the query as it came.
    pub query: QueryRules,
}

impl Rewrite {
    /// The path and query to forward for the normalized `uri_path` and the raw `query` (without
    /// `?`). `${path}` reads `ctx.path`, or `uri_path` when that is `None`.
    ///
    /// # Errors
    ///
    /// - [`RewriteError::Template`]: a rendered value contains CR, LF or NUL;
    /// - [`RewriteError::MissingValue`]: a path template variable has no value;
    /// - [`RewriteError::NoMatch`]: the regex did not match and the rewrite rejects such paths;
    /// - [`RewriteError::Unsafe`]: the path does not start with `/`, has a `.`, `..` or empty
    ///   segment, `?`, `#`, a control character or an encoded CR, LF or NUL, a substituted
    ///   value is empty or climbs (`../x`), the query has `#` or control characters, or the
    ///   result is longer than [`MAX_LEN`].
    ///
    /// [`RewriteError::status`] says how to answer.
    pub fn apply(
        &self,
        uri_path: &str,
        query: Option<&str>,
        ctx: &Context<'_>,
    ) -> Result<PathAndQuery, RewriteError> {
        let own = Context {
            path: ctx.path.or(Some(uri_path)),
            ..*ctx
        };
        let path = match &self.path {
            Some(rewrite) => rewrite.apply(uri_path, &own)?,
            None => {
                check_path(uri_path)?;
                Cow::Borrowed(uri_path)
            }
        };
        let query = self.query.apply(query, &own)?;
        let mut out = String::with_capacity(path.len() + query.as_ref().map_or(0, |q| q.len() + 1));
        out.push_str(&path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(&q);
        }
        if out.len() > MAX_LEN {
            return Err(unsafe_("the rewritten path and query are too long"));
        }
        PathAndQuery::try_from(out).map_err(|_| unsafe_("the result is not a valid path and query"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_keep_their_escapes_and_are_checked_decoded() {
        let rw = Rewrite {
            path: Some(PathRewrite::template("/internal/${path.id}").unwrap()),
            ..Rewrite::default()
        };
        let run = |v: &str| {
            let params = vec![("id".to_owned(), v.to_owned())];
            let ctx = Context {
                params: &params,
                ..Context::default()
            };
            rw.apply("/x", None, &ctx).map(|pq| pq.to_string())
        };
        assert_eq!(run("john%20doe").unwrap(), "/internal/john%20doe");
        assert_eq!(run("a%2Fb").unwrap(), "/internal/a%2Fb");
        assert_eq!(run("100%").unwrap(), "/internal/100%25");
        assert!(run("a%2F..%2Fadmin").is_err(), "climbs once decoded");
        assert!(run("%2e%2e").is_err());
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn template_rewrite(src: &str) -> Rewrite {
        Rewrite {
            path: Some(PathRewrite::template(src).unwrap()),
            ..Rewrite::default()
        }
    }

    fn with_id(rewrite: &Rewrite, id: &str) -> Result<String, RewriteError> {
        let p = params(&[("id", id)]);
        let ctx = Context {
            params: &p,
            ..Context::default()
        };
        rewrite
            .apply("/users/x", None, &ctx)
            .map(|pq| pq.as_str().to_owned())
    }

    #[test]
    fn hostile_template_values_stay_inside_one_segment() {
        let r = template_rewrite("/internal/users/${path.id}/profile");
        let ok = [
            ("42", "/internal/users/42/profile"),
            ("a/b", "/internal/users/a%2Fb/profile"),
            ("?x=1", "/internal/users/%3Fx%3D1/profile"),
            ("#frag", "/internal/users/%23frag/profile"),
            ("a b+c&d", "/internal/users/a%20b%2Bc%26d/profile"),
            ("caf\u{e9}", "/internal/users/caf%C3%A9/profile"),
            ("...", "/internal/users/.../profile"),
            ("a\\b", "/internal/users/a%5Cb/profile"),
            ("john%20doe", "/internal/users/john%20doe/profile"),
            ("100%", "/internal/users/100%25/profile"),
        ];
        for (id, want) in ok {
            assert_eq!(with_id(&r, id).unwrap(), want, "id {id:?}");
        }
        // Path parameters are still percent-encoded: their escapes are kept, and checked decoded.
        for id in [
            "..",
            ".",
            "../admin",
            "a/../../admin",
            "..\\admin",
            "x/.",
            "..%2f",
            "..%2f..%2fadmin",
            "%2e%2e",
            "%00",
            "%0d%0a",
        ] {
            assert!(
                matches!(with_id(&r, id), Err(RewriteError::Unsafe { .. })),
                "id {id:?}"
            );
        }
        for id in ["a\r\nb", "a\nb", "a\0b"] {
            assert_eq!(
                with_id(&r, id),
                Err(RewriteError::Template(TemplateError::Injection)),
                "id {id:?}"
            );
        }
        assert!(matches!(with_id(&r, ""), Err(RewriteError::Unsafe { .. })));
    }

    #[test]
    fn template_literal_text_is_kept_and_checked() {
        let r = template_rewrite("/a%20b/$$/x:y@z/${path.id}");
        assert_eq!(with_id(&r, "1").unwrap(), "/a%20b/$/x:y@z/1");
        for bad in [
            "relative/${path.id}",
            "/a?b=${path.id}",
            "/a#${path.id}",
            "/a b",
            "/a%zz",
            "/caf\u{e9}",
            "/a\nb",
        ] {
            assert!(
                matches!(PathTemplate::parse(bad), Err(RewriteError::Config(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            PathTemplate::parse("/${path.id"),
            Err(RewriteError::Template(TemplateError::Syntax(_)))
        ));
        assert!(matches!(
            PathTemplate::parse("/${nope}"),
            Err(RewriteError::Template(TemplateError::Syntax(_)))
        ));
        assert!(PathTemplate::parse(&format!("/{}", "a".repeat(MAX_RULE_LEN))).is_err());
    }

    #[test]
    fn whole_path_is_inserted_unencoded_and_dot_segments_in_literals_are_refused() {
        let r = template_rewrite("/internal${path}");
        assert_eq!(
            r.apply("/users/a%20b", None, &Context::default())
                .unwrap()
                .as_str(),
            "/internal/users/a%20b"
        );
        let doubled = template_rewrite("/internal/${path}");
        assert_eq!(
            doubled.apply("/users", None, &Context::default()),
            Err(unsafe_("the rewritten path has an empty segment (`//`)"))
        );
        let dots = template_rewrite("/a/../${path.id}");
        assert_eq!(
            with_id(&dots, "1"),
            Err(unsafe_("the rewritten path has a `.` or `..` segment"))
        );
        let encoded_dots = template_rewrite("/a/%2E%2e/${path.id}");
        assert!(matches!(
            with_id(&encoded_dots, "1"),
            Err(RewriteError::Unsafe { .. })
        ));
        let nul = template_rewrite("/a%00/${path.id}");
        assert!(matches!(
            with_id(&nul, "1"),
            Err(RewriteError::Unsafe { .. })
        ));
    }

    #[test]
    fn missing_template_values_fail_and_say_how_to_answer() {
        let r = template_rewrite("/u/${principal.sub}");
        let err = r.apply("/x", None, &Context::default()).unwrap_err();
        assert_eq!(
            err,
            RewriteError::MissingValue {
                variable: "principal.sub".to_owned()
            }
        );
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.problem().status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !err.problem().to_json().contains("principal"),
            "config stays private"
        );
        let h = template_rewrite("/t/${header.x-tenant}");
        let err = h.apply("/x", None, &Context::default()).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", "blue/green".parse().unwrap());
        let ctx = Context {
            headers: Some(&headers),
            ..Context::default()
        };
        assert_eq!(h.apply("/x", None, &ctx).unwrap(), "/t/blue%2Fgreen");
    }

    #[test]
    fn regex_rewrites_use_numbered_and_named_captures() {
        let numbered = Rewrite {
            path: Some(
                PathRewrite::regex(r"^/api/v(\d+)/(.*)$", "/internal/${2}/version-$1").unwrap(),
            ),
            ..Rewrite::default()
        };
        assert_eq!(
            numbered
                .apply("/api/v2/users/7", None, &Context::default())
                .unwrap(),
            "/internal/users/7/version-2"
        );
        let named = Rewrite {
            path: Some(
                PathRewrite::regex(r"^/shop/(?P<id>[0-9]+)/items$", "/items/by-shop/$id").unwrap(),
            ),
            ..Rewrite::default()
        };
        assert_eq!(
            named
                .apply("/shop/12/items", None, &Context::default())
                .unwrap(),
            "/items/by-shop/12"
        );
        // Unanchored: only the match is replaced.
        let part = Rewrite {
            path: Some(PathRewrite::regex("/old/", "/new/").unwrap()),
            ..Rewrite::default()
        };
        assert_eq!(
            part.apply("/a/old/b", Some("x=1"), &Context::default())
                .unwrap(),
            "/a/new/b?x=1"
        );
        // No match: kept, or rejected.
        assert_eq!(
            named.apply("/other", None, &Context::default()).unwrap(),
            "/other"
        );
        let strict = Rewrite {
            path: Some(PathRewrite::Regex(
                RegexRewrite::new("^/shop/(.*)$", "/$1", OnNoMatch::Reject).unwrap(),
            )),
            ..Rewrite::default()
        };
        let err = strict
            .apply("/other", None, &Context::default())
            .unwrap_err();
        assert_eq!(err, RewriteError::NoMatch);
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn regex_results_with_dot_segments_or_query_are_refused() {
        let cases = [
            (r"^/files/(.*)$", "/store/$1/..", "/files/a"),
            (r"^/files/([^/]*)$", "/store/${1}/x", "/files/%2e%2E"),
            (r"^/files/(.*)$", "/$1", "/files/."),
            (r"^/x/(.*)$", "$1", "/x/abc"),
            (r"^/x(.*)$", "/a/$1", "/x/b"),
        ];
        for (pattern, replacement, path) in cases {
            let r = Rewrite {
                path: Some(PathRewrite::regex(pattern, replacement).unwrap()),
                ..Rewrite::default()
            };
            assert!(
                matches!(
                    r.apply(path, None, &Context::default()),
                    Err(RewriteError::Unsafe { .. })
                ),
                "{pattern} -> {replacement} on {path}"
            );
        }
        // `/x/` with replacement `/a/$1` gives `/a/`: a trailing slash is fine.
        let r = Rewrite {
            path: Some(PathRewrite::regex(r"^/x/(.*)$", "/a/$1").unwrap()),
            ..Rewrite::default()
        };
        assert_eq!(r.apply("/x/", None, &Context::default()).unwrap(), "/a/");
    }

    #[test]
    fn bad_regex_configuration_is_refused_at_build_time() {
        assert!(matches!(
            PathRewrite::regex("(unclosed", "/"),
            Err(RewriteError::Regex(_))
        ));
        assert!(
            matches!(
                PathRewrite::regex(r"(a)\1", "/"),
                Err(RewriteError::Regex(_))
            ),
            "no backreferences"
        );
        assert!(
            matches!(
                PathRewrite::regex("(?=a)", "/"),
                Err(RewriteError::Regex(_))
            ),
            "no lookaround"
        );
        for replacement in ["/$2", "/$1a", "/${name}", "/x?y=$1", "/x#$1", "/a b"] {
            assert!(
                matches!(
                    PathRewrite::regex("^/(a)$", replacement),
                    Err(RewriteError::Config(_))
                ),
                "{replacement}"
            );
        }
        assert!(PathRewrite::regex("^/(a)$", "/${1}a/$$/$").is_ok());
        assert!(PathRewrite::regex("(?i-u)^/API$", "/api").is_ok());
        assert!(PathRewrite::regex(&"a".repeat(MAX_RULE_LEN + 1), "/").is_err());
        assert!(
            matches!(
                PathRewrite::regex("a{1000}{1000}", "/"),
                Err(RewriteError::Regex(_))
            ),
            "size limit"
        );
    }

    fn query(rules: &QueryRules, q: Option<&str>, ctx: &Context<'_>) -> Option<String> {
        rules
            .apply(q, ctx)
            .unwrap()
            .map(std::borrow::Cow::into_owned)
    }

    #[test]
    fn query_ops_keep_untouched_pairs_in_order_and_encoding() {
        let rules = QueryRules::builder()
            .remove("drop me")
            .unwrap()
            .rename("old", "new")
            .unwrap()
            .set("tier", "${principal.tier}")
            .unwrap()
            .add("via", "gw")
            .unwrap()
            .build();
        let ctx = Context {
            tier: Some("gold"),
            ..Context::default()
        };
        let got = query(
            &rules,
            Some("a=%41%2b&drop+me=1&old=x%20y&tier=free&b=c+d&drop%20me=2&tier=again&flag"),
            &ctx,
        );
        assert_eq!(
            got.as_deref(),
            Some("a=%41%2b&new=x%20y&tier=gold&b=c+d&flag&via=gw")
        );
    }

    #[test]
    fn rename_drops_existing_targets_and_keep_only_filters() {
        let rules = QueryRules::builder()
            .rename("q", "search")
            .unwrap()
            .keep_only(&["search", "page"])
            .unwrap()
            .build();
        let got = query(
            &rules,
            Some("search=evil&x=1&q=shoes&page=2&q&&"),
            &Context::default(),
        );
        assert_eq!(got.as_deref(), Some("search=shoes&page=2&search"));
    }

    #[test]
    fn rendered_values_are_encoded_for_a_query() {
        let rules = QueryRules::builder()
            .add("user name", "${principal.sub}")
            .unwrap()
            .build();
        let ctx = Context {
            subject: Some("a&b=c+d #e%f/caf\u{e9}"),
            ..Context::default()
        };
        assert_eq!(
            query(&rules, None, &ctx).as_deref(),
            Some("user%20name=a%26b%3Dc%2Bd%20%23e%25f%2Fcaf%C3%A9")
        );
        let evil = Context {
            subject: Some("a\r\nb"),
            ..Context::default()
        };
        assert_eq!(
            rules.apply(None, &evil),
            Err(RewriteError::Template(TemplateError::Injection))
        );
    }

    #[test]
    fn set_without_a_value_removes_client_copies_and_add_does_nothing() {
        let rules = QueryRules::builder()
            .set("consumer", "${principal.consumer}")
            .unwrap()
            .add("sub", "${principal.sub}")
            .unwrap()
            .build();
        assert_eq!(
            query(
                &rules,
                Some("consumer=admin&x=1&consumer=root"),
                &Context::default()
            )
            .as_deref(),
            Some("x=1")
        );
    }

    #[test]
    fn an_empty_query_has_no_question_mark() {
        let rules = QueryRules::builder().remove("a").unwrap().build();
        let r = Rewrite {
            path: None,
            query: rules,
        };
        let ctx = Context::default();
        assert_eq!(r.apply("/p", Some("a=1&a=2"), &ctx).unwrap(), "/p");
        assert_eq!(r.apply("/p", Some(""), &ctx).unwrap(), "/p");
        assert_eq!(r.apply("/p", Some("&&"), &ctx).unwrap(), "/p");
        assert_eq!(r.apply("/p", None, &ctx).unwrap(), "/p");
        let none = Rewrite::default();
        assert_eq!(none.apply("/p", Some(""), &ctx).unwrap(), "/p");
        assert_eq!(none.apply("/p", Some("b=1&&c"), &ctx).unwrap(), "/p?b=1&&c");
    }

    #[test]
    fn hostile_queries_and_paths_are_refused() {
        let r = Rewrite::default();
        let ctx = Context::default();
        for q in ["a=1#x", "a=1\r\nb", "a b", "a=\0"] {
            assert!(
                matches!(
                    r.apply("/p", Some(q), &ctx),
                    Err(RewriteError::Unsafe { .. })
                ),
                "{q:?}"
            );
        }
        for p in ["p", "/a/../b", "/a//b", "/a?b", "/a\0"] {
            assert!(
                matches!(r.apply(p, None, &ctx), Err(RewriteError::Unsafe { .. })),
                "{p:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_LEN));
        assert!(r.apply(&long, None, &ctx).is_err());
        assert!(QueryRules::builder().remove("").is_err());
        assert!(QueryRules::builder().rename("a", "a").is_err());
        assert!(QueryRules::builder().keep_only(&["ok", "bad\n"]).is_err());
        assert!(QueryRules::builder().set("x", "${nope}").is_err());
    }

    #[test]
    fn dot_segment_detection() {
        for s in [".", "..", "%2e", "%2E%2e", ".%2E"] {
            assert!(is_dot_segment(s), "{s}");
        }
        for s in ["", "...", "a.", ".a", "%2e%2e%2e", "%2", "%2f"] {
            assert!(!is_dot_segment(s), "{s}");
        }
    }
}
