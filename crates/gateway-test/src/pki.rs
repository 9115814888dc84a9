//! Certificates for TLS tests: a CA generated per test, leaf certificates signed by it, written
//! as PEM files into a temporary directory that is removed on drop.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A DER certificate chain (end-entity first) and its PKCS#8 private key.
pub type Identity = (Vec<Vec<u8>>, Vec<u8>);

/// A test certificate authority and the directory its files go to.
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir).finish()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestCa {
    /// A new CA (common name `{name} test ca`), its certificate written to `ca.pem`.
    pub fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gateway-pki-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test ca"));
        let cert = params.self_signed(&key).expect("self-signed");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
        Self {
            dir,
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The path of `file` in this CA's directory (`ca.pem`, or a leaf's files).
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A leaf for `names` (DNS names, or IP addresses), written to `{file}.pem` and
    /// `{file}.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Identity {
        let sans = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
            })
            .collect();
        self.issue(file, sans)
    }

    /// A client certificate whose only SAN is the URI `uri` (a SPIFFE ID, say), not written.
    pub fn client_uri(&self, uri: &str) -> Identity {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("a URI"))];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (vec![cert.der().to_vec()], key.serialize_der())
    }

    fn issue(&self, file: &str, sans: Vec<SanType>) -> Identity {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).expect("write pem");
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).expect("write key");
        (vec![cert.der().to_vec()], key.serialize_der())
    }
}
