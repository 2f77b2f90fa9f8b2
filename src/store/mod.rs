//! Token stores: where the replicas of a fleet that log in as one account share
//! one token pair. [`TokenStore`] is the interface (a version-checked record
//! per login, and a lease that one replica at a time holds while it makes a
//! grant); [`MemoryStore`] keeps it in the process, `FileStore` (feature
//! `file`) in a directory shared by the processes of a host, `RedisStore`
//! (feature `redis`) in Redis for a fleet.
//!
//! The protocol a replica follows with a store:
//!
//! 1. Take the lease ([`TokenStore::acquire_lease`]) with a fresh
//!    [`LeaseOwner`]. Without it, wait for a new record
//!    ([`TokenStore::wait_for_change`], at most the holder's remaining time
//!    to live) and adopt it, or take the lease over once it lapses.
//! 2. Under the lease, read the record again: someone may have refreshed
//!    meanwhile, then adopt it and make no grant.
//! 3. Before a refresh grant, write the record with its refresh token marked
//!    spent ([`Record::mark_refresh_spent`]), so that a holder that dies
//!    mid-grant leaves no refresh token for the next one to send again.
//! 4. Write the new pair with the version check ([`TokenStore::write`]), then
//!    release the lease ([`TokenStore::release_lease`]: only if still ours).
//!
//! A layer files its login under a [`LoginKey`] that names the token endpoint
//! as well as the client id and the username: layers for a staging and a
//! production endpoint with one account may share a store (one map, one
//! directory, one Redis key prefix) and never take each other's tokens, nor
//! send a refresh token to the endpoint that did not issue it.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use daxium_auth::{
//!     AccessToken,
//!     store::{Lease, LeaseOwner, LoginKey, MemoryStore, Record, TokenStore, WriteOutcome},
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let key = LoginKey::new("my-client", "me@example.com");
//! let me = LeaseOwner::random();
//!
//! assert_eq!(store.acquire_lease(&key, &me, Duration::from_secs(10)).await?, Lease::Acquired);
//! assert!(store.read(&key).await?.is_none());
//! let record = Record::new(
//!     AccessToken::new("access")?,
//!     None,
//!     SystemTime::now() + Duration::from_secs(3600),
//! );
//! let outcome = store.write(&key, None, &record).await?;
//! assert!(matches!(outcome, WriteOutcome::Written { version: 1 }));
//! assert!(store.release_lease(&key, &me).await?);
//! assert_eq!(store.read(&key).await?.unwrap().version(), 1);
//! # Ok(())
//! # }
//! ```

use std::{future::Future, time::Duration};

use tokio::time::Instant;

mod any;
mod error;
mod key;
mod memory;
mod record;

#[cfg(any(feature = "redis", feature = "file"))]
mod codec;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sealed")]
mod seal;

pub use self::{
    any::AnyStore,
    error::StoreError,
    key::{LeaseOwner, LoginKey},
    memory::MemoryStore,
    record::{Record, StoredRecord},
};

#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub use self::file::{FileStore, FileStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "sealed")]
#[cfg_attr(docsrs, doc(cfg(feature = "sealed")))]
pub use self::seal::SealKey;

/// What a version-checked write did.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub enum WriteOutcome {
    /// The record was written; this is its new version.
    Written {
        /// The version now stored: one more than the expected one, 1 for a
        /// first write.
        version: u64,
    },
    /// Nothing was written: the stored version was not the expected one.
    Conflict(Conflict),
}

impl WriteOutcome {
    /// The new version, if the record was written.
    pub fn version(&self) -> Option<u64> {
        match self {
            Self::Written { version } => Some(*version),
            Self::Conflict(_) => None,
        }
    }

    /// Whether the record was written.
    pub fn is_written(&self) -> bool {
        matches!(self, Self::Written { .. })
    }
}

/// What a store held when a version-checked write found another version.
#[derive(Debug, Clone)]
pub struct Conflict {
    version: Option<u64>,
    record: Option<StoredRecord>,
}

impl Conflict {
    /// A conflict; for implementations of [`TokenStore`].
    pub fn new(version: Option<u64>, record: Option<StoredRecord>) -> Self {
        Self { version, record }
    }

    /// The version stored now; `None` when nothing is stored.
    ///
    /// It is set even when [`record`](Self::record) is not: a record that
    /// does not open (another seal key, a damaged value) has a version all
    /// the same, and a write expecting that version replaces it.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The record stored now, when it is readable for the login.
    pub fn record(&self) -> Option<&StoredRecord> {
        self.record.as_ref()
    }

    /// The record stored now, by value.
    pub fn into_record(self) -> Option<StoredRecord> {
        self.record
    }
}

/// What an attempt to take a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lease {
    /// The lease is the caller's until its time to live runs out or the caller
    /// releases it. Taking a lease one already holds renews its time to live.
    Acquired,
    /// Another owner holds the lease.
    Held {
        /// How long the holder's lease still lives, when the store knows.
        remaining: Option<Duration>,
    },
}

impl Lease {
    /// Whether the lease was taken.
    pub fn is_acquired(&self) -> bool {
        matches!(self, Self::Acquired)
    }
}

/// A store of token records, shared by the replicas that log in as one account.
///
/// Every method is one short round trip that a store bounds with a timeout of
/// its own, so that a dead store never holds a caller for long; the layer
/// bounds each call too
/// ([`store_timeout`](crate::AuthLayerBuilder::store_timeout)), and takes a
/// call that outlasts it for the store being down. Records are
/// filed per [`LoginKey`]: a record written for one login is never returned for
/// another. Versions start at 1 and grow by one per write.
///
/// A store that can lose a write it acknowledged (a replicated Redis whose
/// primary fails over) must never hand out a refresh token that such a lost
/// write had marked spent: it returns the records that may predate a loss
/// with their refresh token spent, and refuses a spend mark over them (see
/// `RedisStore`'s failover notes).
///
/// Implement it with async fns; [`AnyStore`] turns any implementation into
/// one cheaply cloned type.
pub trait TokenStore: Send + Sync + 'static {
    /// The record of `key`: `None` when there is none, or when what is stored
    /// cannot be read as a record of this login (such a value is logged,
    /// without its contents).
    fn read(
        &self,
        key: &LoginKey,
    ) -> impl Future<Output = Result<Option<StoredRecord>, StoreError>> + Send;

    /// Writes `record` for `key` if the stored version is `expected` (`None`:
    /// nothing stored), as one atomic compare-and-set. The new version is
    /// `expected + 1` (1 for a first write); on a mismatch nothing is written
    /// and the [`Conflict`] tells what is stored now.
    fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// Takes the lease of `key` for `owner` for `ttl` (1 ms ..= 24 h), unless
    /// another owner holds it; taking it again while holding it renews the
    /// time to live.
    fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Releases the lease of `key` if `owner` still holds it, and says whether
    /// it did. A lease that expired and was taken by another owner stays
    /// theirs.
    fn release_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Waits until the record of `key` has a version other than `since`
    /// (`None`: until there is a record at all) and returns it, or returns
    /// `None` once `max_wait` (at most 24 h) has passed.
    ///
    /// The default polls [`read`](Self::read), from every 10 ms to every
    /// 250 ms; a store that can be told of writes (Redis pub/sub, a condition
    /// in memory) does better.
    fn wait_for_change(
        &self,
        key: &LoginKey,
        since: Option<u64>,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Option<StoredRecord>, StoreError>> + Send {
        poll_for_change(self, key, since, max_wait)
    }
}

/// The first poll interval of [`poll_for_change`].
const POLL_FIRST: Duration = Duration::from_millis(10);
/// The longest poll interval of [`poll_for_change`].
const POLL_MAX: Duration = Duration::from_millis(250);

/// The shortest lease a store grants.
const MIN_TTL: Duration = Duration::from_millis(1);

/// The longest lease a store grants, and the longest wait for a change.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest timeout a store accepts for one call.
#[cfg(any(feature = "redis", feature = "file"))]
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A lease's time to live as stores grant it: 1 ms ..= 24 h.
pub(crate) fn lease_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// The end of a wait of `max_wait`, at most 24 h away.
pub(crate) fn wait_deadline(max_wait: Duration) -> Instant {
    Instant::now() + max_wait.min(MAX_TTL)
}

/// Refuses a call timeout of zero or over a minute.
#[cfg(any(feature = "redis", feature = "file"))]
pub(crate) fn check_call_timeout(
    timeout: Duration,
    store: &'static str,
) -> Result<Duration, StoreError> {
    if timeout.is_zero() || timeout > MAX_CALL_TIMEOUT {
        return Err(StoreError::config(
            store,
            "the timeout must be between 1 ms and 60 s",
        ));
    }
    Ok(timeout)
}

/// Reads until the version is other than `since`, with backoff, for at most
/// `max_wait`.
pub(crate) async fn poll_for_change<S: TokenStore + ?Sized>(
    store: &S,
    key: &LoginKey,
    since: Option<u64>,
    max_wait: Duration,
) -> Result<Option<StoredRecord>, StoreError> {
    let deadline = wait_deadline(max_wait);
    let mut delay = POLL_FIRST;
    loop {
        if let Some(record) = store.read(key).await?
            && Some(record.version()) != since
        {
            return Ok(Some(record));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}

/// The version after `expected`, or an error at the end of the range.
pub(crate) fn next_version(expected: Option<u64>, store: &'static str) -> Result<u64, StoreError> {
    expected.unwrap_or(0).checked_add(1).ok_or_else(|| {
        StoreError::new(
            error::Kind::Other,
            store,
            Some("record version at its maximum"),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_and_stop_at_the_end() {
        assert_eq!(next_version(None, "t").unwrap(), 1);
        assert_eq!(next_version(Some(41), "t").unwrap(), 42);
        assert!(next_version(Some(u64::MAX), "t").is_err());
    }

    #[test]
    fn an_unknown_scheme_is_a_config_error_without_the_url() {
        let err = AnyStore::from_url("postgres://user:sentinel-pass@host/db").unwrap_err();
        assert!(err.is_config());
        assert!(!format!("{err} {err:?}").contains("sentinel"));
        assert!(AnyStore::from_url("memory:").is_ok());
    }
}
