//! URL rules shared by the layer and the token client: which URLs are accepted
//! (`https://`, or `http://` to a loopback host only) and the origin guard that
//! keeps the token away from any other host.

use std::{fmt, net::IpAddr};

use http::{Uri, uri::Scheme};

use crate::error::BuildError;

/// A scheme, host and port, compared exactly (hosts case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// The authority as a request usually spells it (`host` or `host:port`,
    /// lower case): the fast path of [`Origin::matches`].
    authority: String,
    /// The same with the default port spelled out, or left out.
    alternate: String,
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
        let default_port = if https { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let with_port = format!("{host}:{port}");
        let (authority, alternate) = if port == default_port {
            (host.clone(), with_port)
        } else {
            (with_port.clone(), with_port)
        };
        Some(Self {
            https,
            host,
            port,
            authority,
            alternate,
        })
    }

    /// Whether `uri` is this origin. Compares without allocating; the usual
    /// spelling (lower case, default port left out or spelled out) is a byte
    /// comparison, any other goes through the full parse.
    pub(crate) fn matches(&self, uri: &Uri) -> bool {
        if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
            let authority = authority.as_str();
            let scheme_ok = if self.https {
                scheme == "https"
            } else {
                scheme == "http"
            };
            if scheme_ok && (authority == self.authority || authority == self.alternate) {
                return true;
            }
        }
        self.matches_parsed(uri)
    }

    /// The full comparison: user info, any spelling of the port.
    fn matches_parsed(&self, uri: &Uri) -> bool {
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

/// One service's origin guard: the decision for the last authority it saw, so
/// that a service sending to one API host (the usual case) compares one short
/// string per request, and matches against the configured origins only when
/// the authority changes. The authority is kept inline, so that a clone of the
/// service (one per request, for some clients) allocates nothing; a longer one
/// is matched every time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastOrigin {
    /// The scheme (`1` http, `2` https; `0` for none yet) and authority of the
    /// last request, as it spelled them, and whether they get the token.
    scheme: u8,
    len: u8,
    allowed: bool,
    authority: [u8; LastOrigin::MAX],
}

impl Default for LastOrigin {
    fn default() -> Self {
        Self {
            scheme: 0,
            len: 0,
            allowed: false,
            authority: [0; Self::MAX],
        }
    }
}

impl LastOrigin {
    /// The longest authority remembered.
    const MAX: usize = 61;

    /// Whether `uri` may carry the token: relative URIs always (the inner
    /// service fixes the destination), absolute ones when `origins` says that
    /// their origin is a configured one (asked once per authority).
    #[inline]
    pub(crate) fn allows(&mut self, uri: &Uri, origins: impl FnOnce() -> bool) -> bool {
        let Some(authority) = uri.authority() else {
            return true;
        };
        // `http` spells its own schemes in lower case, whatever the request
        // said; any other scheme never matches an origin.
        let scheme = match uri.scheme_str() {
            Some("https") => 2,
            Some("http") => 1,
            _ => return false,
        };
        let authority = authority.as_str().as_bytes();
        let last = &self.authority[..usize::from(self.len)];
        if scheme == self.scheme && same_bytes(authority, last) {
            return self.allowed;
        }
        self.remember(scheme, authority, origins)
    }

    #[cold]
    #[inline(never)]
    fn remember(&mut self, scheme: u8, authority: &[u8], origins: impl FnOnce() -> bool) -> bool {
        let allowed = origins();
        match u8::try_from(authority.len()) {
            Ok(len) if authority.len() <= Self::MAX => {
                self.authority[..authority.len()].copy_from_slice(authority);
                self.len = len;
                self.scheme = scheme;
                self.allowed = allowed;
            }
            // Too long to keep: asked again next time.
            _ => self.scheme = 0,
        }
        allowed
    }
}

/// `a == b` for short byte strings, inline: eight bytes at a time, the last
/// word overlapping, instead of a call to `memcmp` for a dozen bytes.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len < 8 {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let mut at = 0;
    while at + 8 < len {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    word(a, len - 8) == word(b, len - 8)
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
    let authority = uri.authority().map_or("", |a| a.as_str());
    if authority.contains('@') {
        // Credentials in a URL end up in logs and `Debug` output.
        return Err(BuildError::InvalidUrl {
            what,
            reason: "holds user info",
        });
    }
    if has_unreadable_port(authority) {
        return Err(BuildError::InvalidUrl {
            what,
            reason: "port is not a number from 0 to 65535",
        });
    }
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

/// `http` keeps a port it cannot read as a `u16` (`:99999`, `:abc`) and then
/// reports none, which every later step would take for the default port.
fn has_unreadable_port(authority: &str) -> bool {
    authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
        .is_some_and(|(_, port)| !port.is_empty() && port.parse::<u16>().is_err())
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A configured URL as `Debug` shows it: scheme, host, port and path, never
/// the user info or the query, which may hold credentials.
pub(crate) struct ShownUrl<'a>(pub(crate) &'a str);

impl fmt::Debug for ShownUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(uri) = self.0.parse::<http::Uri>() else {
            return f.write_str("<unparsable URL>");
        };
        match (uri.scheme(), uri.host()) {
            (Some(scheme), Some(host)) => {
                write!(f, "\"{scheme}://{host}")?;
                if let Some(port) = uri.port() {
                    write!(f, ":{port}")?;
                }
                write!(f, "{}\"", uri.path())
            }
            _ => write!(f, "\"{}\"", uri.path()),
        }
    }
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
    fn unreadable_ports_and_user_info_are_refused() {
        for bad in [
            "https://api.example.com:99999/",
            "https://api.example.com:abc/",
            "https://user:pw@api.example.com/",
            "http://user@127.0.0.1/",
        ] {
            assert!(
                matches!(check_url(bad, "token"), Err(BuildError::InvalidUrl { .. })),
                "{bad}"
            );
        }
        assert!(check_url("https://[::1]/x", "token").is_ok());
        assert!(check_url("https://[::1]:8443/x", "token").is_ok());
        assert!(check_url("https://host:/x", "token").is_ok());
    }

    #[test]
    fn shown_urls_lose_user_info_and_query() {
        let shown = format!(
            "{:?}",
            ShownUrl("https://u:pw@host:8443/oauth/v2/token?secret=x")
        );
        assert_eq!(shown, r#""https://host:8443/oauth/v2/token""#);
        assert_eq!(format!("{:?}", ShownUrl("not a url")), "<unparsable URL>");
    }

    #[test]
    fn the_last_origin_is_remembered_per_authority() {
        let origin = Origin::of(&"https://api.example.com".parse().unwrap()).unwrap();
        let asked = std::cell::Cell::new(0);
        let mut last = LastOrigin::default();
        let mut allows = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            last.allows(&uri, || {
                asked.set(asked.get() + 1);
                origin.matches(&uri)
            })
        };
        assert!(allows("https://api.example.com/a"));
        assert!(allows("https://api.example.com/b?x=1"));
        assert!(!allows("http://api.example.com/a"));
        assert!(!allows("https://api.example.com.evil.com/a"));
        assert!(!allows("https://api.example.co/a"));
        assert!(allows("https://api.example.com:443/a"));
        assert!(allows("/relative"));
        assert!(!allows("ftp://api.example.com/a"));
        assert!(allows("https://api.example.com:443/b"));
        assert!(allows("HTTPS://API.example.com/b"));
        assert_eq!(asked.get(), 6);
        let long = format!("https://{}.example.com/a", "x".repeat(60));
        assert!(!allows(&long));
        assert!(!allows(&long));
        assert_eq!(asked.get(), 8);
    }

    #[test]
    fn short_strings_compare_by_words() {
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("1234567", "1234567"),
            ("12345678", "12345678"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("api.daxium-air.com", "api.daxium-air.com"),
            ("0123456789abcdef", "0123456789abcdef"),
        ] {
            assert!(same_bytes(a.as_bytes(), b.as_bytes()), "{a}");
        }
        for (a, b) in [
            ("a", "b"),
            ("1234567", "1234568"),
            ("12345678", "02345678"),
            ("127.0.0.1:8080", "127.0.0.1:8081"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("api.daxium-air.com", "api.daxium-air.co"),
            ("0123456789abcdef", "0123456789abcdeX"),
            ("0123456789abcdef0", "0123456789abXdef0"),
        ] {
            assert!(!same_bytes(a.as_bytes(), b.as_bytes()), "{a}");
        }
    }

    #[test]
    fn origin_matching() {
        let origin = Origin::of(&"https://API.example.com/oauth".parse().unwrap()).unwrap();
        assert!(origin.matches(&"https://api.example.com:443/api/x".parse().unwrap()));
        assert!(origin.matches(&"https://api.example.com/api/x".parse().unwrap()));
        assert!(origin.matches(&"HTTPS://Api.Example.COM/api/x".parse().unwrap()));
        let local = Origin::of(&"http://127.0.0.1:8080".parse().unwrap()).unwrap();
        assert!(local.matches(&"http://127.0.0.1:8080/api".parse().unwrap()));
        assert!(!local.matches(&"http://127.0.0.1:8081/api".parse().unwrap()));
        assert!(!local.matches(&"http://127.0.0.1/api".parse().unwrap()));
        assert!(!local.matches(&"https://127.0.0.1:8080/api".parse().unwrap()));
        assert!(!origin.matches(&"http://api.example.com/api".parse().unwrap()));
        assert!(!origin.matches(&"https://api.example.com:8443/api".parse().unwrap()));
        assert!(!origin.matches(&"https://evil.com/api".parse().unwrap()));
        assert!(!origin.matches(&"/relative".parse().unwrap()));
        assert!(Origin::of(&"/relative".parse().unwrap()).is_none());
    }
}
