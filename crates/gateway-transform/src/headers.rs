//! Header rules for requests and responses: `remove`, `rename`, `set` (replace), `add` (only
//! when absent) and `append`, applied in that order, values from [`Template`]s.
//!
//! Framing and connection headers (`Content-Length`, `Transfer-Encoding`, `Connection`,
//! `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-Connection`) cannot be named by a rule:
//! rewriting them is how requests get smuggled.
//!
//! ```
//! use gateway_transform::{headers::HeaderRules, template::Context};
//! use http::HeaderMap;
//!
//! let rules = HeaderRules::builder()
//!     .rename("x-old", "x-new").unwrap()
//!     .add("x-region", "eu").unwrap()
//!     .append("via-route", "${route}").unwrap()
//!     .build();
//! let mut h = HeaderMap::new();
//! h.insert("x-old", "1".parse().unwrap());
//! h.insert("x-region", "us".parse().unwrap());
//! rules.apply(&mut h, &Context { route: Some("orders"), ..Context::default() }).unwrap();
//! assert_eq!((h["x-new"].to_str().unwrap(), h["x-region"].to_str().unwrap()), ("1", "us"));
//! assert_eq!(h["via-route"], "orders");
//! ```

use http::{HeaderMap, HeaderName, header};

use crate::template::{Context, Template, TemplateError};

/// Headers no rule may name.
const PROTECTED: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Ordered header rules.
#[derive(Clone, Debug, Default)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
    append: Vec<(HeaderName, Template)>,
}

/// A rule that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError(pub String);

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

/// Builds [`HeaderRules`].
#[derive(Debug, Default)]
pub struct HeaderRulesBuilder(HeaderRules);

fn name(n: &str) -> Result<HeaderName, RuleError> {
    let parsed = HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| RuleError(format!("`{n}` is not a header name")))?;
    let lower = parsed.as_str();
    if PROTECTED.contains(&parsed) || lower == "keep-alive" || lower == "proxy-connection" {
        return Err(RuleError(format!(
            "`{n}` frames the message or the connection and cannot be transformed"
        )));
    }
    Ok(parsed)
}

fn template(v: &str) -> Result<Template, RuleError> {
    Template::parse(v).map_err(|e| RuleError(e.to_string()))
}

impl HeaderRulesBuilder {
    /// Removes `header`.
    ///
    /// # Errors
    ///
    /// A bad or protected header name.
    pub fn remove(mut self, header: &str) -> Result<Self, RuleError> {
        self.0.remove.push(name(header)?);
        Ok(self)
    }

    /// Renames `from` to `to` (every value moves; an existing `to` is replaced).
    ///
    /// # Errors
    ///
    /// A bad or protected header name.
    pub fn rename(mut self, from: &str, to: &str) -> Result<Self, RuleError> {
        self.0.rename.push((name(from)?, name(to)?));
        Ok(self)
    }

    /// Sets `header` to `value`, replacing any.
    ///
    /// # Errors
    ///
    /// A bad or protected header name, or a bad template.
    pub fn set(mut self, header: &str, value: &str) -> Result<Self, RuleError> {
        self.0.set.push((name(header)?, template(value)?));
        Ok(self)
    }

    /// Sets `header` to `value` only when the message has none.
    ///
    /// # Errors
    ///
    /// A bad or protected header name, or a bad template.
    pub fn add(mut self, header: &str, value: &str) -> Result<Self, RuleError> {
        self.0.add.push((name(header)?, template(value)?));
        Ok(self)
    }

    /// Appends a `header: value` line.
    ///
    /// # Errors
    ///
    /// A bad or protected header name, or a bad template.
    pub fn append(mut self, header: &str, value: &str) -> Result<Self, RuleError> {
        self.0.append.push((name(header)?, template(value)?));
        Ok(self)
    }

    /// The rules.
    pub fn build(self) -> HeaderRules {
        self.0
    }
}

impl HeaderRules {
    /// A builder.
    pub fn builder() -> HeaderRulesBuilder {
        HeaderRulesBuilder::default()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }

    /// Applies the rules to `headers`. Every value is rendered before any is written, so a
    /// failure leaves `headers` as they were.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Injection`]: a rendered value would contain CR, LF or NUL. Fail the
    /// message (the reference gateway answers `500` with a problem body).
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &Context<'_>) -> Result<(), TemplateError> {
        // `header.NAME` reads the message being transformed unless the context says otherwise.
        let own = Context {
            headers: ctx.headers.or(Some(&*headers)),
            ..*ctx
        };
        let (set, add, append) = (
            render(&self.set, &own)?,
            render(&self.add, &own)?,
            render(&self.append, &own)?,
        );
        for n in &self.remove {
            headers.remove(n);
        }
        for (from, to) in &self.rename {
            if let http::header::Entry::Occupied(e) = headers.entry(from) {
                let values: Vec<_> = e.remove_entry_mult().1.collect();
                headers.remove(to);
                for v in values {
                    headers.append(to, v);
                }
            }
        }
        for (n, v) in set {
            match v {
                Some(v) => {
                    headers.insert(n, v);
                }
                // A value that cannot be made: the header is not sent at all.
                None => {
                    headers.remove(n);
                }
            }
        }
        for (n, v) in add {
            if let Some(v) = v
                && !headers.contains_key(n)
            {
                headers.insert(n, v);
            }
        }
        for (n, v) in append.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))) {
            headers.append(n, v);
        }
        Ok(())
    }
}

type Rendered<'r> = Vec<(&'r HeaderName, Option<http::HeaderValue>)>;

fn render<'r>(
    rules: &'r [(HeaderName, Template)],
    ctx: &Context<'_>,
) -> Result<Rendered<'r>, TemplateError> {
    rules
        .iter()
        .map(|(n, t)| t.render(ctx).map(|v| (n, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_headers_cannot_be_named() {
        for h in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
        ] {
            assert!(HeaderRules::builder().set(h, "x").is_err(), "{h}");
            assert!(HeaderRules::builder().remove(h).is_err(), "{h}");
        }
    }

    #[test]
    fn a_failed_render_leaves_the_headers_untouched() {
        let rules = HeaderRules::builder()
            .remove("x-a")
            .unwrap()
            .set("x-user", "${principal.sub}")
            .unwrap()
            .build();
        let mut h = HeaderMap::new();
        h.insert("x-a", "kept".parse().unwrap());
        let evil = Context {
            subject: Some("x\r\nset-cookie: s=1"),
            ..Context::default()
        };
        assert_eq!(rules.apply(&mut h, &evil), Err(TemplateError::Injection));
        assert_eq!(h["x-a"], "kept");
        assert!(!h.contains_key("x-user"));
    }

    #[test]
    fn set_with_a_missing_variable_removes_a_client_supplied_copy() {
        // A client must not be able to supply the value the gateway would have set.
        let rules = HeaderRules::builder()
            .set("x-consumer", "${principal.consumer}")
            .unwrap()
            .build();
        let mut h = HeaderMap::new();
        h.insert("x-consumer", "admin".parse().unwrap());
        rules.apply(&mut h, &Context::default()).unwrap();
        assert!(!h.contains_key("x-consumer"));
    }

    #[test]
    fn rename_moves_every_value_and_append_keeps_existing_ones() {
        let rules = HeaderRules::builder()
            .rename("x-a", "x-b")
            .unwrap()
            .append("x-b", "3")
            .unwrap()
            .build();
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.insert("x-b", "old".parse().unwrap());
        rules.apply(&mut h, &Context::default()).unwrap();
        let b: Vec<_> = h
            .get_all("x-b")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(b, ["1", "2", "3"]);
        assert!(!h.contains_key("x-a"));
    }
}
