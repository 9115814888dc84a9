//! The YAML configuration: types, parsing with file/line/column errors, and validation.
//!
//! Every key is documented in `docs/configuration.md`. Unknown keys are errors, so a typo never
//! silently disables a policy.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_saphyr::Spanned;

/// The whole gateway configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public listeners.
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// The admin listener (health, readiness, route table). Off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Worker threads, each with its own single-threaded runtime and its own accept socket
    /// (`SO_REUSEPORT`). Default: the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Networks whose forwarding headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Which header trusted proxies append the client to.
    #[serde(default)]
    pub forwarded_header: ForwardedHeaderConfig,
    /// Request and connection limits.
    #[serde(default)]
    pub limits: Limits,
    /// Header name prefixes reserved for the gateway; client-sent fields with these prefixes are
    /// removed at ingress.
    #[serde(default = "default_internal_prefixes")]
    pub internal_header_prefixes: Vec<String>,
    /// Graceful shutdown settings.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Named upstreams.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// Where limit state lives: in this process (default) or in Redis, shared by every instance.
    #[serde(default)]
    pub state: StateConfig,
    /// Named tiers: the rate and quota a consumer of that tier gets on routes with
    /// `rate_limit: { by: consumer }`.
    #[serde(default)]
    pub tiers: BTreeMap<String, Spanned<TierConfig>>,
    /// The tier of callers without one (anonymous callers, consumers without a tier). Without it,
    /// such callers are not limited by tier limits (route limits still apply).
    #[serde(default)]
    pub default_tier: Option<Spanned<String>>,
    /// Consumers: who may call, with their API keys (as digests), tier and roles.
    #[serde(default)]
    pub consumers: Vec<Spanned<ConsumerConfig>>,
    /// Named authentication providers for routes' `auth.any_of`. `api_key` (the `x-api-key`
    /// header) exists without being declared.
    #[serde(default)]
    pub auth_providers: BTreeMap<String, Spanned<AuthProviderConfig>>,
    /// Configuration reloading.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Request ids, metrics and the access log (read at start).
    #[serde(default)]
    pub observe: ObserveConfig,
    /// The HTTP cache's store, shared by every route with a `cache` block.
    #[serde(default)]
    pub cache: CacheStoreConfig,
    /// The document as plain JSON (no positions): what a reload compares to decide which state
    /// survives, and what the admin API shows (redacted).
    #[serde(skip)]
    pub source: serde_json::Value,
    /// The text it was parsed from (re-applied when discovered endpoints change).
    #[serde(skip)]
    pub(crate) text: std::sync::Arc<str>,
}

/// The HTTP cache's store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheStoreConfig {
    /// Bytes of bodies and headers held at most (default 256MiB); oldest entries go first.
    /// (In-memory store only.)
    #[serde(default = "default_cache_size")]
    pub max_size: ByteSize,
    /// `memory` (default: per instance) or `redis` (in `state.redis`, shared by every instance).
    #[serde(default)]
    pub store: CacheStoreKind,
}

/// Where cache entries live.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheStoreKind {
    /// In this process.
    #[default]
    Memory,
    /// In `state.redis`, shared by every instance.
    Redis,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        Self {
            max_size: default_cache_size(),
            store: CacheStoreKind::Memory,
        }
    }
}

fn default_cache_size() -> ByteSize {
    ByteSize(256 << 20)
}

/// A route's HTTP cache.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Freshness for storable answers without their own (default: not stored unless the
    /// heuristic applies).
    #[serde(default)]
    pub default_ttl: Option<HumanDuration>,
    /// Freshness is at least this.
    #[serde(default)]
    pub ttl_floor: Option<HumanDuration>,
    /// Freshness is at most this (default 1 day).
    #[serde(default)]
    pub ttl_ceiling: Option<HumanDuration>,
    /// Larger bodies pass through uncached (default 1MiB).
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// On routes with `auth`: share entries between callers (default: each caller has their
    /// own, keyed by the principal).
    #[serde(default)]
    pub shared: bool,
    /// What the key is made of, beyond scheme, host and path.
    #[serde(default)]
    pub key: CacheKeyConfig,
    /// Request headers removed before a cacheable request is forwarded, unless keyed (default:
    /// the host, URL and method override headers listed in docs/configuration.md).
    #[serde(default)]
    pub unkeyed_headers: Option<Vec<String>>,
    /// Targeted cache-control fields this cache obeys over `Cache-Control` (RFC 9213), first
    /// present wins: `[cdn-cache-control]`, say. Default none.
    #[serde(default)]
    pub targeted: Vec<String>,
    /// This cache's name in `Cache-Status` (RFC 9211); empty for no `Cache-Status` field.
    #[serde(default = "default_cache_status")]
    pub cache_status: String,
}

fn default_cache_status() -> String {
    "gateway".to_owned()
}

/// The parts of a cache key beyond scheme, host and path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKeyConfig {
    /// The query: `as_sent` (default), `sorted` or `ignored`.
    #[serde(default)]
    pub query: QueryKeyMode,
    /// Only these query parameters are keyed (sorted) and forwarded.
    #[serde(default)]
    pub query_only: Option<Vec<String>>,
    /// These query parameters are neither keyed nor forwarded (the rest are sorted).
    #[serde(default)]
    pub query_except: Option<Vec<String>>,
    /// Request headers that are part of the key.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// How the query enters a cache key.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueryKeyMode {
    /// As sent.
    #[default]
    AsSent,
    /// Sorted by parameter name.
    Sorted,
    /// Not keyed and not forwarded.
    Ignored,
}

/// Request ids, metrics and the access log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveConfig {
    /// Request ids.
    #[serde(default)]
    pub request_id: RequestIdConfig,
    /// Metrics labelling.
    #[serde(default)]
    pub metrics: MetricsYaml,
    /// The access log (off when absent).
    #[serde(default)]
    pub access_log: Option<Spanned<AccessLogYaml>>,
    /// Traces exported over OTLP (off when absent).
    #[serde(default)]
    pub tracing: Option<Spanned<TracingYaml>>,
}

/// Traces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingYaml {
    /// The collector's OTLP/HTTP endpoint, `http://host:4318`.
    pub otlp_endpoint: String,
    /// The share of new traces recorded (default 1.0); a trusted parent's decision wins.
    #[serde(default = "default_sample")]
    pub sample_ratio: f64,
    /// Continue inbound W3C trace context (default: ignored and removed).
    #[serde(default)]
    pub trust_inbound: bool,
    /// `service.name` (default `gateway`).
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Also read (when trusted) and send B3 (`b3`) context.
    #[serde(default)]
    pub b3: bool,
}

fn default_service_name() -> String {
    String::from("gateway")
}

/// Request ids.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// The header (default `x-request-id`).
    #[serde(default = "default_request_id_header")]
    pub header: String,
    /// Keep a well-formed inbound id (only behind a proxy that sets it).
    #[serde(default)]
    pub trust_inbound: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        Self {
            header: default_request_id_header(),
            trust_inbound: false,
        }
    }
}

fn default_request_id_header() -> String {
    String::from("x-request-id")
}

/// Metrics labelling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsYaml {
    /// Request-duration histogram bounds in seconds (default: OpenTelemetry's).
    #[serde(default)]
    pub duration_buckets: Option<Vec<f64>>,
    /// Label status codes by class (`2xx`).
    #[serde(default)]
    pub status_class: bool,
    /// Also push the metrics to this OTLP/HTTP collector (`http://host:4318`).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// How often to push (default 10s).
    #[serde(default)]
    pub otlp_interval: Option<HumanDuration>,
}

/// The access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogYaml {
    /// `stdout` (default), `stderr`, or a file path (appended).
    #[serde(default = "default_log_to")]
    pub to: String,
    /// `json` (default) or a template with `{field}` placeholders.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// Request headers to log (credentials are always redacted).
    #[serde(default)]
    pub headers: Vec<String>,
    /// More headers to redact.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Routes not logged.
    #[serde(default)]
    pub exclude_routes: Vec<String>,
    /// Share of successful requests logged (errors always are).
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Log successful requests only when at least this slow.
    #[serde(default)]
    pub slower_than: Option<HumanDuration>,
    /// Log only responses with at least this status (e.g. 400 for errors only).
    #[serde(default)]
    pub min_status: u16,
}

fn default_log_to() -> String {
    String::from("stdout")
}

fn default_log_format() -> String {
    String::from("json")
}

fn default_sample() -> f64 {
    1.0
}

/// How configuration changes are picked up (besides `SIGHUP` and the admin API, always on when
/// the gateway runs from a file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Poll the configuration file (and the files it names) and reload when one changes.
    #[serde(default)]
    pub watch: bool,
    /// How often to poll.
    #[serde(default = "default_watch_interval")]
    pub interval: HumanDuration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            interval: default_watch_interval(),
        }
    }
}

fn default_watch_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

/// A consumer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer id (in logs, rate-limit keys, `Principal::consumer`).
    pub id: String,
    /// The tier (see `tiers`).
    #[serde(default)]
    pub tier: Option<Spanned<String>>,
    /// Roles (for routes' `auth.roles`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// API keys, as `sha256:` digests (several allow rotation).
    #[serde(default)]
    pub api_keys: Vec<Spanned<ApiKeyConfig>>,
}

/// An API key: a digest, or a digest with an expiry and a revocation flag.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ApiKeyConfig {
    /// `"sha256:…"`.
    Digest(String),
    /// `{ digest: "sha256:…", expires: 2027-01-01, revoked: false }`.
    Entry(ApiKeyEntry),
}

/// An API key with its lifecycle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    /// Not accepted from this UTC date (`2027-01-01`) or time (`2027-01-01T12:00:00Z`) on.
    #[serde(default)]
    pub expires: Option<String>,
    /// Refused.
    #[serde(default)]
    pub revoked: bool,
}

/// An authentication provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum AuthProviderConfig {
    /// API keys of the `consumers`, read from one place.
    ApiKey(ApiKeySourceConfig),
    /// JSON Web Tokens in `Authorization: Bearer` (or a cookie).
    Jwt(Box<JwtConfig>),
    /// The client certificate a TLS listener with `client_auth` verified.
    Mtls(MtlsConfig),
}

/// An mTLS provider.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// Certificate identities (`uri:spiffe://…`, `dns:…`, `email:…`, `cn:…`) mapped to consumer
    /// ids; other verified certificates authenticate without a consumer.
    #[serde(default)]
    pub consumers: BTreeMap<String, String>,
}

/// A JWT provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The accepted issuers (`iss`); at least one.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// The accepted audiences (`aud`); at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The allowed algorithms (`RS256`, `ES256`, `EdDSA`, `HS256`, ...).
    pub algorithms: Vec<String>,
    /// Public keys as an inline JWK set (`{ keys: [ { kty, kid, ... } ] }`).
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Fetch the keys from this `https://` JWK set URL, kept fresh in the background.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Find the keys through OpenID Connect discovery of the (single) issuer.
    #[serde(default)]
    pub discovery: bool,
    /// A PEM file of extra root certificates for fetching keys (a private CA).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Least time between refetches asked for by unknown `kid`s (default 30s).
    #[serde(default)]
    pub refetch_cooldown: Option<HumanDuration>,
    /// The environment variable holding an HMAC secret (never the secret itself in the file).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Clock skew allowed on `exp`/`nbf` (default 60s).
    #[serde(default)]
    pub leeway: Option<HumanDuration>,
    /// Dot path of the roles claim (`roles`, `realm_access.roles`).
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Claim holding the caller's tier.
    #[serde(default)]
    pub tier_claim: Option<String>,
    /// Claim naming the consumer (`client_id`, `azp`).
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// Also read the token from this cookie.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// Where an API key provider reads keys: exactly one of `header`, `query`, `cookie`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySourceConfig {
    /// A header name.
    #[serde(default)]
    pub header: Option<String>,
    /// A query parameter name.
    #[serde(default)]
    pub query: Option<String>,
    /// A cookie name.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// A route's authentication and authorization.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Providers, any of which may authenticate the caller (default `[api_key]`).
    #[serde(default)]
    pub any_of: Vec<Spanned<String>>,
    /// Providers that must all authenticate the caller (instead of `any_of`).
    #[serde(default)]
    pub all_of: Vec<Spanned<String>>,
    /// The caller needs at least one of these roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The credential needs every one of these scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Let CORS preflights (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) through
    /// without credentials.
    #[serde(default)]
    pub cors_preflight: bool,
    /// Attribute rules, evaluated in order after authentication (deny wins).
    #[serde(default)]
    pub rules: Vec<Spanned<RuleConfig>>,
    /// Log what the rules would refuse, refuse nothing.
    #[serde(default)]
    pub rules_shadow: bool,
    /// Let requests without any credential through anonymously (an invalid one is still `401`).
    #[serde(default)]
    pub optional: bool,
    /// Ask a policy decision point after authentication.
    #[serde(default)]
    pub ext_authz: Option<Spanned<ExtAuthzConfig>>,
}

/// External authorization.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// `http://host:port/path` of the decision point (OPA: `.../v1/data/<package>/allow`).
    pub url: String,
    /// How long to wait for a decision (default 200ms).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// `closed` (503, the default) or `open` (allow) when the decision point fails.
    #[serde(default)]
    pub on_failure: Option<FailureConfig>,
    /// Keep decisions this long (default: not cached).
    #[serde(default)]
    pub cache_ttl: Option<HumanDuration>,
    /// Headers the decision point may set on the upstream request (client-sent copies are
    /// always removed).
    #[serde(default)]
    pub upstream_headers: Vec<String>,
}

/// One attribute rule: an effect and conditions, all of which must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `allow` or `deny`.
    pub effect: RuleEffect,
    /// The method is one of these.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The path starts with this prefix (segment boundary).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// A header with exactly this value.
    #[serde(default)]
    pub header: Option<NameValueMatch>,
    /// The client IP is in one of these networks.
    #[serde(default)]
    pub client_ip: Vec<String>,
    /// The caller has this role.
    #[serde(default)]
    pub role: Option<String>,
    /// The credential has this scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// The caller is this consumer.
    #[serde(default)]
    pub consumer: Option<String>,
    /// The caller has this tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// Principal attributes (JWT claims) with exactly these values.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// UTC time window `HH:MM-HH:MM` (wraps past midnight when the end is earlier).
    #[serde(default)]
    pub time_of_day: Option<String>,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleEffect {
    /// Permit.
    Allow,
    /// Refuse (wins over every allow).
    Deny,
}

/// A route's client IP allow and deny lists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Only these networks (when set).
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Never these networks (deny wins).
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

/// Where rate-limit state lives. Its `Debug` output never shows the Redis URL (it may carry a
/// password).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://[:password@]host:port/db`: share limits with every instance using this Redis.
    /// Absent: state stays in this process.
    #[serde(default)]
    pub redis: Option<Spanned<String>>,
    /// Prefix of the Redis keys (default `gateway:rl:`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// How long a decision may wait for Redis (default 50ms).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// What to do when Redis fails or is too slow: `open` (admit, the default), `closed` (503),
    /// or `local` (decide with an in-process limiter of the same shape).
    #[serde(default)]
    pub on_failure: FailureConfig,
    /// `exact` (one Redis call per decision, the default) or `hybrid` (local token leases).
    #[serde(default)]
    pub mode: StateMode,
    /// Hybrid mode: how much time worth of tokens one lease holds (default 50ms).
    #[serde(default)]
    pub lease: Option<HumanDuration>,
    /// The most keys held in memory (the in-process store, or the `local` fallback), default
    /// 1000000 (at most ≈35 MB).
    #[serde(default)]
    pub max_keys: Option<usize>,
}

impl fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateConfig")
            .field("redis", &self.redis.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("mode", &self.mode)
            .field("lease", &self.lease)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

/// What the Redis store does when Redis fails.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureConfig {
    /// Admit.
    #[default]
    Open,
    /// Refuse with 503.
    Closed,
    /// Decide with an in-process limiter.
    Local,
}

/// How decisions use Redis.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateMode {
    /// One atomic script call per decision.
    #[default]
    Exact,
    /// Local buckets leasing tokens in batches.
    Hybrid,
}

/// A tier's limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Sustained rate, e.g. `1000/s`.
    #[serde(default)]
    pub rate: Option<gateway_ratelimit::Rate>,
    /// Requests at once from an idle consumer (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Calendar quota, e.g. `5000000/month`.
    #[serde(default)]
    pub quota: Option<gateway_ratelimit::Quota>,
}

/// A route's rate limiting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Shorthand for one entry of `limits`: what it counts per.
    #[serde(default)]
    pub by: Option<String>,
    /// Shorthand: the rate.
    #[serde(default)]
    pub rate: Option<gateway_ratelimit::Rate>,
    /// Shorthand: the burst.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Shorthand: the quota.
    #[serde(default)]
    pub quota: Option<gateway_ratelimit::Quota>,
    /// Shorthand: the IPv6 aggregation prefix for `by: ip`.
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// Several limits, all of which must admit a request.
    #[serde(default)]
    pub limits: Vec<Spanned<LimitConfig>>,
    /// What each request costs (default 1).
    #[serde(default = "one")]
    pub cost: u32,
    /// Hold a request up to this long when that lets it conform to its rates (default: refuse at
    /// once).
    #[serde(default)]
    pub throttle: Option<HumanDuration>,
    /// Report but never refuse.
    #[serde(default)]
    pub shadow: bool,
    /// `ietf` (`RateLimit` / `RateLimit-Policy`, the default), `legacy` (`X-RateLimit-*`) or
    /// `none`.
    #[serde(default)]
    pub headers: HeadersConfig,
}

fn one() -> u32 {
    1
}

/// One limit of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// What the limit counts per: `ip` (the default), `consumer`, `tier`, `route`, `global` or
    /// `header:NAME`. `consumer` without `rate`/`quota` applies the consumer's tier.
    #[serde(default)]
    pub by: Option<String>,
    /// Sustained rate.
    #[serde(default)]
    pub rate: Option<gateway_ratelimit::Rate>,
    /// Requests at once (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Calendar quota.
    #[serde(default)]
    pub quota: Option<gateway_ratelimit::Quota>,
    /// IPv6 aggregation prefix for `by: ip` (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
}

/// Which rate-limit headers to send.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadersConfig {
    /// IETF draft fields.
    #[default]
    Ietf,
    /// `X-RateLimit-*`.
    Legacy,
    /// None.
    None,
}

fn default_internal_prefixes() -> Vec<String> {
    vec!["x-gateway-".to_owned()]
}

/// A public listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address to bind, e.g. `0.0.0.0:8080`.
    pub bind: SocketAddr,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Continue inbound trace context on this listener (default: `observe.tracing.trust_inbound`).
    #[serde(default)]
    pub trust_trace_context: Option<bool>,
}

/// A listener's TLS settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates, chosen by SNI from their DNS names; the first also answers handshakes
    /// without SNI or for other names.
    pub certificates: Vec<CertificateConfig>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Ask clients for certificates and verify them against these CAs.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The chain, end-entity certificate first.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client certificate verification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: String,
    /// `required` (default: a handshake without a valid certificate fails) or `optional`
    /// (clients without one get through; routes decide).
    #[serde(default)]
    pub mode: ClientAuthMode,
}

/// Whether a client certificate is required.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// The handshake fails without a valid certificate.
    #[default]
    Required,
    /// A valid certificate is used when sent; none is fine.
    Optional,
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The address to bind; keep it on loopback or a private network.
    pub bind: SocketAddr,
    /// A file holding the bearer token every admin endpoint but `/healthz` and `/readyz`
    /// requires (never the token itself in the configuration). Re-read on reload, so the token
    /// can be rotated.
    #[serde(default)]
    pub token_file: Option<String>,
}

/// Which header carries the forwarding chain from trusted proxies.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaderConfig {
    /// `X-Forwarded-For`.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// Request and connection limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest total size of the request header fields (names + values), answered 431 above.
    pub max_header_bytes: ByteSize,
    /// Most request header fields, answered 431 above.
    pub max_headers: usize,
    /// Longest request target, answered 414 above.
    pub max_uri_bytes: ByteSize,
    /// Largest request body, answered 413 above (checked against `Content-Length` up front and
    /// counted while streaming).
    pub max_body_bytes: ByteSize,
    /// Time allowed to receive a request's headers (slowloris defence); on HTTP/1.1 it also
    /// bounds how long a keep-alive connection waits for its next request.
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight and no bytes moving is closed after this long.
    pub idle_timeout: HumanDuration,
    /// Most open client connections across all listeners; further connections are closed at once.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests a client may cancel (HTTP/2 `RST_STREAM`) on one connection before it is closed
    /// with GOAWAY, once they are also more than half its requests (rapid-reset defence).
    pub max_client_resets: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: ByteSize(32 * 1024),
            max_headers: 100,
            max_uri_bytes: ByteSize(8 * 1024),
            max_body_bytes: ByteSize(16 * 1024 * 1024),
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: 10_000,
            max_concurrent_streams: 128,
            max_client_resets: 100,
        }
    }
}

/// Graceful shutdown settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub drain_timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// An upstream: a set of endpoints and how to talk to them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` endpoints, each optionally followed by ` weight=N`.
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    /// A file of more endpoints, one per line in the same form (`#` comments): discovery by
    /// file. With `reload.watch`, a change to it is applied like a reload.
    #[serde(default)]
    pub endpoints_file: Option<Spanned<String>>,
    /// Endpoints discovered at run time (`dns`), added to the listed ones.
    #[serde(default)]
    pub discovery: Option<Spanned<DiscoveryConfig>>,
    /// How an endpoint is picked (default `round_robin`).
    #[serde(default)]
    pub balance: BalanceConfig,
    /// Below this share of available endpoints, balance over all of them (default 50%; 0:
    /// answer `503` when none is available).
    #[serde(default)]
    pub panic_threshold: Option<Ratio>,
    /// Endpoints coming back get traffic ramped up over this long (default none).
    #[serde(default)]
    pub slow_start: Option<HumanDuration>,
    /// Active health checks; none when absent.
    #[serde(default)]
    pub health: Option<Spanned<HealthConfig>>,
    /// Passive outlier detection; none when absent.
    #[serde(default)]
    pub outlier: Option<Spanned<OutlierConfig>>,
    /// Sticky sessions by cookie; none when absent.
    #[serde(default)]
    pub sticky: Option<Spanned<StickySessionConfig>>,
    /// `http1` (default) or `http2` (h2c with prior knowledge).
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// What `Host` the upstream sees.
    #[serde(default)]
    pub host: HostConfig,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// Forwarding headers.
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// Circuit breaker; none when absent.
    #[serde(default)]
    pub breaker: Option<Spanned<BreakerConfig>>,
    /// Bulkhead: most requests in flight to this upstream (across all workers); the excess is
    /// answered `503` at once. Unlimited when absent.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Budgeted retries; none when absent.
    #[serde(default)]
    pub retry: Option<Spanned<RetryConfigYaml>>,
    /// Hedged requests; none when absent.
    #[serde(default)]
    pub hedge: Option<HedgeConfig>,
    /// TLS to `https://` endpoints.
    #[serde(default)]
    pub tls: Option<Spanned<UpstreamTlsConfig>>,
}

/// A route's header transforms.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Rules for the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderRulesConfig,
    /// Rules for the response sent to the client.
    #[serde(default)]
    pub response_headers: HeaderRulesConfig,
    /// The path forwarded: a template (`/internal/users/${path.id}`) or a regex rewrite.
    #[serde(default)]
    pub path: Option<PathRewriteConfig>,
    /// Query parameter edits, applied in this order: `remove`, `rename`, `set`, `add`,
    /// `keep_only`.
    #[serde(default)]
    pub query: QueryRulesConfig,
    /// Edits and conversion of JSON / XML request bodies.
    #[serde(default)]
    pub request_body: Option<BodyTransformConfig>,
    /// Edits and conversion of JSON / XML response bodies.
    #[serde(default)]
    pub response_body: Option<BodyTransformConfig>,
}

/// A body transform: JSON Pointer edits and an XML <-> JSON conversion.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyTransformConfig {
    /// JSON Pointer edits, applied in this order: `remove`, `rename`, `set`, `add`.
    #[serde(default)]
    pub json: JsonEditsConfig,
    /// `xml_to_json` (XML bodies become JSON, then the edits apply) or `json_to_xml` (the
    /// edits apply, then JSON bodies become XML).
    #[serde(default)]
    pub convert: Option<ConvertConfig>,
    /// The root element for JSON that is not an object with one key (default `root`).
    #[serde(default)]
    pub xml_root: Option<String>,
    /// Largest body transformed (default 1MiB): a larger request is `413`, a larger response
    /// `502`.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// JSON Pointer (RFC 6901) edits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonEditsConfig {
    /// Pointers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `from: to` moves.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Values set (created or replaced; missing parent objects are created).
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, serde_json::Value>,
    /// Values set only where absent.
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A body conversion.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConvertConfig {
    /// XML bodies become JSON.
    XmlToJson,
    /// JSON bodies become XML.
    JsonToXml,
}

/// Response aggregation: parts fetched concurrently, composed into one JSON object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The calls, one JSON section each.
    pub parts: Vec<AggregatePartConfig>,
    /// `fail` (default: any failed part fails the answer) or `omit` (failed optional parts are
    /// left out and listed under `_errors`).
    #[serde(default)]
    pub on_failure: AggregateFailureConfig,
    /// Largest part body read (default 1MiB).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// One aggregated call: `GET path` on `upstream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatePartConfig {
    /// The JSON key of its section.
    pub name: String,
    /// The upstream called.
    pub upstream: String,
    /// The path, a template (`/users/${path.id}`); values are encoded as one segment each.
    pub path: String,
    /// How long the call (its body included) may take (default 5s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// A failure fails the whole answer, whatever `on_failure` says.
    #[serde(default)]
    pub required: bool,
}

/// What a failed aggregated part does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFailureConfig {
    /// The answer is a `502`/`504` problem.
    #[default]
    Fail,
    /// The part is left out and listed under `_errors`.
    Omit,
}

/// Request validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// A JSON Schema for the request body (drafts 4 to 2020-12, by `$schema`).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Query, header and path parameters.
    #[serde(default)]
    pub params: Vec<ParamConfig>,
    /// An OpenAPI 3.0 / 3.1 document (JSON or YAML file) describing the route's operations.
    #[serde(default)]
    pub openapi: Option<String>,
    /// Largest body validated (default 1MiB; larger is `413`).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// A validated parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    /// Its name.
    pub name: String,
    /// `query`, `header` or `path`.
    #[serde(rename = "in")]
    pub location: ParamInConfig,
    /// Whether a request without it is refused.
    #[serde(default)]
    pub required: bool,
    /// Its JSON Schema (the value is coerced by the schema's `type`).
    pub schema: serde_json::Value,
}

/// Where a parameter is.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParamInConfig {
    /// The query string.
    Query,
    /// A request header.
    Header,
    /// A `path_template` parameter.
    Path,
}

/// API versions of a route: where the version is read, and each version's upstream and
/// lifecycle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsConfig {
    /// Sources, asked in order.
    pub from: Vec<VersionSourceConfig>,
    /// The version of requests that name none.
    #[serde(default)]
    pub default: Option<String>,
    /// Each known version.
    pub map: std::collections::BTreeMap<String, VersionEntryConfig>,
}

/// Where a version is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum VersionSourceConfig {
    /// The first path segment, e.g. `v{version}`.
    Path {
        /// The segment's pattern, with `{version}` once.
        pattern: String,
        /// Drop the segment before forwarding (`/v2/users` -> `/users`).
        #[serde(default)]
        strip: bool,
    },
    /// A header.
    Header(String),
    /// A query parameter.
    Query(String),
    /// The `Accept` media type, e.g. `application/vnd.example.v{version}+json`.
    Accept(String),
}

/// One version: its upstream (default: the route's) and its lifecycle.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionEntryConfig {
    /// The upstream for this version.
    #[serde(default)]
    pub upstream: Option<String>,
    /// As in a route's `version` block.
    #[serde(default)]
    pub deprecated_at: Option<String>,
    /// As in a route's `version` block.
    #[serde(default)]
    pub sunset_at: Option<String>,
    /// As in a route's `version` block.
    #[serde(default)]
    pub successor: Option<String>,
    /// As in a route's `version` block.
    #[serde(default)]
    pub after_sunset: AfterSunsetConfig,
}

/// A path rewrite: a template string, or `{ regex, replace, on_no_match }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PathRewriteConfig {
    /// A template; substituted values are encoded as one segment each.
    Template(String),
    /// A regex with a replacement.
    Regex {
        /// Matched against the path (linear-time `regex` syntax).
        regex: String,
        /// `$1` / `${name}` captures.
        replace: String,
        /// `keep` (default: forward the path as it is) or `reject` (`404`).
        #[serde(default)]
        on_no_match: OnNoMatchConfig,
    },
}

/// What a regex path rewrite does with a path it does not match.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnNoMatchConfig {
    /// Forward the path unchanged.
    #[default]
    Keep,
    /// Answer `404`.
    Reject,
}

/// Query parameter edits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRulesConfig {
    /// Parameters removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `old: new` renames.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Parameters set (every occurrence replaced), values templated.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Occurrences appended, values templated.
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
    /// When given, every other parameter is removed.
    #[serde(default)]
    pub keep_only: Option<Vec<String>>,
}

/// Header rules, applied in this order: `remove`, `rename`, `set`, `add`, `append`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `old: new` renames.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Headers set (replaced), values templated.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Headers set only when absent.
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
    /// Header lines appended.
    #[serde(default)]
    pub append: std::collections::BTreeMap<String, String>,
}

/// An API version's lifecycle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// `2027-01-01`, `2027-01-01T12:00:00Z` or an HTTP-date.
    #[serde(default)]
    pub deprecated_at: Option<String>,
    /// When the version stops being served (same forms).
    #[serde(default)]
    pub sunset_at: Option<String>,
    /// The replacement (URL or absolute path), linked from every response.
    #[serde(default)]
    pub successor: Option<String>,
    /// `gone` (default: `410` with a problem body) or `redirect` (`308` to the successor).
    #[serde(default)]
    pub after_sunset: AfterSunsetConfig,
}

/// What happens after the sunset.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AfterSunsetConfig {
    /// `410 Gone`.
    #[default]
    Gone,
    /// `308` to the successor.
    Redirect,
}

/// A weighted traffic split: `to` upstreams get their `share`, `upstream` the rest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The other upstreams and their shares.
    pub to: Vec<SplitTarget>,
    /// Keep a caller on one side: hash this instead of choosing at random.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// A request header naming the upstream (of this route) to use: for testers. Trusted from
    /// every client that can reach the route, so only configure it where that is acceptable;
    /// it is removed before forwarding.
    #[serde(default)]
    pub override_header: Option<String>,
}

/// One side of a split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// The upstream.
    pub upstream: Spanned<String>,
    /// Its share of the route's requests (`5%`).
    pub share: Ratio,
}

/// What keeps a caller on one side of a split.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StickyConfig {
    /// The client's address.
    ClientIp,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// How an upstream picks an endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BalanceConfig {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin.
    WeightedRoundRobin,
    /// At random, by weight.
    Random,
    /// Power of two choices over requests in flight.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency.
    PeakEwma,
    /// Fewest requests in flight per unit of weight.
    LeastConnections,
    /// Consistent hashing (Maglev) of a request key.
    Hash(HashConfig),
}

/// What a `hash` balance keys on.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashConfig {
    /// The client's address.
    ClientIp,
    /// The request path.
    Path,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// Sticky sessions: a cookie pins a client to the endpoint that first answered it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySessionConfig {
    /// The cookie's name.
    pub cookie: String,
    /// Its `Max-Age` (default: a session cookie).
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

/// Where an upstream's endpoints are discovered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Follow DNS records.
    pub dns: DnsDiscoveryConfig,
}

/// DNS discovery: A/AAAA records of `name` on `port`, or the SRV records `srv`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscoveryConfig {
    /// A host name whose A/AAAA records are the endpoints (with `port`).
    #[serde(default)]
    pub name: Option<String>,
    /// The port of every address of `name`.
    #[serde(default)]
    pub port: Option<u16>,
    /// An SRV name (`_http._tcp.api.internal`): targets, ports and weights from the records.
    #[serde(default)]
    pub srv: Option<String>,
    /// `any` (default), `ipv4` or `ipv6`.
    #[serde(default)]
    pub family: FamilyConfig,
    /// Name servers (`10.0.0.2`, `10.0.0.2:5353`); default: `/etc/resolv.conf`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Re-resolve no sooner than this after an answer, whatever its TTL (default 1s).
    #[serde(default)]
    pub min_ttl: Option<HumanDuration>,
    /// Re-resolve no later than this (default 5m).
    #[serde(default)]
    pub max_ttl: Option<HumanDuration>,
    /// Wait this long for each answer (default 2s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Endpoints are `https://` (set `tls.server_name` to verify certificates by name).
    #[serde(default)]
    pub https: bool,
}

/// Address families DNS discovery asks for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FamilyConfig {
    /// A and AAAA.
    #[default]
    Any,
    /// A only.
    Ipv4,
    /// AAAA only.
    Ipv6,
}

/// Active health checks of an upstream's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `GET` this path; without it, the check is a TCP (and TLS) connect.
    #[serde(default)]
    pub path: Option<String>,
    /// Passing statuses: `200`, `200-299` (default 200-399).
    #[serde(default)]
    pub expect: Vec<String>,
    /// Between checks (default 5s).
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    /// A slower check failed (default 1s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Passes in a row to become healthy (default 2).
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Failures in a row to become unhealthy (default 3).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Intervals vary by up to this share (default 10%).
    #[serde(default)]
    pub jitter: Option<Ratio>,
}

/// Passive outlier detection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Eject after this many answers `>= 500` in a row (default 5; 0: off).
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many `502`-`504`, connect failures and timeouts in a row (default 5;
    /// 0: off).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// First ejection's length (default 30s), multiplied by the number of ejections.
    #[serde(default)]
    pub base_ejection: Option<HumanDuration>,
    /// Longest ejection (default 300s).
    #[serde(default)]
    pub max_ejection: Option<HumanDuration>,
    /// Most endpoints ejected at once (default 10%; at least one).
    #[serde(default)]
    pub max_ejection_percent: Option<Ratio>,
    /// Ejection by success rate; off when absent.
    #[serde(default)]
    pub success_rate: Option<SuccessRateConfig>,
}

/// Success-rate ejection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateConfig {
    /// Between sweeps (default 10s).
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    /// Requests an endpoint needs per interval to count (default 100).
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// Endpoints with enough requests needed (default 5).
    #[serde(default)]
    pub min_endpoints: Option<usize>,
    /// Standard deviations below the mean that make an outlier (default 1.9).
    #[serde(default)]
    pub stdev_factor: Option<f64>,
}

/// TLS to an upstream's `https://` endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM root certificates to verify the upstream against (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The name sent in SNI and verified (default: each endpoint's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) for upstream mTLS, with `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key: Option<String>,
}

/// Hedging for one upstream (`gateway_breaker::HedgeLayer`): idempotent requests with a buffered
/// body (see `retry.max_body_bytes`) still unanswered after `after` get a second copy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// How long to wait before sending the hedge (a latency percentile of the upstream, say).
    pub after: HumanDuration,
    /// Hedges may add at most this share of recent requests.
    #[serde(default = "default_hedge_budget")]
    pub budget: Ratio,
    /// Hedges always allowed per second, on top of the budget.
    #[serde(default = "default_hedge_min")]
    pub min_per_sec: u32,
}

fn default_hedge_budget() -> Ratio {
    Ratio(0.1)
}

fn default_hedge_min() -> u32 {
    1
}

/// Retries for one upstream (`gateway_breaker::RetryLayer`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfigYaml {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Retries may add at most this share of recent requests: `20%`.
    pub budget: Ratio,
    /// Retries always allowed per second, on top of the budget.
    pub min_per_sec: u32,
    /// What is retried (idempotent methods): status codes, `timeout`, `reset`; `connect_error`
    /// (any method) is always retried.
    pub on: Vec<String>,
    /// Backoff base (doubles per retry, full jitter).
    pub backoff: HumanDuration,
    /// Backoff ceiling.
    pub max_backoff: HumanDuration,
    /// The longest `Retry-After` waited for.
    pub retry_after_cap: HumanDuration,
    /// Request bodies up to this size are buffered for replay.
    pub max_body_bytes: ByteSize,
    /// No retry starts later than this after the request arrived.
    pub deadline: Option<HumanDuration>,
}

impl Default for RetryConfigYaml {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget: Ratio(0.2),
            min_per_sec: 10,
            on: vec![
                "connect_error".into(),
                "502".into(),
                "503".into(),
                "504".into(),
                "timeout".into(),
                "reset".into(),
            ],
            backoff: HumanDuration(Duration::from_millis(25)),
            max_backoff: HumanDuration(Duration::from_secs(1)),
            retry_after_cap: HumanDuration(Duration::from_secs(1)),
            max_body_bytes: ByteSize(64 * 1024),
            deadline: None,
        }
    }
}

/// A circuit breaker for one upstream (`gateway_breaker::CircuitBreakerLayer`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// The window: a number of calls (`100`) or a duration (`60s`).
    pub window: WindowConfig,
    /// Calls needed in the window before the rates can trip it.
    pub minimum_calls: u32,
    /// Failure rate that trips it: `50%` or `0.5`.
    pub failure_rate: Ratio,
    /// Calls slower than this count as slow (off when absent).
    pub slow_call_duration: Option<HumanDuration>,
    /// Slow-call rate that trips it.
    pub slow_call_rate: Ratio,
    /// Trip after this many failures in a row instead of using the rates.
    pub consecutive_failures: Option<u32>,
    /// First open period.
    pub open_for: HumanDuration,
    /// Longest open period after repeated trips (each failed probe doubles the period).
    pub max_open_for: HumanDuration,
    /// Probe calls allowed when half-open.
    pub half_open_probes: u32,
    /// Count `429` answers as failures.
    pub rate_limited_is_failure: bool,
    /// One breaker per endpoint (the balancer skips endpoints whose breaker is open) instead of
    /// one for the whole upstream.
    pub per_endpoint: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::Calls(100),
            minimum_calls: 20,
            failure_rate: Ratio(0.5),
            slow_call_duration: None,
            slow_call_rate: Ratio(1.0),
            consecutive_failures: None,
            open_for: HumanDuration(Duration::from_secs(30)),
            max_open_for: HumanDuration(Duration::from_secs(300)),
            half_open_probes: 3,
            rate_limited_is_failure: false,
            per_endpoint: false,
        }
    }
}

/// A breaker window: a number of calls or a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowConfig {
    /// The last N calls.
    Calls(usize),
    /// The calls of the last duration.
    Time(Duration),
}

impl<'de> Deserialize<'de> for WindowConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(usize),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n > 0 => Ok(Self::Calls(n)),
            Raw::Int(_) => Err(D::Error::custom("a window of calls must be at least 1")),
            Raw::Str(s) => parse_duration(&s).map(Self::Time).map_err(D::Error::custom),
        }
    }
}

/// A rate written `50%` or `0.5`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        let value = match Raw::deserialize(d)? {
            Raw::Num(n) => n,
            Raw::Str(s) => match s.trim().strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0).map_err(|_| {
                    D::Error::custom(format!("invalid rate `{s}`: expected 50% or 0.5"))
                })?,
                None => s.trim().parse::<f64>().map_err(|_| {
                    D::Error::custom(format!("invalid rate `{s}`: expected 50% or 0.5"))
                })?,
            },
        };
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(D::Error::custom("a rate is between 0% and 100%"))
        }
    }
}

/// The protocol spoken to an upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolConfig {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

/// What `Host` an upstream sees.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostConfig {
    /// The client's `Host`.
    #[default]
    Preserve,
    /// The endpoint's `host:port`.
    Endpoint,
    /// A fixed value: `host: { set: internal.svc }`.
    Set(String),
}

/// Upstream timeouts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// TCP connect timeout.
    pub connect: HumanDuration,
    /// Time from sending a request to receiving the response headers (per attempt).
    pub request: HumanDuration,
    /// Longest pause between two pieces of the response body before the stream is aborted.
    pub body: Option<HumanDuration>,
    /// Overall deadline for the response headers, retries included.
    pub total: Option<HumanDuration>,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: HumanDuration(Duration::from_secs(1)),
            request: HumanDuration(Duration::from_secs(15)),
            body: None,
            total: None,
        }
    }
}

/// Which forwarding headers the gateway sets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded`.
    pub forwarded: bool,
    /// The `Via` pseudonym; empty string for no `Via`.
    pub via: String,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            x_forwarded: true,
            forwarded: true,
            via: "gateway".to_owned(),
        }
    }
}

/// A route: what it matches, where it goes, how the path is rewritten.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A unique name: the route's id in metrics, logs and the admin API.
    pub name: String,
    /// What the route matches.
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    /// The upstream requests are sent to (with `split`: the one that gets the remainder).
    pub upstream: Spanned<String>,
    /// Shares of the route's traffic sent to other upstreams (canary releases, A/B tests).
    #[serde(default)]
    pub split: Option<Spanned<SplitConfig>>,
    /// Header transforms, request and response.
    #[serde(default)]
    pub transform: Option<Spanned<TransformConfig>>,
    /// The API version's lifecycle: deprecation, sunset, successor.
    #[serde(default)]
    pub version: Option<Spanned<VersionConfig>>,
    /// API versions: selection from the path, a header, the query or `Accept`, with an
    /// upstream and a lifecycle per version.
    #[serde(default)]
    pub versions: Option<Spanned<VersionsConfig>>,
    /// Request validation: JSON Schema for the body and parameters, or an OpenAPI document.
    #[serde(default)]
    pub validate: Option<Spanned<ValidateConfig>>,
    /// Answer with one JSON object composed from several upstream calls made at once.
    #[serde(default)]
    pub aggregate: Option<Spanned<AggregateConfig>>,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix (prefix routes) or the whole path (exact and template routes;
    /// `{name}` placeholders take template parameters).
    #[serde(default)]
    pub rewrite: Option<Spanned<String>>,
    /// Rate limits and quotas for this route.
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimitConfig>>,
    /// A shared HTTP cache (RFC 9111) in front of this route's upstream.
    #[serde(default)]
    pub cache: Option<Spanned<RouteCacheConfig>>,
    /// Authentication and roles for this route.
    #[serde(default)]
    pub auth: Option<Spanned<AuthConfig>>,
    /// Client IP allow/deny lists for this route.
    #[serde(default)]
    pub ip_filter: Option<Spanned<IpFilterConfig>>,
    /// `Upgrade` protocols proxied on this route (`websocket`); other upgrade requests are
    /// forwarded as plain requests with the `Upgrade` field removed.
    #[serde(default)]
    pub upgrades: Vec<String>,
}

/// What a route matches. Every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// `api.example.com` (exact) or `*.example.com` (any subdomain); case-insensitive, port
    /// ignored.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Path prefix, on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    /// Path template: `/users/{id}`, `/files/{*rest}`.
    #[serde(default)]
    pub path_template: Option<Spanned<String>>,
    /// Allowed methods; any when absent.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<Spanned<NameValueMatch>>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query: Vec<Spanned<NameValueMatch>>,
}

/// A header or query condition: present (no `value`) or equal to `value`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValueMatch {
    /// The field or parameter name.
    pub name: String,
    /// The exact value required; absent means "present with any value".
    #[serde(default)]
    pub value: Option<String>,
}

/// A duration written `250ms`, `5s`, `2m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(D::Error::custom)
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration `{s}`: expected a number and a unit (250ms, 5s, 2m, 1h)")
    })?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration `{s}` is too large")),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration `{s}` is too large")),
        _ => Err(format!(
            "invalid duration `{s}`: expected a unit of ms, s, m or h (250ms, 5s, 2m, 1h)"
        )),
    }
}

/// A size in bytes written `512`, `16KiB`, `10MiB`, `1GiB` (or `KB`/`MB`/`GB`, powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => parse_size(&s).map(ByteSize).map_err(D::Error::custom),
        }
    }
}

/// Parses `512`, `16KiB`, `10MiB`, `1GiB`, `10KB`, `5MB`, `1GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size `{s}`: expected a number of bytes (512, 16KiB, 10MiB)")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid size `{s}`: expected a unit of B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// The field, as a path (`routes[2].upstream`); empty when the YAML itself is malformed.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration was refused: every problem found, each with file, line, column and
/// field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name shown in messages.
    pub file: String,
    /// The problems.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: ", self.file, issue.line, issue.column)?;
            if !issue.field.is_empty() {
                write!(f, "{}: ", issue.field)?;
            }
            f.write_str(&issue.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and parses a configuration file, then validates it (see [`crate::Compiled`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            issues: vec![ConfigIssue {
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }],
        })?;
        Self::parse(&text, &file)
    }

    /// Parses configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let mut config = Self::parse_typed(text, file)?;
        config.source = serde_saphyr::from_str::<serde_json::Value>(text).unwrap_or_default();
        config.text = text.into();
        Ok(config)
    }

    fn parse_typed(text: &str, file: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str::<Config>(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| {
                (
                    u32::try_from(l.line()).unwrap_or(0),
                    u32::try_from(l.column()).unwrap_or(0),
                )
            });
            ConfigError {
                file: file.to_owned(),
                issues: vec![{
                    let message = plain_message(&e);
                    let mut field = field_path_at(text, line as usize, column as usize);
                    if message.starts_with("missing field") {
                        // The position is the start of the mapping that lacks the field, whose
                        // first key is not the culprit: name the mapping instead.
                        let cut = field.rfind('.').unwrap_or(if field.ends_with(']') {
                            field.len()
                        } else {
                            0
                        });
                        field.truncate(cut);
                    }
                    ConfigIssue {
                        line,
                        column,
                        field,
                        message,
                    }
                }],
            }
        })
    }
}

/// Splits a YAML line into (indentation, list-item dash present, first key).
fn yaml_line(line: &str) -> Option<(usize, bool, Option<&str>)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let indent = line.len() - trimmed.len();
    let (dash, rest) = match trimmed.strip_prefix("- ") {
        Some(r) => (true, r.trim_start()),
        None => (trimmed == "-", trimmed),
    };
    let key = rest.split_once(':').and_then(|(k, _)| {
        let k = k.trim().trim_matches(['"', '\'']);
        (!k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'))
        .then_some(k)
    });
    Some((indent, dash, key))
}

/// A best-effort field path (`routes[1].match.methods`) for a position in block-style YAML, so
/// that parse errors name the field as well as the line.
pub(crate) fn field_path_at(text: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return String::new();
    }
    let mut parts: Vec<String> = Vec::new();
    let target = lines[line - 1];
    let Some((indent, dash, key)) = yaml_line(target) else {
        return String::new();
    };
    // Inside a flow mapping on this line: the last `key:` before the column.
    let before = &target[..column.saturating_sub(1).min(target.len())];
    if let Some(brace) = before.find('{') {
        let inner = &before[brace + 1..];
        if let Some(k) = inner
            .rsplit([',', '{'])
            .next()
            .and_then(|seg| seg.split_once(':'))
            .map(|(k, _)| k.trim())
            && !k.is_empty()
        {
            parts.push(k.to_owned());
        }
    }
    if let Some(k) = key {
        parts.push(k.to_owned());
    }
    let mut cur = indent;
    let mut item_line = dash.then_some(line - 1);
    let mut i = line - 1;
    loop {
        if let Some(item) = item_line.take() {
            // Count earlier items at the same indentation to find this item's index.
            let mut index = 0;
            for l in lines[..item].iter().rev() {
                match yaml_line(l) {
                    Some((ind, true, _)) if ind == cur => index += 1,
                    Some((ind, _, _)) if ind < cur => break,
                    _ => {}
                }
            }
            parts.push(format!("[{index}]"));
        }
        let mut found = false;
        while i > 0 {
            i -= 1;
            if let Some((ind, d, k)) = yaml_line(lines[i])
                && ind < cur
            {
                cur = ind;
                if d {
                    item_line = Some(i);
                } else if let Some(k) = k {
                    parts.push(k.to_owned());
                }
                found = true;
                break;
            }
        }
        if !found {
            break;
        }
    }
    parts.reverse();
    let mut out = String::new();
    for p in parts {
        if !p.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(&p);
    }
    out
}

/// The error message without the rendered source snippet.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default().trim();
    // Messages look like "error: line 3 column 5: unknown field ..." depending on the error kind;
    // keep the part after the location, which the caller reports separately.
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    match msg.find(": ") {
        Some(i) if msg[..i].contains("line") => msg[i + 2..].to_owned(),
        _ => msg.to_owned(),
    }
}

/// Collects located validation issues.
#[derive(Debug, Default)]
pub(crate) struct Issues(pub(crate) Vec<ConfigIssue>);

impl Issues {
    pub(crate) fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(ConfigIssue {
            line: u32::try_from(spanned.referenced.line()).unwrap_or(0),
            column: u32::try_from(spanned.referenced.column()).unwrap_or(0),
            field: field.into(),
            message: message.into(),
        });
    }

    pub(crate) fn nowhere(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks that route names are unique.
pub(crate) fn check_unique_names(routes: &[Spanned<RouteConfig>], issues: &mut Issues) {
    let mut seen = HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        if !seen.insert(route.value.name.as_str()) {
            issues.at(
                route,
                format!("routes[{i}].name"),
                format!("duplicate route name `{}`", route.value.name),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "listeners:\n  - bind: 127.0.0.1:1\n  - bind: nope\nroutes:\n  - name: a\n    upstream: x\n  - name: b\n    match: { path: /x, methods: [GET] }\n    upstream: y\n";

    #[test]
    fn field_paths_follow_block_and_flow_structure() {
        assert_eq!(field_path_at(YAML, 3, 11), "listeners[1].bind");
        assert_eq!(field_path_at(YAML, 6, 15), "routes[0].upstream");
        assert_eq!(field_path_at(YAML, 8, 33), "routes[1].match.methods");
        assert_eq!(field_path_at(YAML, 9, 5), "routes[1].upstream");
        assert_eq!(field_path_at(YAML, 1, 1), "listeners");
    }

    #[test]
    fn missing_fields_name_the_mapping_that_lacks_them() {
        let err = Config::parse("routes: []\n", "gw.yaml").unwrap_err();
        assert_eq!(err.to_string(), "gw.yaml:1:1: missing field `listeners`");
        let err = Config::parse(
            "listeners:\n  - bind: 127.0.0.1:1\nroutes:\n  - name: a\n    strip_prefix: true\n",
            "gw.yaml",
        )
        .unwrap_err();
        assert_eq!(err.issues[0].field, "routes[0]", "{err}");
        assert!(
            err.issues[0].message.contains("missing field `upstream`"),
            "{err}"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_size("16KiB").unwrap(), 16384);
        assert_eq!(parse_size("5MB").unwrap(), 5_000_000);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("1TB").is_err());
        assert!(
            parse_size("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn parse_errors_name_file_line_column_and_field() {
        let err = Config::parse(YAML, "gw.yaml").unwrap_err();
        assert_eq!(err.issues.len(), 1);
        assert_eq!(err.issues[0].line, 3);
        assert_eq!(err.issues[0].field, "listeners[1].bind");
        assert!(err.to_string().starts_with("gw.yaml:3:"), "{err}");
    }
}
