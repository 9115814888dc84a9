//! Reading one cookie from a request's `Cookie` fields.

use http::{HeaderMap, header::COOKIE};

/// The value of the first cookie called `name` in `headers` (every `Cookie` field, pairs split
/// on `;`, names compared exactly); `None` when there is none or a field is not text.
///
/// ```
/// let mut h = http::HeaderMap::new();
/// h.append("cookie", "theme=dark; sid=abc".parse().unwrap());
/// assert_eq!(gateway_core::cookie(&h, "sid"), Some("abc"));
/// assert_eq!(gateway_core::cookie(&h, "SID"), None);
/// ```
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
