//! Header value templates: literal text with `${variable}` placeholders, parsed once.
//!
//! Variables: `principal.sub`, `principal.consumer`, `principal.tier`, `client_ip`, `route`,
//! `request_id`, `method`, `path` (the normalized path), `path.NAME` (a route template
//! parameter), `header.NAME` (a request header). `$$` is a literal `$`.
//!
//! A variable without a value (no principal on an anonymous request, say) makes the whole
//! value absent, and the rule using it does nothing: an empty or partial value is never sent.
//! A rendered value containing CR, LF or NUL is an error ([`TemplateError::Injection`]): the
//! caller fails the request rather than send a header an attacker has split.
//!
//! ```
//! use gateway_transform::template::{Context, Template};
//!
//! let t = Template::parse("user=${principal.sub}; via ${route}").unwrap();
//! let ctx = Context { subject: Some("alice"), route: Some("orders"), ..Context::default() };
//! assert_eq!(t.render(&ctx).unwrap().unwrap(), "user=alice; via orders");
//! assert_eq!(t.render(&Context::default()).unwrap(), None, "no principal: no value");
//! assert!(Template::parse("${nope}").is_err());
//! ```

use std::{fmt, net::IpAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

/// What a template can read from the request being transformed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    /// The authenticated principal's subject.
    pub subject: Option<&'a str>,
    /// The principal's consumer.
    pub consumer: Option<&'a str>,
    /// The principal's tier.
    pub tier: Option<&'a str>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The matched route's name.
    pub route: Option<&'a str>,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// The request method.
    pub method: Option<&'a str>,
    /// The normalized path.
    pub path: Option<&'a str>,
    /// Route template parameters.
    pub params: &'a [(String, String)],
    /// The headers `header.NAME` reads (default, in [`crate::headers::HeaderRules::apply`]: those
    /// of the message being transformed).
    pub headers: Option<&'a HeaderMap>,
}

impl<'a> Context<'a> {
    /// The principal's fields, from a [`gateway_core::Principal`].
    #[must_use]
    pub fn with_principal(mut self, p: Option<&'a gateway_core::Principal>) -> Self {
        if let Some(p) = p {
            self.subject = Some(p.subject());
            self.consumer = p.consumer();
            self.tier = p.tier();
        }
        self
    }
}

/// A template that failed to parse or render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// `${` without `}`, or an unknown variable.
    Syntax(String),
    /// The rendered value contains CR, LF or NUL.
    Injection,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(m) => f.write_str(m),
            Self::Injection => f.write_str("a header value would contain CR, LF or NUL"),
        }
    }
}

impl std::error::Error for TemplateError {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Subject,
    Consumer,
    Tier,
    ClientIp,
    Route,
    RequestId,
    Method,
    Path,
    Param(String),
    Header(HeaderName),
}

/// A piece of a template's source: literal text, or a `${variable}` name (trimmed).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Token<'s> {
    Text(String),
    Var(&'s str),
}

/// Splits a template's source (the one syntax every template shares: `$$` is a literal `$`, a
/// `$` not followed by `{` is literal, `${name}` is a variable).
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = source;
    // `$` is ASCII: every index `find` gives is a character boundary.
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            text.push('$');
            rest = tail;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            text.push('$');
            rest = after;
            continue;
        };
        let Some((name, tail)) = inner.split_once('}') else {
            return Err(TemplateError::Syntax(format!(
                "unclosed `${{` in `{source}`"
            )));
        };
        if !text.is_empty() {
            out.push(Token::Text(std::mem::take(&mut text)));
        }
        out.push(Token::Var(name.trim()));
        rest = tail;
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Token::Text(text));
    }
    Ok(out)
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// A template without variables, made once.
    fixed: Option<HeaderValue>,
}

impl Template {
    /// Parses `source`.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Syntax`] for an unclosed `${`, an unknown variable, or literal text
    /// that is not a valid header value.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        for token in tokenize(source)? {
            match token {
                Token::Text(text) => {
                    if HeaderValue::from_str(&text).is_err() {
                        return Err(TemplateError::Syntax(format!(
                            "`{source}` is not a valid header value"
                        )));
                    }
                    parts.push(Part::Text(text));
                }
                Token::Var(name) => parts.push(variable(name)?),
            }
        }
        let fixed = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Text(t)] => HeaderValue::from_str(t).ok(),
            _ => None,
        };
        Ok(Self { parts, fixed })
    }

    /// The value for this request: `Ok(None)` when a variable has no value.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Injection`] when the value would contain CR, LF or NUL.
    pub fn render(&self, ctx: &Context<'_>) -> Result<Option<HeaderValue>, TemplateError> {
        if let Some(v) = &self.fixed {
            return Ok(Some(v.clone()));
        }
        let mut out = String::new();
        for part in &self.parts {
            let piece: Option<std::borrow::Cow<'_, str>> = match part {
                Part::Text(t) => Some(t.as_str().into()),
                Part::Subject => ctx.subject.map(Into::into),
                Part::Consumer => ctx.consumer.map(Into::into),
                Part::Tier => ctx.tier.map(Into::into),
                Part::ClientIp => ctx.client_ip.map(|ip| ip.to_string().into()),
                Part::Route => ctx.route.map(Into::into),
                Part::RequestId => ctx.request_id.map(Into::into),
                Part::Method => ctx.method.map(Into::into),
                Part::Path => ctx.path.map(Into::into),
                Part::Param(name) => ctx
                    .params
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str().into()),
                Part::Header(name) => ctx
                    .headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.to_str().ok())
                    .map(Into::into),
            };
            let Some(piece) = piece else {
                return Ok(None);
            };
            out.push_str(&piece);
        }
        if out.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(TemplateError::Injection);
        }
        // Other control characters are refused by the header value itself: also fail closed.
        HeaderValue::from_bytes(out.as_bytes())
            .map(Some)
            .map_err(|_| TemplateError::Injection)
    }
}

fn variable(name: &str) -> Result<Part, TemplateError> {
    Ok(match name {
        "principal.sub" => Part::Subject,
        "principal.consumer" => Part::Consumer,
        "principal.tier" => Part::Tier,
        "client_ip" => Part::ClientIp,
        "route" => Part::Route,
        "request_id" => Part::RequestId,
        "method" => Part::Method,
        "path" => Part::Path,
        _ => {
            if let Some(p) = name.strip_prefix("path.").filter(|p| !p.is_empty()) {
                Part::Param(p.to_owned())
            } else if let Some(h) = name.strip_prefix("header.") {
                Part::Header(
                    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                        TemplateError::Syntax(format!("`{h}` is not a header name"))
                    })?,
                )
            } else {
                return Err(TemplateError::Syntax(format!(
                    "unknown variable `${{{name}}}`"
                )));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: &Context<'_>) -> Result<Option<String>, TemplateError> {
        Template::parse(src)
            .unwrap()
            .render(ctx)
            .map(|v| v.map(|v| String::from_utf8(v.as_bytes().to_vec()).unwrap()))
    }

    #[test]
    fn every_variable_renders() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "blue".parse().unwrap());
        let params = vec![("id".to_owned(), "42".to_owned())];
        let ctx = Context {
            subject: Some("alice"),
            consumer: Some("acme"),
            tier: Some("gold"),
            client_ip: Some("192.0.2.1".parse().unwrap()),
            route: Some("orders"),
            request_id: Some("r-1"),
            method: Some("GET"),
            path: Some("/orders/42"),
            params: &params,
            headers: Some(&headers),
        };
        let src = "${principal.sub}|${principal.consumer}|${principal.tier}|${client_ip}|${route}|${request_id}|${method}|${path}|${path.id}|${header.X-Tenant}|$$5|$x";
        assert_eq!(
            render(src, &ctx).unwrap().unwrap(),
            "alice|acme|gold|192.0.2.1|orders|r-1|GET|/orders/42|42|blue|$5|$x"
        );
    }

    #[test]
    fn injection_through_any_variable_fails_closed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-in", HeaderValue::from_bytes(b"a\xffb").unwrap());
        for ctx in [
            Context {
                subject: Some("a\r\nx-admin: true"),
                ..Context::default()
            },
            Context {
                subject: Some("a\nb"),
                ..Context::default()
            },
            Context {
                subject: Some("a\0b"),
                ..Context::default()
            },
        ] {
            assert_eq!(
                render("${principal.sub}", &ctx),
                Err(TemplateError::Injection)
            );
        }
        let ctx = Context {
            headers: Some(&headers),
            ..Context::default()
        };
        assert_eq!(
            render("${header.x-in}", &ctx),
            Ok(None),
            "a header that is not text is not copied"
        );
        let params = vec![("p".to_owned(), "x\r\ny".to_owned())];
        let ctx = Context {
            params: &params,
            ..Context::default()
        };
        assert_eq!(render("v=${path.p}", &ctx), Err(TemplateError::Injection));
    }

    #[test]
    fn syntax_errors_are_reported_at_parse_time() {
        assert!(Template::parse("${principal.sub").is_err());
        assert!(Template::parse("${principal.password}").is_err());
        assert!(Template::parse("${header.bad name}").is_err());
        assert!(Template::parse("line\nbreak").is_err());
        assert_eq!(
            Template::parse("plain")
                .unwrap()
                .render(&Context::default()),
            Ok(Some(HeaderValue::from_static("plain")))
        );
    }
}
