//! Request and response transforms for tower API gateways (first part).
//!
//! - [`template`]: header values built from the request (`${principal.sub}`, `${client_ip}`,
//!   `${route}`, `${request_id}`, `${path.id}`, `${header.x-tenant}`, `${method}`), compiled
//!   once; a value that would contain CR, LF or NUL is refused, never sent.
//! - [`headers`]: header rules (`remove`, `rename`, `set`, `add`, `append`) for requests and
//!   responses, in that order. Framing and connection headers cannot be touched.
//! - [`lifecycle`]: an API version's lifecycle: `Deprecation` (RFC 9745), `Sunset` (RFC 8594)
//!   and a `Link` to the successor on every response; after the sunset, `410 Gone` with a problem
//!   body, or a redirect to the successor.
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
//! Not built yet (see the crate README): path and query rewrites by template or regex, JSON body
//! edits, XML <-> JSON, JSON Schema and OpenAPI validation, version extraction and routing, and
//! response aggregation.

pub mod headers;
pub mod lifecycle;
pub mod template;
