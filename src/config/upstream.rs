//! The upstream address: `http://host:port`, validated once at load.

use std::fmt;
use std::str::FromStr;

use http::Uri;
use http::uri::{Authority, Scheme};
use serde::{Deserialize, Deserializer};

/// Where requests are forwarded: a plain-HTTP origin without a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    authority: Authority,
}

impl Upstream {
    /// `host:port` of the upstream.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The scheme used to reach it.
    pub fn scheme(&self) -> Scheme {
        Scheme::HTTP
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            authority: Authority::from_static("127.0.0.1:3000"),
        }
    }
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s
            .parse()
            .map_err(|_| format!("`{s}` is not a URL like \"http://127.0.0.1:3000\""))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{s}`: https upstreams are not supported; usher speaks plain HTTP to a local service"
                ));
            }
            _ => return Err(format!("`{s}` must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{s}` has no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{s}`: credentials in the upstream URL are not supported"
            ));
        }
        if authority.host().is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        if uri.path() != "/" || uri.query().is_some() {
            return Err(format!(
                "`{s}`: the upstream URL must not have a path or query"
            ));
        }
        Ok(Upstream { authority })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_origins() {
        for (s, want) in [
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("http://app:80/", "http://app:80"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("http://localhost", "http://localhost"),
        ] {
            assert_eq!(s.parse::<Upstream>().unwrap().to_string(), want);
        }
    }

    #[test]
    fn rejects_the_rest() {
        for s in [
            "",
            "127.0.0.1:3000",
            "https://app",
            "http://",
            "http://u:p@app",
            "http://app/base",
            "http://app/?q",
            "unix:/run/app.sock",
        ] {
            assert!(s.parse::<Upstream>().is_err(), "{s:?}");
        }
    }
}
