//! Facts about a TLS connection that layers above it need.

use std::{fmt, sync::Arc};

/// The client certificate a TLS listener verified (DER, the end-entity certificate), in the
/// request extensions. Only a TLS layer that has verified the chain against its trusted CAs may
/// insert it; authentication layers (gateway-auth's mTLS provider) turn it into a `Principal`.
///
/// ```
/// use gateway_core::ClientCertificate;
///
/// let cert = ClientCertificate::new(vec![0x30, 0x82]);
/// assert_eq!(cert.der(), &[0x30, 0x82]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertificate(Arc<[u8]>);

impl ClientCertificate {
    /// Wraps a verified end-entity certificate (DER).
    pub fn new(der: impl Into<Arc<[u8]>>) -> Self {
        Self(der.into())
    }

    /// The certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientCertificate({} bytes)", self.0.len())
    }
}
