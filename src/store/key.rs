//! The names a store files things under: [`LoginKey`], one per login (token
//! endpoint, client id and username), and [`LeaseOwner`], the random name of
//! one lease taker. Both are safe to log: neither is derived from a secret.

use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use http::Uri;
use sha2::{Digest, Sha256};

use crate::credentials::Credentials;

/// The key of one login in a token store: the token endpoint, a client id and
/// a username.
///
/// The same client id and username at two token endpoints (staging and
/// production, say) are two logins: their tokens are worth nothing at the
/// other endpoint, and a refresh token sent there is a secret handed to
/// another server. The layer always files its login under its endpoint
/// ([`with_endpoint`](Self::with_endpoint)), so that two layers for two
/// endpoints can share one store and never adopt each other's tokens. A key
/// made by [`new`](Self::new) alone names no endpoint, and is a login of its
/// own, never equal to one that names an endpoint.
///
/// Stores file a record under [`id`](Self::id), a digest that names the login
/// without spelling it out, so that Redis key names and file names do not show
/// the username:
///
/// ```text
/// id = lowercase hex of SHA-256( "daxium-auth login v2\n"
///                                || u64 big-endian length of endpoint || endpoint
///                                || u64 big-endian length of client_id || client_id
///                                || username )
/// ```
///
/// where `endpoint` is the endpoint as [`endpoint`](Self::endpoint) spells it,
/// empty for a key without one. The length prefixes keep `("ab", "c")` and
/// `("a", "bc")` apart. The digest hides nothing from someone who can guess
/// the username (it is not a secret), and no secret goes into it: the client
/// secret and the password change without changing the key, and the tokens of
/// the account are shared across such changes.
///
/// `Debug` shows the endpoint, the client id and the digest, not the username.
///
/// ```
/// use daxium_auth::store::LoginKey;
///
/// let key = LoginKey::new("my-client", "me@example.com");
/// assert_eq!(key.id().len(), 64);
/// assert_ne!(key, LoginKey::new("my-client", "you@example.com"));
/// assert!(!format!("{key:?}").contains("me@example.com"));
///
/// let production = "https://API.daxium-air.com/oauth/v2/token".parse()?;
/// let staging = "https://staging.daxium-air.com/oauth/v2/token".parse()?;
/// let key = LoginKey::new("my-client", "me@example.com").with_endpoint(&production);
/// assert_eq!(key.endpoint(), Some("https://api.daxium-air.com:443/oauth/v2/token"));
/// assert_ne!(key, LoginKey::new("my-client", "me@example.com").with_endpoint(&staging));
/// # Ok::<_, http::uri::InvalidUri>(())
/// ```
#[derive(Clone)]
pub struct LoginKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    /// The normalised endpoint; empty when the key names none.
    endpoint: String,
    client_id: String,
    username: String,
    id: String,
}

impl LoginKey {
    /// The key of the login of `username` through OAuth client `client_id`,
    /// at no endpoint in particular; see [`with_endpoint`](Self::with_endpoint).
    pub fn new(client_id: impl Into<String>, username: impl Into<String>) -> Self {
        Self::made(String::new(), client_id.into(), username.into())
    }

    /// The key of the login that `credentials` make, at no endpoint in
    /// particular; see [`with_endpoint`](Self::with_endpoint).
    pub fn from_credentials(credentials: &Credentials) -> Self {
        Self::new(credentials.client_id(), credentials.username())
    }

    /// The same login at the token endpoint `endpoint`: another key, with
    /// another [`id`](Self::id).
    ///
    /// The endpoint is kept normalised, so that two spellings of one URL make
    /// one key: scheme and host in lower case, the port spelled out (443 for
    /// `https`, 80 for `http` when the URL leaves it out), the path as given
    /// (`/` when empty), without user info. A query makes another endpoint
    /// (one token URL per policy, as Azure AD B2C's `?p=` has, are as many
    /// logins): the key holds it as `?sha256=` and the lowercase hex SHA-256
    /// of the query, so that a key in a query never shows in
    /// [`endpoint`](Self::endpoint) or `Debug`. Paths and queries are compared
    /// as written: `/oauth/v2/token` and `/oauth/v2/token/` are two endpoints,
    /// and so are `?a=1&b=2` and `?b=2&a=1`.
    #[must_use]
    pub fn with_endpoint(self, endpoint: &Uri) -> Self {
        let (client_id, username) = match Arc::try_unwrap(self.inner) {
            Ok(inner) => (inner.client_id, inner.username),
            Err(shared) => (shared.client_id.clone(), shared.username.clone()),
        };
        Self::made(normalised(endpoint), client_id, username)
    }

    fn made(endpoint: String, client_id: String, username: String) -> Self {
        let mut digest = Sha256::new();
        digest.update(DOMAIN);
        digest.update((endpoint.len() as u64).to_be_bytes());
        digest.update(endpoint.as_bytes());
        digest.update((client_id.len() as u64).to_be_bytes());
        digest.update(client_id.as_bytes());
        digest.update(username.as_bytes());
        let id = hex(&digest.finalize());
        Self {
            inner: Arc::new(KeyInner {
                endpoint,
                client_id,
                username,
                id,
            }),
        }
    }

    /// The token endpoint, normalised as [`with_endpoint`](Self::with_endpoint)
    /// says; `None` for a key that names none.
    pub fn endpoint(&self) -> Option<&str> {
        Some(self.inner.endpoint.as_str()).filter(|e| !e.is_empty())
    }

    /// The OAuth client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.inner.username
    }

    /// The digest that stores file the login under: 64 lowercase hex digits.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

impl PartialEq for LoginKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.endpoint == other.inner.endpoint
            && self.inner.client_id == other.inner.client_id
            && self.inner.username == other.inner.username
    }
}

impl Eq for LoginKey {}

impl Hash for LoginKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.id.hash(state);
    }
}

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginKey")
            .field("endpoint", &self.endpoint())
            .field("client_id", &self.inner.client_id)
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// The start of every digest: a key of another scheme never collides with one
/// of this (v1 named no endpoint).
const DOMAIN: &[u8] = b"daxium-auth login v2\n";

/// `scheme://host:port/path`: the endpoint as a key names it.
fn normalised(endpoint: &Uri) -> String {
    let scheme = endpoint.scheme_str().unwrap_or("").to_ascii_lowercase();
    let host = endpoint.host().unwrap_or("").to_ascii_lowercase();
    let port = endpoint.port_u16().or(match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    });
    let path = match endpoint.path() {
        "" => "/",
        path => path,
    };
    let mut normalised = match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    // The query can pick the endpoint (Azure AD B2C's `?p=` names a policy),
    // and can hold a key: it goes in as its digest, never spelled out.
    if let Some(query) = endpoint.query().filter(|q| !q.is_empty()) {
        normalised.push_str("?sha256=");
        normalised.push_str(&hex(&Sha256::digest(query.as_bytes())));
    }
    normalised
}

/// The name of one taker of a lease: 128 random bits as 32 hex digits.
///
/// A replica makes one for each refresh it leads, so that releasing a lease
/// that expired and was taken over by another replica does nothing. Owners are
/// not secrets; `Debug` and [`as_str`](Self::as_str) show them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseOwner(String);

impl LeaseOwner {
    /// A fresh owner from the operating system's random numbers.
    ///
    /// Should the system have none to give, the owner is made from the
    /// process id, the time and a counter, still unique on a host.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            bytes = fallback_unique();
        }
        Self(hex(&bytes))
    }

    /// The owner as stored (in a Redis lease value, in a lock file).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseOwner({})", self.0)
    }
}

#[cold]
fn fallback_unique() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut digest = Sha256::new();
    digest.update(std::process::id().to_be_bytes());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    digest.update(nanos.to_be_bytes());
    digest.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.finalize()[..16]);
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    /// The key of one login at the token endpoint `url`.
    fn key(url: &str) -> LoginKey {
        LoginKey::new("cid", "user").with_endpoint(&uri(url))
    }

    #[test]
    fn the_id_follows_the_documented_scheme() {
        let key = LoginKey::new("cid", "u@example.com");
        let mut digest = Sha256::new();
        digest.update(b"daxium-auth login v2\n");
        digest.update(0u64.to_be_bytes());
        digest.update(3u64.to_be_bytes());
        digest.update(b"cidu@example.com");
        assert_eq!(key.id(), hex(&digest.finalize()));

        let endpoint = "https://api.example.com:443/oauth/v2/token";
        let key = key.with_endpoint(&uri(endpoint));
        let mut digest = Sha256::new();
        digest.update(b"daxium-auth login v2\n");
        digest.update((endpoint.len() as u64).to_be_bytes());
        digest.update(endpoint.as_bytes());
        digest.update(3u64.to_be_bytes());
        digest.update(b"cidu@example.com");
        assert_eq!(key.id(), hex(&digest.finalize()));
        assert!(
            key.id()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn the_length_prefix_keeps_logins_apart() {
        assert_ne!(LoginKey::new("ab", "c").id(), LoginKey::new("a", "bc").id());
        assert_ne!(LoginKey::new("ab", "c"), LoginKey::new("a", "bc"));
        assert_eq!(LoginKey::new("a", "b").id(), LoginKey::new("a", "b").id());
    }

    #[test]
    fn credentials_make_the_same_key_whatever_the_secrets() {
        let a = Credentials::new("cid", "secret-1", "user", "pass-1");
        let b = Credentials::new("cid", "secret-2", "user", "pass-2");
        assert_eq!(
            LoginKey::from_credentials(&a),
            LoginKey::from_credentials(&b)
        );
        assert_eq!(LoginKey::from_credentials(&a), LoginKey::new("cid", "user"));
    }

    #[test]
    fn spellings_of_one_endpoint_make_one_key() {
        let canonical = key("https://api.example.com/oauth/v2/token");
        for url in [
            "HTTPS://API.Example.COM/oauth/v2/token",
            "https://api.example.com:443/oauth/v2/token",
            // An empty query is no query.
            "https://api.example.com/oauth/v2/token?",
        ] {
            assert_eq!(key(url), canonical, "{url}");
            assert_eq!(key(url).id(), canonical.id(), "{url}");
        }
        assert_eq!(
            canonical.endpoint(),
            Some("https://api.example.com:443/oauth/v2/token")
        );
        assert_eq!(
            key("http://127.0.0.1").endpoint(),
            Some("http://127.0.0.1:80/")
        );
        assert_eq!(
            key("http://[::1]:8080/t").endpoint(),
            Some("http://[::1]:8080/t")
        );
    }

    #[test]
    fn other_endpoints_make_other_keys() {
        let canonical = key("https://api.example.com/oauth/v2/token");
        for url in [
            "http://api.example.com/oauth/v2/token",
            "https://staging.example.com/oauth/v2/token",
            "https://api.example.com:8443/oauth/v2/token",
            "https://api.example.com/oauth/v2/token/",
            "https://api.example.com/other/oauth/v2/token",
        ] {
            assert_ne!(key(url), canonical, "{url}");
            assert_ne!(key(url).id(), canonical.id(), "{url}");
        }
        let bare = LoginKey::new("cid", "user");
        assert_eq!(bare.endpoint(), None);
        assert_ne!(bare, canonical);
        assert_ne!(bare.id(), canonical.id());
        // The length prefix keeps the endpoint apart from the client id.
        assert_ne!(
            LoginKey::new("/x", "user").with_endpoint(&uri("https://a.example/")),
            LoginKey::new("x", "user").with_endpoint(&uri("https://a.example//"))
        );
    }

    #[test]
    fn a_query_names_the_endpoint_by_its_digest() {
        let bare = key("https://api.example.com/oauth/v2/token");
        let signin = key("https://api.example.com/oauth/v2/token?p=b2c_1_signin");
        let query_digest = hex(&Sha256::digest(b"p=b2c_1_signin"));
        assert_eq!(
            signin.endpoint(),
            Some(
                format!("https://api.example.com:443/oauth/v2/token?sha256={query_digest}")
                    .as_str()
            )
        );
        assert_eq!(
            signin,
            key("HTTPS://api.example.com:443/oauth/v2/token?p=b2c_1_signin")
        );
        for other in [
            "https://api.example.com/oauth/v2/token?p=b2c_1_admin",
            "https://api.example.com/oauth/v2/token?p=B2C_1_SIGNIN",
            "https://api.example.com/oauth/v2/token?p=b2c_1_signin&",
        ] {
            assert_ne!(key(other), signin, "{other}");
            assert_ne!(key(other).id(), signin.id(), "{other}");
        }
        assert_ne!(signin, bare);
        assert_ne!(signin.id(), bare.id());

        // A key in the query shows neither in the endpoint nor in `Debug`.
        let keyed = key("https://api.example.com/token?subscription-key=sentinel-key-1");
        assert!(!keyed.endpoint().unwrap().contains("sentinel-key"));
        assert!(!format!("{keyed:?}").contains("sentinel-key"));
    }

    #[test]
    fn debug_hides_the_username() {
        let key = LoginKey::new("cid", "sentinel-user@example.com")
            .with_endpoint(&uri("https://api.example.com/token"));
        let text = format!("{key:?}");
        assert!(text.contains("cid") && text.contains(key.id()));
        assert!(text.contains("https://api.example.com:443/token"));
        assert!(!text.contains("sentinel-user"));
    }

    #[test]
    fn owners_are_unique_hex() {
        let a = LeaseOwner::random();
        let b = LeaseOwner::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fallback_unique(), fallback_unique());
    }

    #[test]
    fn hex_encodes_every_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
