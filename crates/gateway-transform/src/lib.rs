//! Request and response transforms for tower API gateways.
//!
//! - [`template`]: header values built from the request (`${principal.sub}`, `${client_ip}`,
//!   `${route}`, `${request_id}`, `${path.id}`, `${header.x-tenant}`, `${method}`), compiled
//!   once; a value that would contain CR, LF or NUL is refused, never sent.
//! - [`headers`]: header rules (`remove`, `rename`, `set`, `add`, `append`) for requests and
//!   responses, in that order. Framing and connection headers cannot be touched.
//! - [`lifecycle`]: an API version's lifecycle: `Deprecation` (RFC 9745), `Sunset` (RFC 8594)
//!   and a `Link` to the successor on every response; after the sunset, `410 Gone` with a problem
//!   body, or a redirect to the successor.
//! - [`rewrite`]: the forwarded path from a template or a linear-time regex, and query
//!   parameter edits (`remove`, `rename`, `set`, `add`, `keep_only`); results that would climb,
//!   split or smuggle (dot segments, `?`, `#`, control characters) are refused.
//! - [`version`]: which API version a request asks for, from the path (`/v2/...`), a header, a
//!   query parameter or the `Accept` media type (`application/vnd.example.v2+json`, q-values
//!   honoured), with a default; unknown versions are `400`/`404`/`406` problems.
//! - [`json`]: a strict JSON parser (duplicate keys, depth, size, lone surrogates, integers that
//!   would lose precision and byte order marks are refused), JSON Pointer edits (`set`, `add`,
//!   `remove`, `rename`, `copy`), and JSON media type checks.
//! - [`xml`]: XML <-> JSON with a documented, deterministic mapping (attributes, text, repeated
//!   elements, namespaces); no DTDs or entities beyond the predefined ones, with depth, size and
//!   node limits.
//!
//! ```
//! use gateway_transform::{headers::HeaderRules, template::Context};
//! use http::HeaderMap;
//!
//! let rules = HeaderRules::builder()
//!     .set("x-consumer", "${principal.consumer}")
//!     .unwrap()
//!     .remove("x-debug")
//!     .unwrap()
//!     .build();
//! let mut headers = HeaderMap::new();
//! headers.insert("x-debug", "1".parse().unwrap());
//! let ctx = Context {
//!     consumer: Some("acme"),
//!     ..Context::default()
//! };
//! rules.apply(&mut headers, &ctx).unwrap();
//! assert_eq!(headers["x-consumer"], "acme");
//! assert!(!headers.contains_key("x-debug"));
//!
//! // A value that would split the header is refused, not sent.
//! let evil = Context { consumer: Some("acme\r\nx-admin: 1"), ..Context::default() };
//! assert!(rules.apply(&mut HeaderMap::new(), &evil).is_err());
//! ```
//!
//! - [`validate`]: JSON Schema (drafts 4 to 2020-12, compiled once, no remote `$ref`) for
//!   bodies and query/header/path parameters, every error listed in a problem body.
//! - [`openapi`]: an OpenAPI 3.0 / 3.1 document as the validator: operations found by method and
//!   path template, their parameters and JSON request bodies checked.
//! - [`aggregate`]: one request fanned out to several calls at once, composed into one JSON
//!   object, with per-part timeouts and a partial-failure policy.
//!
//! Each module's docs carry a runnable example; the reference gateway (`examples/gateway`)
//! wires them all into its routes.

pub mod aggregate;
pub mod headers;
pub mod json;
pub mod lifecycle;
pub mod openapi;
pub mod rewrite;
pub mod template;
pub mod validate;
pub mod version;
pub mod xml;
