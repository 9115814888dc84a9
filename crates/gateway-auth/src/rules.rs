//! Attribute rules (ABAC): allow and deny rules over the principal, the request and the time of
//! day, evaluated after authentication.
//!
//! Every rule has an effect and conditions, all of which must hold for it to match. Paths are the
//! [`NormalizedPath`] the route matched (before any rewrite) when it is in the extensions. A header
//! condition in a deny rule matches when any field has the value; in an allow rule, only when
//! exactly one field exists and has it. A matching
//! `deny` refuses the request (`403`) whatever else matches; when there are `allow` rules, one of
//! them must match; with only `deny` rules, everything they do not match is allowed. Conditions
//! compare exactly (no pattern language, no type coercion): a condition on a principal attribute
//! is false for anonymous callers.
//!
//! In shadow mode the rules are evaluated and a would-be refusal is logged (target
//! `gateway_auth::audit`) but the request goes on: the way to roll out a new policy.
//!
//! # Example
//!
//! ```
//! use gateway_auth::{Condition, Effect, Rule, Rules};
//!
//! let rules = Rules::new([
//!     Rule::new(Effect::Deny, [Condition::client_ip(["10.66.0.0/16".parse().unwrap()])]),
//!     Rule::new(Effect::Allow, [Condition::method(["GET"]), Condition::role("reader")]),
//!     Rule::new(Effect::Allow, [Condition::role("admin")]),
//! ]);
//! let mut req = http::Request::get("/orders").body(()).unwrap();
//! req.extensions_mut().insert(gateway_core::ClientIp::direct("192.0.2.1".parse().unwrap()));
//! let reader = gateway_core::Principal::new("u", gateway_core::AuthMethod::Jwt).with_roles(["reader"]);
//! let (parts, ()) = req.into_parts();
//! assert!(rules.permits(&parts, Some(&reader), 12 * 3600));
//! assert!(!rules.permits(&parts, None, 12 * 3600), "no rule allows anonymous callers");
//! ```

use std::net::IpAddr;

use gateway_core::{NormalizedPath, Principal};
use http::{HeaderName, Method, request::Parts};
use ipnet::IpNet;

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Effect {
    /// Permit (when no deny rule matches).
    Allow,
    /// Refuse.
    Deny,
}

/// One condition of a rule.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Condition {
    /// The method is one of these.
    Method(Vec<Method>),
    /// The path starts with this prefix, on a segment boundary.
    PathPrefix(String),
    /// The header has exactly this value.
    Header(HeaderName, String),
    /// The client IP is in one of these networks.
    ClientIp(Vec<IpNet>),
    /// The principal has this role.
    Role(String),
    /// The principal has this scope.
    Scope(String),
    /// The principal's attribute (a JWT claim, `iss`, ...) has exactly this value.
    Attribute(String, String),
    /// The principal's consumer is this one.
    Consumer(String),
    /// The principal's tier is this one.
    Tier(String),
    /// The UTC time of day, in seconds, is in `[from, to)` (wrapping past midnight when
    /// `from > to`).
    TimeOfDay(u32, u32),
}

impl Condition {
    /// `Method` from names (unknown names never match).
    pub fn method<I: IntoIterator<Item = S>, S: AsRef<str>>(methods: I) -> Self {
        Self::Method(
            methods
                .into_iter()
                .filter_map(|m| Method::from_bytes(m.as_ref().to_ascii_uppercase().as_bytes()).ok())
                .collect(),
        )
    }

    /// `ClientIp` from networks.
    pub fn client_ip(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self::ClientIp(nets.into_iter().collect())
    }

    /// `Role`.
    pub fn role(role: impl Into<String>) -> Self {
        Self::Role(role.into())
    }

    fn holds(
        &self,
        effect: Effect,
        parts: &Parts,
        principal: Option<&Principal>,
        second_of_day: u32,
    ) -> bool {
        match self {
            Self::Method(m) => m.contains(&parts.method),
            Self::PathPrefix(p) => {
                // The path the route matched, before any rewrite.
                let path = parts
                    .extensions
                    .get::<NormalizedPath>()
                    .map_or_else(|| parts.uri.path(), NormalizedPath::as_str);
                let p = p.trim_end_matches('/');
                path == p
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
                    || p.is_empty()
            }
            Self::Header(name, value) => {
                let mut all = parts.headers.get_all(name).iter();
                match effect {
                    // A deny rule matches when any field has the value (sending it twice does
                    // not escape the rule)...
                    Effect::Deny => all.any(|v| v.as_bytes() == value.as_bytes()),
                    // ...an allow rule only when exactly one field does (no ambiguity).
                    Effect::Allow => {
                        matches!((all.next(), all.next()), (Some(v), None) if v.as_bytes() == value.as_bytes())
                    }
                }
            }
            Self::ClientIp(nets) => {
                client_ip(parts).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
            }
            Self::Role(r) => principal.is_some_and(|p| p.has_role(r)),
            Self::Scope(s) => principal.is_some_and(|p| p.has_scope(s)),
            Self::Attribute(k, v) => principal.is_some_and(|p| p.attributes().get(k) == Some(v)),
            Self::Consumer(c) => principal.and_then(Principal::consumer) == Some(c.as_str()),
            Self::Tier(t) => principal.and_then(Principal::tier) == Some(t.as_str()),
            Self::TimeOfDay(from, to) => {
                if from <= to {
                    (*from..*to).contains(&second_of_day)
                } else {
                    second_of_day >= *from || second_of_day < *to
                }
            }
        }
    }
}

fn client_ip(parts: &Parts) -> Option<IpAddr> {
    crate::client_ip(&parts.extensions)
}

/// A rule: an effect and the conditions that must all hold.
#[derive(Clone, Debug)]
pub struct Rule {
    effect: Effect,
    conditions: Vec<Condition>,
}

impl Rule {
    /// A rule (with no conditions it matches every request).
    pub fn new(effect: Effect, conditions: impl IntoIterator<Item = Condition>) -> Self {
        Self {
            effect,
            conditions: conditions.into_iter().collect(),
        }
    }
}

/// An ordered rule set; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    shadow: bool,
}

impl Rules {
    /// A rule set.
    pub fn new(rules: impl IntoIterator<Item = Rule>) -> Self {
        Self {
            rules: rules.into_iter().collect(),
            shadow: false,
        }
    }

    /// Shadow mode: log would-be refusals, refuse nothing.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Whether shadow mode is on.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Whether a deny rule matches (for requests, such as CORS preflights, that are not
    /// authenticated but must still honour deny rules).
    pub fn denies(&self, parts: &Parts, principal: Option<&Principal>, second_of_day: u32) -> bool {
        self.rules
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .any(|r| {
                r.conditions
                    .iter()
                    .all(|c| c.holds(Effect::Deny, parts, principal, second_of_day))
            })
    }

    /// Whether the request is permitted (ignoring shadow mode). `second_of_day` is the UTC time
    /// of day in seconds.
    pub fn permits(
        &self,
        parts: &Parts,
        principal: Option<&Principal>,
        second_of_day: u32,
    ) -> bool {
        let matching = |effect| {
            self.rules
                .iter()
                .filter(move |r| r.effect == effect)
                .any(|r| {
                    r.conditions
                        .iter()
                        .all(|c| c.holds(effect, parts, principal, second_of_day))
                })
        };
        if matching(Effect::Deny) {
            return false;
        }
        let has_allow = self.rules.iter().any(|r| r.effect == Effect::Allow);
        !has_allow || matching(Effect::Allow)
    }
}

/// The UTC time of day now, in seconds.
pub(crate) fn second_of_day_now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs % 86_400).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::AuthMethod;

    fn parts(method: &str, path: &str, headers: &[(&str, &str)], ip: &str) -> Parts {
        let mut b = http::Request::builder().method(method).uri(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut()
            .insert(gateway_core::ClientIp::direct(ip.parse().unwrap()));
        req.into_parts().0
    }

    #[test]
    fn deny_wins_and_allow_rules_must_match() {
        let rules = Rules::new([
            Rule::new(
                Effect::Deny,
                [Condition::Header(
                    HeaderName::from_static("x-debug"),
                    String::from("1"),
                )],
            ),
            Rule::new(
                Effect::Allow,
                [
                    Condition::method(["get"]),
                    Condition::PathPrefix(String::from("/public")),
                ],
            ),
            Rule::new(Effect::Allow, [Condition::Tier(String::from("gold"))]),
        ]);
        let gold = Principal::new("u", AuthMethod::ApiKey).with_tier("gold");
        let p = parts("GET", "/public/x", &[], "192.0.2.1");
        assert!(rules.permits(&p, None, 0));
        assert!(
            !rules.permits(&parts("GET", "/publicity", &[], "192.0.2.1"), None, 0),
            "segment boundary"
        );
        assert!(!rules.permits(&parts("POST", "/public/x", &[], "192.0.2.1"), None, 0));
        assert!(rules.permits(&parts("POST", "/private", &[], "192.0.2.1"), Some(&gold), 0));
        // Deny wins over both allows.
        assert!(!rules.permits(
            &parts("GET", "/public/x", &[("x-debug", "1")], "192.0.2.1"),
            Some(&gold),
            0
        ));
        // Sending the denied header twice does not escape the deny rule.
        let dup = parts(
            "GET",
            "/public/x",
            &[("x-debug", "0"), ("x-debug", "1")],
            "192.0.2.1",
        );
        assert!(!rules.permits(&dup, None, 0));
        // Rules see the path the route matched, not a rewritten one.
        let mut rewritten = parts("GET", "/internal/x", &[], "192.0.2.1");
        rewritten
            .extensions
            .insert(NormalizedPath::new("/public/x"));
        assert!(rules.permits(&rewritten, None, 0));
    }

    #[test]
    fn only_deny_rules_allow_the_rest_and_time_windows_wrap() {
        let rules = Rules::new([
            Rule::new(
                Effect::Deny,
                [Condition::client_ip(["10.66.0.0/16".parse().unwrap()])],
            ),
            Rule::new(Effect::Deny, [Condition::TimeOfDay(22 * 3600, 6 * 3600)]),
        ]);
        assert!(rules.permits(&parts("GET", "/", &[], "192.0.2.1"), None, 12 * 3600));
        assert!(!rules.permits(&parts("GET", "/", &[], "::ffff:10.66.1.1"), None, 12 * 3600));
        assert!(!rules.permits(&parts("GET", "/", &[], "192.0.2.1"), None, 23 * 3600));
        assert!(!rules.permits(&parts("GET", "/", &[], "192.0.2.1"), None, 3600));
        assert!(rules.permits(&parts("GET", "/", &[], "192.0.2.1"), None, 6 * 3600));
    }

    #[test]
    fn principal_conditions_are_false_for_anonymous_callers() {
        let rules = Rules::new([Rule::new(
            Effect::Allow,
            [Condition::Attribute(
                String::from("iss"),
                String::from("https://idp.example"),
            )],
        )]);
        let p = parts("GET", "/", &[], "192.0.2.1");
        assert!(!rules.permits(&p, None, 0));
        let idp = Principal::new("u", AuthMethod::Jwt).with_attribute("iss", "https://idp.example");
        assert!(rules.permits(&p, Some(&idp), 0));
    }
}
