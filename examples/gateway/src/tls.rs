//! TLS termination for public listeners (rustls with aws-lc-rs): certificates chosen by SNI,
//! ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 with rustls' safe defaults (or 1.3 only), and client
//! certificates verified against configured CAs, optionally or always.
//!
//! A verified client certificate goes into each request's extensions as a
//! [`gateway_core::ClientCertificate`], where `gateway-auth`'s mTLS provider turns it into a
//! `Principal`. Certificates are files named by the configuration, so a reload (or the file watch)
//! picks up renewed ones; handshakes already done keep theirs.

use std::{fmt, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use x509_cert::{
    Certificate,
    der::Decode,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::config::{ClientAuthMode, Issues, TlsConfig, TlsVersion};

/// One listener's TLS settings, compiled.
pub(crate) struct ListenerTls {
    /// The acceptor (shares the server config).
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// Client certificates are asked for: the request's host must then be the name the client
    /// gave in SNI (else `421`), so a handshake made for one name is not used for another.
    pub(crate) client_auth: bool,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Certificates by name; the first one also answers handshakes without SNI or with an unknown
/// name.
#[derive(Debug)]
struct SniResolver {
    /// (exact names, wildcard suffixes such as `.example.com`, the key).
    certs: Vec<(Vec<String>, Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let first = self.certs.first().map(|(_, _, k)| k.clone());
        let Some(name) = hello.server_name() else {
            return first;
        };
        let name = name.to_ascii_lowercase();
        let exact = self
            .certs
            .iter()
            .find(|(names, _, _)| names.contains(&name));
        let wildcard = || {
            let parent = &name[name.find('.')?..];
            self.certs
                .iter()
                .find(|(_, wild, _)| wild.iter().any(|w| w == parent))
        };
        exact.or_else(wildcard).map(|(_, _, k)| k.clone()).or(first)
    }
}

/// The DNS names a certificate is for: its DNS SANs, or its CN when it has no SANs.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    match tbs.get_extension::<SubjectAltName>() {
        Err(e) => Err(format!("unreadable subject alternative names: {e}")),
        Ok(Some((_, SubjectAltName(sans)))) => Ok(sans
            .iter()
            .filter_map(|san| match san {
                GeneralName::DnsName(d) => Some(d.to_string().to_ascii_lowercase()),
                _ => None,
            })
            .collect()),
        Ok(None) => Ok(tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().to_ascii_lowercase())
            .into_iter()
            .collect()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads `file` as PEM certificates.
fn read_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read `{file}`: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{file}` is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{file}` holds no certificate"));
    }
    Ok(certs)
}

/// Compiles a listener's `tls` block; problems are reported under `field`.
pub(crate) fn compile(
    field: &str,
    spanned: &serde_saphyr::Spanned<crate::config::ListenerConfig>,
    tls: &TlsConfig,
    issues: &mut Issues,
) -> Option<Arc<ListenerTls>> {
    let provider = provider();
    let mut certs = Vec::new();
    if tls.certificates.is_empty() {
        issues.at(
            spanned,
            format!("{field}.certificates"),
            "at least one certificate is required",
        );
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        let at = format!("{field}.certificates[{i}]");
        let chain = match read_certs(&c.cert) {
            Ok(chain) => chain,
            Err(e) => {
                issues.at(spanned, format!("{at}.cert"), e);
                continue;
            }
        };
        let key = match PrivateKeyDer::from_pem_file(&c.key) {
            Ok(key) => key,
            Err(e) => {
                issues.at(
                    spanned,
                    format!("{at}.key"),
                    format!("cannot read a private key from `{}`: {e}", c.key),
                );
                continue;
            }
        };
        let names = match dns_names(&chain[0]) {
            Ok(names) if !names.is_empty() => names,
            Ok(_) => {
                issues.at(
                    spanned,
                    format!("{at}.cert"),
                    "the certificate names no DNS name (subject alternative name or CN)",
                );
                continue;
            }
            Err(e) => {
                issues.at(spanned, format!("{at}.cert"), e);
                continue;
            }
        };
        match CertifiedKey::from_der(chain, key, &provider) {
            Ok(key) => {
                let (wild, exact): (Vec<String>, Vec<String>) =
                    names.into_iter().partition(|n| n.starts_with("*."));
                let wild = wild.into_iter().map(|w| w[1..].to_owned()).collect();
                certs.push((exact, wild, Arc::new(key)));
            }
            Err(e) => issues.at(
                spanned,
                format!("{at}.key"),
                format!("the key does not fit the certificate: {e}"),
            ),
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = match ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
    {
        Ok(b) => b,
        Err(e) => {
            issues.at(spanned, format!("{field}.min_version"), e.to_string());
            return None;
        }
    };
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            match read_certs(&ca.ca) {
                Ok(list) => {
                    for c in list {
                        if let Err(e) = roots.add(c) {
                            issues.at(
                                spanned,
                                format!("{field}.client_auth.ca"),
                                format!("not a usable CA certificate: {e}"),
                            );
                        }
                    }
                }
                Err(e) => issues.at(spanned, format!("{field}.client_auth.ca"), e),
            }
            if roots.is_empty() {
                return None;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match ca.mode {
                ClientAuthMode::Required => verifier,
                ClientAuthMode::Optional => verifier.allow_unauthenticated(),
            };
            match verifier.build() {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    issues.at(spanned, format!("{field}.client_auth"), e.to_string());
                    return None;
                }
            }
        }
    };
    if certs.len() != tls.certificates.len() {
        return None;
    }
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(Arc::new(ListenerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        client_auth: tls.client_auth.is_some(),
    }))
}

/// In a request's extensions on listeners with client authentication: the SNI name the
/// connection's handshake was made for, which the request's host must match.
#[derive(Clone, Debug)]
pub(crate) struct RequiredSni(pub(crate) Arc<str>);

/// Whether the request's host (without port) is the SNI name.
pub(crate) fn host_matches_sni(host: &str, sni: &str) -> bool {
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    host.eq_ignore_ascii_case(sni)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_without_port_and_case() {
        assert!(host_matches_sni("API.example.com:8443", "api.example.com"));
        assert!(host_matches_sni("api.example.com", "api.example.com"));
        assert!(!host_matches_sni("admin.example.com", "api.example.com"));
        assert!(!host_matches_sni("api.example.com.evil", "api.example.com"));
    }
}
