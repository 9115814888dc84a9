//! TLS to upstreams (feature `tls`): `https://` endpoints, verified against the system's roots or
//! configured ones, with SNI and, for upstream mTLS, a client certificate.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

/// How the gateway speaks TLS to an upstream's `https://` endpoints.
///
/// ```
/// use gateway_lb::UpstreamTls;
///
/// // The system's roots, and the name to send in SNI and verify (default: the endpoint's host).
/// let tls = UpstreamTls::system_roots().server_name("orders.internal");
/// # let _ = tls;
/// assert!(UpstreamTls::with_roots_pem(b"not pem").is_err());
/// ```
#[derive(Clone)]
pub struct UpstreamTls {
    roots: Arc<RootCertStore>,
    client_auth: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("roots", &self.roots.len())
            .field("client_auth", &self.client_auth.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl UpstreamTls {
    /// Verify against the operating system's root certificates (unreadable ones are skipped).
    pub fn system_roots() -> Self {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        Self {
            roots: Arc::new(roots),
            client_auth: None,
            server_name: None,
        }
    }

    /// Verify against these PEM root certificates only (a private CA).
    ///
    /// # Errors
    ///
    /// When the PEM holds no usable certificate.
    pub fn with_roots_pem(pem: &[u8]) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err(String::from("no certificate found"));
        }
        Ok(Self {
            roots: Arc::new(roots),
            client_auth: None,
            server_name: None,
        })
    }

    /// Present this certificate chain and key (PEM) to upstreams that ask for one (upstream mTLS).
    ///
    /// # Errors
    ///
    /// When the chain or the key cannot be read, or the key does not fit the certificate.
    pub fn client_auth_pem(mut self, chain: &[u8], key: &[u8]) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate chain is not valid PEM: {e}"))?;
        if chain.is_empty() {
            return Err(String::from("no client certificate found"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("cannot read the key: {e}"))?;
        // Check the pair now rather than at the first handshake.
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(RootCertStore::empty())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
        self.client_auth = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// The name sent in SNI and verified in the upstream's certificate, for every endpoint
    /// (default: each endpoint's own host).
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The rustls configuration for `alpn`.
    pub(crate) fn client_config(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .expect("checked when configured"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// The name to verify for an endpoint whose host is `host`.
    pub(crate) fn name_for(&self, host: &str) -> Option<ServerName<'static>> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned()).ok()
    }
}
