//! The origins an app may send HTTP requests to (`allowed_outbound_hosts`), as an operator
//! writes them: `scheme://host[:port]`, Spin's model.
//!
//! - `scheme` is `http` or `https`; a request must use the same one.
//! - `host` is a name (matched without regard to case), an IPv4 address or a bracketed IPv6
//!   address. `*.example.com` matches every name below `example.com`, not `example.com`
//!   itself. There is no wildcard for every host: an app reaches only what is listed.
//! - `port` is a number, or `*` for any port; without it, only the scheme's default port
//!   (80 or 443) matches.
//!
//! Nothing else is allowed: no path, query, user name or trailing text, so that an entry can
//! never look narrower than it is (`https://api.example.com/v1` would allow all of the host).

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One entry of `allowed_outbound_hosts`, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutboundOrigin {
    /// `http` or `https`.
    pub scheme: HttpScheme,
    /// Which host names or addresses match.
    pub host: HostPattern,
    /// Which ports match.
    pub port: PortPattern,
}

/// The scheme of an allowed origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl HttpScheme {
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        }
    }

    /// The port a URL of this scheme without one means.
    pub fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }
}

/// The host part of an allowed origin, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name or address (IPv6 in brackets, as in a URL).
    Exact(String),
    /// Any name ending in `.` followed by this suffix (written `*.suffix`).
    Below(String),
}

/// The port part of an allowed origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// Only this port (the scheme's default when the entry names none).
    Exact(u16),
    /// Any port (written `:*`).
    Any,
}

impl OutboundOrigin {
    /// Whether a request to `scheme://host:port` is allowed by this entry; `host` as in a
    /// URL (IPv6 in brackets), any case.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_matches = match &self.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Below(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        };
        let port_matches = match self.port {
            PortPattern::Exact(p) => p == port,
            PortPattern::Any => true,
        };
        self.scheme.as_str() == scheme && host_matches && port_matches
    }
}

impl FromStr for OutboundOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "`{s}` is not an allowed outbound host like `https://api.example.com` or \
                 `http://127.0.0.1:8080`: {why}"
            )
        };
        let (scheme, authority) = s
            .split_once("://")
            .ok_or_else(|| bad("it needs a scheme"))?;
        let scheme = match scheme {
            "http" => HttpScheme::Http,
            "https" => HttpScheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("only scheme, host and port may be given (no path)"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (addr, rest) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
                addr.parse::<Ipv6Addr>()
                    .map_err(|_| bad("not an IPv6 address"))?;
                (&authority[..addr.len() + 2], rest.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let host = host.to_ascii_lowercase();
        let host = if host.starts_with('[') {
            HostPattern::Exact(host)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_name(suffix).map_err(&bad)?;
            HostPattern::Below(suffix.to_owned())
        } else {
            check_name(&host).map_err(&bad)?;
            HostPattern::Exact(host)
        };
        let port = match port {
            None if authority.len() > host_len(&host) => {
                return Err(bad("unexpected text after the host"));
            }
            None => PortPattern::Exact(scheme.default_port()),
            Some("*") => PortPattern::Any,
            Some(port) => PortPattern::Exact(
                port.parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1-65535 or `*`"))?,
            ),
        };
        Ok(Self { scheme, host, port })
    }
}

/// The length of the host as written (`*.` included), to tell trailing text apart.
fn host_len(host: &HostPattern) -> usize {
    match host {
        HostPattern::Exact(h) => h.len(),
        HostPattern::Below(suffix) => suffix.len() + 2,
    }
}

/// Refuses what cannot be a host name or IPv4 address (wildcards anywhere but in front).
fn check_name(name: &str) -> Result<(), &'static str> {
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() {
        return Err("the host is missing");
    }
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("the host must be a name, an IPv4 address, `*.name` or `[IPv6]`");
    }
    Ok(())
}

impl TryFrom<String> for OutboundOrigin {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<OutboundOrigin> for String {
    fn from(origin: OutboundOrigin) -> String {
        origin.to_string()
    }
}

impl fmt::Display for OutboundOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Exact(h) => f.write_str(h)?,
            HostPattern::Below(suffix) => write!(f, "*.{suffix}")?,
        }
        match self.port {
            PortPattern::Exact(p) if p == self.scheme.default_port() => Ok(()),
            PortPattern::Exact(p) => write!(f, ":{p}"),
            PortPattern::Any => f.write_str(":*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> OutboundOrigin {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn an_origin_matches_its_scheme_host_and_port_only() {
        let api = origin("https://API.example.com");
        assert!(api.allows("https", "api.example.com", 443));
        assert!(api.allows("https", "Api.Example.COM", 443));
        assert!(!api.allows("http", "api.example.com", 443));
        assert!(!api.allows("https", "api.example.com", 8443));
        assert!(!api.allows("https", "example.com", 443));
        assert!(!api.allows("https", "api.example.com.evil.net", 443));

        let local = origin("http://127.0.0.1:8080");
        assert!(local.allows("http", "127.0.0.1", 8080));
        assert!(!local.allows("http", "127.0.0.1", 80));
        assert!(!local.allows("http", "127.0.0.2", 8080));

        let v6 = origin("http://[::1]:*");
        assert!(v6.allows("http", "[::1]", 1));
        assert!(v6.allows("http", "[::1]", 65535));
        assert!(!v6.allows("https", "[::1]", 443));
    }

    #[test]
    fn a_wildcard_covers_names_below_not_the_name_itself() {
        let below = origin("https://*.example.com");
        assert!(below.allows("https", "a.example.com", 443));
        assert!(below.allows("https", "a.b.example.com", 443));
        assert!(!below.allows("https", "example.com", 443));
        assert!(!below.allows("https", "badexample.com", 443));
        assert!(!below.allows("https", ".example.com", 443));
    }

    #[test]
    fn entries_print_as_written() {
        for s in [
            "https://api.example.com",
            "http://127.0.0.1:8080",
            "https://*.example.com:*",
            "http://[::1]:81",
        ] {
            assert_eq!(origin(s).to_string(), s);
        }
        assert_eq!(
            origin("http://example.com:80").to_string(),
            "http://example.com"
        );
    }

    #[test]
    fn anything_broader_or_stranger_is_refused() {
        for s in [
            "api.example.com",
            "ftp://example.com",
            "https://*",
            "https://*:*",
            "https://a.*.com",
            "https://*example.com",
            "https://example.com/v1",
            "https://example.com/",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:http",
            "https://",
            "http://[::1",
            "http://[nope]:80",
            "http://[::1]x",
            "https://exa mple.com",
        ] {
            let err = s.parse::<OutboundOrigin>().unwrap_err();
            assert!(err.contains(s), "{s}: {err}");
        }
    }
}
