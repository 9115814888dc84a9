//! Compiling `consumers`, `auth_providers` and route `auth` / `ip_filter` blocks into
//! `gateway-auth` layers.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use gateway_auth::{
    ApiKeyAuth, ApiKeyHash, ApiKeyRecord, ApiKeySource, Authenticate, Condition, Consumer, Effect,
    ExtAuthz, IpFilterLayer, JwtAuth, PolicyAnswer, PolicyClient, PolicyFuture, RequireAuthLayer,
    Rule, Rules, StaticApiKeys,
};
use gateway_core::TrustedProxies;
use gateway_lb::{Endpoint, HostHeader, Upstream};
use http::HeaderName;
use http_body_util::{BodyExt, Full};
use serde_saphyr::Spanned;

use crate::config::{
    ApiKeyConfig, AuthConfig, AuthProviderConfig, Config, ExtAuthzConfig, FailureConfig,
    IpFilterConfig, Issues, RuleEffect,
};

/// The providers routes can name, built once and shared by every route.
#[derive(Default)]
pub(crate) struct Providers {
    by_name: BTreeMap<String, Arc<dyn Authenticate>>,
    /// Every header and query parameter any provider reads a credential from: never sent to an
    /// external decision point.
    credential_headers: Vec<String>,
    credential_params: Vec<String>,
    /// The lowercased `internal_header_prefixes`.
    internal_prefixes: Vec<String>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

/// Parses `2027-01-01` or `2027-01-01T12:30:00Z` (UTC), strictly: four-two-two digit fields,
/// a real day of that month.
fn parse_utc(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (s, None),
    };
    let digits = |f: &str, n: usize| {
        (f.len() == n && f.bytes().all(|b| b.is_ascii_digit()))
            .then(|| f.parse::<u64>().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, m, day) = (
        digits(d.next()?, 4)?,
        digits(d.next()?, 2)?,
        digits(d.next()?, 2)?,
    );
    if d.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day == 0 || day > month_days[usize::try_from(m - 1).ok()?] {
        return None;
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut p = t.split(':');
            let (h, mi, se) = (
                digits(p.next()?, 2)?,
                digits(p.next()?, 2)?,
                digits(p.next()?, 2)?,
            );
            if p.next().is_some() || h > 23 || mi > 59 || se > 59 {
                return None;
            }
            h * 3600 + mi * 60 + se
        }
    };
    // Days from the civil date (proleptic Gregorian).
    let (y, m, day) = (
        i64::try_from(y).ok()?,
        i64::try_from(m).ok()?,
        i64::try_from(day).ok()?,
    );
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + secs_of_day;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Header names an API key provider could never see (removed at ingress, hop-by-hop) or must not
/// take (framing, routing and other providers' fields).
fn unusable_key_header(name: &str, internal: &[String]) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "cookie",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "authorization",
    ];
    RESERVED.contains(&name) || internal.iter().any(|p| name.starts_with(p.as_str()))
}

/// Builds the key store from `consumers` and the providers from `auth_providers`.
pub(crate) fn compile_providers(config: &Config, issues: &mut Issues) -> Providers {
    let mut keys = StaticApiKeys::new();
    let mut seen_ids = std::collections::HashSet::new();
    let mut seen_keys = std::collections::HashMap::new();
    let mut by_id: std::collections::HashMap<String, Arc<Consumer>> =
        std::collections::HashMap::new();
    for (i, spanned) in config.consumers.iter().enumerate() {
        let c = &spanned.value;
        let field = format!("consumers[{i}]");
        if c.id.is_empty() || c.id.len() > 128 || !c.id.bytes().all(|b| b.is_ascii_graphic()) {
            issues.at(
                spanned,
                format!("{field}.id"),
                "consumer ids are 1 to 128 visible ASCII characters",
            );
        }
        if !seen_ids.insert(c.id.as_str()) {
            issues.at(
                spanned,
                format!("{field}.id"),
                format!("duplicate consumer `{}`", c.id),
            );
        }
        if let Some(t) = &c.tier
            && !config.tiers.contains_key(&t.value)
        {
            issues.at(
                t,
                format!("{field}.tier"),
                format!("unknown tier `{}`", t.value),
            );
        }
        let mut consumer = Consumer::new(c.id.as_str()).roles(c.roles.iter().map(String::as_str));
        if let Some(t) = &c.tier {
            consumer = consumer.tier(t.value.as_str());
        }
        let consumer = Arc::new(consumer);
        by_id.insert(c.id.clone(), consumer.clone());
        for (j, k) in c.api_keys.iter().enumerate() {
            let kf = format!("{field}.api_keys[{j}]");
            let (digest, expires, revoked) = match &k.value {
                ApiKeyConfig::Digest(d) => (d.as_str(), None, false),
                ApiKeyConfig::Entry(e) => (e.digest.as_str(), e.expires.as_deref(), e.revoked),
            };
            let digest = match digest.parse::<ApiKeyHash>() {
                Ok(d) => d,
                Err(e) => {
                    issues.at(k, &kf, e.to_string());
                    continue;
                }
            };
            let not_after = match expires.map(|e| (e, parse_utc(e))) {
                None => None,
                Some((_, Some(t))) => Some(t),
                Some((raw, None)) => {
                    issues.at(
                        k,
                        format!("{kf}.expires"),
                        format!(
                            "`{raw}` is not a UTC date (2027-01-01) or time (2027-01-01T12:00:00Z)"
                        ),
                    );
                    None
                }
            };
            if let Some(other) = seen_keys.insert(digest, c.id.clone()) {
                issues.at(k, &kf, format!("this key is already a key of `{other}`"));
            }
            keys.insert(
                digest,
                ApiKeyRecord {
                    consumer: consumer.clone(),
                    not_after,
                    revoked,
                },
            );
        }
    }
    let store = Arc::new(keys);
    let mut providers = Providers::default();
    providers.by_name.insert(
        String::from("api_key"),
        Arc::new(ApiKeyAuth::new(store.clone())),
    );
    let internal: Vec<String> = config
        .internal_header_prefixes
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    providers.internal_prefixes.clone_from(&internal);
    for (name, spanned) in &config.auth_providers {
        let field = format!("auth_providers.{name}");
        if name == "api_key" {
            issues.at(
                spanned,
                &field,
                "`api_key` is the built-in provider (header `x-api-key`); name yours differently",
            );
            continue;
        }
        match &spanned.value {
            AuthProviderConfig::ApiKey(src) => {
                let set = [
                    src.header.is_some(),
                    src.query.is_some(),
                    src.cookie.is_some(),
                ];
                if set.iter().filter(|s| **s).count() != 1 {
                    issues.at(
                        spanned,
                        format!("{field}.api_key"),
                        "set exactly one of `header`, `query`, `cookie`",
                    );
                    continue;
                }
                let empty = [&src.header, &src.query, &src.cookie]
                    .into_iter()
                    .flatten()
                    .any(|n| n.trim().is_empty());
                if empty {
                    issues.at(
                        spanned,
                        format!("{field}.api_key"),
                        "the name must not be empty",
                    );
                    continue;
                }
                if let Some(h) = &src.header {
                    providers.credential_headers.push(h.to_ascii_lowercase());
                }
                if let Some(q) = &src.query {
                    providers.credential_params.push(q.clone());
                }
                let source = if let Some(h) = &src.header {
                    let lower = h.to_ascii_lowercase();
                    if unusable_key_header(&lower, &internal) {
                        issues.at(
                            spanned,
                            format!("{field}.api_key.header"),
                            format!(
                                "`{lower}` cannot carry API keys (internal, hop-by-hop or reserved)"
                            ),
                        );
                        continue;
                    }
                    match HeaderName::from_bytes(lower.as_bytes()) {
                        Ok(h) => ApiKeySource::Header(h),
                        Err(_) => {
                            issues.at(
                                spanned,
                                format!("{field}.api_key.header"),
                                format!("`{h}` is not a header name"),
                            );
                            continue;
                        }
                    }
                } else if let Some(q) = &src.query {
                    ApiKeySource::Query(q.clone())
                } else {
                    ApiKeySource::Cookie(src.cookie.clone().unwrap_or_default())
                };
                providers.by_name.insert(
                    name.clone(),
                    Arc::new(ApiKeyAuth::new(store.clone()).sources([source])),
                );
            }
            AuthProviderConfig::Jwt(j) => {
                if let Some(jwt) = compile_jwt(&field, spanned, j, issues) {
                    providers.by_name.insert(name.clone(), Arc::new(jwt));
                }
            }
            AuthProviderConfig::Mtls(m) => {
                let mut auth = gateway_auth::MtlsAuth::new();
                for (identity, id) in &m.consumers {
                    let typed = ["uri:", "dns:", "email:", "cn:"]
                        .iter()
                        .any(|p| identity.starts_with(p) && identity.len() > p.len());
                    if !typed {
                        issues.at(
                            spanned,
                            format!("{field}.mtls.consumers"),
                            format!(
                                "`{identity}`: write identities as uri:…, dns:…, email:… or cn:…"
                            ),
                        );
                        continue;
                    }
                    match by_id.get(id) {
                        Some(c) => auth = auth.consumer(identity.clone(), c.clone()),
                        None => issues.at(
                            spanned,
                            format!("{field}.mtls.consumers"),
                            format!("unknown consumer `{id}`"),
                        ),
                    }
                }
                providers.by_name.insert(name.clone(), Arc::new(auth));
            }
        }
    }
    providers
}

fn compile_jwt(
    field: &str,
    spanned: &Spanned<AuthProviderConfig>,
    j: &crate::config::JwtConfig,
    issues: &mut Issues,
) -> Option<JwtAuth> {
    let field = format!("{field}.jwt");
    // Production tokens are checked for who issued them and for whom: both are required here.
    if j.issuers.is_empty() {
        issues.at(
            spanned,
            format!("{field}.issuers"),
            "at least one issuer is required",
        );
    }
    if j.audiences.is_empty() {
        issues.at(
            spanned,
            format!("{field}.audiences"),
            "at least one audience is required",
        );
    }
    let mut b = JwtAuth::builder().algorithms(j.algorithms.iter().map(String::as_str));
    if let Some(jwks) = &j.jwks {
        b = b.jwks_json(&jwks.to_string());
    }
    match (&j.jwks_uri, j.discovery) {
        (Some(_), true) => {
            issues.at(
                spanned,
                &field,
                "use either `jwks_uri` or `discovery`, not both",
            );
        }
        (Some(uri), false) => {
            if !uri.starts_with("https://") {
                issues.at(
                    spanned,
                    format!("{field}.jwks_uri"),
                    "must be an https:// URL",
                );
            }
            b = b.jwks_uri(uri.as_str());
        }
        (None, true) => match j.issuers.as_slice() {
            [issuer] if issuer.starts_with("https://") => b = b.oidc_issuer(issuer.as_str()),
            _ => issues.at(
                spanned,
                format!("{field}.discovery"),
                "discovery needs exactly one https:// issuer",
            ),
        },
        (None, false) => {}
    }
    if let Some(path) = &j.ca_file {
        match std::fs::read(path) {
            Ok(pem) => b = b.extra_roots_pem(&pem),
            Err(e) => issues.at(
                spanned,
                format!("{field}.ca_file"),
                format!("cannot read `{path}`: {e}"),
            ),
        }
    }
    if let Some(c) = j.refetch_cooldown {
        b = b.refetch_cooldown(c.0);
    }
    if let Some(var) = &j.secret_env {
        match std::env::var(var) {
            Ok(secret) => b = b.hmac_secret(None, secret.as_bytes()),
            Err(_) => {
                issues.at(
                    spanned,
                    format!("{field}.secret_env"),
                    format!("the environment variable `{var}` is not set"),
                );
                return None;
            }
        }
    }
    for i in &j.issuers {
        b = b.issuer(i.as_str());
    }
    for a in &j.audiences {
        b = b.audience(a.as_str());
    }
    if let Some(l) = j.leeway {
        b = b.leeway(l.0);
    }
    if let Some(r) = &j.roles_claim {
        b = b.roles_claim(r);
    }
    if let Some(t) = &j.tier_claim {
        b = b.tier_claim(t.as_str());
    }
    if let Some(c) = &j.consumer_claim {
        b = b.consumer_claim(c.as_str());
    }
    if let Some(c) = &j.cookie {
        if c.trim().is_empty() {
            issues.at(
                spanned,
                format!("{field}.cookie"),
                "the name must not be empty",
            );
        }
        b = b.cookie(c.as_str());
    }
    if j.leeway.is_some_and(|l| l.0 > Duration::from_secs(300)) {
        issues.at(spanned, format!("{field}.leeway"), "at most 5m");
        return None;
    }
    match b.build() {
        Ok(jwt) => Some(jwt),
        Err(e) => {
            issues.at(spanned, &field, e.to_string());
            None
        }
    }
}

/// Compiles a route's `auth` block.
pub(crate) fn compile_route_auth(
    field: &str,
    spanned: &Spanned<AuthConfig>,
    providers: &Providers,
    issues: &mut Issues,
) -> Option<RequireAuthLayer> {
    let a = &spanned.value;
    let field = format!("{field}.auth");
    if !a.any_of.is_empty() && !a.all_of.is_empty() {
        issues.at(spanned, &field, "use either `any_of` or `all_of`, not both");
    }
    let all = !a.all_of.is_empty();
    let (list, key) = if all {
        (&a.all_of, "all_of")
    } else {
        (&a.any_of, "any_of")
    };
    let names: Vec<(&str, Option<&Spanned<String>>)> = if list.is_empty() {
        vec![("api_key", None)]
    } else {
        list.iter().map(|n| (n.value.as_str(), Some(n))).collect()
    };
    let mut layer: Option<RequireAuthLayer> = None;
    for (j, (name, at)) in names.into_iter().enumerate() {
        let Some(p) = providers.by_name.get(name) else {
            let known: Vec<&str> = providers.by_name.keys().map(String::as_str).collect();
            let msg = format!(
                "unknown auth provider `{name}` (defined: {})",
                known.join(", ")
            );
            match at {
                Some(s) => issues.at(s, format!("{field}.{key}[{j}]"), msg),
                None => issues.at(spanned, format!("{field}.{key}"), msg),
            }
            continue;
        };
        layer = Some(match layer {
            None => RequireAuthLayer::new(p.clone()),
            Some(l) => l.or(p.clone()),
        });
    }
    Some(
        layer?
            .all_of(all)
            .optional(a.optional)
            .scopes(a.scopes.iter().map(String::as_str))
            .cors_preflight(a.cors_preflight)
            .rules(compile_rules(&field, a, issues).shadow(a.rules_shadow))
            .roles(a.roles.iter().map(String::as_str)),
    )
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let ok = |f: &str| f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit());
    if !ok(h) || !ok(m) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m <= 59 && (h < 24 || m == 0)).then_some(h * 3600 + m * 60)
}

fn compile_rules(field: &str, a: &AuthConfig, issues: &mut Issues) -> Rules {
    let mut rules = Vec::new();
    for (i, spanned) in a.rules.iter().enumerate() {
        let r = &spanned.value;
        let f = format!("{field}.rules[{i}]");
        let mut conds = Vec::new();
        if !r.methods.is_empty() {
            for m in &r.methods {
                if http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                    issues.at(
                        spanned,
                        format!("{f}.methods"),
                        format!("`{m}` is not an HTTP method"),
                    );
                }
            }
            conds.push(Condition::method(r.methods.iter().map(String::as_str)));
        }
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                issues.at(spanned, format!("{f}.path_prefix"), "must start with `/`");
            }
            conds.push(Condition::PathPrefix(p.clone()));
        }
        if let Some(h) = &r.header {
            match (
                HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()),
                &h.value,
            ) {
                (Ok(name), Some(v)) => conds.push(Condition::Header(name, v.clone())),
                (Err(_), _) => issues.at(
                    spanned,
                    format!("{f}.header.name"),
                    format!("`{}` is not a header name", h.name),
                ),
                (_, None) => issues.at(
                    spanned,
                    format!("{f}.header.value"),
                    "a rule compares exact values: set `value`",
                ),
            }
        }
        if !r.client_ip.is_empty() {
            let mut nets = Vec::new();
            for (j, e) in r.client_ip.iter().enumerate() {
                match TrustedProxies::parse_entry(e) {
                    Ok(n) => nets.push(n),
                    Err(err) => issues.at(spanned, format!("{f}.client_ip[{j}]"), err.to_string()),
                }
            }
            conds.push(Condition::client_ip(nets));
        }
        if let Some(v) = &r.role {
            conds.push(Condition::Role(v.clone()));
        }
        if let Some(v) = &r.scope {
            conds.push(Condition::Scope(v.clone()));
        }
        if let Some(v) = &r.consumer {
            conds.push(Condition::Consumer(v.clone()));
        }
        if let Some(v) = &r.tier {
            conds.push(Condition::Tier(v.clone()));
        }
        for (k, v) in &r.claims {
            // JWT claims are the principal's `jwt.*` attributes.
            conds.push(Condition::Attribute(format!("jwt.{k}"), v.clone()));
        }
        if let Some(t) = &r.time_of_day {
            match t
                .split_once('-')
                .and_then(|(a, b)| Some((parse_hhmm(a)?, parse_hhmm(b)?)))
            {
                Some((from, to)) if from != to => conds.push(Condition::TimeOfDay(from, to)),
                _ => issues.at(
                    spanned,
                    format!("{f}.time_of_day"),
                    format!("`{t}` is not a UTC window like `09:00-17:30`"),
                ),
            }
        }
        if conds.is_empty() {
            issues.at(
                spanned,
                &f,
                "a rule needs at least one condition (a rule matching everything is a mistake)",
            );
        }
        let effect = match r.effect {
            RuleEffect::Allow => Effect::Allow,
            RuleEffect::Deny => Effect::Deny,
        };
        rules.push(Rule::new(effect, conds));
    }
    Rules::new(rules)
}

/// A policy decision point reached through a `gateway-lb` upstream: one pool per worker thread
/// (each worker is its own runtime, and a connection is driven by the runtime that made it).
struct UpstreamPolicy {
    endpoint: Endpoint,
    path: http::uri::PathAndQuery,
    timeout: Duration,
}

thread_local! {
    /// Each worker's clients to decision points, by endpoint and timeout: shared by every route
    /// (and every reloaded configuration) that asks the same decision point, so reloads do not
    /// add clients.
    static POLICY_CLIENTS: std::cell::RefCell<PolicyClients> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Clients by (endpoint, timeout).
type PolicyClients = Vec<((Endpoint, Duration), Upstream<Full<Bytes>>)>;

impl PolicyClient for UpstreamPolicy {
    fn query(&self, body: String) -> PolicyFuture {
        let client = POLICY_CLIENTS.with(|c| {
            let mut c = c.borrow_mut();
            let key = (self.endpoint.clone(), self.timeout);
            if let Some((_, up)) = c.iter().find(|(k, _)| *k == key) {
                return up.clone();
            }
            let up = Upstream::builder([self.endpoint.clone()])
                .host(HostHeader::Endpoint)
                .request_timeout(Some(self.timeout))
                .x_forwarded(false)
                .forwarded(false)
                .via(None)
                .build::<Full<Bytes>>();
            c.push((key, up.clone()));
            up
        });
        let req = http::Request::post(http::Uri::from(self.path.clone()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        Box::pin(async move {
            let req = req.map_err(|e| e.to_string())?;
            let Ok(res) = client.send(req).await;
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            // A decision is small: read at most 64 KiB of it.
            let body = http_body_util::Limited::new(res.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(PolicyAnswer {
                status,
                headers,
                body: body.to_vec(),
            })
        })
    }
}

/// Compiles a route's `auth.ext_authz` block.
pub(crate) fn compile_ext_authz(
    field: &str,
    spanned: &Spanned<ExtAuthzConfig>,
    providers: &Providers,
    issues: &mut Issues,
) -> Option<ExtAuthz> {
    let x = &spanned.value;
    let field = format!("{field}.auth.ext_authz");
    let (base, path) = match x
        .url
        .strip_prefix("http://")
        .map(|rest| rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p)))
    {
        Some((authority, path)) => (format!("http://{authority}"), format!("/{path}")),
        None => {
            issues.at(
                spanned,
                format!("{field}.url"),
                "expected http://host:port/path",
            );
            return None;
        }
    };
    let endpoint = match base.parse::<Endpoint>() {
        Ok(e) => e,
        Err(e) => {
            issues.at(spanned, format!("{field}.url"), e.to_string());
            return None;
        }
    };
    let Ok(path) = path.parse::<http::uri::PathAndQuery>() else {
        issues.at(spanned, format!("{field}.url"), "not a valid path");
        return None;
    };
    let fail_open = match x.on_failure {
        None | Some(FailureConfig::Closed) => false,
        Some(FailureConfig::Open) => true,
        Some(FailureConfig::Local) => {
            issues.at(
                spanned,
                format!("{field}.on_failure"),
                "use `open` or `closed`",
            );
            false
        }
    };
    let mut upstream_headers = Vec::new();
    for h in &x.upstream_headers {
        // Framing, hop-by-hop and internal fields are never the decision point's to set.
        const FRAMING: &[&str] = &[
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ];
        let lower = h.to_ascii_lowercase();
        if FRAMING.contains(&lower.as_str())
            || providers
                .internal_prefixes
                .iter()
                .any(|p| lower.starts_with(p.as_str()))
        {
            issues.at(
                spanned,
                format!("{field}.upstream_headers"),
                format!("`{h}` is a framing, hop-by-hop or internal header"),
            );
            continue;
        }
        match HeaderName::from_bytes(lower.as_bytes()) {
            Ok(n) => upstream_headers.push(n),
            Err(_) => issues.at(
                spanned,
                format!("{field}.upstream_headers"),
                format!("`{h}` is not a header name"),
            ),
        }
    }
    let timeout = x.timeout.map_or(Duration::from_millis(200), |d| d.0);
    if timeout.is_zero() {
        issues.at(
            spanned,
            format!("{field}.timeout"),
            "must be greater than zero",
        );
    }
    let client = UpstreamPolicy {
        endpoint,
        path,
        timeout,
    };
    Some(
        ExtAuthz::new(client)
            .timeout(timeout)
            .fail_open(fail_open)
            .cache(x.cache_ttl.map_or(Duration::ZERO, |d| d.0), 10_000)
            .upstream_headers(upstream_headers)
            .withhold(
                providers.credential_headers.iter().cloned(),
                providers.credential_params.iter().cloned(),
            ),
    )
}

/// Compiles a route's `ip_filter` block.
pub(crate) fn compile_ip_filter(
    field: &str,
    spanned: &Spanned<IpFilterConfig>,
    issues: &mut Issues,
) -> IpFilterLayer {
    let f = &spanned.value;
    let mut parse = |list: &[Spanned<String>], key: &str| {
        let mut nets = Vec::new();
        for (j, e) in list.iter().enumerate() {
            match TrustedProxies::parse_entry(&e.value) {
                Ok(n) => nets.push(n),
                Err(err) => issues.at(e, format!("{field}.ip_filter.{key}[{j}]"), err.to_string()),
            }
        }
        nets
    };
    let allow = parse(&f.allow, "allow");
    let deny = parse(&f.deny, "deny");
    if f.allow.is_empty() && f.deny.is_empty() {
        issues.at(
            spanned,
            format!("{field}.ip_filter"),
            "set `allow`, `deny` or both",
        );
    }
    IpFilterLayer::new().allow(allow).deny(deny)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_and_times() {
        let secs = |s: &str| {
            parse_utc(s)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(secs("1970-01-01"), 0);
        assert_eq!(secs("2026-11-26T15:30:00Z"), 1_795_707_000);
        assert_eq!(secs("2026-12-01"), 1_796_083_200);
        assert_eq!(secs("2028-02-29"), 1_835_395_200);
        for bad in [
            "2026-13-01",
            "2026-11-26T15:30:00",
            "26-11-2026",
            "2026-11-26T25:00:00Z",
            "tomorrow",
            "2026-02-29",
            "2026-04-31",
            "2026-02-30",
            "+2027-+1-+1",
            "2027-1-1",
            "02027-01-01",
            "2026-11-26T1:00:00Z",
        ] {
            assert!(parse_utc(bad).is_none(), "{bad}");
        }
    }
}
