//! The tokens: [`AccessToken`], [`RefreshToken`], [`TokenPair`] and the limits
//! they are held to. No token is ever shown by `Debug`, and none has `Display`.
//! The public constructors check a token as the parsing of the endpoint's
//! answer does, and report a [`TokenError`] naming the field.

use std::{fmt, time::Duration};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::error::TokenError;

/// The longest access or refresh token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The lifetime assumed when `expires_in` is missing, null or not a number:
/// Daxium's documented lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The shortest lifetime a token is given: a positive `expires_in` below it is
/// raised to it, so a token is never refreshed more than twice a second.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The longest lifetime a token is given: a larger `expires_in` is absurd, and
/// must not mean "never expires".
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The longest lifetime a refresh token is given: refresh tokens commonly
/// live days or weeks, but a larger `refresh_expires_in` than a year is
/// absurd, and is taken as this.
pub const MAX_REFRESH_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// An access token, kept as the ready-made `Authorization: Bearer …` header
/// value (marked sensitive), so attaching it costs a reference-count increment.
#[derive(Clone)]
pub struct AccessToken {
    header: HeaderValue,
}

impl AccessToken {
    /// The token if it is an RFC 6750 `b64token` of at most [`MAX_TOKEN_LEN`]
    /// bytes, else why not.
    pub(crate) fn checked(token: &str) -> Result<Self, &'static str> {
        check_b64token(token)?;
        let mut header = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "not a valid header value")?;
        header.set_sensitive(true);
        Ok(Self { header })
    }

    /// Checks that `token` is an RFC 6750 `b64token` of at most
    /// [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) bytes, and makes its header value.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        Self::checked(token).map_err(|reason| TokenError::invalid_field("access_token", reason))
    }

    pub(crate) fn from_header_value(header: HeaderValue) -> Self {
        Self { header }
    }

    pub(crate) fn into_header(self) -> HeaderValue {
        self.header
    }

    /// The `Authorization` header value, marked sensitive.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// The token itself. Handle with care: it is a bearer credential.
    pub fn expose_secret(&self) -> &str {
        let bytes = &self.header.as_bytes()["Bearer ".len()..];
        // The header was built from a `&str` of b64token characters (ASCII).
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(****)")
    }
}

/// A refresh token. Spent by the endpoint the moment a refresh is sent.
#[derive(Clone)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// The token if it is non-empty, at most [`MAX_TOKEN_LEN`] bytes, and free
    /// of control characters, else why not.
    pub(crate) fn checked(token: &str) -> Result<Self, &'static str> {
        if token.is_empty() {
            return Err("empty");
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err("longer than 8 KiB");
        }
        if token.chars().any(char::is_control) {
            return Err("holds a control character");
        }
        Ok(Self(SecretString::from(token)))
    }

    /// Checks that `token` is non-empty, at most
    /// [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) bytes, and free of control
    /// characters.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        Self::checked(token).map_err(|reason| TokenError::invalid_field("refresh_token", reason))
    }

    /// The token itself.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(****)")
    }
}

/// What a successful grant returns: an access token, maybe a new refresh
/// token, how long the access token lives and, if the endpoint said, how
/// long the refresh token does.
#[derive(Clone)]
pub struct TokenPair {
    access: AccessToken,
    refresh: Option<RefreshToken>,
    lifetime: Duration,
    refresh_lifetime: Option<Duration>,
    scope: Option<String>,
}

impl TokenPair {
    /// A token pair. `lifetime` is clamped to
    /// [`MIN_LIFETIME`]..=[`MAX_LIFETIME`].
    pub fn new(access: AccessToken, refresh: Option<RefreshToken>, lifetime: Duration) -> Self {
        Self {
            access,
            refresh,
            lifetime: lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME),
            refresh_lifetime: None,
            scope: None,
        }
    }

    /// The same pair, whose refresh token lives `lifetime` from when the
    /// grant was sent, clamped to [`MIN_LIFETIME`]..=[`MAX_REFRESH_LIFETIME`].
    /// The token cache does not send a refresh token past its expiry (the
    /// endpoint would refuse it): the password grant goes at once instead.
    /// Without it, a refresh token is good until the endpoint refuses it.
    /// For a pair without a refresh token, it is the lifetime of the one that
    /// was sent, which the cache keeps.
    #[must_use]
    pub fn with_refresh_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.refresh_lifetime = Some(lifetime.clamp(MIN_LIFETIME, MAX_REFRESH_LIFETIME));
        self
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access
    }

    /// The refresh token, if the response had one. A refresh answer without
    /// one keeps the refresh token that was sent.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh.as_ref()
    }

    /// How long the access token lives, counted from when the grant was sent,
    /// after the rule of [`parse_token_response`](crate::parse_token_response).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// How long the refresh token lives, counted from when the grant was
    /// sent, if the response said (`refresh_expires_in`, after the rule of
    /// [`parse_token_response`](crate::parse_token_response)).
    pub fn refresh_token_lifetime(&self) -> Option<Duration> {
        self.refresh_lifetime
    }

    /// The granted scope, if the response said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    pub(crate) fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope;
        self
    }

    /// The access token, the refresh token, and their lifetimes.
    pub(crate) fn into_parts(
        self,
    ) -> (
        AccessToken,
        Option<RefreshToken>,
        Duration,
        Option<Duration>,
    ) {
        (
            self.access,
            self.refresh,
            self.lifetime,
            self.refresh_lifetime,
        )
    }
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &self.access)
            .field("refresh_token", &self.refresh)
            .field("lifetime", &self.lifetime)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .field("scope", &self.scope)
            .finish()
    }
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn check_b64token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("empty");
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err("longer than 8 KiB");
    }
    let body = token.trim_end_matches('=');
    if body.is_empty() {
        return Err("not an RFC 6750 b64token");
    }
    let ok = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'));
    if ok {
        Ok(())
    } else {
        Err("not an RFC 6750 b64token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token_rules() {
        for ok in ["abc", "acc.123-_~+/=", "a==", &"a".repeat(MAX_TOKEN_LEN)] {
            assert_eq!(check_b64token(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_b64token(""), Err("empty"));
        assert_eq!(check_b64token("=="), Err("not an RFC 6750 b64token"));
        assert_eq!(check_b64token("a=b"), Err("not an RFC 6750 b64token"));
        assert_eq!(check_b64token("ab cd"), Err("not an RFC 6750 b64token"));
        assert_eq!(check_b64token("jéton"), Err("not an RFC 6750 b64token"));
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(check_b64token(&long), Err("longer than 8 KiB"));
    }

    #[test]
    fn access_token_is_a_sensitive_bearer_header() {
        let token = AccessToken::checked("acc.1").unwrap();
        assert_eq!(token.header_value(), "Bearer acc.1");
        assert!(token.header_value().is_sensitive());
        assert_eq!(token.expose_secret(), "acc.1");
        let again = AccessToken::from_header_value(token.clone().into_header());
        assert_eq!(again.expose_secret(), "acc.1");
    }

    #[test]
    fn refresh_token_rules() {
        assert_eq!(RefreshToken::checked("").err(), Some("empty"));
        assert_eq!(
            RefreshToken::checked("a\nb").err(),
            Some("holds a control character")
        );
        let long = "r".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            RefreshToken::checked(&long).err(),
            Some("longer than 8 KiB")
        );
        assert_eq!(
            RefreshToken::checked("a b&c").unwrap().expose_secret(),
            "a b&c"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let access = AccessToken::checked("acc-sentinel").unwrap();
        let refresh = RefreshToken::checked("ref-sentinel").unwrap();
        let pair = TokenPair::new(access, Some(refresh), Duration::from_secs(60))
            .with_scope(Some("api".into()));
        let text = format!(
            "{pair:?} {:?} {:?}",
            pair.access_token(),
            pair.refresh_token()
        );
        assert!(!text.contains("sentinel"), "{text}");
        assert!(text.contains("****") && text.contains("api"), "{text}");
    }

    #[test]
    fn a_refresh_token_lifetime_is_clamped_too() {
        let access = AccessToken::checked("abc").unwrap();
        let pair = TokenPair::new(access, None, Duration::from_secs(60));
        assert_eq!(pair.refresh_token_lifetime(), None);
        let short = pair.clone().with_refresh_token_lifetime(Duration::ZERO);
        assert_eq!(short.refresh_token_lifetime(), Some(MIN_LIFETIME));
        let long = pair.with_refresh_token_lifetime(Duration::MAX);
        assert_eq!(long.refresh_token_lifetime(), Some(MAX_REFRESH_LIFETIME));
    }

    #[test]
    fn token_pair_new_clamps() {
        let access = AccessToken::checked("abc").unwrap();
        assert_eq!(
            TokenPair::new(access.clone(), None, Duration::ZERO).lifetime(),
            MIN_LIFETIME
        );
        assert_eq!(
            TokenPair::new(access, None, Duration::MAX).lifetime(),
            MAX_LIFETIME
        );
    }
}
