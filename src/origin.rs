//! URL rules shared by the layer and the token client: which URLs are accepted
//! (`https://`, or `http://` to a loopback host only) and the origin guard that
//! keeps the token away from any other host.

use std::net::IpAddr;

use http::{Uri, uri::Scheme};

use crate::error::BuildError;

/// A scheme, host and port, compared exactly (hosts case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute URI; `None` for a relative one.
    pub(crate) fn of(uri: &Uri) -> Option<Self> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Self { https, host, port })
    }

    /// Whether `uri` is this origin. Compares without allocating.
    pub(crate) fn matches(&self, uri: &Uri) -> bool {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return false,
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        https == self.https
            && port == self.port
            && uri
                .host()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
    }
}

/// Parses an absolute URL and applies the https rule: `http://` only for
/// `localhost` and loopback addresses.
pub(crate) fn check_url(url: &str, what: &'static str) -> Result<Uri, BuildError> {
    let uri: Uri = url.parse().map_err(|_| BuildError::InvalidUrl {
        what,
        reason: "does not parse",
    })?;
    let scheme = uri.scheme().ok_or(BuildError::InvalidUrl {
        what,
        reason: "not absolute",
    })?;
    let host = uri.host().ok_or(BuildError::InvalidUrl {
        what,
        reason: "no host",
    })?;
    if *scheme == Scheme::HTTPS {
        return Ok(uri);
    }
    if *scheme != Scheme::HTTP {
        return Err(BuildError::InvalidUrl {
            what,
            reason: "scheme is neither http nor https",
        });
    }
    if is_loopback(host) {
        Ok(uri)
    } else {
        Err(BuildError::InsecureUrl { what })
    }
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_accepted_anywhere() {
        assert!(check_url("https://api.daxium-air.com/oauth/v2/token", "token").is_ok());
    }

    #[test]
    fn http_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "http://LOCALHOST:1/",
            "http://[::1]:99/",
            "http://127.9.9.9/",
        ] {
            assert!(check_url(ok, "token").is_ok(), "{ok}");
        }
        for bad in [
            "http://api.daxium-air.com/",
            "http://10.0.0.1/",
            "http://localhost.evil.com/",
        ] {
            assert_eq!(
                check_url(bad, "token"),
                Err(BuildError::InsecureUrl { what: "token" }),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_urls_are_typed_errors() {
        assert!(matches!(
            check_url("not a url", "token"),
            Err(BuildError::InvalidUrl { .. })
        ));
        assert!(matches!(
            check_url("/relative", "token"),
            Err(BuildError::InvalidUrl {
                reason: "not absolute",
                ..
            })
        ));
        assert!(matches!(
            check_url("ftp://host/", "token"),
            Err(BuildError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn origin_matching() {
        let origin = Origin::of(&"https://API.example.com/oauth".parse().unwrap()).unwrap();
        assert!(origin.matches(&"https://api.example.com:443/api/x".parse().unwrap()));
        assert!(!origin.matches(&"http://api.example.com/api".parse().unwrap()));
        assert!(!origin.matches(&"https://api.example.com:8443/api".parse().unwrap()));
        assert!(!origin.matches(&"https://evil.com/api".parse().unwrap()));
        assert!(!origin.matches(&"/relative".parse().unwrap()));
        assert!(Origin::of(&"/relative".parse().unwrap()).is_none());
    }
}
