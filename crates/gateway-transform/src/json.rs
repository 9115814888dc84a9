//! JSON bodies: a strict parser that refuses what other parsers would read differently, ordered
//! JSON Pointer edits, and the `Content-Type` checks that say a body is JSON.
//!
//! - [`parse_strict`] parses a body within [`JsonLimits`] and refuses duplicate object keys,
//!   nesting deeper than the limit, oversized input, lone surrogate escapes, invalid UTF-8, a
//!   byte order mark, trailing data and integers that would lose precision.
//!   [`JsonError::kind`] says which; [`JsonError::status`] is the answer to give (400 or 413).
//! - [`JsonEdits`]: `set`, `add`, `remove`, `rename` and `copy`, addressed by [`Pointer`]s
//!   (RFC 6901), parsed once at build time and applied in order.
//! - [`is_json_media_type`] and [`json_charset_ok`] read a `Content-Type` value.
//!
//! Standards: RFC 8259 (JSON), RFC 6901 (JSON Pointer), RFC 9110 §8.3 (media types),
//! RFC 6839 (the `+json` suffix).
//!
//! # Example
//!
//! ```
//! use gateway_transform::json::{
//!     JsonEdits, JsonErrorKind, JsonLimits, is_json_media_type, json_charset_ok, parse_strict,
//! };
//! use http::HeaderValue;
//! use serde_json::json;
//!
//! let content_type = HeaderValue::from_static("application/problem+json; charset=UTF-8");
//! assert!(is_json_media_type(&content_type) && json_charset_ok(&content_type));
//!
//! // serde_json alone would keep the last `role`; a backend may keep the first.
//! let limits = JsonLimits::default();
//! let err = parse_strict(br#"{"role":"user","role":"admin"}"#, &limits).unwrap_err();
//! assert_eq!(err.kind(), JsonErrorKind::DuplicateKey);
//! assert_eq!(err.line_column(), Some((1, 16)));
//! assert_eq!(err.status(), 400);
//!
//! let edits = JsonEdits::builder()
//!     .remove("/user/password")?
//!     .rename("/user/name", "/user/login")?
//!     .set("/meta/via", json!("gateway"))?
//!     .add("/items/-", json!(2))?
//!     .build();
//! let mut body = parse_strict(
//!     br#"{"user":{"name":"ada","password":"x"},"items":[1]}"#,
//!     &limits,
//! )?;
//! edits.apply(&mut body)?;
//! assert_eq!(
//!     body,
//!     json!({"user": {"login": "ada"}, "meta": {"via": "gateway"}, "items": [1, 2]})
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Security considerations
//!
//! - **Parser differentials.** A gateway that checks a body and a backend that reads it must see
//!   the same document. Duplicate keys (`{"role":"user","role":"admin"}`: last one wins in
//!   `serde_json` and most JavaScript, first one wins in others), lone surrogates (replaced,
//!   kept or refused depending on the library), integers beyond 64 bits (silently rounded to a
//!   float by many parsers) and a leading byte order mark are all refused. Forward the
//!   re-serialized [`Value`] (`serde_json::to_vec`), not the original bytes, so the backend
//!   reads exactly what was checked (object keys then come out sorted, and floats in their
//!   shortest form: `1.5e10` becomes `15000000000.0`).
//! - **Byte order mark.** RFC 8259 §8.1 lets a parser ignore one; this one refuses it
//!   ([`JsonErrorKind::ByteOrderMark`]) so that no backend sees a body the gateway read
//!   differently. Senders must not add one.
//! - **Resources.** Input size is checked before anything else, nesting is bounded by
//!   [`JsonLimits::max_depth`] (at most [`JsonLimits::DEPTH_CEILING`]), so a million `[` fail
//!   at the first one too many. Time is linear in the input. A parsed [`Value`] is several times
//!   larger than its text (each object is a B-tree node of a few hundred bytes, so a body of
//!   many small objects can take ~80 times its size), as with `serde_json::from_slice`: size
//!   [`JsonLimits::max_bytes`] with that in mind. Stop reading a body at the limit before calling
//!   [`parse_strict`] (e.g. with `http_body_util::Limited`).
//! - **Content types.** Gate JSON processing on [`is_json_media_type`] and answer
//!   `415 Unsupported Media Type` otherwise; never skip validation because a body "is not JSON".

use std::fmt;

use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Number, Value, map::Entry};

// ---------------------------------------------------------------------------------------------
// Limits and errors
// ---------------------------------------------------------------------------------------------

/// Bounds for [`parse_strict`]. Deserializes from config (`max_depth`, `max_bytes`, both
/// optional); a `max_depth` above [`JsonLimits::DEPTH_CEILING`] is a config error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonLimits {
    /// The deepest nesting of arrays and objects accepted: `[]` is depth 1, a scalar depth 0.
    /// Default 64; at most [`JsonLimits::DEPTH_CEILING`].
    #[serde(deserialize_with = "depth_within_ceiling")]
    pub max_depth: usize,
    /// The largest body accepted, in bytes. Default 1 MiB.
    pub max_bytes: usize,
    /// The most values (scalars, arrays and objects) accepted. A parsed value takes tens of
    /// bytes per value whatever its text, so `[0,0,0,...]` would cost ~40x its size in memory
    /// without this bound. Default 100,000.
    pub max_values: usize,
}

impl JsonLimits {
    /// The largest [`JsonLimits::max_depth`] allowed: parsing recurses once per level.
    pub const DEPTH_CEILING: usize = 128;
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_bytes: 1 << 20,
            max_values: 100_000,
        }
    }
}

fn depth_within_ceiling<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let depth = usize::deserialize(d)?;
    if depth > JsonLimits::DEPTH_CEILING {
        return Err(serde::de::Error::custom(format!(
            "max_depth {depth} is above the ceiling of {}",
            JsonLimits::DEPTH_CEILING
        )));
    }
    Ok(depth)
}

/// What went wrong in a [`JsonError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// The body is larger than [`JsonLimits::max_bytes`].
    TooLarge,
    /// Arrays and objects nest deeper than [`JsonLimits::max_depth`].
    TooDeep,
    /// The document holds more values than [`JsonLimits::max_values`].
    TooManyValues,
    /// An object has the same key twice (compared after unescaping: `"a"` and `"\u0061"` are
    /// the same key).
    DuplicateKey,
    /// The body is not valid UTF-8 (RFC 8259 §8.1).
    InvalidUtf8,
    /// A `\uD800`-`\uDFFF` escape that is not half of a surrogate pair.
    LoneSurrogate,
    /// An integer outside `-2^63 ..= 2^64-1`, or a number beyond the range of an `f64`.
    NumberOutOfRange,
    /// Something other than whitespace follows the value.
    TrailingData,
    /// The body starts with a UTF-8 byte order mark.
    ByteOrderMark,
    /// Anything else that is not JSON: a missing comma, a trailing comma, a bad escape, an
    /// unescaped control character, a leading zero, `NaN`, a comment, an empty body...
    Syntax,
    /// A JSON Pointer that does not parse (a build error, not a body error).
    InvalidPointer,
    /// An edit that can never succeed, such as moving a value into itself (a build error).
    InvalidEdit,
    /// [`JsonLimits::max_depth`] is above [`JsonLimits::DEPTH_CEILING`] (a config error).
    InvalidLimits,
}

/// A body that [`parse_strict`] refused, or a pointer or edit that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    kind: JsonErrorKind,
    detail: String,
    offset: Option<usize>,
    line_column: Option<(usize, usize)>,
}

impl JsonError {
    fn new(kind: JsonErrorKind, detail: String) -> Self {
        Self {
            kind,
            detail,
            offset: None,
            line_column: None,
        }
    }

    /// An error in a body at byte `offset`, with its line and column.
    fn in_body(kind: JsonErrorKind, detail: String, src: &[u8], offset: usize) -> Self {
        let before = src.get(..offset).unwrap_or(src);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        Self {
            kind,
            detail,
            offset: Some(offset),
            line_column: Some((line, column)),
        }
    }

    /// An error in a pointer at byte `offset`.
    fn in_pointer(detail: String, offset: usize) -> Self {
        Self {
            offset: Some(offset),
            ..Self::new(JsonErrorKind::InvalidPointer, detail)
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> JsonErrorKind {
        self.kind
    }

    /// The byte offset of the problem in the body (or pointer), where known.
    pub fn offset(&self) -> Option<usize> {
        self.offset
    }

    /// The 1-based line and column of the problem in the body, where known. Columns count
    /// bytes, not characters.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        self.line_column
    }

    /// The status to answer a request whose body failed: `413 Payload Too Large` for
    /// [`JsonErrorKind::TooLarge`], `500` for the build and config kinds (the gateway's fault),
    /// `400 Bad Request` for the rest. For an upstream response body, answer `502` instead.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            JsonErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            JsonErrorKind::InvalidPointer
            | JsonErrorKind::InvalidEdit
            | JsonErrorKind::InvalidLimits => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)?;
        match (self.line_column, self.offset) {
            (Some((line, column)), _) => write!(f, " at line {line}, column {column}"),
            (None, Some(offset)) => write!(f, " (at byte {offset})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for JsonError {}

/// At most `max` characters of `s`, for error messages that quote input.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Strict parsing
// ---------------------------------------------------------------------------------------------

/// Parses `bytes` as one JSON text (RFC 8259), refusing what parsers commonly disagree on.
///
/// Refused, with the [`JsonErrorKind`] named:
/// - more than [`JsonLimits::max_bytes`] bytes ([`TooLarge`](JsonErrorKind::TooLarge), checked
///   first);
/// - a leading UTF-8 byte order mark ([`ByteOrderMark`](JsonErrorKind::ByteOrderMark));
/// - invalid UTF-8 anywhere, including in strings ([`InvalidUtf8`](JsonErrorKind::InvalidUtf8));
/// - nesting deeper than [`JsonLimits::max_depth`] ([`TooDeep`](JsonErrorKind::TooDeep));
/// - the same key twice in one object, after unescaping
///   ([`DuplicateKey`](JsonErrorKind::DuplicateKey));
/// - `\uD800`-`\uDFFF` escapes that are not a high-low pair
///   ([`LoneSurrogate`](JsonErrorKind::LoneSurrogate));
/// - integer literals (no fraction, no exponent) outside `-2^63 ..= 2^64-1`, which would
///   otherwise become a rounded float, and numbers that overflow an `f64` such as `1e400`
///   ([`NumberOutOfRange`](JsonErrorKind::NumberOutOfRange)). Numbers with a fraction or
///   exponent are parsed to the nearest `f64` (correctly rounded), and ones too small for an
///   `f64` become `0.0`;
/// - anything but whitespace after the value ([`TrailingData`](JsonErrorKind::TrailingData));
/// - everything else RFC 8259 does not allow ([`Syntax`](JsonErrorKind::Syntax)).
///
/// Integers become `u64` (non-negative) or `i64` (negative) numbers; `-0` becomes the float
/// `-0.0`, as in `serde_json`. Time is linear in the input; recursion is bounded by `max_depth`.
///
/// # Errors
///
/// A [`JsonError`] with the kind above, its byte offset and its line and column.
/// [`JsonErrorKind::InvalidLimits`] (no offset) when `limits.max_depth` is above
/// [`JsonLimits::DEPTH_CEILING`].
pub fn parse_strict(bytes: &[u8], limits: &JsonLimits) -> Result<Value, JsonError> {
    if limits.max_depth > JsonLimits::DEPTH_CEILING {
        return Err(JsonError::new(
            JsonErrorKind::InvalidLimits,
            format!(
                "max_depth {} is above the ceiling of {}",
                limits.max_depth,
                JsonLimits::DEPTH_CEILING
            ),
        ));
    }
    if bytes.len() > limits.max_bytes {
        return Err(JsonError::new(
            JsonErrorKind::TooLarge,
            format!(
                "the JSON body is {} bytes; the limit is {}",
                bytes.len(),
                limits.max_bytes
            ),
        ));
    }
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Err(JsonError::in_body(
            JsonErrorKind::ByteOrderMark,
            "the JSON body starts with a byte order mark; send it without one".to_owned(),
            bytes,
            0,
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        JsonError::in_body(
            JsonErrorKind::InvalidUtf8,
            "the JSON body is not valid UTF-8".to_owned(),
            bytes,
            e.valid_up_to(),
        )
    })?;
    let mut parser = Parser {
        text,
        bytes,
        pos: 0,
        max_depth: limits.max_depth,
        values_left: limits.max_values,
    };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos < bytes.len() {
        return Err(parser.error(
            JsonErrorKind::TrailingData,
            parser.pos,
            "unexpected data after the JSON value".to_owned(),
        ));
    }
    Ok(value)
}

/// A recursive-descent parser over UTF-8 validated input.
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
    /// How many more values may be read.
    values_left: usize,
}

impl Parser<'_> {
    fn error(&self, kind: JsonErrorKind, at: usize, detail: String) -> JsonError {
        JsonError::in_body(kind, detail, self.bytes, at)
    }

    /// "expected `what`, found ..." at the current position.
    fn unexpected(&self, what: &str) -> JsonError {
        let found = match self.text.get(self.pos..).and_then(|s| s.chars().next()) {
            Some(c) => format!("`{}`", c.escape_debug()),
            None => "the end of the body".to_owned(),
        };
        self.error(
            JsonErrorKind::Syntax,
            self.pos,
            format!("expected {what}, found {found}"),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// A value nested `depth` containers deep.
    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.skip_whitespace();
        let Some(left) = self.values_left.checked_sub(1) else {
            return Err(self.error(
                JsonErrorKind::TooManyValues,
                self.pos,
                "the document holds more values than allowed".to_owned(),
            ));
        };
        self.values_left = left;
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.unexpected("a JSON value")),
        }
    }

    /// Refuses a container opening at `depth` when that is too deep.
    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > self.max_depth {
            return Err(self.error(
                JsonErrorKind::TooDeep,
                self.pos,
                format!(
                    "arrays and objects nest deeper than {} levels",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.unexpected("`,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("a string key"));
            }
            let key_at = self.pos;
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.unexpected("`:`"));
            }
            self.pos += 1;
            match map.entry(key) {
                Entry::Occupied(seen) => {
                    return Err(self.error(
                        JsonErrorKind::DuplicateKey,
                        key_at,
                        format!("duplicate key {:?} in an object", shorten(seen.key(), 64)),
                    ));
                }
                Entry::Vacant(slot) => {
                    slot.insert(self.value(depth)?);
                }
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.unexpected("`,` or `}`")),
            }
        }
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, JsonError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error(
                JsonErrorKind::Syntax,
                self.pos,
                format!("invalid literal: expected `{word}`"),
            ))
        }
    }

    /// A string, the current byte being its opening quote.
    fn string(&mut self) -> Result<String, JsonError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // `start` and `pos` sit next to ASCII bytes (or at the end), so on char boundaries.
            let chunk = self.text.get(start..self.pos).ok_or_else(|| {
                self.error(
                    JsonErrorKind::InvalidUtf8,
                    start,
                    "invalid UTF-8 in a string".to_owned(),
                )
            })?;
            out.push_str(chunk);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(c) => {
                    return Err(self.error(
                        JsonErrorKind::Syntax,
                        self.pos,
                        format!("control character U+{c:04X} must be escaped in a string"),
                    ));
                }
                None => {
                    return Err(self.error(
                        JsonErrorKind::Syntax,
                        open,
                        "unterminated string".to_owned(),
                    ));
                }
            }
        }
    }

    /// An escape, the current byte being its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let at = self.pos;
        let c = match self.bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => return self.unicode_escape(out),
            _ => {
                return Err(self.error(
                    JsonErrorKind::Syntax,
                    at,
                    "invalid escape: expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX"
                        .to_owned(),
                ));
            }
        };
        out.push(c);
        self.pos = at + 2;
        Ok(())
    }

    /// Four hex digits at `at`.
    fn hex4(&self, at: usize) -> Option<u32> {
        self.bytes
            .get(at..at + 4)?
            .iter()
            .try_fold(0u32, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?))
    }

    /// A `\uXXXX` escape (or a `\uXXXX\uXXXX` surrogate pair), the current byte being `\`.
    fn unicode_escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let at = self.pos;
        let first = self.hex4(at + 2).ok_or_else(|| {
            self.error(
                JsonErrorKind::Syntax,
                at,
                "invalid \\u escape: expected four hex digits".to_owned(),
            )
        })?;
        self.pos = at + 6;
        let code = match first {
            0xD800..=0xDBFF => {
                let low = if self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u") {
                    self.hex4(self.pos + 2)
                } else {
                    None
                };
                match low {
                    Some(low @ 0xDC00..=0xDFFF) => {
                        self.pos += 6;
                        0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
                    }
                    _ => {
                        return Err(self.error(
                            JsonErrorKind::LoneSurrogate,
                            at,
                            format!(
                                "lone surrogate \\u{first:04X}: a high surrogate must be \
                                 followed by a \\uDC00-\\uDFFF escape"
                            ),
                        ));
                    }
                }
            }
            0xDC00..=0xDFFF => {
                return Err(self.error(
                    JsonErrorKind::LoneSurrogate,
                    at,
                    format!(
                        "lone surrogate \\u{first:04X}: a low surrogate must follow a \
                         \\uD800-\\uDBFF escape"
                    ),
                ));
            }
            other => other,
        };
        let c = char::from_u32(code).ok_or_else(|| {
            self.error(JsonErrorKind::Syntax, at, "invalid \\u escape".to_owned())
        })?;
        out.push(c);
        Ok(())
    }

    /// Skips ASCII digits; whether there was at least one.
    fn digits(&mut self) -> bool {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos > start
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error(
                        JsonErrorKind::Syntax,
                        start,
                        "invalid number: leading zeros are not allowed".to_owned(),
                    ));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.unexpected("a digit")),
        }
        let int_end = self.pos;
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if !self.digits() {
                return Err(self.unexpected("a digit after `.`"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !self.digits() {
                return Err(self.unexpected("a digit in the exponent"));
            }
        }
        let token = self.text.get(start..self.pos).unwrap_or_default();
        if integer {
            let digits = self.bytes.get(int_start..int_end).unwrap_or_default();
            let magnitude = digits.iter().try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?
                    .checked_add(u64::from(d.wrapping_sub(b'0')))
            });
            let number = match (negative, magnitude) {
                (false, Some(m)) => Some(Number::from(m)),
                (true, Some(0)) => Number::from_f64(-0.0),
                (true, Some(m)) => 0i64.checked_sub_unsigned(m).map(Number::from),
                (_, None) => None,
            };
            return number.map(Value::Number).ok_or_else(|| {
                self.error(
                    JsonErrorKind::NumberOutOfRange,
                    start,
                    format!(
                        "integer {} cannot be represented exactly (the range is {} to {}); \
                         send it as a string",
                        shorten(token, 40),
                        i64::MIN,
                        u64::MAX
                    ),
                )
            });
        }
        let float: f64 = token
            .parse()
            .map_err(|_| self.error(JsonErrorKind::Syntax, start, "invalid number".to_owned()))?;
        // `from_f64` refuses infinities: `1e400` overflows.
        Number::from_f64(float).map(Value::Number).ok_or_else(|| {
            self.error(
                JsonErrorKind::NumberOutOfRange,
                start,
                format!(
                    "number {} is out of range for a 64-bit float",
                    shorten(token, 40)
                ),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// JSON Pointer
// ---------------------------------------------------------------------------------------------

/// A JSON Pointer (RFC 6901), parsed once: `""` is the whole document, `/a/0/b~1c` is key
/// `a`, then element or key `0`, then key `b/c` (`~1` is `/`, `~0` is `~`). On an array a
/// token must be an index (`0`, `1`, ... without leading zeros) or `-`, the position after the
/// last element. The URI fragment form (`#/a`) is not accepted.
///
/// ```
/// use gateway_transform::json::Pointer;
/// use serde_json::json;
///
/// let p = Pointer::parse("/a~1b/1").unwrap();
/// assert_eq!(p.get(&json!({"a/b": [10, 20]})), Some(&json!(20)));
/// assert_eq!(p.to_string(), "/a~1b/1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// The most reference tokens a pointer may have.
    pub const MAX_TOKENS: usize = 128;

    /// Parses `source`.
    ///
    /// # Errors
    ///
    /// [`JsonErrorKind::InvalidPointer`], with the byte offset in `source`, for a pointer that
    /// is not empty and does not start with `/`, a `~` not followed by `0` or `1`, or more
    /// than [`Pointer::MAX_TOKENS`] tokens.
    pub fn parse(source: &str) -> Result<Self, JsonError> {
        if source.is_empty() {
            return Ok(Self { tokens: Vec::new() });
        }
        let Some(rest) = source.strip_prefix('/') else {
            let hint = if source.starts_with('#') {
                "; write the URI fragment form without `#` and percent-decoded"
            } else {
                ""
            };
            return Err(JsonError::in_pointer(
                format!(
                    "invalid JSON pointer `{}`: it must be empty or start with `/`{hint}",
                    shorten(source, 80)
                ),
                0,
            ));
        };
        let mut tokens = Vec::new();
        let mut offset = 1;
        for raw in rest.split('/') {
            if tokens.len() == Self::MAX_TOKENS {
                return Err(JsonError::in_pointer(
                    format!(
                        "invalid JSON pointer `{}`: more than {} tokens",
                        shorten(source, 80),
                        Self::MAX_TOKENS
                    ),
                    offset - 1,
                ));
            }
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.char_indices();
            while let Some((i, c)) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some((_, '0')) => token.push('~'),
                    Some((_, '1')) => token.push('/'),
                    _ => {
                        return Err(JsonError::in_pointer(
                            format!(
                                "invalid JSON pointer `{}`: `~` must be followed by `0` (for \
                                 `~`) or `1` (for `/`)",
                                shorten(source, 80)
                            ),
                            offset + i,
                        ));
                    }
                }
            }
            tokens.push(token);
            offset += raw.len() + 1;
        }
        Ok(Self { tokens })
    }

    /// Whether this is `""`, the whole document.
    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The unescaped reference tokens.
    pub fn tokens(&self) -> impl ExactSizeIterator<Item = &str> {
        self.tokens.iter().map(String::as_str)
    }

    /// The value this pointer refers to in `doc`, if there is one.
    pub fn get<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let mut cur = doc;
        for token in &self.tokens {
            cur = match cur {
                Value::Object(map) => map.get(token.as_str())?,
                Value::Array(items) => match position(token, items.len()) {
                    Position::Within(i) => items.get(i)?,
                    _ => return None,
                },
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The value this pointer refers to in `doc`, mutably, if there is one.
    pub fn get_mut<'v>(&self, doc: &'v mut Value) -> Option<&'v mut Value> {
        lookup_mut(doc, &self.tokens)
    }

    /// The first `n` tokens, written as a pointer.
    fn prefix(&self, n: usize) -> String {
        write_pointer(self.tokens.get(..n).unwrap_or(&self.tokens))
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&write_pointer(&self.tokens))
    }
}

fn write_pointer(tokens: &[String]) -> String {
    let mut out = String::new();
    for token in tokens {
        out.push('/');
        for c in token.chars() {
            match c {
                '~' => out.push_str("~0"),
                '/' => out.push_str("~1"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Where a token points in an array of `len` elements.
enum Position {
    /// An existing element.
    Within(usize),
    /// `-`, or the index `len`: the position after the last element.
    End,
    /// An index past `len`.
    Beyond,
    /// Not `-` and not an index.
    NotAnIndex,
}

fn position(token: &str, len: usize) -> Position {
    if token == "-" {
        return Position::End;
    }
    let b = token.as_bytes();
    if b.is_empty()
        || !b.iter().all(u8::is_ascii_digit)
        || (b.len() > 1 && b.first() == Some(&b'0'))
    {
        return Position::NotAnIndex;
    }
    match token.parse::<usize>() {
        Ok(i) if i < len => Position::Within(i),
        Ok(i) if i == len => Position::End,
        _ => Position::Beyond,
    }
}

fn lookup_mut<'v>(doc: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    let mut cur = doc;
    for token in tokens {
        cur = match cur {
            Value::Object(map) => map.get_mut(token.as_str())?,
            Value::Array(items) => match position(token, items.len()) {
                Position::Within(i) => items.get_mut(i)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(cur)
}

// ---------------------------------------------------------------------------------------------
// Edits
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Set(Pointer, Value),
    Add(Pointer, Value),
    Remove(Pointer),
    Rename(Pointer, Pointer),
    Copy(Pointer, Pointer),
}

/// Edits to a JSON document, applied in the order they were added to the builder.
///
/// Every op addresses its target with a [`Pointer`]. A target is *present* when the pointer
/// resolves to a value; *absent* when its parent exists and the last token is a missing key
/// or the append position of an array (`-`, or the index equal to the length).
///
/// | op | target present | target absent | missing parents | errors ([`EditError`]) |
/// |----|----------------|---------------|-----------------|------------------------|
/// | `set(p, v)` | replaced by `v` | `v` inserted (object) or appended (array) | created as empty objects | see below |
/// | `add(p, v)` | left as is | as `set` | as `set` | as `set` |
/// | `remove(p)` | removed (later array elements shift down) | nothing | nothing | never |
/// | `rename(from, to)` | `from` removed, then `set(to, value)` | nothing (no-op) | as `set`, for `to` | as `set`, for `to` |
/// | `copy(from, to)` | `set(to, clone of from)` | nothing (no-op) | as `set`, for `to` | as `set`, for `to` |
///
/// Errors when writing (`set`, `add`, and the `to` of `rename` and `copy`), each naming the
/// op, the pointer and the place that failed:
/// - a step goes through a string, number, boolean or null
///   ([`EditErrorReason::NotAContainer`]): `/a/b` when `a` is `"text"`;
/// - a token on an array is not an index ([`EditErrorReason::NotAnIndex`]);
/// - an index past the append position ([`EditErrorReason::IndexOutOfRange`]), or `-` or the
///   append position before the last token ([`EditErrorReason::AppendNotLast`], an
///   intermediate element is never created in an array).
///
/// `set("")` replaces the whole document, `add("")` does nothing (a document is always
/// present); `remove("")`, and `rename` from a pointer into its own descendant, are refused at
/// build time. Reading (`remove`, and the `from` of `rename` and `copy`) never fails: a path
/// that does not resolve, whatever the reason, is absent.
///
/// `apply` is not atomic: when an op fails, earlier ops (and, for `rename`, the removal of
/// `from`) have been applied. Do not forward a document whose edits failed; fail the message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonEdits {
    ops: Vec<Op>,
}

/// Builds [`JsonEdits`]; every method parses its pointers and fails on a bad one.
#[derive(Debug, Default)]
#[must_use]
pub struct JsonEditsBuilder {
    ops: Vec<Op>,
}

impl JsonEditsBuilder {
    /// Sets the value at `pointer` to `value`, creating it (and missing parent objects) or
    /// replacing it.
    ///
    /// # Errors
    ///
    /// [`JsonErrorKind::InvalidPointer`] for a pointer that does not parse.
    pub fn set(mut self, pointer: &str, value: Value) -> Result<Self, JsonError> {
        self.ops.push(Op::Set(Pointer::parse(pointer)?, value));
        Ok(self)
    }

    /// Sets the value at `pointer` to `value` only when there is none; creates missing parent
    /// objects.
    ///
    /// # Errors
    ///
    /// [`JsonErrorKind::InvalidPointer`] for a pointer that does not parse.
    pub fn add(mut self, pointer: &str, value: Value) -> Result<Self, JsonError> {
        self.ops.push(Op::Add(Pointer::parse(pointer)?, value));
        Ok(self)
    }

    /// Removes the value at `pointer`; nothing happens when there is none.
    ///
    /// # Errors
    ///
    /// [`JsonErrorKind::InvalidPointer`] for a pointer that does not parse;
    /// [`JsonErrorKind::InvalidEdit`] for `""` (the whole document cannot be removed).
    pub fn remove(mut self, pointer: &str) -> Result<Self, JsonError> {
        let p = Pointer::parse(pointer)?;
        if p.is_root() {
            return Err(JsonError::new(
                JsonErrorKind::InvalidEdit,
                "cannot remove `` (the whole document)".to_owned(),
            ));
        }
        self.ops.push(Op::Remove(p));
        Ok(self)
    }

    /// Moves the value at `from` to `to` (replacing any value there, creating missing parent
    /// objects); nothing happens when `from` has no value. `rename("/data", "")` replaces the
    /// document with its `data` member.
    ///
    /// # Errors
    ///
    /// [`JsonErrorKind::InvalidPointer`] for a pointer that does not parse;
    /// [`JsonErrorKind::InvalidEdit`] when `to` is inside `from` (a value cannot be moved into
    /// itself).
    pub fn rename(mut self, from: &str, to: &str) -> Result<Self, JsonError> {
        let (from_p, to_p) = (Pointer::parse(from)?, Pointer::parse(to)?);
        if to_p.tokens.len() > from_p.tokens.len() && to_p.tokens.starts_with(&from_p.tokens) {
            return Err(JsonError::new(
                JsonErrorKind::InvalidEdit,
                format!("cannot rename `{from}` to `{to}`: a value cannot move into itself"),
            ));
        }
        self.ops.push(Op::Rename(from_p, to_p));
        Ok(self)
    }

    /// Copies the value at `from` to `to` (replacing any value there, creating missing parent
    /// objects); nothing happens when `from` has no value.
    ///
    /// # Errors
    ///
    /// [`JsonErrorKind::InvalidPointer`] for a pointer that does not parse.
    pub fn copy(mut self, from: &str, to: &str) -> Result<Self, JsonError> {
        self.ops
            .push(Op::Copy(Pointer::parse(from)?, Pointer::parse(to)?));
        Ok(self)
    }

    /// The edits.
    pub fn build(self) -> JsonEdits {
        JsonEdits { ops: self.ops }
    }
}

impl JsonEdits {
    /// A builder.
    pub fn builder() -> JsonEditsBuilder {
        JsonEditsBuilder::default()
    }

    /// Whether there are no edits (a body need not be parsed for them).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of edits.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Applies the edits to `doc`, in order. See [`JsonEdits`] for each op's semantics.
    ///
    /// # Errors
    ///
    /// An [`EditError`] naming the op and pointer that failed. Earlier edits stay applied:
    /// fail the message rather than forward `doc`.
    pub fn apply(&self, doc: &mut Value) -> Result<(), EditError> {
        for op in &self.ops {
            match op {
                Op::Set(p, v) => write(doc, "set", p, v.clone(), true)?,
                Op::Add(p, v) => {
                    // The value is cloned only when it will be written.
                    if p.get(doc).is_none() {
                        write(doc, "add", p, v.clone(), false)?;
                    }
                }
                Op::Remove(p) => {
                    take(doc, p);
                }
                Op::Rename(from, to) => {
                    if from != to
                        && let Some(v) = take(doc, from)
                    {
                        write(doc, "rename", to, v, true)?;
                    }
                }
                Op::Copy(from, to) => {
                    if let Some(v) = from.get(doc).cloned() {
                        write(doc, "copy", to, v, true)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Removes and returns the value at `p`, if there is one.
fn take(doc: &mut Value, p: &Pointer) -> Option<Value> {
    let (last, parents) = p.tokens.split_last()?;
    match lookup_mut(doc, parents)? {
        Value::Object(map) => map.remove(last.as_str()),
        Value::Array(items) => match position(last, items.len()) {
            Position::Within(i) => Some(items.remove(i)),
            _ => None,
        },
        _ => None,
    }
}

/// Writes `value` at `p`, creating missing parent objects; an existing value is replaced
/// only when `replace`.
fn write(
    doc: &mut Value,
    op: &'static str,
    p: &Pointer,
    value: Value,
    replace: bool,
) -> Result<(), EditError> {
    let fail = |step: usize, reason: EditErrorReason| EditError {
        op,
        pointer: p.to_string(),
        at: p.prefix(step),
        reason,
    };
    let Some((last, parents)) = p.tokens.split_last() else {
        if replace {
            *doc = value;
        }
        return Ok(());
    };
    let mut cur = doc;
    for (step, token) in parents.iter().enumerate() {
        cur = match cur {
            Value::Object(map) => map
                .entry(token.as_str())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => {
                let len = items.len();
                match position(token, len) {
                    Position::Within(i) => match items.get_mut(i) {
                        Some(item) => item,
                        None => return Err(fail(step, out_of_range(token, len))),
                    },
                    Position::End => return Err(fail(step, EditErrorReason::AppendNotLast)),
                    Position::Beyond => return Err(fail(step, out_of_range(token, len))),
                    Position::NotAnIndex => {
                        return Err(fail(step, not_an_index(token)));
                    }
                }
            }
            scalar => return Err(fail(step, not_a_container(scalar))),
        };
    }
    let step = parents.len();
    match cur {
        Value::Object(map) => match map.entry(last.as_str()) {
            Entry::Occupied(mut slot) => {
                if replace {
                    slot.insert(value);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
        },
        Value::Array(items) => {
            let len = items.len();
            match position(last, len) {
                Position::Within(i) => {
                    if replace && let Some(item) = items.get_mut(i) {
                        *item = value;
                    }
                }
                Position::End => items.push(value),
                Position::Beyond => return Err(fail(step, out_of_range(last, len))),
                Position::NotAnIndex => return Err(fail(step, not_an_index(last))),
            }
        }
        scalar => return Err(fail(step, not_a_container(scalar))),
    }
    Ok(())
}

fn out_of_range(token: &str, len: usize) -> EditErrorReason {
    EditErrorReason::IndexOutOfRange {
        index: shorten(token, 24),
        len,
    }
}

fn not_an_index(token: &str) -> EditErrorReason {
    EditErrorReason::NotAnIndex {
        token: shorten(token, 40),
    }
}

fn not_a_container(v: &Value) -> EditErrorReason {
    EditErrorReason::NotAContainer {
        found: match v {
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        },
    }
}

/// An edit that could not be applied to a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditError {
    op: &'static str,
    pointer: String,
    at: String,
    reason: EditErrorReason,
}

/// Why an [`EditError`] happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EditErrorReason {
    /// The value at [`EditError::at`] is a string, number, boolean or null (named in `found`)
    /// and cannot hold the next token.
    NotAContainer {
        /// `"a string"`, `"a number"`, `"a boolean"` or `"null"`.
        found: &'static str,
    },
    /// The value at [`EditError::at`] is an array and `token` is not an index or `-`.
    NotAnIndex {
        /// The token (shortened).
        token: String,
    },
    /// `index` is past the append position of the array at [`EditError::at`].
    IndexOutOfRange {
        /// The index as written (shortened).
        index: String,
        /// The array's length.
        len: usize,
    },
    /// `-` or the append position of the array at [`EditError::at`] is followed by more
    /// tokens: an element that does not exist cannot be a parent.
    AppendNotLast,
}

impl EditError {
    /// The op that failed: `"set"`, `"add"`, `"rename"` or `"copy"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The pointer being written (for `rename` and `copy`, the destination).
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The pointer to the value where writing failed (a prefix of [`EditError::pointer`];
    /// `""` is the document).
    pub fn at(&self) -> &str {
        &self.at
    }

    /// Why.
    pub fn reason(&self) -> &EditErrorReason {
        &self.reason
    }
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, pointer) = (self.op, &self.pointer);
        let at = if self.at.is_empty() {
            "the document".to_owned()
        } else {
            format!("`{}`", self.at)
        };
        match &self.reason {
            EditErrorReason::NotAContainer { found } => write!(
                f,
                "{op} `{pointer}`: {at} is {found}, not an object or array"
            ),
            EditErrorReason::NotAnIndex { token } => write!(
                f,
                "{op} `{pointer}`: {at} is an array and `{token}` is not an index (0, 1, ... \
                 or `-` to append)"
            ),
            EditErrorReason::IndexOutOfRange { index, len } => write!(
                f,
                "{op} `{pointer}`: index {index} is out of range for {at} (length {len})"
            ),
            EditErrorReason::AppendNotLast => write!(
                f,
                "{op} `{pointer}`: the end of {at} does not exist yet and cannot have children"
            ),
        }
    }
}

impl std::error::Error for EditError {}

// ---------------------------------------------------------------------------------------------
// Content type
// ---------------------------------------------------------------------------------------------

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `type`, `subtype` and what follows the first `;` of a media type, if its syntax is valid.
fn media_type(value: &HeaderValue) -> Option<(&str, &str, &str)> {
    let s = std::str::from_utf8(value.as_bytes()).ok()?;
    if !s.is_ascii() {
        return None;
    }
    let s = s.trim_matches([' ', '\t']);
    let (essence, params) = s.split_once(';').unwrap_or((s, ""));
    let (kind, subtype) = essence.trim_end_matches([' ', '\t']).split_once('/')?;
    (is_token(kind) && is_token(subtype)).then_some((kind, subtype, params))
}

/// Whether a `Content-Type` value names JSON: `application/json` or `application/*+json`
/// (RFC 6839: `application/problem+json`, `application/vnd.example.v2+json`, ...), in any
/// case, with any parameters and surrounding whitespace.
///
/// False for `text/json` (not a registered type; RFC 8259 registers `application/json` only),
/// `application/jsonp` (script), `application/json-seq` (RFC 7464 record sequences, not one
/// text), `application/x-json`, a bare `+json` subtype, values that are not a media type, and
/// values that are not ASCII. Parameters are not checked here (see [`json_charset_ok`]).
///
/// Answer `415` when a JSON route's request is not JSON; never skip body checks because this
/// returned false.
///
/// ```
/// use gateway_transform::json::is_json_media_type;
/// use http::HeaderValue;
///
/// assert!(is_json_media_type(&HeaderValue::from_static("Application/JSON;charset=\"utf-8\"")));
/// assert!(!is_json_media_type(&HeaderValue::from_static("application/json-seq")));
/// ```
pub fn is_json_media_type(value: &HeaderValue) -> bool {
    let Some((kind, subtype, _)) = media_type(value) else {
        return false;
    };
    let suffixed = subtype.len() > "+json".len()
        && subtype
            .get(subtype.len() - "+json".len()..)
            .is_some_and(|s| s.eq_ignore_ascii_case("+json"));
    kind.eq_ignore_ascii_case("application") && (subtype.eq_ignore_ascii_case("json") || suffixed)
}

/// Whether a `Content-Type` value's charset is acceptable for JSON (RFC 8259 §8.1: UTF-8):
/// absent, or `utf-8` in any case, quoted or not.
///
/// False for any other charset (`utf8`, `iso-8859-1`, `utf-16`...), for more than one
/// `charset` parameter, and when the value or its parameters are not valid syntax
/// (RFC 9110 §5.6.6), since what a backend would make of them is unknown. It does not check the
/// media type itself: pair it with [`is_json_media_type`].
///
/// ```
/// use gateway_transform::json::json_charset_ok;
/// use http::HeaderValue;
///
/// assert!(json_charset_ok(&HeaderValue::from_static("application/json")));
/// assert!(!json_charset_ok(&HeaderValue::from_static("application/json; charset=latin1")));
/// ```
pub fn json_charset_ok(value: &HeaderValue) -> bool {
    let Some((_, _, params)) = media_type(value) else {
        return false;
    };
    let mut charsets = 0;
    let mut all_utf8 = true;
    let well_formed = parameters(params.as_bytes(), |name, value| {
        if name.eq_ignore_ascii_case(b"charset") {
            charsets += 1;
            all_utf8 &= value.eq_ignore_ascii_case(b"utf-8");
        }
    });
    well_formed && charsets <= 1 && all_utf8
}

/// Calls `each(name, value)` for every parameter in `rest` (what follows the first `;`), with
/// quoted-string values unescaped; false when the syntax is invalid.
fn parameters(rest: &[u8], mut each: impl FnMut(&[u8], &[u8])) -> bool {
    let mut i = 0;
    let mut unquoted = Vec::new();
    loop {
        while rest.get(i).copied().is_some_and(is_ows) {
            i += 1;
        }
        match rest.get(i) {
            None => return true,
            // An empty parameter: `a/b;;c=d`.
            Some(b';') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let name_start = i;
        while rest.get(i).copied().is_some_and(is_tchar) {
            i += 1;
        }
        let Some(name) = rest.get(name_start..i).filter(|n| !n.is_empty()) else {
            return false;
        };
        if rest.get(i) != Some(&b'=') {
            return false;
        }
        i += 1;
        if rest.get(i) == Some(&b'"') {
            i += 1;
            unquoted.clear();
            loop {
                match rest.get(i) {
                    None => return false,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => match rest.get(i + 1) {
                        Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) => {
                            unquoted.push(c);
                            i += 2;
                        }
                        _ => return false,
                    },
                    Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) => {
                        unquoted.push(c);
                        i += 1;
                    }
                    Some(_) => return false,
                }
            }
            each(name, &unquoted);
        } else {
            let value_start = i;
            while rest.get(i).copied().is_some_and(is_tchar) {
                i += 1;
            }
            match rest.get(value_start..i).filter(|v| !v.is_empty()) {
                Some(value) => each(name, value),
                None => return false,
            }
        }
        while rest.get(i).copied().is_some_and(is_ows) {
            i += 1;
        }
        match rest.get(i) {
            None => return true,
            Some(b';') => i += 1,
            Some(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_number_of_values_is_bounded() {
        let limits = JsonLimits {
            max_values: 10,
            ..JsonLimits::default()
        };
        // An array and nine numbers: ten values.
        assert!(parse_strict(b"[1,2,3,4,5,6,7,8,9]", &limits).is_ok());
        let err = parse_strict(b"[1,2,3,4,5,6,7,8,9,10]", &limits).unwrap_err();
        assert_eq!(err.kind(), JsonErrorKind::TooManyValues);
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        let err = parse_strict(br#"{"a":{"b":[0,0,0,0,0,0,0,0]}}"#, &limits).unwrap_err();
        assert_eq!(err.kind(), JsonErrorKind::TooManyValues);
    }

    fn parse(s: &[u8]) -> Result<Value, JsonError> {
        parse_strict(s, &JsonLimits::default())
    }

    fn kind(s: &[u8]) -> JsonErrorKind {
        match parse(s) {
            Ok(v) => panic!("{:?} parsed as {v}", String::from_utf8_lossy(s)),
            Err(e) => e.kind(),
        }
    }

    // ----- parsing -----

    #[test]
    fn valid_documents_parse_as_serde_json_does() {
        let docs: &[&str] = &[
            r#"{"a":[1,-2,3.5,true,false,null,{"b":"c"}],"d":{},"e":[],"f":"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}"#,
            " \t\r\n[ 1 , 2 ]\n ",
            "0",
            "-0",
            "-1.5e-3",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5e10",
            "1E+2",
            "\"caf\u{e9} \u{1F600}\"",
            r#"{"":"empty key","\u0000":"nul"}"#,
            "1e-400",
        ];
        for doc in docs {
            let ours = parse(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc}: {e}"));
            let theirs: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(ours, theirs, "{doc}");
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&theirs).unwrap(),
                "{doc}"
            );
        }
        assert_eq!(parse(b"1.5e10").unwrap(), json!(1.5e10));
        assert!(parse(b"1.5e10").unwrap().is_f64());
        assert_eq!(parse(b"18446744073709551615").unwrap(), json!(u64::MAX));
        assert_eq!(parse(b"-9223372036854775808").unwrap(), json!(i64::MIN));
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = parse(br#"{"role":"user","role":"admin"}"#).unwrap_err();
        assert_eq!(e.kind(), JsonErrorKind::DuplicateKey);
        assert_eq!(e.offset(), Some(15));
        assert!(e.to_string().contains("\"role\""), "{e}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let nested = b"{\"a\":[{\"b\":{\"c\":1,\n  \"c\":2}}]}";
        let e = parse(nested).unwrap_err();
        assert_eq!(e.kind(), JsonErrorKind::DuplicateKey);
        assert_eq!(e.line_column(), Some((2, 3)));
        assert_eq!(
            e.to_string(),
            "duplicate key \"c\" in an object at line 2, column 3"
        );

        // Compared after unescaping.
        assert_eq!(
            kind(br#"{"admin":false,"\u0061dmin":true}"#),
            JsonErrorKind::DuplicateKey
        );
        // The same key in different objects is fine.
        assert!(parse(br#"{"a":{"k":1},"b":{"k":1},"k":[{"k":1},{"k":2}]}"#).is_ok());
    }

    #[test]
    fn nesting_is_bounded_without_recursing_into_a_million_brackets() {
        let deep = |n: usize| {
            let mut s = "[".repeat(n);
            s.push_str(&"]".repeat(n));
            s
        };
        assert!(parse(deep(64).as_bytes()).is_ok());
        let e = parse(deep(65).as_bytes()).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (JsonErrorKind::TooDeep, Some(64)));

        let million = vec![b'['; 1_000_000];
        let e = parse(&million).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (JsonErrorKind::TooDeep, Some(64)));
        let objects = "{\"a\":".repeat(200_000);
        assert_eq!(kind(objects.as_bytes()), JsonErrorKind::TooDeep);

        let at_ceiling = JsonLimits {
            max_depth: JsonLimits::DEPTH_CEILING,
            max_bytes: 2_000_000,
            ..JsonLimits::default()
        };
        assert!(parse_strict(deep(128).as_bytes(), &at_ceiling).is_ok());
        let e = parse_strict(&million, &at_ceiling).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (JsonErrorKind::TooDeep, Some(128)));

        let zero = JsonLimits {
            max_depth: 0,
            ..JsonLimits::default()
        };
        assert!(parse_strict(b"1", &zero).is_ok());
        assert_eq!(
            parse_strict(b"[]", &zero).unwrap_err().kind(),
            JsonErrorKind::TooDeep
        );
    }

    #[test]
    fn limits_above_the_ceiling_are_refused() {
        let limits = JsonLimits {
            max_depth: 129,
            ..JsonLimits::default()
        };
        let e = parse_strict(b"{}", &limits).unwrap_err();
        assert_eq!(e.kind(), JsonErrorKind::InvalidLimits);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(serde_json::from_str::<JsonLimits>(r#"{"max_depth":129}"#).is_err());
        assert!(serde_json::from_str::<JsonLimits>(r#"{"depth":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<JsonLimits>(r#"{"max_bytes":10}"#).unwrap(),
            JsonLimits {
                max_depth: 64,
                max_bytes: 10,
                max_values: 100_000,
            }
        );
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let limits = JsonLimits {
            max_bytes: 10,
            ..JsonLimits::default()
        };
        assert!(parse_strict(b"[1,2,3,45]", &limits).is_ok());
        let e = parse_strict(b"[1,2,3,456]", &limits).unwrap_err();
        assert_eq!(e.kind(), JsonErrorKind::TooLarge);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Checked first: even garbage is refused for its size.
        assert_eq!(
            parse_strict(&[0xff; 11], &limits).unwrap_err().kind(),
            JsonErrorKind::TooLarge
        );
    }

    #[test]
    fn integers_that_would_lose_precision_are_refused_and_floats_are_not() {
        for big in [
            "18446744073709551616",
            "-9223372036854775809",
            "[1, 99999999999999999999999999999999]",
            "{\"id\": 123456789012345678901234567890}",
        ] {
            let e = parse(big.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), JsonErrorKind::NumberOutOfRange, "{big}");
            assert!(
                e.to_string().contains("cannot be represented exactly"),
                "{e}"
            );
        }
        let huge = "9".repeat(100_000);
        let e = parse(huge.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), JsonErrorKind::NumberOutOfRange);
        assert!(
            e.to_string().len() < 300,
            "the message quotes a shortened literal"
        );

        assert_eq!(kind(b"1e400"), JsonErrorKind::NumberOutOfRange);
        assert_eq!(kind(b"-1e400"), JsonErrorKind::NumberOutOfRange);
        assert!(
            serde_json::from_str::<Value>("1e400").is_err(),
            "as serde_json"
        );
        assert_eq!(
            parse(b"18446744073709551616.0").unwrap(),
            json!(1.8446744073709552e19)
        );
        assert_eq!(parse(b"1e-400").unwrap(), json!(0.0));
    }

    #[test]
    fn lone_surrogates_are_refused_and_pairs_decoded() {
        for s in [
            r#""\ud800""#,
            r#""\uDBFF""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
            r#""\ud800\ud800""#,
            r#"{"\ud800":1}"#,
        ] {
            assert_eq!(kind(s.as_bytes()), JsonErrorKind::LoneSurrogate, "{s}");
        }
        let e = parse(br#"["ok","\udc00"]"#).unwrap_err();
        assert_eq!(e.offset(), Some(7));
        assert_eq!(parse(br#""\ud83d\ude00""#).unwrap(), json!("\u{1F600}"));
        assert_eq!(parse(br#""\uDBFF\uDFFF""#).unwrap(), json!("\u{10FFFF}"));
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_offset() {
        for (bytes, at) in [
            (&b"\"\xff\""[..], 1),
            (&b"\"\xc0\xaf\""[..], 1),           // overlong `/`
            (&b"\"\xed\xa0\x80\""[..], 1),       // an encoded surrogate
            (&b"[\"ok\", \"\xe2\x82\"]"[..], 8), // truncated
            (&b"\xff"[..], 0),
        ] {
            let e = parse(bytes).unwrap_err();
            assert_eq!(
                (e.kind(), e.offset()),
                (JsonErrorKind::InvalidUtf8, Some(at))
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_refused() {
        let e = parse(b"\xEF\xBB\xBF{}").unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (JsonErrorKind::ByteOrderMark, Some(0))
        );
        // Inside a string it is an ordinary character.
        assert_eq!(parse("\"\u{feff}\"".as_bytes()).unwrap(), json!("\u{feff}"));
    }

    #[test]
    fn trailing_data_is_refused() {
        for s in [
            "{} {}",
            "1 2",
            "{}x",
            "[]]",
            "\"a\"\"b\"",
            "truex",
            "null\0",
        ] {
            let e = parse(s.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), JsonErrorKind::TrailingData, "{s}");
        }
        assert_eq!(parse(b"{} \n").unwrap(), json!({}));
        assert_eq!(parse(b"{} {}").unwrap_err().offset(), Some(3));
    }

    #[test]
    fn everything_else_rfc_8259_forbids_is_a_syntax_error() {
        for s in [
            "",
            " ",
            "[1,]",
            "{\"a\":1,}",
            "[,1]",
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "-",
            "1e",
            "1e+",
            "NaN",
            "Infinity",
            "-Infinity",
            "'a'",
            "{a:1}",
            "{\"a\" 1}",
            "{1:1}",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"a\nb\"",
            "\"tab\there\"",
            "\"open",
            "tru",
            "nul",
            "[",
            "{",
            "/* c */ 1",
            "// c\n1",
            "\u{a0}1",
        ] {
            let e = parse(s.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), JsonErrorKind::Syntax, "{s:?}: {e}");
            assert!(serde_json::from_str::<Value>(s).is_err(), "{s:?}");
        }
        let e = parse(b"{\n  \"a\": [1,\n  2,]\n}").unwrap_err();
        assert_eq!(e.line_column(), Some((3, 5)));
        assert_eq!(
            e.to_string(),
            "expected a JSON value, found `]` at line 3, column 5"
        );
    }

    // ----- pointers -----

    #[test]
    fn pointers_parse_escapes_and_refuse_bad_syntax() {
        let p = Pointer::parse("/a~1b/m~0n/~01/").unwrap();
        assert_eq!(p.tokens().collect::<Vec<_>>(), ["a/b", "m~n", "~1", ""]);
        assert_eq!(p.to_string(), "/a~1b/m~0n/~01/");
        assert!(Pointer::parse("").unwrap().is_root());
        assert_eq!(
            Pointer::parse("/").unwrap().tokens().collect::<Vec<_>>(),
            [""]
        );

        for (bad, at) in [("a", 0), ("#/a", 0), ("/a~", 2), ("/ab/~2", 4), ("/~x", 1)] {
            let e = Pointer::parse(bad).unwrap_err();
            assert_eq!(
                (e.kind(), e.offset()),
                (JsonErrorKind::InvalidPointer, Some(at)),
                "{bad}"
            );
        }
        assert!(Pointer::parse(&"/a".repeat(Pointer::MAX_TOKENS)).is_ok());
        assert!(Pointer::parse(&"/a".repeat(Pointer::MAX_TOKENS + 1)).is_err());

        let doc = json!({"a/b": {"m~n": [10, 20]}, "": 1, "0": "zero"});
        for (p, want) in [
            ("/a~1b/m~0n/1", Some(json!(20))),
            ("/", Some(json!(1))),
            ("/0", Some(json!("zero"))),
            ("/a~1b/m~0n/01", None),
            ("/a~1b/m~0n/-", None),
            ("/a~1b/m~0n/2", None),
            ("/0/x", None),
        ] {
            assert_eq!(Pointer::parse(p).unwrap().get(&doc), want.as_ref(), "{p}");
            assert_eq!(doc.pointer(p), want.as_ref(), "{p}: as serde_json");
        }
    }

    // ----- edits -----

    fn edit(doc: Value, edits: &JsonEdits) -> Value {
        let mut doc = doc;
        edits.apply(&mut doc).unwrap();
        doc
    }

    #[test]
    fn set_creates_or_replaces_and_creates_parents() {
        let edits = JsonEdits::builder()
            .set("/a", json!(2))
            .unwrap()
            .set("/new/deep/er", json!(true))
            .unwrap()
            .set("/list/0", json!("first"))
            .unwrap()
            .set("/list/-", json!("appended"))
            .unwrap()
            .set("/list/3", json!("at len"))
            .unwrap()
            .set("/k~1s/t~0u", json!(1))
            .unwrap()
            .build();
        let doc = edit(json!({"a": 1, "list": ["x", "y"], "k/s": {}}), &edits);
        assert_eq!(
            doc,
            json!({
                "a": 2,
                "new": {"deep": {"er": true}},
                "list": ["first", "y", "appended", "at len"],
                "k/s": {"t~u": 1}
            })
        );
        let root = JsonEdits::builder().set("", json!([1])).unwrap().build();
        assert_eq!(edit(json!({"a": 1}), &root), json!([1]));
    }

    #[test]
    fn write_errors_name_the_pointer_and_the_place() {
        let doc = json!({"name": "ada", "list": [1, 2], "n": null});
        let cases = [
            (
                "/name/first",
                EditErrorReason::NotAContainer { found: "a string" },
                "/name",
                "set `/name/first`: `/name` is a string, not an object or array",
            ),
            (
                "/n/x/y",
                EditErrorReason::NotAContainer { found: "null" },
                "/n",
                "set `/n/x/y`: `/n` is null, not an object or array",
            ),
            (
                "/list/5",
                EditErrorReason::IndexOutOfRange {
                    index: "5".into(),
                    len: 2,
                },
                "/list",
                "set `/list/5`: index 5 is out of range for `/list` (length 2)",
            ),
            (
                "/list/9/x",
                EditErrorReason::IndexOutOfRange {
                    index: "9".into(),
                    len: 2,
                },
                "/list",
                "set `/list/9/x`: index 9 is out of range for `/list` (length 2)",
            ),
            (
                "/list/x",
                EditErrorReason::NotAnIndex { token: "x".into() },
                "/list",
                "set `/list/x`: `/list` is an array and `x` is not an index (0, 1, ... or `-` \
                 to append)",
            ),
            (
                "/list/01",
                EditErrorReason::NotAnIndex { token: "01".into() },
                "/list",
                "set `/list/01`: `/list` is an array and `01` is not an index (0, 1, ... or \
                 `-` to append)",
            ),
            (
                "/list/-/x",
                EditErrorReason::AppendNotLast,
                "/list",
                "set `/list/-/x`: the end of `/list` does not exist yet and cannot have \
                 children",
            ),
        ];
        for (pointer, reason, at, message) in cases {
            let edits = JsonEdits::builder().set(pointer, json!(0)).unwrap().build();
            let mut d = doc.clone();
            let e = edits.apply(&mut d).unwrap_err();
            assert_eq!(
                (e.op(), e.pointer(), e.at(), e.reason()),
                ("set", pointer, at, &reason)
            );
            assert_eq!(e.to_string(), message);
            assert_eq!(d, doc, "{pointer}: a failing set changes nothing");
        }
        let e = JsonEdits::builder()
            .set("/a", json!(0))
            .unwrap()
            .build()
            .apply(&mut json!("scalar"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "set `/a`: the document is a string, not an object or array"
        );
    }

    #[test]
    fn add_writes_only_when_absent() {
        let edits = JsonEdits::builder()
            .add("/kept", json!("new"))
            .unwrap()
            .add("/created/x", json!(1))
            .unwrap()
            .add("/list/0", json!("not written"))
            .unwrap()
            .add("/list/-", json!("appended"))
            .unwrap()
            .add("", json!("not the document"))
            .unwrap()
            .build();
        let doc = edit(json!({"kept": "old", "list": ["a"]}), &edits);
        assert_eq!(
            doc,
            json!({"kept": "old", "created": {"x": 1}, "list": ["a", "appended"]})
        );
        let bad = JsonEdits::builder().add("/s/x", json!(1)).unwrap().build();
        assert_eq!(bad.apply(&mut json!({"s": 1})).unwrap_err().op(), "add");
    }

    #[test]
    fn remove_deletes_and_tolerates_absence() {
        let edits = JsonEdits::builder()
            .remove("/secret")
            .unwrap()
            .remove("/missing/deep")
            .unwrap()
            .remove("/list/0")
            .unwrap()
            .remove("/list/9")
            .unwrap()
            .remove("/list/-")
            .unwrap()
            .remove("/s/under/a/string")
            .unwrap()
            .remove("/a~1b")
            .unwrap()
            .build();
        let doc = edit(
            json!({"secret": 1, "list": [1, 2, 3], "s": "x", "a/b": 0, "keep": true}),
            &edits,
        );
        assert_eq!(doc, json!({"list": [2, 3], "s": "x", "keep": true}));
        let e = JsonEdits::builder().remove("").unwrap_err();
        assert_eq!(e.kind(), JsonErrorKind::InvalidEdit);
    }

    #[test]
    fn rename_moves_and_is_a_no_op_without_a_source() {
        let edits = JsonEdits::builder()
            .rename("/user/name", "/user/login")
            .unwrap()
            .rename("/absent", "/x")
            .unwrap()
            .rename("/old", "/replaced")
            .unwrap()
            .rename("/list/0", "/list/-")
            .unwrap()
            .rename("/same", "/same")
            .unwrap()
            .build();
        let doc = edit(
            json!({"user": {"name": "ada"}, "old": 1, "replaced": 2, "list": [1, 2, 3], "same": 0}),
            &edits,
        );
        assert_eq!(
            doc,
            json!({"user": {"login": "ada"}, "replaced": 1, "list": [2, 3, 1], "same": 0})
        );
        let unwrap = JsonEdits::builder().rename("/data", "").unwrap().build();
        assert_eq!(edit(json!({"data": {"a": 1}}), &unwrap), json!({"a": 1}));

        for (from, to) in [("/a", "/a/b"), ("", "/a")] {
            let e = JsonEdits::builder().rename(from, to).unwrap_err();
            assert_eq!(e.kind(), JsonErrorKind::InvalidEdit, "{from} -> {to}");
        }
        let e = JsonEdits::builder()
            .rename("/a", "/s/x")
            .unwrap()
            .build()
            .apply(&mut json!({"a": 1, "s": ""}))
            .unwrap_err();
        assert_eq!((e.op(), e.pointer()), ("rename", "/s/x"));
    }

    #[test]
    fn copy_clones_and_is_a_no_op_without_a_source() {
        let edits = JsonEdits::builder()
            .copy("/a", "/b/c")
            .unwrap()
            .copy("/absent", "/x")
            .unwrap()
            .copy("", "/snapshot")
            .unwrap()
            .build();
        let doc = edit(json!({"a": [1]}), &edits);
        assert_eq!(
            doc,
            json!({"a": [1], "b": {"c": [1]}, "snapshot": {"a": [1], "b": {"c": [1]}}})
        );
    }

    #[test]
    fn ops_apply_in_order_and_empty_edits_are_empty() {
        let edits = JsonEdits::builder()
            .set("/a", json!(1))
            .unwrap()
            .rename("/a", "/b")
            .unwrap()
            .add("/a", json!(2))
            .unwrap()
            .build();
        assert_eq!(edits.len(), 3);
        assert!(!edits.is_empty());
        assert_eq!(edit(json!({}), &edits), json!({"a": 2, "b": 1}));
        assert!(JsonEdits::builder().build().is_empty());
        assert!(JsonEdits::builder().set("nope", json!(1)).is_err());
        assert!(JsonEdits::builder().copy("/a", "/~").is_err());
    }

    // ----- content type -----

    #[test]
    fn json_media_types() {
        let yes = [
            "application/json",
            "APPLICATION/JSON",
            "Application/Json",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "  application/json  ",
            "\tapplication/json ;charset=utf-8",
            "application/problem+json",
            "application/vnd.example.v2+json",
            "application/VND.API+JSON; ext=\"a;b\"",
            "application/json-patch+json",
            "application/json;;",
            "application/json; garbage",
        ];
        let no = [
            "text/json",
            "application/jsonp",
            "application/json-seq",
            "application/geo+json-seq",
            "application/x-json",
            "application/+json",
            "application/json5",
            "text/plain",
            "application/xml",
            "json",
            "application/",
            "/json",
            "application/json garbage",
            "application / json",
            "application/json,text/html",
            "*/*",
            "application/*",
            "",
        ];
        for v in yes {
            assert!(
                is_json_media_type(&HeaderValue::from_str(v).unwrap()),
                "{v}"
            );
        }
        for v in no {
            assert!(
                !is_json_media_type(&HeaderValue::from_str(v).unwrap()),
                "{v}"
            );
        }
        let non_utf8 = HeaderValue::from_bytes(b"application/json; x=\xff").unwrap();
        assert!(!is_json_media_type(&non_utf8));
        let latin1 = HeaderValue::from_bytes(b"application/\xe9+json").unwrap();
        assert!(!is_json_media_type(&latin1));
    }

    #[test]
    fn json_charsets() {
        let yes = [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json; charset=\"\\utf-8\"",
            "application/json ; CHARSET=Utf-8 ; q=1",
            "application/problem+json;;charset=utf-8",
        ];
        let no = [
            "application/json; charset=iso-8859-1",
            "application/json; charset=utf8",
            "application/json; charset=utf-16",
            "application/json; charset=\"utf-8",
            "application/json; charset=",
            "application/json; charset = utf-8",
            "application/json; charset=utf-8; charset=latin1",
            "application/json; charset=utf-8; charset=utf-8",
            "application/json; charset=utf-8 x",
            "application/json; garbage",
            "not a media type",
        ];
        for v in yes {
            assert!(json_charset_ok(&HeaderValue::from_str(v).unwrap()), "{v}");
        }
        for v in no {
            assert!(!json_charset_ok(&HeaderValue::from_str(v).unwrap()), "{v}");
        }
        let non_utf8 = HeaderValue::from_bytes(b"application/json; charset=\"\xff\"").unwrap();
        assert!(!json_charset_ok(&non_utf8));
    }
}
