use std::collections::BTreeMap;

/// How a [`Principal`] proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// An API key matched a consumer.
    ApiKey,
    /// A verified JSON Web Token.
    Jwt,
    /// A verified TLS client certificate.
    Mtls,
    /// An external authorization service vouched for the caller.
    External,
    /// No credential: the anonymous principal of a route that allows it.
    Anonymous,
}

/// Who the caller is, after authentication.
///
/// Written into request extensions by `gateway-auth`; read by rate limiting (per-consumer and
/// per-tier limits), caching (per-principal keys), transforms (templates such as
/// `${principal.sub}`) and logs. It never holds the credential itself.
///
/// # Example
///
/// ```
/// use gateway_core::{AuthMethod, Principal};
///
/// let p = Principal::new("user-42", AuthMethod::Jwt)
///     .with_consumer("acme")
///     .with_tier("gold")
///     .with_roles(["orders.read"])
///     .with_scopes(["orders:read", "orders:write"]);
/// assert!(p.has_role("orders.read"));
/// assert!(p.has_scope("orders:write"));
/// assert_eq!(p.consumer(), Some("acme"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    subject: String,
    consumer: Option<String>,
    tier: Option<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    attributes: BTreeMap<String, String>,
    method: AuthMethod,
}

impl Principal {
    /// A principal with a subject (the `sub` claim, a consumer id, a certificate subject).
    pub fn new(subject: impl Into<String>, method: AuthMethod) -> Self {
        Self {
            subject: subject.into(),
            consumer: None,
            tier: None,
            roles: Vec::new(),
            scopes: Vec::new(),
            attributes: BTreeMap::new(),
            method,
        }
    }

    /// Sets the consumer id (the configured consumer this caller belongs to).
    #[must_use]
    pub fn with_consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// Sets the tier (rate-limit and quota class).
    #[must_use]
    pub fn with_tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Sets the roles.
    #[must_use]
    pub fn with_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the OAuth scopes.
    #[must_use]
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds an attribute (a selected claim or certificate field).
    #[must_use]
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// The subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The consumer id, when the caller maps to a configured consumer.
    pub fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    /// The tier, when known.
    pub fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    /// The roles.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The selected attributes.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }

    /// How the caller authenticated.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// Whether the principal has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the principal has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// In a refusal's extensions: why authentication or authorization failed, in words from a fixed
/// set (`unknown key`, `expired token`, `missing role`, ...), for metrics and logs. Never holds
/// the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AuthFailureReason {
    /// The provider or check (`api_key`, `jwt`, `roles`, `rules`, ...).
    pub provider: &'static str,
    /// The reason.
    pub reason: &'static str,
}
