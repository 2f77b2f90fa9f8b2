//! The Redis token store, for a fleet: one hash per login holding the version
//! and the record's envelope, written by a Lua compare-and-set that publishes
//! each commit; the lease is a key set with `NX PX` and deleted only by its
//! owner. One server, a Redis Cluster or a Sentinel-watched primary; every
//! call gives up after a short timeout.

use std::{fmt, time::Duration};

use futures_util::StreamExt;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use secrecy::SecretString;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{
    Conflict, Lease, LeaseOwner, LoginKey, Record, StoreError, StoredRecord, TokenStore,
    WriteOutcome,
    codec::{Codec, MAX_ENVELOPE},
    error::Kind,
    lease_ttl, next_version, poll_for_change, wait_deadline,
};

mod builder;
mod link;
mod target;

pub use self::builder::RedisStoreBuilder;
use link::{Conn, Link};

const STORE: &str = "redis";

/// The helpers that the record scripts share.
const LIB: &str = include_str!("lib.lua");

/// A [`TokenStore`] in Redis, for the replicas of a fleet.
///
/// Layout, for a login whose [`LoginKey::id`] is `ID` and the default prefix
/// `daxium-auth:`:
///
/// - `daxium-auth:{ID}`: a hash with `version` (decimal), `envelope` (the
///   record as JSON, in clear or sealed with a `SealKey`, feature `sealed`)
///   and `epoch` (the replication id of the primary that wrote it, see
///   [Failover](#failover)); written only by a Lua compare-and-set, which
///   also publishes the new version on the channel
///   `daxium-auth:{ID}:changed`;
/// - `daxium-auth:{ID}:lease`: the lease, `SET … NX PX ttl` to a random
///   [`LeaseOwner`], renewed with `PEXPIRE` by its holder, deleted by a Lua
///   compare-and-delete.
///
/// Records have no expiry of their own in Redis. The braces make `ID` the
/// hash tag of every key of the login: in a Redis Cluster they all live in
/// one slot, so that each script (which names every key it touches in
/// `KEYS`) runs on one node. A key prefix with a brace is refused, since it
/// could move the hash tag.
///
/// URLs name the deployment:
///
/// - `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`: one server;
/// - `redis+cluster://[[USER]:PASSWORD@]HOST:PORT,HOST:PORT/`: a Redis
///   Cluster, reached through any of these seed nodes (database 0 only);
///   redirections and topology changes are followed;
/// - `redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT],HOST[:PORT]/MASTER[/DB]`:
///   the primary that these Sentinels (port 26379 unless given) know as
///   `MASTER`, asked for again after a failure so that a failover is
///   followed; the user and password are the primary's (Sentinels without
///   AUTH);
/// - `rediss://…`, `rediss+cluster://…` and `rediss+sentinel://…`: the same
///   over TLS (rustls, with the system's roots unless the builder is given
///   others; for Sentinel, both the Sentinels and the primary).
///
/// The password authenticates with `AUTH`; it never shows in `Debug` or in an
/// error. Redis 5 or later (the scripts read `INFO`, which needs scripts
/// replicated by their effects).
///
/// Every call has a timeout ([`RedisStore::DEFAULT_TIMEOUT`], 250 ms by
/// default), so that a dead or slow Redis never holds a caller for long: it
/// fails with [`is_unavailable`](StoreError::is_unavailable) or
/// [`is_timeout`](StoreError::is_timeout), and the connection is made again
/// once Redis is back. Building a store does not connect: the first call
/// does, so a replica starts while Redis is down.
///
/// [`wait_for_change`](TokenStore::wait_for_change) subscribes to the login's
/// channel on a connection of its own for the wait (on a cluster, to a seed
/// node: a cluster forwards every `PUBLISH` to all its nodes), and polls if
/// it cannot.
///
#[doc = include_str!("failover.md")]
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    link: Link,
    timeout: Duration,
    prefix: String,
    codec: Codec,
    read: Script,
    compare_and_set: Script,
    acquire: Script,
    release: Script,
    /// `host:port` of the nodes named, and whether TLS is on, for `Debug`.
    address: String,
    tls: bool,
}

impl RedisStore {
    /// How long one call may take unless the builder says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

    /// The store at `url` with the defaults; see [`RedisStoreBuilder::build`].
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// Settings for the store at `url`.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: SecretString::from(url),
            timeout: Self::DEFAULT_TIMEOUT,
            prefix: "daxium-auth:".to_owned(),
            root_certificates: None,
            codec: Codec::clear(STORE),
        }
    }

    fn record_key(&self, key: &LoginKey) -> String {
        format!("{}{{{}}}", self.inner.prefix, key.id())
    }

    fn lease_key(&self, key: &LoginKey) -> String {
        format!("{}{{{}}}:lease", self.inner.prefix, key.id())
    }

    fn channel(&self, key: &LoginKey) -> String {
        format!("{}{{{}}}:changed", self.inner.prefix, key.id())
    }

    /// Runs `op` on a connection within the store's timeout, connecting
    /// first if need be.
    async fn call<T>(
        &self,
        op: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let link = &self.inner.link;
        let deadline = Instant::now() + self.inner.timeout;
        let timed_out = || StoreError::timeout(STORE);
        let mut connection = tokio::time::timeout_at(deadline, link.connection(self.inner.timeout))
            .await
            .map_err(|_| timed_out())?
            .map_err(redis_error)?;
        match tokio::time::timeout_at(deadline, op(&mut connection)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                link.failed(&connection, Some(&e));
                Err(redis_error(e))
            }
            // No answer in time: a primary cut off without a reset looks so.
            Err(_) => {
                link.failed(&connection, None);
                Err(timed_out())
            }
        }
    }

    /// The stored version and the record, when it is readable for `key`.
    fn decode(
        &self,
        key: &LoginKey,
        version: Option<String>,
        envelope: Option<Vec<u8>>,
        stale: bool,
    ) -> Result<(Option<u64>, Option<StoredRecord>), StoreError> {
        let Some(version) = version.filter(|v| !v.is_empty()) else {
            return Ok((None, None));
        };
        let version = version.parse::<u64>().map_err(|_| {
            StoreError::new(
                Kind::Server,
                STORE,
                Some("a stored version is not a number"),
                None,
            )
        })?;
        let envelope = Zeroizing::new(envelope.unwrap_or_default());
        let decoded = self.inner.codec.decode(key, &envelope);
        let record = match decoded.record {
            // Written before a failover, it may lack the mark that its refresh
            // token was spent: the token is never handed out.
            Some(record) if decoded.version == Some(version) && stale => Some(StoredRecord::new(
                record.login().clone(),
                version,
                record.into_record().with_refresh_spent(),
            )),
            Some(record) if decoded.version == Some(version) => Some(record),
            Some(_) => {
                tracing::warn!(
                    store = STORE,
                    login = key.id(),
                    "stored token record of another version; treated as absent"
                );
                None
            }
            None => None,
        };
        Ok((Some(version), record))
    }

    /// Waits on the login's channel; `None` when no subscription could be
    /// made, so that the caller polls instead.
    async fn wait_subscribed(
        &self,
        key: &LoginKey,
        since: Option<u64>,
        deadline: Instant,
    ) -> Option<Result<Option<StoredRecord>, StoreError>> {
        let channel = self.channel(key);
        let subscribe = async {
            let mut pubsub = self.inner.link.pubsub(self.inner.timeout).await?;
            pubsub.subscribe(&channel).await.ok()?;
            Some(pubsub)
        };
        let subscribed_by = deadline.min(Instant::now() + self.inner.timeout);
        let mut pubsub = tokio::time::timeout_at(subscribed_by, subscribe)
            .await
            .ok()
            .flatten()?;
        // Subscribed before reading: a commit in between is seen by one or
        // the other.
        match self.read(key).await {
            Ok(Some(record)) if Some(record.version()) != since => return Some(Ok(Some(record))),
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
        let mut messages = pubsub.on_message();
        // Each turn is one commit for this login; the deadline bounds them.
        loop {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Err(_) => return Some(Ok(None)),
                // The subscription broke: poll for the rest of the wait.
                Ok(None) => return None,
                Ok(Some(_)) => match self.read(key).await {
                    Ok(Some(record)) if Some(record.version()) != since => {
                        return Some(Ok(Some(record)));
                    }
                    Ok(_) => {}
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("deployment", &self.inner.link.kind())
            .field("address", &self.inner.address)
            .field("tls", &self.inner.tls)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("sealed", &self.inner.codec.is_sealed())
            .finish()
    }
}

/// A Redis failure as a store error; the cause goes along as the source.
fn redis_error(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        Kind::Timeout
    } else if e.kind() == ErrorKind::AuthenticationFailed
        || e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        Kind::AuthFailed
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        )
    {
        Kind::Unavailable
    } else {
        Kind::Server
    };
    StoreError::new(kind, STORE, None, Some(e.into()))
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(lease_ttl(ttl).as_millis()).unwrap_or(u64::MAX)
}

impl TokenStore for RedisStore {
    async fn read(&self, key: &LoginKey) -> Result<Option<StoredRecord>, StoreError> {
        let record_key = self.record_key(key);
        let (version, envelope, foreign, stale): (String, Vec<u8>, i64, i64) = self
            .call(async |c| self.inner.read.key(&record_key).invoke_async(c).await)
            .await?;
        if foreign == 1 {
            tracing::warn!(
                store = STORE,
                login = key.id(),
                "something other than a token record at the record's key; treated as absent"
            );
        }
        let envelope = (!envelope.is_empty()).then_some(envelope);
        let version = Some(version);
        if envelope.as_ref().is_some_and(|e| e.len() > MAX_ENVELOPE) {
            tracing::warn!(
                store = STORE,
                login = key.id(),
                "stored token record too large; treated as absent"
            );
            return Ok(None);
        }
        Ok(self.decode(key, version, envelope, stale == 1)?.1)
    }

    async fn write(
        &self,
        key: &LoginKey,
        expected: Option<u64>,
        record: &Record,
    ) -> Result<WriteOutcome, StoreError> {
        let version = next_version(expected, STORE)?;
        let envelope = self.inner.codec.encode(key, version, record)?;
        let (record_key, channel) = (self.record_key(key), self.channel(key));
        let spends = record.is_refresh_spent();
        let (written, stored, stored_envelope, stale): (i64, String, Vec<u8>, i64) = self
            .call(async |c| {
                self.inner
                    .compare_and_set
                    .key(&record_key)
                    .arg(expected.unwrap_or(0))
                    .arg(version)
                    .arg(envelope.as_slice())
                    .arg(&channel)
                    .arg(u8::from(spends))
                    .invoke_async(c)
                    .await
            })
            .await?;
        if written == 1 {
            return Ok(WriteOutcome::Written { version });
        }
        let stored_envelope = (!stored_envelope.is_empty()).then_some(stored_envelope);
        let (version, record) = self.decode(key, Some(stored), stored_envelope, stale == 1)?;
        Ok(WriteOutcome::Conflict(Conflict::new(version, record)))
    }

    async fn acquire_lease(
        &self,
        key: &LoginKey,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let lease_key = self.lease_key(key);
        let (taken, pttl): (i64, i64) = self
            .call(async |c| {
                self.inner
                    .acquire
                    .key(&lease_key)
                    .arg(owner.as_str())
                    .arg(millis(ttl))
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(if taken == 1 {
            Lease::Acquired
        } else {
            Lease::Held {
                // Never negative from the script; should it be, the store does not know.
                remaining: u64::try_from(pttl).ok().map(Duration::from_millis),
            }
        })
    }

    async fn release_lease(&self, key: &LoginKey, owner: &LeaseOwner) -> Result<bool, StoreError> {
        let lease_key = self.lease_key(key);
        let deleted: i64 = self
            .call(async |c| {
                self.inner
                    .release
                    .key(&lease_key)
                    .arg(owner.as_str())
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn wait_for_change(
        &self,
        key: &LoginKey,
        since: Option<u64>,
        max_wait: Duration,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let deadline = wait_deadline(max_wait);
        if let Some(outcome) = self.wait_subscribed(key, since, deadline).await {
            return outcome;
        }
        poll_for_change(
            self,
            key,
            since,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
