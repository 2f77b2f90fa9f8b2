//! The mock server's token books: every access and refresh token it issued,
//! to whom, and what became of it (expired, spent, revoked), and the check of
//! a presented access token that the protected resource makes. The tokens are
//! unguessable, made from the OS's randomness without a new dependency.

use std::{
    collections::{HashMap, hash_map::RandomState},
    error::Error as StdError,
    fmt::{self, Write as _},
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use tokio::time::Instant;

use super::codes;

/// Who a token was issued to. Reuse protection revokes by login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Login {
    pub(super) client_id: String,
    pub(super) username: String,
}

#[derive(Debug)]
struct AccessEntry {
    login: Login,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefreshStatus {
    Live,
    /// Used by a refresh that rotated it; presenting it again is reuse.
    Spent,
    Revoked,
}

#[derive(Debug)]
pub(super) struct RefreshEntry {
    pub(super) login: Login,
    pub(super) status: RefreshStatus,
    /// When it stops being taken, if refresh tokens have a lifetime.
    pub(super) expires_at: Option<Instant>,
    /// The access token last issued together with it: the one a server that
    /// revokes on refresh revokes when it is presented.
    pub(super) access: Option<String>,
}

/// Every token issued, and what became of it.
#[derive(Debug)]
pub(super) struct Books {
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    tokens: TokenSource,
}

impl Books {
    pub(super) fn new() -> Self {
        Self {
            access: HashMap::new(),
            refresh: HashMap::new(),
            tokens: TokenSource::new(),
        }
    }

    /// Issues an access token that lives `lifetime` from `now`.
    pub(super) fn issue_access(
        &mut self,
        login: Login,
        lifetime: Duration,
        now: Instant,
    ) -> String {
        let token = self.tokens.next();
        let expires_at = now + lifetime;
        self.access.insert(
            token.clone(),
            AccessEntry {
                login,
                expires_at,
                revoked: false,
            },
        );
        token
    }

    /// Issues a refresh token, taken until `expires_at` if given.
    pub(super) fn issue_refresh(&mut self, login: Login, expires_at: Option<Instant>) -> String {
        let token = self.tokens.next();
        self.refresh.insert(
            token.clone(),
            RefreshEntry {
                login,
                status: RefreshStatus::Live,
                expires_at,
                access: None,
            },
        );
        token
    }

    /// Remembers that `access_token` was issued together with `refresh_token`.
    pub(super) fn pair(&mut self, refresh_token: &str, access_token: &str) {
        if let Some(entry) = self.refresh.get_mut(refresh_token) {
            entry.access = Some(access_token.to_owned());
        }
    }

    /// A refresh token this server issued.
    pub(super) fn refresh_mut(&mut self, token: &str) -> Option<&mut RefreshEntry> {
        self.refresh.get_mut(token)
    }

    /// Revokes every token of `login`.
    pub(super) fn revoke_login(&mut self, login: &Login) {
        for entry in self.access.values_mut().filter(|e| e.login == *login) {
            entry.revoked = true;
        }
        for entry in self.refresh.values_mut().filter(|e| e.login == *login) {
            // Spent stays spent, so that presenting it again is still reuse.
            if entry.status == RefreshStatus::Live {
                entry.status = RefreshStatus::Revoked;
            }
        }
    }

    pub(super) fn revoke(&mut self, access_token: &str) -> bool {
        match self.access.get_mut(access_token) {
            Some(entry) if !entry.revoked => {
                entry.revoked = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn revoke_all(&mut self) {
        for entry in self.access.values_mut() {
            entry.revoked = true;
        }
        for entry in self.refresh.values_mut() {
            if entry.status == RefreshStatus::Live {
                entry.status = RefreshStatus::Revoked;
            }
        }
    }

    pub(super) fn expire_all(&mut self, now: Instant) {
        for entry in self.access.values_mut() {
            entry.expires_at = entry.expires_at.min(now);
        }
    }

    /// Whether the protected resource lets `presented` through at `now`.
    pub(super) fn check(&self, presented: Presented<'_>, now: Instant) -> Result<(), ApiDenial> {
        match presented {
            Presented::Nothing => Err(ApiDenial::NoToken),
            Presented::Garbage => Err(ApiDenial::Unknown),
            Presented::Bearer(token) => match self.access.get(token) {
                None => Err(ApiDenial::Unknown),
                Some(entry) if entry.revoked => Err(ApiDenial::Revoked),
                Some(entry) if now >= entry.expires_at => Err(ApiDenial::Expired),
                Some(_) => Ok(()),
            },
        }
    }
}

/// What an `Authorization` header presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presented<'a> {
    Nothing,
    Bearer(&'a str),
    /// Something that cannot be a token we issued: not text, or several headers.
    Garbage,
}

impl<'a> Presented<'a> {
    /// Reads one `Authorization` header value (RFC 6750 §2.1: the scheme is
    /// case-insensitive, then one or more spaces, then the token).
    pub(super) fn from_header(value: Option<&'a str>) -> Self {
        let Some(value) = value else {
            return Self::Nothing;
        };
        let Some((scheme, rest)) = value.split_once(' ') else {
            return Self::Nothing;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Self::Nothing;
        }
        match rest.trim_start_matches(' ') {
            "" => Self::Nothing,
            token => Self::Bearer(token),
        }
    }
}

/// Why the protected resource refuses an access token.
///
/// `Display` is a short sentence without the token, fit for a
/// `tonic::Status` message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiDenial {
    /// No bearer token was presented.
    NoToken,
    /// The token was never issued by this server (or was sent malformed, or in
    /// more than one `Authorization` header).
    Unknown,
    /// The token is past its lifetime.
    Expired,
    /// The token was revoked.
    Revoked,
}

impl ApiDenial {
    /// The `DAERR-` code of the 401 body that comes with this denial
    /// (see [`codes`](super::codes)).
    pub fn code(self) -> &'static str {
        match self {
            Self::NoToken => codes::MISSING_TOKEN,
            Self::Unknown => codes::INVALID_TOKEN,
            Self::Expired => codes::EXPIRED_TOKEN,
            Self::Revoked => codes::REVOKED_TOKEN,
        }
    }

    pub(super) fn message(self) -> &'static str {
        match self {
            Self::NoToken => "no bearer token",
            Self::Unknown => "invalid bearer token",
            Self::Expired => "expired bearer token",
            Self::Revoked => "revoked bearer token",
        }
    }
}

impl fmt::Display for ApiDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl StdError for ApiDenial {}

/// Unguessable tokens without a new dependency: SipHash keyed by a
/// `RandomState` (128 random bits from the OS) over a counter is a
/// pseudo-random function, and four words make 256 bits. Hex is a valid
/// RFC 6750 `b64token` and URL-safe.
struct TokenSource {
    keys: RandomState,
    counter: u64,
}

impl TokenSource {
    fn new() -> Self {
        Self {
            keys: RandomState::new(),
            counter: 0,
        }
    }

    fn next(&mut self) -> String {
        self.counter += 1;
        let mut token = String::with_capacity(64);
        for word in 0..4u64 {
            let mut hasher = self.keys.build_hasher();
            hasher.write_u64(self.counter);
            hasher.write_u64(word);
            // Writing to a String cannot fail.
            let _ = write!(token, "{:016x}", hasher.finish());
        }
        token
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Login {
        Login {
            client_id: "cid".into(),
            username: "user".into(),
        }
    }

    #[test]
    fn tokens_are_distinct_hex() {
        let mut source = TokenSource::new();
        let a = source.next();
        let b = source.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(TokenSource::new().next(), TokenSource::new().next());
    }

    #[test]
    fn expiry_uses_the_exact_lifetime() {
        let mut books = Books::new();
        let now = Instant::now();
        let access = books.issue_access(login(), Duration::from_millis(1500), now);
        let token = Presented::Bearer(&access);
        assert_eq!(
            books.check(token, now + Duration::from_millis(1499)),
            Ok(())
        );
        assert_eq!(
            books.check(token, now + Duration::from_millis(1500)),
            Err(ApiDenial::Expired)
        );
        assert!(books.revoke(&access));
        assert!(!books.revoke(&access), "already revoked");
        assert_eq!(books.check(token, now), Err(ApiDenial::Revoked));
        assert_eq!(
            books.check(Presented::Bearer("made-up"), now),
            Err(ApiDenial::Unknown)
        );
        assert_eq!(
            books.check(Presented::Garbage, now),
            Err(ApiDenial::Unknown)
        );
        assert_eq!(
            books.check(Presented::Nothing, now),
            Err(ApiDenial::NoToken)
        );
    }

    #[test]
    fn revoking_a_login_keeps_spent_tokens_spent() {
        let mut books = Books::new();
        let now = Instant::now();
        let other = Login {
            username: "other".into(),
            ..login()
        };
        let spent = books.issue_refresh(login(), None);
        books.refresh_mut(&spent).unwrap().status = RefreshStatus::Spent;
        let live = books.issue_refresh(login(), None);
        let access = books.issue_access(login(), Duration::from_secs(60), now);
        let theirs = books.issue_access(other, Duration::from_secs(60), now);
        books.revoke_login(&login());
        assert_eq!(
            books.refresh_mut(&spent).unwrap().status,
            RefreshStatus::Spent
        );
        assert_eq!(
            books.refresh_mut(&live).unwrap().status,
            RefreshStatus::Revoked
        );
        assert_eq!(
            books.check(Presented::Bearer(&access), now),
            Err(ApiDenial::Revoked)
        );
        assert_eq!(books.check(Presented::Bearer(&theirs), now), Ok(()));
        books.expire_all(now);
        assert_eq!(
            books.check(Presented::Bearer(&theirs), now),
            Err(ApiDenial::Expired)
        );
    }

    #[test]
    fn authorization_header_parsing() {
        assert_eq!(Presented::from_header(None), Presented::Nothing);
        assert_eq!(
            Presented::from_header(Some("Basic abc")),
            Presented::Nothing
        );
        assert_eq!(Presented::from_header(Some("Bearer")), Presented::Nothing);
        assert_eq!(Presented::from_header(Some("Bearer ")), Presented::Nothing);
        assert_eq!(
            Presented::from_header(Some("bearer  abc")),
            Presented::Bearer("abc")
        );
        assert_eq!(
            Presented::from_header(Some("BEARER abc")),
            Presented::Bearer("abc")
        );
    }
}
