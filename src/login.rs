//! [`LoginState`]: the application's view of its login, as
//! [`TokenCache::subscribe`](crate::TokenCache::subscribe) hands it out. It
//! says where the login stands and how old its token is, and holds no secret:
//! it can be logged, shown on a status page or exported as a metric.
//!
//! # Keeping a rotated pair
//!
//! The state has no token in it, on purpose. A process that wants its login
//! to survive a restart, or replicas that want to share one login, give the
//! layer a [`TokenStore`](crate::TokenStore)
//! ([`AuthLayerBuilder::store`](crate::AuthLayerBuilder::store)): a
//! `FileStore` for the processes of one host and its restarts, a `RedisStore`
//! for a fleet, or an implementation of the trait over another database.
//! Writing the pair from the application instead (from a custom
//! [`TokenFetcher`](crate::TokenFetcher), which sees every pair) is unsafe,
//! because a refresh token is spent the moment its grant is sent:
//!
//! - a copy written after the grant races the next one: a process that stops
//!   between a refresh and the write keeps a spent refresh token, and on its
//!   next start sends it again, which a server with reuse detection answers
//!   by revoking the whole login;
//! - replicas that each write their own pair overwrite each other, and each
//!   refreshes on its own, spending the token another one holds.
//!
//! The store's protocol closes both: one replica at a time holds a lease
//! while it makes a grant, marks the stored refresh token spent *before* it
//! sends it, writes the new pair under a version check, and the others adopt
//! that pair (their [`TokenSource::Store`]) instead of making grants of their
//! own. See the [`store`](crate::store) module.

use std::{fmt, time::Duration};

use tokio::time::Instant;

/// Where the login of a token cache stands, with no secret in it.
///
/// [`TokenCache::subscribe`](crate::TokenCache::subscribe) gives a
/// [`watch::Receiver`](tokio::sync::watch::Receiver) of it, which the cache
/// updates when its state changes (a new token, a failed grant, a refusal, a
/// close), in the same step that publishes the token to requests, under the
/// cache's lock, so that subscribers see states in order; a request with a
/// fresh token never touches it. A watch keeps the newest value only: a
/// subscriber that looks less often than tokens come sees the
/// [`version`](Self::version) jump, which counts the tokens in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginState {
    version: u64,
    status: LoginStatus,
    token: Option<(Instant, TokenSource)>,
}

impl LoginState {
    pub(crate) fn new(
        version: u64,
        status: LoginStatus,
        token: Option<(Instant, TokenSource)>,
    ) -> Self {
        Self {
            version,
            status,
            token,
        }
    }

    /// How many tokens the cache has taken, grants and adoptions from the
    /// store alike: 0 before the first, one more with each new token. It
    /// never goes back, not even when the login changes or the cache closes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where the login stands.
    pub fn status(&self) -> LoginStatus {
        self.status
    }

    /// Whether the cache holds a valid token that requests get now.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// When the valid token expires, if there is one: the moment the cache
    /// stops handing it out, on the monotonic clock that it retires tokens
    /// by (so paused test time applies, and a step of the wall clock does
    /// not move it). It is refreshed before then, inside the refresh margin.
    pub fn expires_at(&self) -> Option<Instant> {
        self.token.map(|(at, _)| at)
    }

    /// How long the valid token still lives, if there is one.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Where the valid token came from, if there is one.
    pub fn source(&self) -> Option<TokenSource> {
        self.token.map(|(_, source)| source)
    }
}

impl fmt::Display for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (version {})", self.status, self.version)?;
        if let Some(source) = self.source() {
            write!(f, ", token from {source}")?;
        }
        Ok(())
    }
}

/// Where a login stands. What stops grants comes first: the token of a
/// login that is [`Rejected`](Self::Rejected) or
/// [`BackingOff`](Self::BackingOff) may still be valid
/// ([`LoginState::has_token`]), and requests use it until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoginStatus {
    /// No valid token, and nothing stops the next grant: the cache has not
    /// logged in yet, or its token expired, was refused by the API, or
    /// belonged to a login that was replaced. The next request (or
    /// [`login`](crate::TokenCache::login)) logs in.
    LoggedOut,
    /// A valid token is held, and the last grant succeeded.
    LoggedIn,
    /// The last grant failed (the endpoint is down, slow, or answered
    /// something unusable): the next attempt waits out a backoff.
    BackingOff,
    /// The API refuses every new token (see
    /// [`TokenError::is_refused`](crate::TokenError::is_refused)): grants
    /// wait out a growing pause, and requests fail at once meanwhile.
    Refused,
    /// The endpoint refused the password: no password grant until the
    /// credentials change ([`set_credentials`](crate::TokenCache::set_credentials))
    /// or the cool-down ends.
    Rejected,
    /// The cache was closed or dropped: every request fails.
    Closed,
}

impl LoginStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::LoggedOut => "logged out",
            Self::LoggedIn => "logged in",
            Self::BackingOff => "backing off",
            Self::Refused => "refused by the API",
            Self::Rejected => "password rejected",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the cache got a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenSource {
    /// A password grant of this cache.
    PasswordGrant,
    /// A refresh grant of this cache.
    RefreshGrant,
    /// Adopted from the [token store](crate::AuthLayerBuilder::store): another
    /// replica's grant (or this one's, from before a restart).
    Store,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PasswordGrant => "a password grant",
            Self::RefreshGrant => "a refresh grant",
            Self::Store => "the token store",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_says_where_the_login_stands() {
        let at = Instant::now() + Duration::from_secs(60);
        let state = LoginState::new(3, LoginStatus::LoggedIn, Some((at, TokenSource::Store)));
        assert_eq!(
            state.to_string(),
            "logged in (version 3), token from the token store"
        );
        let out = LoginState::new(0, LoginStatus::LoggedOut, None);
        assert_eq!(out.to_string(), "logged out (version 0)");
        assert!(!out.has_token() && out.expires_in().is_none());
        assert_eq!(state.expires_at(), Some(at));
    }
}
