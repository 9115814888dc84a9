use std::{fmt, str::FromStr};

use http::uri::Authority;

/// One address an upstream's requests can be sent to: `host:port`, over TLS when written
/// `https://host:port` (feature `tls`).
///
/// Parsed from `127.0.0.1:9000`, `[::1]:9000`, `backend.internal:80`, `http://host:port` or
/// `https://host:port`.
///
/// # Example
///
/// ```
/// use gateway_lb::Endpoint;
///
/// let e: Endpoint = "http://10.0.0.5:8080".parse().unwrap();
/// assert_eq!(e.authority().as_str(), "10.0.0.5:8080");
/// assert!("ftp://x:1".parse::<Endpoint>().is_err());
/// assert!("10.0.0.5".parse::<Endpoint>().is_err());
/// // Credentials never appear in the error.
/// let err = "http://user:secret@10.0.0.5:80".parse::<Endpoint>().unwrap_err();
/// assert_eq!(err.to_string(), "invalid endpoint `http://***@10.0.0.5:80`: userinfo is not allowed");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    authority: Authority,
    tls: bool,
}

/// Error parsing an [`Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointError {
    input: String,
    why: &'static str,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid endpoint `{}`: {}", self.input, self.why)
    }
}

impl std::error::Error for EndpointError {}

impl Endpoint {
    /// The `host:port` authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Whether requests to this endpoint go over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Never echo credentials: `http://user:secret@host:80` is shown as `http://***@host:80`.
        let shown = match s.rsplit_once('@') {
            Some((before, after)) => {
                let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
                if scheme.is_empty() {
                    format!("***@{after}")
                } else {
                    format!("{scheme}://***@{after}")
                }
            }
            None => s.to_owned(),
        };
        let err = |why| EndpointError {
            input: shown.clone(),
            why,
        };
        let (tls, rest) = match s.split_once("://") {
            Some(("http", rest)) => (false, rest),
            #[cfg(feature = "tls")]
            Some(("https", rest)) => (true, rest),
            #[cfg(not(feature = "tls"))]
            Some(("https", _)) => {
                return Err(err("https:// endpoints need gateway-lb's `tls` feature"));
            }
            Some(_) => return Err(err("only http:// and https:// endpoints are supported")),
            None => (false, s),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(err("userinfo is not allowed"));
        }
        let authority: Authority = rest.parse().map_err(|_| err("expected host:port"))?;
        if authority.port_u16().is_none() {
            return Err(err("a port is required (host:port)"));
        }
        Ok(Self { authority, tls })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("https://")?;
        }
        f.write_str(self.authority.as_str())
    }
}
