//! JSON Web Tokens (RFC 7519) as bearer credentials, with the checks of RFC 8725.
//!
//! - Algorithms come from a per-provider allowlist; a token's `alg` must be on it *and* match the
//!   family of the key that verifies it (an HMAC token is never checked against a public key, so
//!   key confusion is impossible); `none` does not exist here.
//! - `exp` is required, `nbf` checked, `iss` and `aud` (string or array) checked when configured,
//!   with a leeway; `sub` is required (it becomes the principal's subject).
//! - A token with a `crit` header is refused (no extension is understood); `jku`, `x5u`, `jwk`
//!   and `x5c` headers are ignored: keys come only from the provider's configuration, chosen by
//!   `kid`.
//! - Tokens longer than `max_token_bytes` (8 KiB) are refused before parsing. Two
//!   `Authorization` headers are refused.
//! - Scopes come from `scope` (space-separated string) or `scp` (array of strings); roles from a
//!   configured claim path (array of strings). Wrong types are not coerced: a malformed `scope`
//!   refuses the token, a roles claim that is not an array of strings grants no role. String claims
//!   become principal attributes named `jwt.<claim>` (the verified `iss` is `jwt.iss`).
//! - One provider per identity provider on a route: a token another provider's keys would verify
//!   is refused by this one (`any_of` with two JWT providers does not work yet).
//! - Verified tokens are cached (by SHA-256, up to 10,000, each until its `exp`), so a client
//!   repeating its token costs a hash and a lookup instead of a signature check.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use gateway_core::{AuthMethod, Principal};
use http::{HeaderValue, header::AUTHORIZATION, request::Parts};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{Jwk, JwkSet},
};
use serde_json::Value;
use sha2::Digest;

use crate::{AuthFailure, Authenticate, Credential};

pub(crate) struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The signing key of a JWK: `Ok(None)` for keys that are not signing keys (`use: enc`, an
/// algorithm that is not a signature), never used for any algorithm.
pub(crate) fn key_from_jwk(jwk: &Jwk) -> Result<Option<Key>, String> {
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => match Algorithm::from_str(&a.to_string()) {
            Ok(a) => Some(a),
            Err(_) => return Ok(None),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
        format!(
            "unusable JWK{}: {e}",
            jwk.common
                .key_id
                .as_deref()
                .map(|k| format!(" `{k}`"))
                .unwrap_or_default()
        )
    })?;
    Ok(Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    }))
}

/// Why a JWT provider could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfigError(String);

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JwtConfigError {}

/// Builder of a [`JwtAuth`].
#[derive(Default)]
pub struct JwtAuthBuilder {
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    max_token_bytes: usize,
    roles_claim: Option<Vec<String>>,
    tier_claim: Option<String>,
    consumer_claim: Option<String>,
    cookie: Option<String>,
    cache_capacity: usize,
    #[cfg(feature = "jwks")]
    remote: Option<crate::jwks::Location>,
    #[cfg(feature = "jwks")]
    extra_roots: Vec<Vec<u8>>,
    #[cfg(feature = "jwks")]
    cooldown: Option<Duration>,
    errors: Vec<String>,
}

impl fmt::Debug for JwtAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthBuilder")
            .field("keys", &self.keys.len())
            .field("algorithms", &self.algorithms)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl JwtAuthBuilder {
    /// Accepts tokens signed with these algorithms (`RS256`, `ES256`, `EdDSA`, `HS256`, ...).
    pub fn algorithms<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, names: I) -> Self {
        for n in names {
            match Algorithm::from_str(n.as_ref()) {
                Ok(a) => self.algorithms.push(a),
                Err(_) => self
                    .errors
                    .push(format!("unknown algorithm `{}`", n.as_ref())),
            }
        }
        self
    }

    /// Adds the public keys of a JWK set (the JSON of a `jwks_uri` document).
    pub fn jwks_json(mut self, json: &str) -> Self {
        match serde_json::from_str::<JwkSet>(json) {
            Ok(set) => {
                for jwk in &set.keys {
                    self.add_jwk(jwk);
                }
            }
            Err(e) => self.errors.push(format!("invalid JWK set: {e}")),
        }
        self
    }

    fn add_jwk(&mut self, jwk: &Jwk) {
        match key_from_jwk(jwk) {
            Ok(Some(key)) => self.keys.push(key),
            Ok(None) => {}
            Err(e) => self.errors.push(e),
        }
    }

    /// Fetches the keys from this JWK set URL (`https://…/jwks.json`), kept fresh in the
    /// background; see [`crate::jwks`]. Needs the `jwks` feature.
    #[cfg(feature = "jwks")]
    pub fn jwks_uri(mut self, url: impl Into<String>) -> Self {
        self.remote = Some(crate::jwks::Location::Jwks(url.into()));
        self
    }

    /// Finds the keys through OpenID Connect discovery of `issuer` (which is also accepted as an
    /// `iss`). Needs the `jwks` feature.
    #[cfg(feature = "jwks")]
    pub fn oidc_issuer(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.issuers.push(issuer.clone());
        self.remote = Some(crate::jwks::Location::Issuer(issuer));
        self
    }

    /// Also trusts this root certificate (DER) for fetching keys (a private CA).
    #[cfg(feature = "jwks")]
    pub fn extra_root(mut self, der: Vec<u8>) -> Self {
        self.extra_roots.push(der);
        self
    }

    /// Also trusts the root certificates of this PEM document (a private CA) for fetching keys.
    #[cfg(feature = "jwks")]
    pub fn extra_roots_pem(mut self, pem: &[u8]) -> Self {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem) {
            match cert {
                Ok(c) => {
                    any = true;
                    self.extra_roots.push(c.to_vec());
                }
                Err(e) => self.errors.push(format!("unreadable CA certificate: {e}")),
            }
        }
        if !any {
            self.errors
                .push(String::from("no certificate in the CA file"));
        }
        self
    }

    /// The least time between two fetches asked for by unknown `kid`s (default 30 s).
    #[cfg(feature = "jwks")]
    pub fn refetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = Some(cooldown);
        self
    }

    /// Adds a shared HMAC secret (at least 32 bytes), optionally under a `kid`.
    pub fn hmac_secret(mut self, kid: Option<&str>, secret: &[u8]) -> Self {
        if secret.len() < 32 {
            self.errors
                .push(String::from("an HMAC secret needs at least 32 bytes"));
        }
        self.keys.push(Key {
            kid: kid.map(str::to_owned),
            alg: None,
            key: DecodingKey::from_secret(secret),
        });
        self
    }

    /// Accepts tokens from this issuer (`iss`), in addition to any already added. With none,
    /// `iss` is not checked.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts tokens for this audience (`aud`). With none, `aud` is not checked.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 60 s; at most 5 minutes, a larger one is a
    /// build error).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        if leeway > Duration::from_secs(300) {
            self.errors
                .push(String::from("the leeway is at most 5 minutes"));
        }
        self.leeway = leeway;
        self
    }

    /// Longest token accepted (default 8 KiB).
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// The claim holding roles, as a dot path (`roles`, `realm_access.roles`).
    pub fn roles_claim(mut self, path: &str) -> Self {
        self.roles_claim = Some(path.split('.').map(str::to_owned).collect());
        self
    }

    /// The claim holding the caller's tier (a string).
    pub fn tier_claim(mut self, claim: impl Into<String>) -> Self {
        self.tier_claim = Some(claim.into());
        self
    }

    /// The claim naming the consumer (a string; e.g. `client_id` or `azp`).
    pub fn consumer_claim(mut self, claim: impl Into<String>) -> Self {
        self.consumer_claim = Some(claim.into());
        self
    }

    /// Keeps up to `tokens` verified tokens (by SHA-256), so a repeated token is not verified
    /// again; an entry never outlives the token's `exp`. Default 10,000; 0 turns it off.
    pub fn cache(mut self, tokens: usize) -> Self {
        self.cache_capacity = tokens;
        self
    }

    /// Also reads the token from this cookie (the `Authorization: Bearer` header always works).
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = Some(name.into());
        self
    }

    /// Builds the provider, or says what is wrong: unknown algorithms, unusable keys, no key, no
    /// algorithm, or an algorithm no configured key can verify.
    pub fn build(self) -> Result<JwtAuth, JwtConfigError> {
        // Keys fetched later cannot be checked now.
        let fetched = self.remote_configured();
        let mut errors = self.errors;
        #[cfg(feature = "jwks")]
        let remote = match &self.remote {
            None => None,
            Some(loc) => match crate::jwks::RemoteKeys::new(
                loc.clone(),
                &self.extra_roots,
                self.cooldown.unwrap_or(Duration::from_secs(30)),
            ) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        #[cfg(not(feature = "jwks"))]
        let remote: Option<()> = None;
        if self.keys.is_empty() && !fetched {
            errors.push(String::from("no verification key"));
        }
        if self.algorithms.is_empty() {
            errors.push(String::from("no algorithm allowed"));
        }
        for a in &self.algorithms {
            if !fetched && !self.keys.iter().any(|k| k.key.family() == a.family()) {
                errors.push(format!("no configured key can verify `{a:?}`"));
            }
        }
        if !errors.is_empty() {
            return Err(JwtConfigError(errors.join("; ")));
        }
        #[cfg(not(feature = "jwks"))]
        let _ = remote;
        Ok(JwtAuth(Arc::new(Inner {
            #[cfg(feature = "jwks")]
            remote,
            cache: Cache::new(self.cache_capacity),
            keys: self.keys,
            algorithms: self.algorithms,
            issuers: self.issuers,
            audiences: self.audiences,
            leeway: self.leeway,
            max_token_bytes: self.max_token_bytes,
            roles_claim: self.roles_claim,
            tier_claim: self.tier_claim,
            consumer_claim: self.consumer_claim,
            cookie: self.cookie,
        })))
    }
}

/// One shard of the cache: token digest → (principal, `exp`).
type CacheShard = HashMap<[u8; 32], (Principal, u64)>;

/// Verified tokens, by SHA-256 of the token, each kept until its `exp` at the latest.
struct Cache {
    shards: Vec<Mutex<CacheShard>>,
    per_shard: usize,
}

const CACHE_SHARDS: usize = 16;

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard: capacity.div_ceil(CACHE_SHARDS),
        }
    }

    fn shard(
        &self,
        key: &[u8; 32],
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Principal, u64)>> {
        self.shards[usize::from(key[0]) % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &[u8; 32], now: u64) -> Option<Principal> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some((p, exp)) if *exp > now => Some(p.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: [u8; 32], principal: Principal, exp: u64, now: u64) {
        if self.per_shard == 0 || exp <= now {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard {
            shard.retain(|_, (_, e)| *e > now);
            if shard.len() >= self.per_shard {
                // Full of live tokens: start the shard over (the cache is only a shortcut).
                shard.clear();
            }
        }
        shard.insert(key, (principal, exp));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Inner {
    #[cfg(feature = "jwks")]
    remote: Option<Arc<crate::jwks::RemoteKeys>>,
    cache: Cache,
    keys: Vec<Key>,
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    max_token_bytes: usize,
    roles_claim: Option<Vec<String>>,
    tier_claim: Option<String>,
    consumer_claim: Option<String>,
    cookie: Option<String>,
}

/// Authenticates requests by JWT bearer token; see the [module docs](self).
///
/// ```
/// use gateway_auth::{Authenticate, Credential, JwtAuth};
///
/// let auth = JwtAuth::builder()
///     .algorithms(["HS256"])
///     .hmac_secret(None, b"an example secret of at least 32 bytes")
///     .issuer("https://idp.example")
///     .audience("api")
///     .build()
///     .unwrap();
/// let (mut parts, ()) = http::Request::builder()
///     .header("authorization", "Bearer not-a-token")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert!(matches!(auth.authenticate(&mut parts), Credential::Invalid(_)));
/// assert!(parts.headers.get("authorization").is_none(), "the token is never forwarded");
/// ```
#[derive(Clone)]
pub struct JwtAuth(Arc<Inner>);

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("keys", &self.0.keys.len())
            .field("algorithms", &self.0.algorithms)
            .field("issuers", &self.0.issuers)
            .field("audiences", &self.0.audiences)
            .finish_non_exhaustive()
    }
}

fn invalid(reason: &'static str) -> Credential {
    Credential::Invalid(AuthFailure::new("jwt", reason))
}

impl JwtAuthBuilder {
    fn remote_configured(&self) -> bool {
        #[cfg(feature = "jwks")]
        return self.remote.is_some();
        #[cfg(not(feature = "jwks"))]
        false
    }
}

impl JwtAuth {
    /// JWK set fetches made so far (0 without a remote key set).
    #[cfg(feature = "jwks")]
    pub fn jwks_fetches(&self) -> u64 {
        self.0.remote.as_ref().map_or(0, |r| r.fetches())
    }

    /// Early JWK set refetches asked for by tokens with unknown `kid`s (at most one per cooldown).
    #[cfg(feature = "jwks")]
    pub fn jwks_refetches_requested(&self) -> u64 {
        self.0
            .remote
            .as_ref()
            .map_or(0, |r| r.refetches_requested())
    }

    /// A builder (60 s leeway, 8 KiB tokens).
    pub fn builder() -> JwtAuthBuilder {
        JwtAuthBuilder {
            leeway: Duration::from_secs(60),
            max_token_bytes: 8 * 1024,
            cache_capacity: 10_000,
            ..JwtAuthBuilder::default()
        }
    }

    /// Takes the bearer tokens out of the request: `Authorization: Bearer` headers and the
    /// configured cookie. Other `Authorization` schemes are left alone.
    fn take_tokens(&self, parts: &mut Parts) -> Vec<String> {
        let mut found = Vec::new();
        // Anything whose scheme is `bearer` (any case, any whitespace after it) is this provider's
        // credential; a malformed one (no token, bytes that are not ASCII) is taken as an empty,
        // refused token, never left behind as "absent".
        let bearer = |v: &HeaderValue| {
            let b = v.as_bytes();
            let scheme_end = b
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(b.len());
            if !b[..scheme_end].eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            Some(
                v.to_str()
                    .map_or_else(|_| String::new(), |s| s[scheme_end..].trim().to_owned()),
            )
        };
        let all: Vec<HeaderValue> = parts
            .headers
            .get_all(AUTHORIZATION)
            .iter()
            .cloned()
            .collect();
        if all.iter().any(|v| bearer(v).is_some()) {
            if all.len() > 1 {
                // Two Authorization headers: ambiguous, whatever they say.
                found.push(String::new());
                found.push(String::new());
            } else if let Some(t) = bearer(&all[0]) {
                found.push(t);
            }
            parts.headers.remove(AUTHORIZATION);
        }
        if let Some(name) = &self.0.cookie {
            crate::apikey::take_cookie(parts, name, &mut found);
        }
        found
    }

    fn verify(&self, token: &str) -> Credential {
        let inner = &*self.0;
        if token.is_empty() || token.len() > inner.max_token_bytes {
            return invalid("malformed or oversized token");
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(p) = inner.cache.get(&digest, now) {
            return Credential::Valid(p);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return invalid("malformed token header");
        };
        if header.crit.is_some() {
            return invalid("token has a crit header");
        }
        if !inner.algorithms.contains(&header.alg) {
            return invalid("algorithm not allowed");
        }
        #[cfg(feature = "jwks")]
        let remote = inner.remote.as_ref().map(|r| {
            r.ensure_started();
            r.snapshot()
        });
        #[cfg(not(feature = "jwks"))]
        let remote: Option<Arc<Vec<Key>>> = None;
        let candidates: Vec<&Key> = inner
            .keys
            .iter()
            .chain(remote.iter().flat_map(|keys| keys.iter()))
            .filter(|k| k.key.family() == header.alg.family())
            .filter(|k| k.alg.is_none_or(|a| a == header.alg))
            // A token's `kid` selects the key with that id; keys configured without an id (an
            // HMAC secret, a JWK without `kid`) may verify any token of their family.
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(kid), Some(own)) => own == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            // Perhaps the keys rotated: fetch them again (at most once per cooldown).
            #[cfg(feature = "jwks")]
            if let Some(r) = &inner.remote {
                r.request_refresh();
            }
            return invalid("no key for this token");
        }
        let mut v = Validation::new(header.alg);
        v.leeway = inner.leeway.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !inner.issuers.is_empty() {
            v.set_issuer(&inner.issuers);
            required.push("iss");
        }
        if inner.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&inner.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let mut last = "bad signature";
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &v) {
                Ok(data) => {
                    let verified = self.principal(&data.claims);
                    if let (Credential::Valid(p), Some(exp)) =
                        (&verified, data.claims.get("exp").and_then(Value::as_u64))
                    {
                        // Kept until `exp` (without the leeway): never longer than the token.
                        inner.cache.put(digest, p.clone(), exp, now);
                    }
                    return verified;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => "bad signature",
                        K::ExpiredSignature => "expired token",
                        K::ImmatureSignature => "token not yet valid",
                        K::InvalidIssuer => "wrong issuer",
                        K::InvalidAudience => "wrong audience",
                        K::MissingRequiredClaim(_) => "missing required claim",
                        K::InvalidClaimFormat(_) => "malformed claim",
                        K::InvalidAlgorithm => "algorithm not allowed",
                        _ => "invalid token",
                    };
                    if last != "bad signature" {
                        // The signature verified; the claims are what is wrong.
                        break;
                    }
                }
            }
        }
        invalid(last)
    }

    fn principal(&self, claims: &serde_json::Map<String, Value>) -> Credential {
        let inner = &*self.0;
        let Some(sub) = claims.get("sub").and_then(Value::as_str) else {
            return invalid("malformed claim");
        };
        let mut scopes: Vec<&str> = Vec::new();
        match claims.get("scope") {
            None => {}
            Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(_) => return invalid("malformed claim"),
        }
        match claims.get("scp") {
            None => {}
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                scopes.extend(a.iter().filter_map(Value::as_str));
            }
            Some(_) => return invalid("malformed claim"),
        }
        let roles: Vec<&str> = inner
            .roles_claim
            .as_ref()
            .and_then(|path| {
                let mut v = claims.get(path.first()?)?;
                for seg in &path[1..] {
                    v = v.get(seg)?;
                }
                // Exactly an array of strings; anything else grants no role.
                let a = v.as_array()?;
                a.iter().map(Value::as_str).collect::<Option<Vec<&str>>>()
            })
            .unwrap_or_default();
        let mut p = Principal::new(sub, AuthMethod::Jwt)
            .with_scopes(scopes)
            .with_roles(roles);
        // Top-level string claims become attributes `jwt.<claim>` (for attribute rules), all of
        // them (the token size bounds them): the prefix keeps a claim from posing as an attribute
        // another provider sets (`cert.uri`, ...).
        for (k, v) in claims {
            if let Value::String(v) = v {
                p = p.with_attribute(format!("jwt.{k}"), v.as_str());
            }
        }
        if let Some(t) = inner
            .tier_claim
            .as_ref()
            .and_then(|c| claims.get(c)?.as_str())
        {
            p = p.with_tier(t);
        }
        if let Some(c) = inner
            .consumer_claim
            .as_ref()
            .and_then(|c| claims.get(c)?.as_str())
        {
            p = p.with_consumer(c);
        }
        Credential::Valid(p)
    }
}

impl Authenticate for JwtAuth {
    fn authenticate(&self, parts: &mut Parts) -> Credential {
        let mut tokens = self.take_tokens(parts);
        match tokens.len() {
            0 => Credential::Absent,
            1 => self.verify(&tokens.pop().unwrap_or_default()),
            _ => invalid("several tokens in one request"),
        }
    }

    fn challenge(&self, invalid: bool) -> &'static str {
        // RFC 6750 §3.1: no error code when no token was sent.
        if invalid {
            "Bearer realm=\"gateway\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"gateway\""
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_end_at_exp_and_memory_stays_bounded() {
        let cache = Cache::new(32);
        let p = Principal::new("u", AuthMethod::Jwt);
        cache.put([1; 32], p.clone(), 100, 50);
        assert!(cache.get(&[1; 32], 99).is_some());
        assert!(cache.get(&[1; 32], 100).is_none(), "not at exp");
        assert!(cache.get(&[1; 32], 99).is_none(), "and removed");
        cache.put([2; 32], p.clone(), 40, 50);
        assert!(
            cache.get(&[2; 32], 10).is_none(),
            "an expired token is never stored"
        );
        for i in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            cache.put(k, p.clone(), 1_000, 50);
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 32, "{held}");
    }
}
