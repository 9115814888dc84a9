use std::{fmt, str::FromStr};

use http::uri::Authority;

/// One address an upstream's requests can be sent to: `host:port`.
///
/// Parsed from `127.0.0.1:9000`, `[::1]:9000`, `backend.internal:80` or `http://host:port`.
///
/// # Example
///
/// ```
/// use gateway_lb::Endpoint;
///
/// let e: Endpoint = "http://10.0.0.5:8080".parse().unwrap();
/// assert_eq!(e.authority().as_str(), "10.0.0.5:8080");
/// assert!("https://x:1".parse::<Endpoint>().is_err());
/// assert!("10.0.0.5".parse::<Endpoint>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    authority: Authority,
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
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| EndpointError {
            input: s.to_owned(),
            why,
        };
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some(_) => return Err(err("only http:// endpoints are supported")),
            None => s,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let authority: Authority = rest.parse().map_err(|_| err("expected host:port"))?;
        if authority.port_u16().is_none() {
            return Err(err("a port is required (host:port)"));
        }
        if rest.contains('@') {
            return Err(err("userinfo is not allowed"));
        }
        Ok(Self { authority })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.authority.as_str())
    }
}
