//! The Redis token store, for a fleet: one hash per login holding the version
//! and the record's envelope, written by a Lua compare-and-set that publishes
//! each commit; the lease is a key set with `NX PX` and deleted only by its
//! owner. Every call gives up after a short timeout.

use std::{fmt, time::Duration};

use futures_util::StreamExt;
use redis::{
    Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, Script, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::OnceCell, time::Instant};
use zeroize::Zeroizing;

use super::{
    Conflict, Lease, LeaseOwner, LoginKey, Record, StoreError, StoredRecord, TokenStore,
    WriteOutcome, check_call_timeout,
    codec::{Codec, MAX_ENVELOPE},
    error::Kind,
    lease_ttl, next_version, poll_for_change, wait_deadline,
};

const STORE: &str = "redis";

/// Whether a stored version is one a store writes: a decimal u64 from 1, in
/// canonical form (no sign, no leading zero), up to 20 digits.
const IS_VERSION: &str = r"
local function is_version(v)
  if not v or not string.match(v, '^[1-9]%d*$') or #v > 20 then return false end
  return #v < 20 or v <= '18446744073709551615'
end
";

/// Reads the record hash. A key of another type, or a hash whose version is
/// not one a store writes, was not written by a store: it reads as none.
///
/// KEYS[1] the record hash. Returns `{version or "", envelope or "", foreign}`
/// (`foreign`: 1 when something else was found at the key).
const READ: &str = r"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {'', '', 0} end
if kind ~= 'hash' then return {'', '', 1} end
local version = redis.call('HGET', KEYS[1], 'version')
if not is_version(version) then return {'', '', 1} end
return {version, redis.call('HGET', KEYS[1], 'envelope') or '', 0}
";

/// Writes the record if the stored version is the expected one (`0`: none, or
/// something a store did not write, which the write replaces), and tells the
/// waiters.
///
/// KEYS[1] the record hash; ARGV: expected version, new version, envelope,
/// channel. Returns `{1, new, ""}` or `{0, stored version or "", envelope or ""}`.
const COMPARE_AND_SET: &str = r"
local kind = redis.call('TYPE', KEYS[1]).ok
local current = nil
if kind == 'hash' then
  current = redis.call('HGET', KEYS[1], 'version')
  if not is_version(current) then current = nil end
end
if (current or '0') ~= ARGV[1] then
  local envelope = ''
  if current then envelope = redis.call('HGET', KEYS[1], 'envelope') or '' end
  return {0, current or '', envelope}
end
if kind ~= 'none' and not current then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'envelope', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1, ARGV[2], ''}
";

/// Takes the lease for an owner, or renews it for its holder.
///
/// KEYS[1] the lease key; ARGV: owner, time to live in ms. Returns `{1, 0}`,
/// or `{0, PTTL of the holder's lease}`. A lease without expiry was not taken
/// by a store (which always sets one): it gets the caller's time to live, so
/// that it lapses instead of holding every replica off for ever.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  pttl = tonumber(ARGV[2])
end
return {0, pttl}
";

/// Deletes the lease if the owner still holds it. KEYS[1] the lease key;
/// ARGV[1] the owner. Returns the number of keys deleted.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A [`TokenStore`] in Redis, for the replicas of a fleet.
///
/// Layout, for a login whose [`LoginKey::id`] is `ID` and the default prefix
/// `daxium-auth:` (the braces keep a login's keys in one cluster slot):
///
/// - `daxium-auth:{ID}`: a hash with `version` (decimal) and `envelope` (the
///   record as JSON, in clear or sealed with a `SealKey`, feature `sealed`);
///   written only by a Lua compare-and-set, which also publishes the new
///   version on the channel `daxium-auth:{ID}:changed`;
/// - `daxium-auth:{ID}:lease`: the lease, `SET … NX PX ttl` to a random
///   [`LeaseOwner`], renewed with `PEXPIRE` by its holder, deleted by a Lua
///   compare-and-delete.
///
/// Records have no expiry of their own in Redis.
///
/// URLs: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, and `rediss://…` for
/// TLS (rustls, with the system's roots unless the builder is given others).
/// The password authenticates with `AUTH`; it never shows in `Debug` or in an
/// error.
///
/// Every call has a timeout ([`RedisStore::DEFAULT_TIMEOUT`], 250 ms by
/// default), so that a dead or slow Redis never holds a caller for long: it
/// fails with [`is_unavailable`](StoreError::is_unavailable) or
/// [`is_timeout`](StoreError::is_timeout), and the connection is made again
/// in the background once Redis is back. Building a store does not connect:
/// the first call does, so a replica starts while Redis is down.
///
/// [`wait_for_change`](TokenStore::wait_for_change) subscribes to the login's
/// channel on a connection of its own for the wait, and polls if it cannot.
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    client: Client,
    manager: OnceCell<ConnectionManager>,
    timeout: Duration,
    prefix: String,
    codec: Codec,
    read: Script,
    compare_and_set: Script,
    acquire: Script,
    release: Script,
    /// `host:port` and whether TLS is on, for `Debug`.
    address: String,
    tls: bool,
}

/// Settings of a [`RedisStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStoreBuilder {
    url: SecretString,
    timeout: Duration,
    prefix: String,
    root_certificates: Option<Vec<u8>>,
    codec: Codec,
}

impl RedisStoreBuilder {
    /// How long one call may take, connecting included: 1 ms ..= 60 s
    /// (default [`RedisStore::DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The prefix of every key and channel (default `daxium-auth:`). Logins
    /// of different token endpoints are kept apart by their keys already.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Trusts these PEM certificates, and only them, for a `rediss://` URL:
    /// for a Redis whose certificate a private authority signed.
    #[must_use]
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Seals every record with `key`; records that do not open under it read
    /// as absent.
    #[cfg(feature = "sealed")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sealed")))]
    #[must_use]
    pub fn seal(mut self, key: super::SealKey) -> Self {
        self.codec = Codec::sealed(STORE, key);
        self
    }

    /// The store. Fails on a URL that does not parse or has another scheme,
    /// and on root certificates without TLS; it does not connect.
    ///
    /// For `rediss://`, the ring crypto provider becomes rustls's process
    /// default unless one is installed already.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        check_call_timeout(self.timeout, STORE)?;
        let url = self.url.expose_secret();
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some(s) if s.eq_ignore_ascii_case("redis") || s.eq_ignore_ascii_case("rediss"))
        {
            return Err(StoreError::config(
                STORE,
                "the URL must start with redis:// or rediss://",
            ));
        }
        // The parser's own errors may quote the URL, password included.
        let info = url
            .into_connection_info()
            .map_err(|_| StoreError::config(STORE, "the Redis URL does not parse"))?;
        let (address, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), false),
            ConnectionAddr::TcpTls { host, port, .. } => (format!("{host}:{port}"), true),
            _ => {
                return Err(StoreError::config(STORE, "the URL must name a TCP host"));
            }
        };
        if tls {
            // `redis` builds its rustls configuration from the process
            // default; without one, a second provider in the build would panic.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match self.root_certificates {
            Some(pem) if tls => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|_| StoreError::config(STORE, "the root certificates do not parse"))?,
            Some(_) => {
                return Err(StoreError::config(
                    STORE,
                    "root certificates need a rediss:// URL",
                ));
            }
            None => Client::open(info)
                .map_err(|_| StoreError::config(STORE, "the Redis URL is not usable"))?,
        };
        Ok(RedisStore {
            inner: std::sync::Arc::new(Inner {
                client,
                manager: OnceCell::new(),
                timeout: self.timeout,
                prefix: self.prefix,
                codec: self.codec,
                read: Script::new(&format!("{IS_VERSION}{READ}")),
                compare_and_set: Script::new(&format!("{IS_VERSION}{COMPARE_AND_SET}")),
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                address,
                tls,
            }),
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("root_certificates", &self.root_certificates.is_some())
            .field("sealed", &self.codec.is_sealed())
            .finish()
    }
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

    /// The shared connection; made on the first call, remade by the manager
    /// after a failure.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let timeout = self.inner.timeout;
        self.inner
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(timeout);
                self.inner
                    .client
                    .get_connection_manager_lazy(config)
                    .map_err(redis_error)
            })
            .await
            .cloned()
    }

    /// Runs `op` on the shared connection within the store's timeout.
    async fn call<T>(
        &self,
        op: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let attempt = async {
            let mut connection = self.connection().await?;
            op(&mut connection).await.map_err(redis_error)
        };
        tokio::time::timeout(self.inner.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(StoreError::timeout(STORE)))
    }

    /// The stored version and the record, when it is readable for `key`.
    fn decode(
        &self,
        key: &LoginKey,
        version: Option<String>,
        envelope: Option<Vec<u8>>,
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
            let mut pubsub = self.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let subscribed_by = deadline.min(Instant::now() + self.inner.timeout);
        let mut pubsub = match tokio::time::timeout_at(subscribed_by, subscribe).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => return None,
        };
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
        let (version, envelope, foreign): (String, Vec<u8>, i64) = self
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
        Ok(self.decode(key, version, envelope)?.1)
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
        let (written, stored, stored_envelope): (i64, String, Vec<u8>) = self
            .call(async |c| {
                self.inner
                    .compare_and_set
                    .key(&record_key)
                    .arg(expected.unwrap_or(0))
                    .arg(version)
                    .arg(envelope.as_slice())
                    .arg(&channel)
                    .invoke_async(c)
                    .await
            })
            .await?;
        if written == 1 {
            return Ok(WriteOutcome::Written { version });
        }
        let stored_envelope = (!stored_envelope.is_empty()).then_some(stored_envelope);
        let (version, record) = self.decode(key, Some(stored), stored_envelope)?;
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
