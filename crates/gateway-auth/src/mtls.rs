//! mTLS identities: the verified client certificate becomes the caller's [`Principal`].
//!
//! The TLS layer verifies the chain and puts the end-entity certificate in the request
//! extensions as a [`ClientCertificate`]; this provider never verifies signatures itself. The
//! identity is, in order of preference, the first URI subject alternative name (a SPIFFE ID such
//! as `spiffe://example.org/ns/prod/sa/orders`), the first DNS name, the first e-mail address, or
//! — only when the certificate has no subject alternative names — the subject's common name. A
//! certificate with none of them, with an unreadable SAN extension, or that does not parse, is
//! refused. Identities can be mapped to consumers (with tier and roles) by their typed form
//! (`uri:…`, `dns:…`, `email:…`, `cn:…`), so one kind of name never stands in for another.
//!
//! Attributes: `cert.uri`, `cert.dns`, `cert.email`, `cert.cn` (the first of each present).
//!
//! A request without a certificate is [`Credential::Absent`]: on a route that requires
//! authentication that is a `401`.

use std::{collections::HashMap, sync::Arc};

use gateway_core::{AuthMethod, ClientCertificate, Principal};
use http::request::Parts;
use x509_cert::{
    Certificate,
    der::Decode,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::{AuthFailure, Authenticate, Consumer, Credential};

/// Authenticates requests by verified client certificate; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct MtlsAuth {
    consumers: Arc<HashMap<String, Arc<Consumer>>>,
}

/// What a certificate says about its holder.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    uri: Option<String>,
    dns: Option<String>,
    email: Option<String>,
    cn: Option<String>,
}

fn names(der: &[u8]) -> Option<Names> {
    let cert = Certificate::from_der(der).ok()?;
    let tbs = cert.tbs_certificate();
    let mut n = Names {
        cn: tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().into_owned()),
        ..Names::default()
    };
    match tbs.get_extension::<SubjectAltName>() {
        // An unreadable or duplicated SAN extension: refuse rather than fall back to the CN.
        Err(_) => return None,
        Ok(None) => {}
        Ok(Some((_, SubjectAltName(sans)))) => {
            // With SANs present the CN is not a name (RFC 6125 §6.4.4).
            n.cn = None;
            for san in sans {
                match san {
                    GeneralName::UniformResourceIdentifier(u) if n.uri.is_none() => {
                        n.uri = Some(u.to_string());
                    }
                    GeneralName::DnsName(d) if n.dns.is_none() => n.dns = Some(d.to_string()),
                    GeneralName::Rfc822Name(e) if n.email.is_none() => {
                        n.email = Some(e.to_string());
                    }
                    _ => {}
                }
            }
        }
    }
    Some(n)
}

impl MtlsAuth {
    /// Identities from certificates, not mapped to consumers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps a typed certificate identity to a consumer: `uri:spiffe://example.org/ns/prod/sa/orders`,
    /// `dns:orders.internal`, `email:ops@example.org` or `cn:legacy-client`. Requests with that
    /// identity get the consumer's id, tier and roles.
    pub fn consumer(mut self, identity: impl Into<String>, consumer: Arc<Consumer>) -> Self {
        Arc::make_mut(&mut self.consumers).insert(identity.into(), consumer);
        self
    }
}

impl Authenticate for MtlsAuth {
    fn authenticate(&self, parts: &mut Parts) -> Credential {
        let Some(cert) = parts.extensions.get::<ClientCertificate>() else {
            return Credential::Absent;
        };
        let Some(n) = names(cert.der()) else {
            return Credential::Invalid(AuthFailure::new("mtls", "unparseable client certificate"));
        };
        let Some(identity) = n
            .uri
            .clone()
            .or_else(|| n.dns.clone())
            .or_else(|| n.email.clone())
            .or_else(|| n.cn.clone())
        else {
            return Credential::Invalid(AuthFailure::new(
                "mtls",
                "client certificate without a name",
            ));
        };
        let mut p = Principal::new(identity.as_str(), AuthMethod::Mtls);
        for (k, v) in [
            ("cert.uri", &n.uri),
            ("cert.dns", &n.dns),
            ("cert.email", &n.email),
            ("cert.cn", &n.cn),
        ] {
            if let Some(v) = v {
                p = p.with_attribute(k, v.as_str());
            }
        }
        // Consumers are mapped by typed identity, so a common name that looks like a SPIFFE ID
        // never maps to the SPIFFE consumer.
        let typed = if n.uri.as_ref() == Some(&identity) {
            format!("uri:{identity}")
        } else if n.dns.as_ref() == Some(&identity) {
            format!("dns:{identity}")
        } else if n.email.as_ref() == Some(&identity) {
            format!("email:{identity}")
        } else {
            format!("cn:{identity}")
        };
        if let Some(c) = self.consumers.get(&typed) {
            p = p
                .with_consumer(c.id.as_str())
                .with_roles(c.roles.iter().map(String::as_str));
            if let Some(t) = &c.tier {
                p = p.with_tier(t.as_str());
            }
        }
        Credential::Valid(p)
    }

    fn challenge(&self, _invalid: bool) -> &'static str {
        // There is no HTTP challenge for a TLS credential; say which kind is expected.
        "Mutual TLS"
    }
}
