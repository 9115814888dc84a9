use std::{borrow::Cow, fmt};

/// Why a request path was refused by [`normalize_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    InvalidEncoding,
    /// `%2F`: an encoded `/` would let a path mean one thing to the gateway and another upstream.
    EncodedSlash,
    /// `\` or `%5C`: some servers treat it as a separator.
    Backslash,
    /// `%00`.
    Nul,
    /// A raw control character.
    ControlCharacter,
    /// `;`: a path parameter, which some servers strip before routing (`/admin;x/`).
    PathParameter,
    /// Percent-encoded bytes that are not UTF-8.
    InvalidUtf8,
}

impl PathError {
    /// A short description, safe to put in a problem+json `detail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path must start with '/'",
            Self::InvalidEncoding => "invalid percent-encoding in path",
            Self::EncodedSlash => "encoded '/' (%2F) is not allowed in path",
            Self::Backslash => "'\\' (or %5C) is not allowed in path",
            Self::Nul => "NUL (%00) is not allowed in path",
            Self::ControlCharacter => "control characters are not allowed in path",
            Self::PathParameter => "';' path parameters are not allowed",
            Self::InvalidUtf8 => "percent-encoded path is not valid UTF-8",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PathError {}

/// Normalizes a request path so that one string decides routing, policy and forwarding.
///
/// In order:
/// 1. refuses what different servers read differently: encoded `/` (`%2F`), `\` and `%5C`, `%00`,
///    raw control characters, `;` path parameters, malformed `%` escapes, and escapes that decode
///    to invalid UTF-8;
/// 2. decodes percent-encoded unreserved characters (RFC 3986 §2.3: `%61` becomes `a`, `%2E`
///    becomes `.`), upper-cases the hex digits of every other escape (§6.2.2.1), and encodes
///    characters some parsers accept raw but RFC 3986 does not (`{`, `}`, `"`, `|`, `^`, `` ` ``,
///    `<`, `>`, space, non-ASCII), so each path has one spelling;
/// 3. merges repeated slashes (`//x` becomes `/x`);
/// 4. removes dot segments (§5.2.4); `..` never climbs above the root.
///
/// A trailing slash is kept. The query string is not part of the input. Paths that need no change
/// are returned borrowed, without allocating.
///
/// # Example
///
/// ```
/// use gateway_core::{PathError, normalize_path};
///
/// assert_eq!(normalize_path("/api/users").unwrap(), "/api/users");
/// assert_eq!(normalize_path("/a/../b").unwrap(), "/b");
/// assert_eq!(normalize_path("//x").unwrap(), "/x");
/// assert_eq!(normalize_path("/%2e%2e/admin").unwrap(), "/admin");
/// assert_eq!(normalize_path("/%61pi").unwrap(), "/api");
/// assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EncodedSlash));
/// assert_eq!(normalize_path("/admin;jsessionid=1"), Err(PathError::PathParameter));
/// ```
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b';' => return Err(PathError::PathParameter),
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'%' => needs_work = true,
            b if must_encode(b) => needs_work = true,
            b'/' => match bytes.get(i + 1) {
                Some(b'/') => needs_work = true,
                Some(b'.') => {
                    let rest = &bytes[i + 2..];
                    if rest.is_empty()
                        || rest[0] == b'/'
                        || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                    {
                        needs_work = true;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters some parsers accept raw in a path but RFC 3986 does not; encoding them gives the
/// raw and the encoded spelling one form.
fn must_encode(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' | b' '
    ) || b >= 0x80
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes, upper-cases the others and checks that the fully decoded bytes are
/// UTF-8.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    let mut raw = Vec::new();
    let mut non_ascii = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if must_encode(b) {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            } else {
                out.push(b as char);
            }
            raw.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::InvalidEncoding);
        };
        let v = hi << 4 | lo;
        match v {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {}
        }
        if is_unreserved(v) {
            out.push(v as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(v >> 4)] as char);
            out.push(HEX[usize::from(v & 0xf)] as char);
        }
        non_ascii |= v >= 0x80;
        raw.push(v);
        i += 3;
    }
    if non_ascii && std::str::from_utf8(&raw).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Merges slashes and removes `.`/`..` segments of a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "" | "." => trailing_slash = last,
            ".." => {
                stack.pop();
                trailing_slash = last;
            }
            _ => {
                stack.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//x", "/x"),
            ("/a//b///c", "/a/b/c"),
            ("/%2e%2e/x", "/x"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/%61", "/a"),
            ("/%7euser", "/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%3a", "/a%3A"),
            ("/..a/b..", "/..a/b.."),
            ("/a/.../b", "/a/.../b"),
            ("/a{b}", "/a%7Bb%7D"),
            ("/a%7bb%7D", "/a%7Bb%7D"),
            ("/caf\u{e9}", "/caf%C3%A9"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_path(input).unwrap(), want, "input {input}");
        }
        let bad = [
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5Cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::Nul),
            ("/a;x", PathError::PathParameter),
            ("/a/b;jsessionid=1/c", PathError::PathParameter),
            ("/a%zz", PathError::InvalidEncoding),
            ("/a%4", PathError::InvalidEncoding),
            ("/a%ff", PathError::InvalidUtf8),
            ("/a\x01", PathError::ControlCharacter),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        assert!(matches!(
            normalize_path("/api/v1/users/42").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize_path("/a/../b").unwrap(), Cow::Owned(_)));
    }

    #[test]
    fn encoded_semicolon_is_data_not_a_parameter() {
        assert_eq!(normalize_path("/a%3bb").unwrap(), "/a%3Bb");
    }
}
