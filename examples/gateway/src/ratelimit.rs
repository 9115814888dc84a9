//! Compiling `state`, `tiers` and route `rate_limit` blocks into `gateway-ratelimit` layers.

use std::{sync::Arc, time::Duration};

use gateway_ratelimit::{
    FailurePolicy, HeaderStyle, HybridStore, KeyBy, Limit, MemoryStore, Policy, Rate,
    RateLimitLayer, RedisStore, Store,
};
use http::HeaderName;
use serde_saphyr::Spanned;

use crate::config::{
    Config, FailureConfig, HeadersConfig, Issues, LimitConfig, RateLimitConfig, StateMode,
};

/// The longest `throttle` a route may set: held requests cost memory and a connection each.
pub const MAX_THROTTLE: Duration = Duration::from_secs(60);

/// Where the limit state of every route lives; kept for the admin API's counters.
#[derive(Clone, Debug)]
pub enum LimitState {
    /// In this process.
    Memory(MemoryStore),
    /// In Redis, one script call per decision; `fallback` is the `on_failure: local` store.
    Redis {
        /// The shared store.
        store: RedisStore,
        /// The local fallback, when configured.
        fallback: Option<MemoryStore>,
    },
    /// In Redis, through local token leases.
    Hybrid {
        /// The shared store.
        store: HybridStore,
        /// The local fallback, when configured.
        fallback: Option<MemoryStore>,
    },
}

fn memory_json(s: &MemoryStore) -> serde_json::Value {
    serde_json::json!({
        "keys": s.len(),
        "capacity": s.capacity(),
        "evictions": s.evictions(),
    })
}

impl LimitState {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Memory(s) => Arc::new(s.clone()),
            Self::Redis { store, .. } => Arc::new(store.clone()),
            Self::Hybrid { store, .. } => Arc::new(store.clone()),
        }
    }

    /// The store's kind and counters, as JSON for the admin API (never the Redis URL).
    pub fn describe(&self) -> serde_json::Value {
        let redis = |s: &RedisStore, fallback: &Option<MemoryStore>| {
            let st = s.stats();
            serde_json::json!({
                "degraded": s.is_degraded(),
                "calls": st.calls,
                "errors": st.errors,
                "failed_open": st.failed_open,
                "failed_closed": st.failed_closed,
                "fell_back": st.fell_back,
                "fallback": fallback.as_ref().map(memory_json),
            })
        };
        match self {
            Self::Memory(s) => {
                let mut v = memory_json(s);
                v["store"] = "memory".into();
                v
            }
            Self::Redis { store, fallback } => {
                serde_json::json!({ "store": "redis", "redis": redis(store, fallback) })
            }
            Self::Hybrid { store, fallback } => {
                let st = store.stats();
                serde_json::json!({
                    "store": "hybrid",
                    "decisions": st.decisions,
                    "refills": st.refills,
                    "redis": redis(store.redis(), fallback),
                })
            }
        }
    }
}

/// The tier limits, applied by every route with `by: consumer` and no rate or quota of its own.
#[derive(Debug, Default)]
pub(crate) struct TierLimits {
    rate: Option<Limit>,
    quota: Option<Limit>,
    /// Every tier's policies (and the default's, named `default`), to check route costs.
    policies: Vec<(String, Option<Policy>, Option<Policy>)>,
}

pub(crate) fn compile_state(config: &Config, issues: &mut Issues) -> LimitState {
    let st = &config.state;
    let max_keys = st.max_keys.unwrap_or(1_000_000);
    if max_keys == 0 {
        issues.nowhere("state.max_keys", "must be at least 1");
    }
    let memory = || MemoryStore::with_capacity(max_keys.max(1));
    let Some(url) = &st.redis else {
        // Settings that only mean something with Redis are errors, not silently ignored.
        let redis_only = [
            ("mode", st.mode == StateMode::Hybrid),
            ("prefix", st.prefix.is_some()),
            ("timeout", st.timeout.is_some()),
            ("on_failure", st.on_failure != FailureConfig::Open),
            ("lease", st.lease.is_some()),
        ];
        for (key, set) in redis_only {
            if set {
                issues.nowhere(format!("state.{key}"), "needs `state.redis`");
            }
        }
        return LimitState::Memory(memory());
    };
    if st.lease.is_some() && st.mode != StateMode::Hybrid {
        issues.at(url, "state.lease", "only applies to `mode: hybrid`");
    }
    let timeout = st.timeout.map_or(Duration::from_millis(50), |d| d.0);
    if timeout.is_zero() {
        issues.at(url, "state.timeout", "must be greater than zero");
    }
    let fallback = (st.on_failure == FailureConfig::Local).then(memory);
    let failure = match (&fallback, st.on_failure) {
        (Some(local), _) => FailurePolicy::Local(local.clone()),
        (None, FailureConfig::Closed) => FailurePolicy::Closed,
        (None, _) => FailurePolicy::Open,
    };
    let mut builder = RedisStore::builder(url.value.clone())
        .timeout(timeout)
        .on_failure(failure);
    if let Some(prefix) = &st.prefix {
        builder = builder.prefix(prefix.clone());
    }
    match builder.build() {
        Ok(store) => match st.mode {
            StateMode::Exact => LimitState::Redis { store, fallback },
            StateMode::Hybrid => {
                let lease = st.lease.map_or(Duration::from_millis(50), |d| d.0);
                if lease.is_zero() {
                    issues.at(url, "state.lease", "must be greater than zero");
                }
                LimitState::Hybrid {
                    store: HybridStore::new(store, lease),
                    fallback,
                }
            }
        },
        Err(e) => {
            // The store's error names what is wrong, never the URL (which may hold a password).
            issues.at(url, "state.redis", e.to_string());
            LimitState::Memory(memory())
        }
    }
}

pub(crate) fn compile_tiers(config: &Config, issues: &mut Issues) -> TierLimits {
    if config.tiers.is_empty() {
        if let Some(d) = &config.default_tier {
            issues.at(d, "default_tier", "no tiers are configured");
        }
        return TierLimits::default();
    }
    let mut rates = Vec::new();
    let mut quotas = Vec::new();
    for (name, spanned) in &config.tiers {
        let t = &spanned.value;
        let field = format!("tiers.{name}");
        if name == "default"
            || name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            issues.at(
                spanned,
                &field,
                "tier names are letters, digits, `_`, `.` and `-`, and not `default`",
            );
        }
        if t.rate.is_none() && t.quota.is_none() {
            issues.at(spanned, &field, "a tier needs a `rate`, a `quota` or both");
        }
        if t.burst.is_some() && t.rate.is_none() {
            issues.at(spanned, format!("{field}.burst"), "`burst` needs a `rate`");
        }
        let rate = t.rate.and_then(|r| match rate_policy(r, t.burst) {
            Ok(p) => Some(p),
            Err(e) => {
                issues.at(spanned, format!("{field}.rate"), e);
                None
            }
        });
        rates.push((name.clone(), rate));
        quotas.push((name.clone(), t.quota.map(Policy::Quota)));
    }
    let lookup = |list: &[(String, Option<Policy>)], name: &str| {
        list.iter().find(|(n, _)| n == name).and_then(|(_, p)| *p)
    };
    let (default_rate, default_quota) = match &config.default_tier {
        None => (None, None),
        Some(d) if config.tiers.contains_key(&d.value) => {
            (lookup(&rates, &d.value), lookup(&quotas, &d.value))
        }
        Some(d) => {
            let known: Vec<&str> = config.tiers.keys().map(String::as_str).collect();
            issues.at(
                d,
                "default_tier",
                format!("unknown tier `{}` (defined: {})", d.value, known.join(", ")),
            );
            (None, None)
        }
    };
    let mut policies: Vec<(String, Option<Policy>, Option<Policy>)> = rates
        .iter()
        .zip(&quotas)
        .map(|((n, r), (_, q))| (n.clone(), *r, *q))
        .collect();
    policies.push((String::from("default"), default_rate, default_quota));
    let any = |list: &[(String, Option<Policy>)]| list.iter().any(|(_, p)| p.is_some());
    let valid_names = config.tiers.keys().all(|n| n != "default");
    TierLimits {
        rate: (valid_names && any(&rates))
            .then(|| Limit::tiered("tier-rate", rates.clone(), default_rate)),
        quota: (valid_names && any(&quotas))
            .then(|| Limit::tiered("tier-quota", quotas.clone(), default_quota)),
        policies,
    }
}

/// A rate policy with its burst (default: the rate's count), or why it is invalid.
fn rate_policy(rate: Rate, burst: Option<u32>) -> Result<Policy, String> {
    let burst = burst.unwrap_or_else(|| u32::try_from(rate.count()).unwrap_or(u32::MAX));
    Policy::try_rate(rate, burst)
}

/// What a limit counts per.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Ip,
    Consumer,
    Tier,
    Route,
    Global,
    Header,
}

fn key_by(
    by: Option<&str>,
    ipv6_prefix: Option<u8>,
    internal_prefixes: &[String],
) -> Result<(KeyBy, KeyKind), String> {
    let ip = KeyBy::client_ip().ipv6_prefix(ipv6_prefix.unwrap_or(64));
    Ok(match by.unwrap_or("ip") {
        "ip" => (ip, KeyKind::Ip),
        // Anonymous callers fall back to their IP, so no one escapes a consumer limit.
        "consumer" => (KeyBy::consumer().or(ip), KeyKind::Consumer),
        // Callers without a tier are counted per IP instead.
        "tier" => (KeyBy::tier().or(ip), KeyKind::Tier),
        "route" => (KeyBy::route(), KeyKind::Route),
        "global" => (KeyBy::global(), KeyKind::Global),
        other => match other.strip_prefix("header:") {
            Some(name) => {
                let lower = name.trim().to_ascii_lowercase();
                let name = HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                if internal_prefixes
                    .iter()
                    .any(|p| lower.starts_with(p.as_str()))
                {
                    return Err(format!(
                        "`{lower}` is an internal header, removed from every request at ingress"
                    ));
                }
                // Requests without the header are counted per IP instead of not at all.
                (KeyBy::header(name).or(ip), KeyKind::Header)
            }
            None => {
                return Err(format!(
                    "unknown key `{other}`: use ip, consumer, tier, route, global or header:NAME"
                ));
            }
        },
    })
}

/// Compiles a route's `rate_limit` block.
pub(crate) fn compile_route_limit(
    field: &str,
    route: &str,
    spanned: &Spanned<RateLimitConfig>,
    config: &Config,
    tiers: &TierLimits,
    state: &LimitState,
    issues: &mut Issues,
) -> Option<RateLimitLayer> {
    let rc = &spanned.value;
    let field = format!("{field}.rate_limit");
    let shorthand = rc.by.is_some()
        || rc.rate.is_some()
        || rc.burst.is_some()
        || rc.quota.is_some()
        || rc.ipv6_prefix.is_some();
    if shorthand && !rc.limits.is_empty() {
        issues.at(
            spanned,
            &field,
            "use either `by`/`rate`/`burst`/`quota` or `limits`, not both",
        );
        return None;
    }
    if rc.cost == 0 {
        issues.at(spanned, format!("{field}.cost"), "must be at least 1");
    }
    let internal: Vec<String> = config
        .internal_header_prefixes
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    let single = LimitConfig {
        by: rc.by.clone(),
        rate: rc.rate,
        burst: rc.burst,
        quota: rc.quota,
        ipv6_prefix: rc.ipv6_prefix,
    };
    let mut limits: Vec<Limit> = Vec::new();
    let mut tiers_used = false;
    let mut has_rate = false;
    let mut add = |j: Option<usize>, lc: &LimitConfig, issues: &mut Issues| {
        let f = match j {
            Some(j) => format!("{field}.limits[{j}]"),
            None => field.clone(),
        };
        let at = |issues: &mut Issues, sub: &str, msg: String| {
            let name = if sub.is_empty() {
                f.clone()
            } else {
                format!("{f}.{sub}")
            };
            match j {
                Some(j) => issues.at(&rc.limits[j], name, msg),
                None => issues.at(spanned, name, msg),
            }
        };
        if lc.ipv6_prefix.is_some_and(|p| p > 128) {
            at(issues, "ipv6_prefix", String::from("must be 0 to 128"));
        }
        let (key, kind) = match key_by(
            lc.by.as_deref(),
            lc.ipv6_prefix.map(|p| p.min(128)),
            &internal,
        ) {
            Ok(k) => k,
            Err(e) => {
                at(issues, "by", e);
                return;
            }
        };
        let tier_path = kind == KeyKind::Consumer && lc.rate.is_none() && lc.quota.is_none();
        if lc.ipv6_prefix.is_some()
            && (matches!(kind, KeyKind::Route | KeyKind::Global) || tier_path)
        {
            at(
                issues,
                "ipv6_prefix",
                String::from(
                    "only applies to limits counted per IP (ip, header, tier, or consumer with its own rate or quota)",
                ),
            );
        }
        if lc.burst.is_some() && lc.rate.is_none() {
            at(issues, "burst", String::from("`burst` needs a `rate`"));
        }
        if lc.rate.is_none() && lc.quota.is_none() {
            if kind != KeyKind::Consumer {
                at(
                    issues,
                    "",
                    String::from(
                        "needs a `rate`, a `quota` or both (only `by: consumer` may use the tiers instead)",
                    ),
                );
            } else if tiers.rate.is_none() && tiers.quota.is_none() {
                at(
                    issues,
                    "",
                    String::from(
                        "`by: consumer` without a rate or quota applies the consumer's tier, but no `tiers` are configured",
                    ),
                );
            } else if tiers_used {
                at(issues, "by", String::from("the tiers apply once per route"));
            } else {
                tiers_used = true;
                has_rate |= tiers.rate.is_some();
                // Every tier must be able to pass one request of this route.
                for (tier, rate, quota) in &tiers.policies {
                    for p in [rate, quota].into_iter().flatten() {
                        if u64::from(rc.cost) > p.capacity() {
                            at(
                                issues,
                                "cost",
                                format!(
                                    "cost {} exceeds tier `{tier}`'s burst or quota of {}: its consumers could never pass",
                                    rc.cost,
                                    p.capacity()
                                ),
                            );
                        }
                    }
                }
                limits.extend(tiers.rate.iter().cloned());
                limits.extend(tiers.quota.iter().cloned());
            }
            return;
        }
        let n = j.unwrap_or(0);
        if let Some(rate) = lc.rate {
            has_rate = true;
            match rate_policy(rate, lc.burst) {
                Ok(p) => {
                    if u64::from(rc.cost) > p.capacity() {
                        at(
                            issues,
                            "burst",
                            format!(
                                "cost {} exceeds the burst {}: no request could pass",
                                rc.cost,
                                p.capacity()
                            ),
                        );
                    }
                    limits
                        .push(Limit::policy(format!("route:{route}:{n}:rate"), p).key(key.clone()));
                }
                Err(e) => at(issues, "rate", e),
            }
        }
        if let Some(quota) = lc.quota {
            if u64::from(rc.cost) > quota.limit() {
                at(
                    issues,
                    "quota",
                    format!(
                        "cost {} exceeds the quota {}: no request could pass",
                        rc.cost,
                        quota.limit()
                    ),
                );
            }
            limits.push(Limit::quota(format!("route:{route}:{n}:quota"), quota).key(key));
        }
    };
    if rc.limits.is_empty() {
        add(None, &single, issues);
    } else {
        for (j, lc) in rc.limits.iter().enumerate() {
            add(Some(j), &lc.value, issues);
        }
    }
    let throttle = rc.throttle.map_or(Duration::ZERO, |d| d.0);
    if !throttle.is_zero() && !has_rate {
        issues.at(
            spanned,
            format!("{field}.throttle"),
            "only rates can hold requests; this route has only quotas",
        );
    }
    if throttle > MAX_THROTTLE {
        issues.at(
            spanned,
            format!("{field}.throttle"),
            format!("at most {}s", MAX_THROTTLE.as_secs()),
        );
    }
    let mut limits = limits.into_iter();
    let first = limits.next()?;
    let layer = limits
        .fold(RateLimitLayer::new(first), RateLimitLayer::limit)
        .store(state.store())
        .cost(rc.cost)
        .throttle(throttle.min(MAX_THROTTLE))
        .shadow(rc.shadow)
        .headers(match rc.headers {
            HeadersConfig::Ietf => HeaderStyle::Ietf,
            HeadersConfig::Legacy => HeaderStyle::Legacy,
            HeadersConfig::None => HeaderStyle::None,
        });
    Some(layer)
}
