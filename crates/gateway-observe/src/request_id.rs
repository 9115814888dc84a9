//! Request ids: accept a trusted inbound id or make one, keep it in the request's extensions and
//! return it on the response.

use std::{
    collections::hash_map::RandomState,
    fmt,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use http::{HeaderName, HeaderValue, Request};

/// The request's id, in its extensions (and on the response, in the configured header).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where request ids come from.
#[derive(Clone, Debug)]
pub struct RequestIds {
    header: HeaderName,
    trust_inbound: bool,
    seed: RandomState,
    counter: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new(HeaderName::from_static("x-request-id"))
    }
}

impl RequestIds {
    /// Ids in `header`, always generated here (a client's id is replaced).
    pub fn new(header: HeaderName) -> Self {
        Self {
            header,
            trust_inbound: false,
            seed: RandomState::new(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Keep an inbound id when it is well formed (1 to 128 characters of `A-Z a-z 0-9 - _ . :`),
    /// for a gateway behind a proxy that sets it. Anything else is replaced.
    #[must_use]
    pub fn trust_inbound(mut self, yes: bool) -> Self {
        self.trust_inbound = yes;
        self
    }

    /// The header.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// A new id: 32 hex digits, unique in this process and unpredictable across processes.
    pub fn generate(&self) -> RequestId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut a = self.seed.build_hasher();
        a.write_u64(n);
        let mut b = self.seed.build_hasher();
        b.write_u64(!n);
        // Hex by hand: `format!` was a tenth of a cache hit's instructions.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, word) in [a.finish(), b.finish()].into_iter().enumerate() {
            for k in 0..16 {
                let nibble = (word >> (60 - 4 * k)) & 0xf;
                out[i * 16 + k] = HEX[usize::try_from(nibble).unwrap_or(0)];
            }
        }
        RequestId(Arc::from(std::str::from_utf8(&out).unwrap_or_default()))
    }

    /// The id for `req` (trusted inbound or new), inserted in its extensions and in its header
    /// (so the upstream sees the same id).
    pub fn assign<B>(&self, req: &mut Request<B>) -> RequestId {
        let inbound = self
            .trust_inbound
            .then(|| req.headers().get(&self.header))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .filter(|v| well_formed(v))
            .map(|v| RequestId(Arc::from(v)));
        let id = inbound.unwrap_or_else(|| self.generate());
        if let Ok(v) = HeaderValue::from_str(id.as_str()) {
            req.headers_mut().insert(self.header.clone(), v);
        }
        req.extensions_mut().insert(id.clone());
        id
    }
}

fn well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_inbound_ones_only_when_trusted_and_clean() {
        let ids = RequestIds::default();
        let a = ids.generate();
        let b = ids.generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        let mut req = Request::get("/")
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        assert_ne!(ids.assign(&mut req).as_str(), "abc-123", "not trusted");
        let trusting = RequestIds::default().trust_inbound(true);
        let mut req = Request::get("/")
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        assert_eq!(trusting.assign(&mut req).as_str(), "abc-123");
        assert_eq!(
            req.extensions().get::<RequestId>().unwrap().as_str(),
            "abc-123"
        );
        for bad in ["a b", "a\"b", "", &"x".repeat(129)] {
            let mut req = Request::get("/")
                .header("x-request-id", bad)
                .body(())
                .unwrap();
            assert_ne!(trusting.assign(&mut req).as_str(), bad);
        }
    }
}
