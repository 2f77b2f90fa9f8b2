//! The token record a fleet shares: [`Record`] is what a replica writes,
//! [`StoredRecord`] what it reads back, with the version and the login. Expiry
//! is wall-clock time, since replicas share no monotonic clock; no token is
//! shown by `Debug`.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::key::LoginKey;
use crate::token::{AccessToken, RefreshToken, TokenPair};

/// A token pair as a store keeps it: the access token, the refresh token (or
/// the mark that it was spent), the expiry as wall-clock Unix milliseconds
/// (and the refresh token's, when the endpoint said), and the scope.
///
/// Marking the refresh token spent drops it: a holder of the lease marks it,
/// writes the record, and only then sends the refresh grant, so that a holder
/// that dies mid-grant leaves no refresh token for the next one to send again.
///
/// `Debug` shows the tokens as `****`.
#[derive(Clone)]
pub struct Record {
    access: AccessToken,
    refresh: Refresh,
    expires_at_ms: u64,
    refresh_expires_at_ms: Option<u64>,
    scope: Option<String>,
}

#[derive(Clone)]
enum Refresh {
    None,
    Usable(RefreshToken),
    Spent,
}

impl Record {
    /// A record whose access token expires at `expires_at`.
    pub fn new(
        access_token: AccessToken,
        refresh_token: Option<RefreshToken>,
        expires_at: SystemTime,
    ) -> Self {
        Self {
            access: access_token,
            refresh: refresh_token.map_or(Refresh::None, Refresh::Usable),
            expires_at_ms: unix_ms(expires_at),
            refresh_expires_at_ms: None,
            scope: None,
        }
    }

    /// The record of a grant's answer: the pair's lifetime counts from
    /// `sent_at`, the wall-clock time the grant request was sent.
    pub fn from_pair(pair: &TokenPair, sent_at: SystemTime) -> Self {
        let expires_at = sent_at.checked_add(pair.lifetime()).unwrap_or(sent_at);
        let record = Self::new(
            pair.access_token().clone(),
            pair.refresh_token().cloned(),
            expires_at,
        )
        .with_scope(pair.scope().map(str::to_owned));
        match pair.refresh_token_lifetime() {
            Some(life) => {
                record.with_refresh_expires_at(sent_at.checked_add(life).unwrap_or(sent_at))
            }
            None => record,
        }
    }

    /// The same record, whose refresh token expires at `expires_at`: no
    /// replica sends it after that, and the holder of the lease makes a
    /// password grant instead. Without it, the refresh token is good until
    /// the endpoint refuses it.
    #[must_use]
    pub fn with_refresh_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.refresh_expires_at_ms = Some(unix_ms(expires_at));
        self
    }

    /// The same record with `scope`.
    #[must_use]
    pub fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope;
        self
    }

    /// The same record with its refresh token marked spent.
    #[must_use]
    pub fn with_refresh_spent(mut self) -> Self {
        self.mark_refresh_spent();
        self
    }

    /// Drops the refresh token and marks it spent. A record without a refresh
    /// token stays without one, and is not marked.
    pub fn mark_refresh_spent(&mut self) {
        if !matches!(self.refresh, Refresh::None) {
            self.refresh = Refresh::Spent;
            self.refresh_expires_at_ms = None;
        }
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access
    }

    /// The refresh token, if there is one that was not spent.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        match &self.refresh {
            Refresh::Usable(token) => Some(token),
            Refresh::None | Refresh::Spent => None,
        }
    }

    /// Whether a holder of the lease marked the refresh token spent: the next
    /// grant for this login is a password grant.
    pub fn is_refresh_spent(&self) -> bool {
        matches!(self.refresh, Refresh::Spent)
    }

    /// When the access token expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_at_ms)
    }

    /// When the access token expires, in milliseconds since the Unix epoch.
    pub fn expires_at_unix_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// When the refresh token expires, if the endpoint said.
    pub fn refresh_expires_at(&self) -> Option<SystemTime> {
        (self.refresh_expires_at_ms).map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// When the refresh token expires, in milliseconds since the Unix epoch,
    /// if the endpoint said.
    pub fn refresh_expires_at_unix_ms(&self) -> Option<u64> {
        self.refresh_expires_at_ms
    }

    /// Sets the refresh token's expiry from its stored form.
    #[cfg_attr(not(any(feature = "redis", feature = "file")), allow(dead_code))]
    pub(crate) fn with_refresh_expires_at_unix_ms(mut self, ms: Option<u64>) -> Self {
        self.refresh_expires_at_ms = ms;
        self
    }

    /// How long the access token still lives at `now`: zero once expired.
    pub fn remaining_at(&self, now: SystemTime) -> Duration {
        self.expires_at()
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// The granted scope, if the endpoint said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    #[cfg_attr(not(any(feature = "redis", feature = "file")), allow(dead_code))]
    pub(crate) fn from_parts(
        access: AccessToken,
        refresh: Option<RefreshToken>,
        refresh_spent: bool,
        expires_at_ms: u64,
        scope: Option<String>,
    ) -> Self {
        let refresh = match (refresh, refresh_spent) {
            (_, true) => Refresh::Spent,
            (Some(token), false) => Refresh::Usable(token),
            (None, false) => Refresh::None,
        };
        Self {
            access,
            refresh,
            expires_at_ms,
            refresh_expires_at_ms: None,
            scope,
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refresh: &dyn fmt::Debug = match &self.refresh {
            Refresh::None => &"none",
            Refresh::Usable(token) => token,
            Refresh::Spent => &"spent",
        };
        f.debug_struct("Record")
            .field("access_token", &self.access)
            .field("refresh_token", refresh)
            .field("expires_at_unix_ms", &self.expires_at_ms)
            .field("refresh_expires_at_unix_ms", &self.refresh_expires_at_ms)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A record as read from a store: the [`Record`], its version, and the login
/// it belongs to. A store returns a record under a [`LoginKey`] only when it
/// was written for that very login.
///
/// `Debug` shows the login and the version; the record's tokens show as
/// `Debug` of [`Record`] does, redacted.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    login: LoginKey,
    version: u64,
    record: Record,
}

impl StoredRecord {
    /// A stored record; for implementations of
    /// [`TokenStore`](super::TokenStore).
    pub fn new(login: LoginKey, version: u64, record: Record) -> Self {
        Self {
            login,
            version,
            record,
        }
    }

    /// The login the record belongs to.
    pub fn login(&self) -> &LoginKey {
        &self.login
    }

    /// The version: 1 for the first write, one more for each write after.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The token pair.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The token pair, by value.
    pub fn into_record(self) -> Record {
        self.record
    }
}

/// Milliseconds since the Unix epoch; 0 for times before it, saturating far
/// in the future.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A record for unit tests: tokens `acc-sentinel` and `ref-sentinel`, scope
/// `all`, expiring at 1,700,000,000,123 ms.
#[cfg(test)]
pub(crate) fn sample() -> Record {
    Record::new(
        AccessToken::new("acc-sentinel").unwrap(),
        Some(RefreshToken::new("ref-sentinel").unwrap()),
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    )
    .with_scope(Some("all".into()))
}

#[cfg(test)]
mod tests {
    use super::{sample as record, *};

    #[test]
    fn debug_never_shows_a_token() {
        let stored = StoredRecord::new(LoginKey::new("cid", "user"), 3, record());
        let text = format!("{stored:?} {stored:#?} {:?}", stored.record());
        assert!(!text.contains("sentinel"), "{text}");
        assert!(text.contains("****") && text.contains("version: 3"));
    }

    #[test]
    fn marking_spent_drops_the_refresh_token() {
        let mut rec = record();
        assert_eq!(rec.refresh_token().unwrap().expose_secret(), "ref-sentinel");
        assert!(!rec.is_refresh_spent());
        rec.mark_refresh_spent();
        assert!(rec.refresh_token().is_none());
        assert!(rec.is_refresh_spent());
        assert!(format!("{rec:?}").contains("spent"));
        let without = Record::new(rec.access_token().clone(), None, SystemTime::now());
        assert!(!without.with_refresh_spent().is_refresh_spent());
    }

    #[test]
    fn expiry_is_kept_in_unix_milliseconds() {
        let rec = record();
        assert_eq!(rec.expires_at_unix_ms(), 1_700_000_000_123);
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        assert_eq!(rec.remaining_at(now), Duration::from_millis(123));
        let later = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        assert_eq!(rec.remaining_at(later), Duration::ZERO);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn from_pair_counts_the_lifetime_from_the_send() {
        let pair = crate::answer::parse_token_response(
            br#"{"access_token":"a","refresh_token":"r","expires_in":60,"scope":"all"}"#,
        )
        .unwrap();
        let sent = UNIX_EPOCH + Duration::from_secs(1_000);
        let rec = Record::from_pair(&pair, sent);
        assert_eq!(rec.expires_at(), sent + Duration::from_secs(60));
        assert_eq!(rec.scope(), Some("all"));
        assert_eq!(rec.refresh_token().unwrap().expose_secret(), "r");
        assert_eq!(rec.access_token().expose_secret(), "a");
    }
}
